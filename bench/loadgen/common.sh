# Shared by the simulator's benchmark scripts (bench/loadgen-check.sh, bench/ingest-*.sh, bench/idle-memory.sh).
# Sourced, not run. Starts brokers on free loopback ports, runs loads, reads fields of summary lines.

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d /tmp/tributary-bench.XXXXXX)"
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Bounded: a process that ignores SIGTERM for 10 s is reported and killed, never left running.
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "bench: pid $pid ($(ps -o comm= -p "$pid" 2>/dev/null)) ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# The simulator: $DEVICE_SIM, else the release build, else the debug build (with a warning: 5-10x slower).
device_sim() {
    if [ -n "${DEVICE_SIM:-}" ]; then echo "$DEVICE_SIM"; return; fi
    if [ -x "$root/.build/release/device-sim" ]; then echo "$root/.build/release/device-sim"; return; fi
    echo "bench: no release build (swift build -c release --product device-sim); using the debug build" >&2
    echo "$root/.build/debug/device-sim"
}

free_port() {  # a free port below the kernel's ephemeral range (see scripts/free-ports.py)
    python3 "$(dirname "${BASH_SOURCE[0]}")/../../scripts/free-ports.py"
}

wait_port() {  # wait_port PORT PID: until PORT accepts, or PID dies, or 10 s pass
    local port=$1 pid=$2
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# start_mosquitto NAME: starts mosquitto (no persistence, no queue limits) and sets ${NAME}_port and ${NAME}_pid.
# MOSQUITTO_MAX_INFLIGHT (default 0: unlimited): its max_inflight_messages, the QoS 1/2 messages in flight
# towards one subscriber (cloud-broker's mqtt.max_inflight_outbound, default 64).
start_mosquitto() {
    local name=$1 port
    port=$(free_port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages %s\nmax_queued_messages 0\nmax_connections -1\nlog_type error\n' "$port" "${MOSQUITTO_MAX_INFLIGHT:-0}" >"$work/$name.conf"
    mosquitto -c "$work/$name.conf" >"$work/$name.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    wait_port "$port" "$pid" || { echo "bench: mosquitto did not start" >&2; cat "$work/$name.log" >&2; exit 1; }
    printf -v "${name}_port" '%s' "$port"
    printf -v "${name}_pid" '%s' "$pid"
}

# field NAME LINE: the value of NAME=... in a summary line.
field() {
    sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"
}

ratio() {  # ratio A B: A/B with 2 decimals, "n/a" if B is 0 or empty
    python3 -c "import sys; a,b=sys.argv[1],sys.argv[2]; print('n/a' if not b or not a or float(b)==0 else f'{float(a)/float(b):.2f}')" "${1:-}" "${2:-}"
}

cpu_ticks() {  # cpu_ticks PID: user + system CPU time of PID so far, in clock ticks (getconf CLK_TCK)
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# cpu_us_per_message TICKS_BEFORE TICKS_AFTER MESSAGES: CPU microseconds per message.
cpu_us_per_message() {
    python3 -c "import os,sys; b,a,n=map(float,sys.argv[1:]); print(f'{(a-b)/os.sysconf(\"SC_CLK_TCK\")*1e6/n:.1f}' if n else 'n/a')" "$1" "$2" "$3"
}

rss_kib() {  # rss_kib PID: resident set size in KiB
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0
}

machine_line() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); date: $(date -u '+%Y-%m-%dT%H:%MZ'); mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')"
}

# start_cloud_broker: starts Tansu and cloud-broker; sets peer_url (empty if it does not accept MQTT), peer_pid,
# tansu_pid, broker_kafka_port and broker_http_port.
start_cloud_broker() {
    peer_url=""
    peer_pid=""
    local bin="${CLOUD_BROKER:-$root/.build/release/cloud-broker}"
    [ -x "$bin" ] || bin="$root/.build/debug/cloud-broker"
    if [ ! -x "$bin" ] || [ ! -f "$root/.tools/env" ]; then peer_note="cloud-broker not built"; return 0; fi
    source "$root/.tools/env"
    local kafka_port mqtt_port
    kafka_port=$(free_port)
    "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$kafka_port" --advertised-listener-url "tcp://127.0.0.1:$kafka_port" >"$work/tansu.log" 2>&1 &
    tansu_pid=$!
    pids+=("$tansu_pid")
    wait_port "$kafka_port" "$tansu_pid" || true
    broker_kafka_port=$kafka_port
    mqtt_port=$(free_port)
    broker_http_port=$(free_port)
    LD_LIBRARY_PATH="$root/.tools/lib" "$bin" --node-id bench --mqtt-listen "127.0.0.1:$mqtt_port" \
        --kafka-bootstrap "127.0.0.1:$kafka_port" --http-listen "127.0.0.1:$broker_http_port" >"$work/broker.log" 2>&1 &
    peer_pid=$!
    pids+=("$peer_pid")
    if wait_port "$mqtt_port" "$peer_pid"; then peer_url="mqtt://127.0.0.1:$mqtt_port"; fi
    peer_note="$(tail -1 "$work/broker.log" 2>/dev/null)"
}

# thread_ticks PID: one line per thread, "NAME|UTIME|STIME" (clock ticks).
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        awk '{ s = $0; n = s; sub(/^[^(]*\(/, "", n); sub(/\)[^)]*$/, "", n); sub(/^.*\) /, "", s); split(s, f, " "); print n "|" f[12] "|" f[13] }' "$t/stat" 2>/dev/null || true
    done
}
# thread_us_per_message BEFORE AFTER MESSAGES: CPU per message of each thread group between two thread_ticks.
thread_us_per_message() {
    python3 - "$1" "$2" "$3" <<'PY'
import collections, os, re, sys
hz, n = os.sysconf("SC_CLK_TCK"), float(sys.argv[3])
def read(path):
    groups = collections.defaultdict(lambda: [0, 0])
    for line in open(path):
        name, user, system = line.rstrip("\n").rsplit("|", 2)
        group = groups[re.sub(r"[0-9]+$", "N", name.strip())]
        group[0] += int(user); group[1] += int(system)
    return groups
before, after = read(sys.argv[1]), read(sys.argv[2])
rows = []
for name, (user, system) in after.items():
    u, s = user - before.get(name, [0, 0])[0], system - before.get(name, [0, 0])[1]
    if u + s > 0:
        rows.append((u + s, f"{name.replace(' ', '_')}={u / hz * 1e6 / n:.1f}u+{s / hz * 1e6 / n:.1f}s"))
print(" ".join(text for _, text in sorted(rows, reverse=True)))
PY
}

