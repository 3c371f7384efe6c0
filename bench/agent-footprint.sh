#!/usr/bin/env bash
# Edge agent footprint: resident memory and CPU of edge-agent against mosquitto under the same device load, in
# the same run. The devices (device-sim, MQTT 3.1.1) connect to edge-agent (whose upstream is a second
# mosquitto standing in for the cloud; forwarding with its defaults, QoS 2) and, one phase after the other, to
# a plain mosquitto (the peer: what a broker on the gateway costs for the same devices). Phases:
#   idle     DEVICES devices connect, publish one message each and stay connected; RSS after IDLE_WAIT s,
#            CPU over the next SECONDS s.
#   RATE     DEVICES devices publish RATE msg/s in all (QoS $QOS, SIZE bytes) for WARMUP + SECONDS s; RSS
#            sampled every second over the last SECONDS s (max and last), CPU from /proc/PID/stat
#            utime+stime over those SECONDS s, as % of one core.
#
#   bench/agent-footprint.sh [SECONDS] [SIZE] [RATES]     (defaults 30 1024 "100 1000")
# Environment: DEVICES (10), QOS (1), WARMUP (5), IDLE_WAIT (5), EDGE_AGENT (default .build-static/release/
# edge-agent, the agent as systemd/install.sh builds it: swift build $(systemd/install.sh --print-build-flags
# edge-agent) --scratch-path .build-static, i.e. static Swift stdlib, lld, --no-export-dynamic,
# pack-relative-relocs, -function-sections and the start-up/idle/forwarding functions placed first by
# systemd/edge-agent.order and systemd/edge-agent.ld; then .build-release/release/edge-agent and
# .build/release/edge-agent), DEVICE_SIM, AGENT_ARGS (extra edge-agent arguments, e.g.
# "--set upstream.max_inflight=100"), AGENT_ENV (extra environment for edge-agent, e.g. "MALLOC_ARENA_MAX=2").
set -euo pipefail
source "$(dirname "$0")/loadgen/common.sh"

seconds=${1:-30}
size=${2:-1024}
rates=${3:-"100 1000"}
devices=${DEVICES:-10}
qos=${QOS:-1}
warmup=${WARMUP:-5}
idle_wait=${IDLE_WAIT:-5}
sim=$(device_sim)
agent_bin="${EDGE_AGENT:-}"
if [ -z "$agent_bin" ]; then
    for candidate in "$root/.build-static/release/edge-agent" "$root/.build-release/release/edge-agent" "$root/.build/release/edge-agent"; do
        if [ -x "$candidate" ]; then agent_bin=$candidate; break; fi
    done
fi
[ -x "$agent_bin" ] || { echo "agent-footprint: no release edge-agent (swift build -c release --product edge-agent --scratch-path .build-release)" >&2; exit 1; }

