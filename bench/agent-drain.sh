#!/usr/bin/env bash
# Edge agent backlog drain: buffer COUNT records of SIZE bytes while the upstream broker is down, then start
# the upstream broker and time how long the agent takes to forward them all with QoS 2 (PUBCOMP for each).
# Also prints the agent's RSS (idle after start, peak) from /proc. Uses the Python device fleet for the ingest.
# UPSTREAMS (default "mosquitto"): the upstream brokers to drain into, one after the other in this run, each with
# a fresh agent and the same backlog: "mosquitto cloud-broker" gives the whole product path (agent -> cloud-broker
# -> Kafka, Tansu started first) as a ratio to mosquitto; CLOUD_BROKER picks the broker binary (a release build).
#
#   bench/agent-drain.sh [COUNT] [SIZE] [MAX_INFLIGHT]      (defaults 20000 1024 100)
# Environment: EDGE_AGENT (default .build/release/edge-agent, else .build/debug/edge-agent), TRIBUTARY_PYTHON,
# AGENT_ARGS (more edge-agent arguments; COUNT x SIZE above ~900 MB needs e.g. "--set buffer.max_bytes=2GiB"),
# DEVICES (default 10; keep COUNT / DEVICES below 65,535: the Python fleet stalls when a client's packet ids wrap).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$root/.tools/env" ] && source "$root/.tools/env"
count=${1:-20000}; size=${2:-1024}; inflight=${3:-100}
bin="${EDGE_AGENT:-$root/.build/release/edge-agent}"
[ -x "$bin" ] || bin="$root/.build/debug/edge-agent"
python="${TRIBUTARY_PYTHON:-python3}"
work=$(mktemp -d /tmp/agent-drain.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
stop() { for pid in "$@"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { curl -s "127.0.0.1:$http_port/metrics" | awk -v name="$1" 'index($1, name)==1 {sum+=$2} END {print int(sum)}'; }
rss() { awk '/VmRSS/ {print $2" kB"}' /proc/"$1"/status; }
hwm() { awk '/VmHWM/ {print $2" kB"}' /proc/"$1"/status; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
declare -A rates
for upstream in ${UPSTREAMS:-mosquitto}; do
upstream_port=$(free_port); device_port=$(free_port); http_port=$(free_port)
rm -rf "$work/agent"
"$bin" --agent-id drain --device-listen "127.0.0.1:$device_port" --upstream "mqtt://127.0.0.1:$upstream_port" \
    --data-dir "$work/agent" --http-listen "127.0.0.1:$http_port" --set upstream.max_inflight="$inflight" \
    --set upstream.reconnect_max=500ms ${AGENT_ARGS:-} >"$work/agent.log" 2>&1 &
agent=$!; pids+=("$agent")
until grep -q "Edge agent ready" "$work/agent.log"; do sleep 0.1; done
sleep 1
echo "binary: $bin"
echo "idle RSS (no devices, upstream down): $(rss $agent)"
devices=${DEVICES:-10}
per_device=$((count / devices))
"$python" "$root/bench/agent-devices.py" --port "$device_port" --devices $devices --messages $per_device --qos 1 \
    --payload-bytes "$size" --inflight 100 | sed 's/^/ingest: /'
echo "buffered: $(metric tributary_agent_received_messages_total) (RSS $(rss $agent))"
tansu=""
case "$upstream" in
    mosquitto)
        start=$(date +%s.%N)
        printf "listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 0\n" \
            "$upstream_port" >"$work/mosquitto.conf"
        mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
        upstream_pid=$!; pids+=("$upstream_pid") ;;
    cloud-broker)
        broker="${CLOUD_BROKER:-$root/.build/release/cloud-broker}"
        [ -x "$broker" ] || { echo "agent-drain: no cloud-broker at $broker (swift build -c release --product cloud-broker)" >&2; exit 1; }
        kafka_port=$(free_port)
        "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$kafka_port" --advertised-listener-url "tcp://127.0.0.1:$kafka_port" >"$work/tansu.log" 2>&1 &
        tansu=$!; pids+=("$tansu")
        until (exec 3<>"/dev/tcp/127.0.0.1/$kafka_port") 2>/dev/null; do sleep 0.1; done
        start=$(date +%s.%N)  # the drain includes the broker's start (topics, consumers): a node restart
        LD_LIBRARY_PATH="$root/.tools/lib" "$broker" --node-id drain --mqtt-listen "127.0.0.1:$upstream_port" \
            --kafka-bootstrap "127.0.0.1:$kafka_port" --http-listen "127.0.0.1:$(free_port)" >"$work/broker.log" 2>&1 &
        upstream_pid=$!; pids+=("$upstream_pid") ;;
    *) echo "agent-drain: UPSTREAMS holds mosquitto and/or cloud-broker, not '$upstream'" >&2; exit 2 ;;
esac
total=$((per_device * devices))
while [ "$(metric tributary_agent_acknowledged_messages_total)" -lt "$total" ]; do sleep 0.2; done
end=$(date +%s.%N)
seconds=$(echo "$end - $start" | bc -l)
rate=$(echo "$total / $seconds" | bc -l)
rates[$upstream]=$rate
upstream_cpu=$(echo "($(cpu_ticks "$upstream_pid")) * 1000000 / $(getconf CLK_TCK) / $total" | bc -l)
kafka_cpu=""
[ -n "$tansu" ] && kafka_cpu=$(printf " tansu_cpu_us_per_record=%.1f" "$(echo "($(cpu_ticks "$tansu")) * 1000000 / $(getconf CLK_TCK) / $total" | bc -l)")
printf "RESULT agent-drain upstream=%s records=%d size=%d inflight=%d seconds=%.2f rate=%.0f/s peak_rss=%s upstream_cpu_us_per_record=%.1f%s\n" \
    "$upstream" "$total" "$size" "$inflight" "$seconds" "$rate" "$(hwm $agent)" "$upstream_cpu" "$kafka_cpu"
stop "$agent" "$upstream_pid" $tansu
done
if [ -n "${rates[mosquitto]:-}" ] && [ -n "${rates[cloud-broker]:-}" ]; then
    printf "RESULT agent-drain-ratio cloud_broker_over_mosquitto=%.2f\n" "$(echo "${rates[cloud-broker]} / ${rates[mosquitto]}" | bc -l)"
fi
