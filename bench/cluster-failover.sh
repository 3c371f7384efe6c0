#!/usr/bin/env bash
# Failover at fleet size (issue 7): 3 nodes behind HAProxy (scripts/cluster), N persistent QoS 2 devices
# (1 KiB, 1 message / 10 s each, half receiving commands), one node SIGKILLed after the ramp-up; then the same
# against 3 mosquitto nodes behind the same HAProxy configuration (shared nothing: a device that lands on
# another node has no session there), the reconnect-time peer.
#
#   bench/cluster-failover.sh [--clients 9000] [--rate 0.1] [--ramp-up 45] [--hold 20] [--after 30]
#                             [--release] [--only cloud-broker|mosquitto] [--cut]
#
#   --hold S    seconds between "every device connected" and the kill
#   --after S   seconds of publishing after the kill
#   --cut       machine loss instead of SIGKILL: node-2 runs in its own network namespace and its link is
#               taken down (scripts/cluster --isolate): no socket is closed, the node keeps running, cut off
# Logs: .run/cluster-failover/<flavour>/ (cluster, HAProxy, nodes, simulator, verify-kafka).
# Prints one RESULT line per flavour and a RATIO line (recovery_max cloud-broker / mosquitto). Timeline per run: kill -> HAProxy marks the node DOWN
# (its log) -> the last device notices -> the last device is back (CONNACK; with its session or not).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
clients=9000; rate=0.1; ramp_up=45; hold=20; after=30; configuration=debug; only=""; cut=no
while [ $# -gt 0 ]; do
    case "$1" in
        --clients) clients="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --ramp-up) ramp_up="$2"; shift 2 ;;
        --hold) hold="$2"; shift 2 ;;
        --after) after="$2"; shift 2 ;;
        --release) configuration=release; shift ;;
        --only) only="$2"; shift 2 ;;
        --cut) cut=yes; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "cluster-failover: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
source "$root/bench/loadgen/common.sh"   # field, ratio, machine_line, cleanup of $pids
bin="$(swift build -c "$configuration" --show-bin-path)"
for b in cloud-broker device-sim; do
    [ -x "$bin/$b" ] || { echo "cluster-failover: $bin/$b missing: swift build -c $configuration --product $b" >&2; exit 2; }
done
export LD_LIBRARY_PATH="$root/.tools/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# One HAProxy process holds ~9,800 clients (20,000 open files, two per client).
haproxies=$(( (clients + 9000) / 9000 )); [ "$clients" -le 9500 ] && haproxies=1
duration=$(python3 -c "print(int($hold + $after + 10))")

event="SIGKILL of node-2"; [ "$cut" = yes ] && event="node-2 cut off (network namespace link down, process running)"
echo "cluster-failover: $event; $clients devices, QoS 2, 1 KiB, $rate msg/s each, persistent sessions, half with commands;"
echo "  3 nodes, $haproxies HAProxy process(es), ramp-up ${ramp_up}s, kill ${hold}s after all connected, ${after}s after; $configuration build"
machine_line