status_kib() {  # status_kib PID FIELD: a kB field of /proc/PID/status (VmRSS, RssAnon, RssFile, VmHWM)
    awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null || echo 0
}
threads() { awk '$1 == "Threads:" {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
metric() {  # metric NAME: the agent's counter, summed over labels
    curl -s "127.0.0.1:$agent_http/metrics" | awk -v name="$1" 'index($1, name)==1 {sum+=$2} END {print int(sum)}'
}

echo "agent-footprint: $devices devices, QoS $qos, $size bytes, rates: $rates msg/s, ${seconds}s windows after ${warmup}s warm-up"
machine_line
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at the start"
echo "edge-agent: $agent_bin ($(stat -c %s "$agent_bin") bytes; $(size -A "$agent_bin" | awk '$1 == ".text" {printf "text %.1f MiB", $2/1048576}'); linked: $(ldd "$agent_bin" | awk '/=>/ {print $1}' | sed 's/\.so.*//' | tr '\n' ' '))"
echo "device-sim: $sim"

start_mosquitto upstream
start_mosquitto mosquitto
agent_port=$(free_port)
agent_http=$(free_port)
# shellcheck disable=SC2086  # AGENT_ENV and AGENT_ARGS are word lists
env ${AGENT_ENV:-} "$agent_bin" --agent-id footprint --device-listen "127.0.0.1:$agent_port" \
    --upstream "mqtt://127.0.0.1:$upstream_port" --data-dir "$work/agent" --http-listen "127.0.0.1:$agent_http" \
    ${AGENT_ARGS:-} >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
wait_port "$agent_port" "$agent_pid" || { echo "agent-footprint: edge-agent did not start" >&2; cat "$work/agent.log" >&2; exit 1; }
echo "started: edge-agent pid $agent_pid (RSS $(status_kib "$agent_pid" VmRSS) KiB, $(threads "$agent_pid") threads), mosquitto pid $mosquitto_pid (RSS $(status_kib "$mosquitto_pid" VmRSS) KiB), upstream mosquitto pid $upstream_pid"

# start_devices NAME PORT RATE_PER_DEVICE DURATION: device-sim in the background, waits until all are connected;
# sets sim_pid and sim_log.
start_devices() {
    local name=$1 port=$2 rate=$3 duration=$4
    sim_log="$work/sim-$name.log"
    : >"$sim_log"
    "$sim" --broker "mqtt://127.0.0.1:$port" --clients "$devices" --rate "$rate" --duration "$duration" --qos "$qos" \
        --size "$size" --inflight 20 --keep-alive 60 --client-id-prefix "fp-$name" --progress-interval 1 \
        --drain-timeout 5 >"$sim_log" 2>&1 &
    sim_pid=$!
    pids+=("$sim_pid")
    local deadline=$((SECONDS + 30))
    until grep -q "connected=$devices " "$sim_log"; do
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$sim_pid" 2>/dev/null; then
            echo "agent-footprint: $name: the devices did not all connect" >&2
            cat "$sim_log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# window PID: samples PID's RSS every second for $seconds s; sets rss_max, rss_last, cpu_pct.
window() {
    local pid=$1 ticks start end rss
    ticks=$(cpu_ticks "$pid")
    start=$(now)
    rss_max=0
    for _ in $(seq "$seconds"); do
        sleep 1
        rss=$(status_kib "$pid" VmRSS)
        [ "$rss" -gt "$rss_max" ] && rss_max=$rss
    done
    end=$(now)
    rss_last=$rss
    cpu_pct=$(python3 -c "import os,sys; t=os.sysconf('SC_CLK_TCK'); print(f'{(int(sys.argv[1])-int(sys.argv[2]))/t/(float(sys.argv[4])-float(sys.argv[3]))*100:.2f}')" \
        "$(cpu_ticks "$pid")" "$ticks" "$start" "$end")
}

stop_devices() {
    kill "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
}

# idle NAME PID PORT: prints the idle figures of one target.
idle() {
    local name=$1 pid=$2 port=$3
    start_devices "idle-$name" "$port" 0.0001 3600
    sleep "$idle_wait"  # a measurement pause: the devices connected and published their one message
    local rss anon file
    rss=$(status_kib "$pid" VmRSS); anon=$(status_kib "$pid" RssAnon); file=$(status_kib "$pid" RssFile)
    echo "  $name: RSS $rss KiB (anonymous $anon, file $file), $(threads "$pid") threads; measuring idle CPU for ${seconds}s"
    window "$pid"
    stop_devices
    printf -v "idle_${name}" '%s %s %s %s %s' "$rss" "$anon" "$file" "$(threads "$pid")" "$cpu_pct"
}

echo "phase idle: $devices devices connected, one message each, then idle"
idle agent "$agent_pid" "$agent_port"
idle mosquitto "$mosquitto_pid" "$mosquitto_port"
read -r a_rss a_anon a_file a_threads a_cpu <<<"$idle_agent"
read -r m_rss m_anon m_file m_threads m_cpu <<<"$idle_mosquitto"
echo "RESULT agent-footprint phase=idle devices=$devices agent_rss_kib=$a_rss agent_anon_kib=$a_anon agent_file_kib=$a_file agent_threads=$a_threads agent_cpu_pct=$a_cpu mosquitto_rss_kib=$m_rss mosquitto_cpu_pct=$m_cpu rss_ratio=$(ratio "$a_rss" "$m_rss")"

# loaded NAME PID PORT RATE: prints the loaded figures of one target; sets loaded_line.
loaded() {
    local name=$1 pid=$2 port=$3 rate=$4 summary
    start_devices "$rate-$name" "$port" "$(python3 -c "print($rate / $devices)")" $((warmup + seconds + 1))
    sleep "$warmup"  # a measurement pause: let the rate settle before the window
    window "$pid"
    wait "$sim_pid" 2>/dev/null || true
    summary=$(grep '^device-sim summary' "$sim_log" || true)
    echo "  $name: RSS max $rss_max KiB, last $rss_last KiB (anonymous $(status_kib "$pid" RssAnon)), CPU $cpu_pct % of a core; devices: sent=$(field sent "$summary") acked=$(field acked "$summary") rate=$(field rate_msgs_per_s "$summary")/s ack_p99_ms=$(field ack_p99_ms "$summary")"
    loaded_line="${name}_rss_max_kib=$rss_max ${name}_rss_last_kib=$rss_last ${name}_cpu_pct=$cpu_pct ${name}_device_rate=$(field rate_msgs_per_s "$summary")"
    printf -v "loaded_${name}" '%s %s' "$rss_max" "$cpu_pct"
}

for rate in $rates; do
    echo "phase $rate msg/s: $devices devices x $(python3 -c "print($rate / $devices)") msg/s"
    loaded agent "$agent_pid" "$agent_port" "$rate"
    agent_line=$loaded_line
    # Forwarding keeps up: every received message was acknowledged upstream (QoS 2 PUBCOMP) by now, or nearly.
    forwarded="received=$(metric tributary_agent_received_messages_total) acknowledged_upstream=$(metric tributary_agent_acknowledged_messages_total)"
    echo "  agent forwarding: $forwarded"
    loaded mosquitto "$mosquitto_pid" "$mosquitto_port" "$rate"
    read -r a_rss a_cpu <<<"$loaded_agent"
    read -r m_rss m_cpu <<<"$loaded_mosquitto"
    echo "RESULT agent-footprint phase=$rate-msg-per-s devices=$devices qos=$qos size=$size $agent_line $loaded_line rss_ratio=$(ratio "$a_rss" "$m_rss") cpu_ratio=$(ratio "$a_cpu" "$m_cpu")"
done
echo "agent peak RSS (VmHWM): $(status_kib "$agent_pid" VmHWM) KiB; mosquitto: $(status_kib "$mosquitto_pid" VmHWM) KiB"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at the end"
