# Shared by the one-request latency benchmarks (bench/connack-latency.sh, bench/resend-latency.sh). Sourced, not
# run; sources loadgen/common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# start_latency_peers NAME: mosquitto and a ready cloud-broker (CLOUD_BROKER, a release build), then the machine line.
start_latency_peers() {
    start_mosquitto mosquitto
    start_cloud_broker
    [ -n "$peer_url" ] || { echo "$1: cloud-broker did not start: $peer_note" >&2; exit 1; }
    for _ in $(seq 100); do curl -sf "127.0.0.1:$broker_http_port/ready" >/dev/null && break; sleep 0.1; done
    machine_line
}

# A latency script's Python starts with this (arguments: port, count, mode "1" or "0"), collects `times`
# (milliseconds) and ends with `latency_summary`.
latency_prelude='import socket, statistics, struct, sys, time, uuid
port, count, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
times = []'
latency_summary='times.sort()
print(f"p50_ms={statistics.median(times):.1f} p90_ms={times[int(len(times) * 0.9) - 1]:.1f} max_ms={times[-1]:.1f}")'

# compare_latency NAME SCRIPT COUNT_KEY COUNT MODE_KEY MODE...: per MODE, `python3 SCRIPT PORT COUNT MODE` against
# mosquitto, then cloud-broker; one RESULT line with both summaries.
compare_latency() {
    local name=$1 script=$2 count_key=$3 count=$4 mode_key=$5 mode m c
    shift 5
    for mode in "$@"; do
        m=$(python3 "$script" "$mosquitto_port" "$count" "$mode")
        c=$(python3 "$script" "${peer_url##*:}" "$count" "$mode")
        echo "RESULT $name $mode_key=$mode $count_key=$count mosquitto_${m// / mosquitto_} cloud_broker_${c// / cloud_broker_}"
    done
}