# run_flavour cloud-broker|mosquitto: prints a RESULT line, leaves its logs in .run/cluster-failover/<flavour>.
run_flavour() {
    local flavour=$1 dir="$root/.run/cluster-failover/$1" flags=()
    rm -rf "$dir"; mkdir -p "$dir"
    [ "$flavour" = mosquitto ] && flags+=(--mosquitto)
    [ "$cut" = yes ] && flags+=(--isolate 2)
    scripts/cluster --nodes 3 --haproxy "$haproxies" --bin "$bin" --run-dir "$dir/cluster" --print-env "$dir/env" \
        ${flags[@]+"${flags[@]}"} > "$dir/cluster.log" 2>&1 &
    local cluster_pid=$!
    pids+=("$cluster_pid")
    for _ in $(seq 1200); do [ -f "$dir/env" ] && break; kill -0 "$cluster_pid" 2>/dev/null || break; sleep 0.1; done
    [ -f "$dir/env" ] || { echo "cluster-failover: the $flavour cluster did not start:" >&2; tail -20 "$dir/cluster.log" >&2; exit 1; }
    # shellcheck disable=SC1091
    source "$dir/env"
    local brokers=() url
    for url in $CLUSTER_MQTT_URLS; do brokers+=(--broker "$url"); done
    local mark="$dir/failover-mark"
    "$bin/device-sim" "${brokers[@]}" --clients "$clients" --qos 2 --clean-session false --size 1KiB --rate "$rate" \
        --jitter 0.2 --ramp-up "$ramp_up" --duration "$duration" --inflight 4 --keep-alive 60 \
        --reconnect-min 0.1 --reconnect-max 2 --drain-timeout 30 --command-topic 'cmd/{client}' --command-rate 100 \
        --failover-mark "$mark" --client-id-prefix "fo-$flavour" --progress-interval 1 > "$dir/sim.out" 2> "$dir/sim.err" &
    local sim_pid=$!
    pids+=("$sim_pid")
    local connected=0
    for _ in $(seq $(( (ramp_up + 120) * 10 ))); do
        connected=$(sed -n 's/.* connected=\([0-9]*\).*/\1/p' "$dir/sim.err" | tail -1)
        [ "${connected:-0}" -ge "$clients" ] && break
        kill -0 "$sim_pid" 2>/dev/null || break
        sleep 0.1
    done
    [ "${connected:-0}" -ge "$clients" ] || { echo "cluster-failover: only ${connected:-0} of $clients connected ($flavour)" >&2; tail -5 "$dir/sim.err" >&2; exit 1; }
    echo "  $flavour: $clients connected at $(date -u +%H:%M:%S); killing node-2 in ${hold}s"
    sleep "$hold"
    local victim=$CLUSTER_NODE_2_PID kill_ns
    kill_ns=$(date +%s%N)
    echo "${kill_ns:0:10}.${kill_ns:10}" > "$mark"
    if [ "$cut" = yes ]; then eval "$CLUSTER_NODE_2_CUT"; else kill -KILL "$victim"; fi
    wait "$sim_pid" || true
    local line
    line=$(grep '^device-sim summary' "$dir/sim.out" || true)
    [ -n "$line" ] || { echo "cluster-failover: no summary ($flavour)" >&2; tail -20 "$dir/sim.err" >&2; exit 1; }
    # HAProxy: when it marked node-2 DOWN (its log, ISO time stamps), relative to the kill.
    local down_ms
    down_ms=$(python3 - "$kill_ns" "$dir"/cluster/haproxy-*.log <<'EOF'
import sys, re, datetime
kill = int(sys.argv[1]) / 1e9
times = []
for path in sys.argv[2:]:
    for line in open(path, errors="replace"):
        if "node-2 is DOWN" in line:
            m = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?)", line)
            if m:
                times.append(datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp())
print(f"{(min(times) - kill) * 1000:.0f}" if times else "n/a")
EOF
)
    local kafka_line="" k_lost="n/a" k_dup="n/a"
    if [ "$flavour" = cloud-broker ]; then
        kafka_line=$("$bin/device-sim" verify-kafka --bootstrap "$CLUSTER_KAFKA" --topic mqtt.messages --mqtt-topic-prefix sensors/ \
            --expect "$(field acked "$line")" --idle-timeout 10 --timeout 300 2> "$dir/verify.err" | grep '^device-sim summary' || true)
        k_lost=$(field lost "$kafka_line"); k_dup=$(field duplicates "$kafka_line")
        grep -E 'duplicate|gap' "$dir/verify.err" | head -5 | sed 's/^/  /' || true
    fi
    echo "RESULT cluster-failover event=$([ "$cut" = yes ] && echo cut || echo kill) flavour=$flavour clients=$clients affected=$(field failover_clients "$line") back=$(field failover_back "$line") \
session_present=$(field failover_session_present "$line") without_session=$(field failover_without_session "$line") \
haproxy_down_ms=$down_ms noticed_max_ms=$(field failover_noticed_max_ms "$line") recovery_p50_ms=$(field failover_recovery_p50_ms "$line") \
recovery_p99_ms=$(field failover_recovery_p99_ms "$line") recovery_max_ms=$(field failover_recovery_max_ms "$line") \
acked=$(field acked "$line") kafka_lost=$k_lost kafka_duplicates=$k_dup commands_acked=$(field commands_acked "$line") \
commands_lost=$(field commands_lost "$line") commands_duplicates=$(field commands_duplicates "$line") \
reconnects=$(field reconnects "$line") connect_failures=$(field connect_failures "$line")"
    eval "${flavour//-/_}_recovery=$(field failover_recovery_max_ms "$line")"
    kill -TERM "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
}

cloud_broker_recovery=""; mosquitto_recovery=""
[ "$only" = mosquitto ] || run_flavour cloud-broker
[ "$only" = cloud-broker ] || run_flavour mosquitto
echo "RATIO cluster-failover recovery_max cloud-broker/mosquitto=$(ratio "$cloud_broker_recovery" "$mosquitto_recovery")"