# broker_metric SERIES: the value of one series (name and labels as exported) of the cloud-broker started by
# start_cloud_broker.
broker_metric() { curl -s "127.0.0.1:$broker_http_port/metrics" | awk -v name="$1" '$1 == name {print $2 + 0}'; }

# choose_delivery NAME: before start_cloud_broker. DELIVERY=running (default, as the broker is configured by
# default): the delivery consumer reads every record back; DELIVERY=paused: nothing subscribes in these
# benchmarks, so with the opt-in kafka.delivery_idle_pause (2s here) the broker pauses it, and report_delivery
# waits for that.
choose_delivery() {
    delivery=${DELIVERY:-running}
    case "$delivery" in
        paused) export TRIBUTARY_KAFKA_DELIVERY_IDLE_PAUSE=${TRIBUTARY_KAFKA_DELIVERY_IDLE_PAUSE:-2s} ;;
        running) export TRIBUTARY_KAFKA_DELIVERY_IDLE_PAUSE=0s ;;
        *) echo "$1: DELIVERY must be paused or running, got '$delivery'" >&2; exit 2 ;;
    esac
}

# report_delivery NAME: after start_cloud_broker; waits for the pause (DELIVERY=paused) and prints the state.
report_delivery() {
    [ -n "$peer_url" ] || return 0
    if [ "$delivery" = paused ]; then
        echo "$1: cloud-broker's delivery consumer: $(wait_delivery_paused 30) (no subscribers; kafka.delivery_idle_pause $TRIBUTARY_KAFKA_DELIVERY_IDLE_PAUSE)"
    else
        echo "$1: cloud-broker's delivery consumer: running (kafka.delivery_idle_pause 0s)"
    fi
}

