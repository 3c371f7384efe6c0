#!/usr/bin/env bash
# Remakes systemd/edge-agent.order and systemd/edge-agent.ld, the functions lld places at the start of the edge
# agent's .text (see systemd/install.sh and BENCHMARKS.md, "Edge agent footprint"): builds the agent as
# install.sh does, plus a link map, runs it under callgrind (with the example configuration file, as systemd
# starts it with one) through start-up, 10 devices connecting, idle,
# /metrics, then forwarding at QoS 0, 1 and 2 to a mosquitto upstream, and a clean SIGTERM shutdown, and writes
# every .text section that ran, start-up and idle first (by symbol; the linker script takes the few without
# one). Run it after changes that move much code; a stale list only costs memory (the functions it misses
# stay spread over .text), never correctness.
#
#   scripts/footprint/order-file.sh            (about 2 minutes after the build; needs valgrind, mosquitto)
# Environment: SCRATCH (build directory, default .build-static, the one bench/agent-footprint.sh uses),
# DEVICE_SIM (default: a release device-sim as in bench/), KEEP (a directory to keep the profiles and the map in).
set -euo pipefail
source "$(dirname "$0")/../../bench/loadgen/common.sh"
scratch=${SCRATCH:-$root/.build-static}
sim=$(device_sim)
command -v valgrind >/dev/null || { echo "order-file: valgrind is needed" >&2; exit 1; }

read -r -a flags <<<"$("$root/systemd/install.sh" --print-build-flags edge-agent)"
# The profile is taken of the agent linked without the current lists (the default layout: every function in
# its own section, in link order), so that what ran is read the same way each time.
profile_flags=()
for ((i = 0; i < ${#flags[@]}; i++)); do
    case "${flags[i]}:${flags[i + 1]:-}" in
        -Xlinker:--symbol-ordering-file=*|-Xlinker:--no-warn-symbol-ordering) i=$((i + 1)) ;;
        -Xlinker:-T) i=$((i + 3)) ;;
        *) profile_flags+=("${flags[i]}") ;;
    esac
done
echo "order-file: swift build ${profile_flags[*]} -Xlinker -Map=... --scratch-path $scratch"
swift build --package-path "$root" "${profile_flags[@]}" -Xlinker "-Map=$work/edge-agent.map" -Xlinker --no-demangle \
    --scratch-path "$scratch"
# valgrind 3.19 cannot read the toolchain's DWARF 5; the symbol table is enough, and the code is the same.
objcopy --strip-debug "$scratch/release/edge-agent" "$work/edge-agent"

start_mosquitto upstream
agent_port=$(free_port)
agent_http=$(free_port)
valgrind --tool=callgrind --dump-instr=yes --compress-strings=no --compress-pos=no --demangle=no \
    --callgrind-out-file="$work/callgrind.%p" "$work/edge-agent" --config "$root/config/edge-agent.yaml" \
    --agent-id order --device-listen "127.0.0.1:$agent_port" \
    --upstream "mqtt://127.0.0.1:$upstream_port" --data-dir "$work/agent" --http-listen "127.0.0.1:$agent_http" \
    >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
for _ in $(seq 600); do  # under callgrind the agent takes several seconds to listen
    (exec 3<>"/dev/tcp/127.0.0.1/$agent_port") 2>/dev/null && break
    kill -0 "$agent_pid" 2>/dev/null || { echo "order-file: the agent exited" >&2; cat "$work/agent.log" >&2; exit 1; }
    sleep 0.1
done

# devices QOS RATE DURATION PREFIX: 10 device-sim devices, in the background; sets sim_pid.
devices() {
    "$sim" --broker "mqtt://127.0.0.1:$agent_port" --clients 10 --qos "$1" --rate "$2" --duration "$3" --size 1024 \
        --inflight 20 --keep-alive 60 --client-id-prefix "$4" --progress-interval 1 --drain-timeout 10 \
        >"$work/sim-$4.log" 2>&1 &
    sim_pid=$!
    pids+=("$sim_pid")
}
devices 1 0.0001 3600 idle
for _ in $(seq 600); do grep -q "connected=10 " "$work/sim-idle.log" && break; sleep 0.1; done
grep -q "connected=10 " "$work/sim-idle.log" || { echo "order-file: the devices did not connect" >&2; exit 1; }
sleep 10  # a measurement pause: the idle period (keep-alive timers, housekeeping) is part of the profile
for path in metrics health ready; do curl -sf "127.0.0.1:$agent_http/$path" >/dev/null; done
callgrind_control --dump=idle "$agent_pid" >/dev/null
kill "$sim_pid"; wait "$sim_pid" 2>/dev/null || true
for qos in 0 1 2; do
    devices "$qos" 10 5 "qos$qos"
    wait "$sim_pid" || { echo "order-file: devices at QoS $qos failed" >&2; cat "$work/sim-qos$qos.log" >&2; exit 1; }
done
callgrind_control --dump=forwarding "$agent_pid" >/dev/null
kill "$agent_pid"
wait "$agent_pid" || true
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/callgrind.* "$work/edge-agent.map" "$KEEP"/; fi
profiles=("$work"/callgrind.*.1 "$work"/callgrind.*.2)
profiles+=("$(ls "$work"/callgrind.* | grep -v '\.[12]$')")
python3 "$root/scripts/footprint/order-file.py" --script "$root/systemd/edge-agent.ld" "$work/edge-agent.map" \
    "${profiles[@]}" >"$root/systemd/edge-agent.order"
echo "order-file: wrote systemd/edge-agent.order ($(wc -l <"$root/systemd/edge-agent.order") functions) and" \
    "systemd/edge-agent.ld ($(grep -c '^    \*' "$root/systemd/edge-agent.ld") sections); rebuild to use them:"
echo "  swift build ${flags[*]} --scratch-path $scratch"
