#!/usr/bin/env bash
# Builds the MQTT decoder fuzzer (libFuzzer + AddressSanitizer) and runs it for a bounded time.
#   ./run-fuzzer.sh --seconds 60      run for 60 s (CI uses a short bound)
#   ./run-fuzzer.sh --runs 10000000   run 10 million inputs
#   extra arguments after -- go to libFuzzer, e.g. -- -jobs=2 -workers=2
# The corpus grows in fuzz/corpus (not committed); fuzz/corpus-seed holds hand-made seeds (valid packets).
# Exit status is libFuzzer's: non-zero on a crash, with the input saved as fuzz/crash-*.
set -euo pipefail
cd "$(dirname "$0")"

seconds=""
runs=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --help|-h) sed -n '2,8p' "$0"; exit 0 ;;
        --) shift; break ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$seconds" && -z "$runs" ]]; then seconds=60; fi

swift build -c release --product MQTTDecoderFuzzer \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld >&2
binary="$(swift build -c release --show-bin-path)/MQTTDecoderFuzzer"

mkdir -p corpus
args=(corpus corpus-seed -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
[[ -n "$seconds" ]] && args+=("-max_total_time=$seconds")
[[ -n "$runs" ]] && args+=("-runs=$runs")
exec "$binary" "${args[@]}" "$@"