# wait_delivery_paused [SECONDS]: waits (default 30 s) until the cloud-broker started by start_cloud_broker has
# paused its delivery consumer (no subscriber on it: kafka.delivery_idle_pause); prints the state it ends in.
wait_delivery_paused() {
    local limit=${1:-30} waited=0 state
    while :; do
        state=$(curl -s "127.0.0.1:$broker_http_port/metrics" | awk '$1 == "tributary_broker_delivery_consumer_paused" {print $2 + 0}' || true)
        if [ "$state" = "1" ]; then echo "paused after ${waited}s"; return 0; fi
        if [ "$waited" -ge "$limit" ]; then echo "running"; return 0; fi
        sleep 1  # polls the broker's metrics until it has paused
        waited=$((waited + 1))
    done
}

# start_edge_agent: starts edge-agent with a second mosquitto as its upstream; sets peer_url and peer_pid.
start_edge_agent() {
    peer_url=""
    peer_pid=""
    local bin="${EDGE_AGENT:-$root/.build/release/edge-agent}"
    [ -x "$bin" ] || bin="$root/.build/debug/edge-agent"
    if [ ! -x "$bin" ]; then peer_note="edge-agent not built"; return 0; fi
    start_mosquitto upstream
    local device_port
    device_port=$(free_port)
    "$bin" --agent-id bench --device-listen "127.0.0.1:$device_port" --upstream "mqtt://127.0.0.1:$upstream_port" \
        --data-dir "$work/agent" --http-listen "127.0.0.1:$(free_port)" >"$work/agent.log" 2>&1 &
    peer_pid=$!
    pids+=("$peer_pid")
    if wait_port "$device_port" "$peer_pid"; then peer_url="mqtt://127.0.0.1:$device_port"; fi
    peer_note="$(tail -1 "$work/agent.log" 2>/dev/null)"
}

# compare_ingest NAME CLIENTS COUNT SIZE: the same unthrottled load against mosquitto ($mosquitto_port) and the
# peer ($peer_url, may be empty) at QoS 0, 1 and 2; one RESULT line per QoS with both rates and the ratio.
# INFLIGHT (environment, default 20): unacknowledged messages per device. PAYLOAD_FILL (default json): device-sim's
# --payload-fill; JSON-like readings, because cloud-broker compresses what it writes to Kafka.
compare_ingest() {
    local name=$1 clients=$2 count=$3 size=$4 sim qos
    sim=$(device_sim)
    local inflight=${INFLIGHT:-20}
    echo "$name: $clients clients x $count messages of $size bytes (payload fill ${PAYLOAD_FILL:-json}), in-flight $inflight, MQTT 3.1.1"
    [ -n "$peer_url" ] || echo "$name: the peer does not accept MQTT yet (${peer_note:-no output}); mosquitto baseline only"
    machine_line
    for qos in 0 1 2; do
        local args=(--clients "$clients" --count "$count" --rate 0 --size "$size" --qos "$qos" --inflight "$inflight" --progress-interval 60
            --payload-fill "${PAYLOAD_FILL:-json}")
        local m_line m_rate p_line="" p_rate=""
        m_line=$("$sim" --broker "mqtt://127.0.0.1:$mosquitto_port" --client-id-prefix "m$qos" "${args[@]}" | grep '^device-sim summary')
        m_rate=$(field rate_msgs_per_s "$m_line")
        if [ -n "$peer_url" ]; then
            p_line=$("$sim" --broker "$peer_url" --client-id-prefix "p$qos" "${args[@]}" | grep '^device-sim summary' || true)
            p_rate=$(field rate_msgs_per_s "$p_line")
        fi
        echo "RESULT $name qos=$qos mosquitto_msgs_per_s=$m_rate mosquitto_ack_p50_ms=$(field ack_p50_ms "$m_line") mosquitto_ack_p99_ms=$(field ack_p99_ms "$m_line") peer_msgs_per_s=${p_rate:-n/a} peer_ack_p50_ms=$(field ack_p50_ms "$p_line") peer_ack_p99_ms=$(field ack_p99_ms "$p_line") ratio=$(ratio "$p_rate" "$m_rate")"
    done
}

cpu_ticks() {  # cpu_ticks PID: user + system CPU time in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# busy PID TICKS_BEFORE SECONDS: the percentage of one core PID used since TICKS_BEFORE over SECONDS.
busy() {
    python3 -c "import os,sys; t=os.sysconf('SC_CLK_TCK'); print(f'{(int(sys.argv[1])-int(sys.argv[2]))/t/float(sys.argv[3])*100:.0f}')" "$(cpu_ticks "$1")" "$2" "$3"
}
