#!/usr/bin/env bash
# Edge agent backlog drain: buffer COUNT records of SIZE bytes while the upstream broker is down, then start
# mosquitto and time how long the agent takes to forward them all with QoS 2 (PUBCOMP for each). Also prints
# the agent's RSS (idle after start, peak) from /proc. Uses the Python device fleet for the ingest.
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
trap cleanup EXIT
free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { curl -s "127.0.0.1:$http_port/metrics" | awk -v name="$1" 'index($1, name)==1 {sum+=$2} END {print int(sum)}'; }
rss() { awk '/VmRSS/ {print $2" kB"}' /proc/"$1"/status; }
hwm() { awk '/VmHWM/ {print $2" kB"}' /proc/"$1"/status; }

upstream_port=$(free_port); device_port=$(free_port); http_port=$(free_port)
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
printf "listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 0\n" \
    "$upstream_port" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=("$!")
start=$(date +%s.%N)
total=$((per_device * devices))
while [ "$(metric tributary_agent_acknowledged_messages_total)" -lt "$total" ]; do sleep 0.2; done
end=$(date +%s.%N)
seconds=$(echo "$end - $start" | bc -l)
printf "RESULT agent-drain records=%d size=%d inflight=%d seconds=%.2f rate=%.0f/s peak_rss=%s\n" \
    "$total" "$size" "$inflight" "$seconds" "$(echo "$total / $seconds" | bc -l)" "$(hwm $agent)"
