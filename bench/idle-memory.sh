#!/usr/bin/env bash
# Idle memory per connection: N devices connect (ramp-up R seconds), publish one QoS 1 message each and stay
# connected. Once all N are connected, the resident memory of the broker (and of device-sim itself) is
# sampled; per connection = (RSS with N connected - RSS before) / N. Runs mosquitto, and cloud-broker and
# edge-agent when they accept MQTT, in the same run; prints the ratios to mosquitto.
#
#   bench/idle-memory.sh [CLIENTS] [RAMP_UP_S]     (defaults 19000 20)
set -euo pipefail
source "$(dirname "$0")/loadgen/common.sh"

clients=${1:-19000}
ramp=${2:-20}
sim=$(device_sim)

# measure NAME PID URL: prints "RESULT idle-memory target=NAME ..." and sets last_per_conn.
measure() {
    local name=$1 pid=$2 url=$3
    local before after sim_rss
    before=$(rss_kib "$pid")
    "$sim" --broker "$url" --clients "$clients" --ramp-up "$ramp" --rate 0.0001 --duration 600 --qos 1 \
        --keep-alive 300 --client-id-prefix "idle-$name" --progress-interval 1 >"$work/sim-$name.log" 2>&1 &
    local sim_pid=$!
    pids+=("$sim_pid")
    local deadline=$((SECONDS + ramp + 60))
    until grep -q "connected=$clients " "$work/sim-$name.log"; do
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$sim_pid" 2>/dev/null; then
            echo "idle-memory: $name: not all $clients connected: $(grep progress "$work/sim-$name.log" | tail -1)" >&2
            kill "$sim_pid" 2>/dev/null || true
            return 1
        fi
        sleep 0.5
    done
    sleep 2  # let the last connections settle; this is a measurement pause, not synchronisation
    after=$(rss_kib "$pid")
    sim_rss=$(rss_kib "$sim_pid")
    kill "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
    last_per_conn=$(python3 -c "print(f'{($after - $before) * 1024 / $clients:.0f}')")
    local connect_line
    connect_line=$(grep progress "$work/sim-$name.log" | tail -1)
    echo "RESULT idle-memory target=$name clients=$clients rss_before_kib=$before rss_connected_kib=$after bytes_per_connection=$last_per_conn device_sim_rss_kib=$sim_rss device_sim_bytes_per_client=$((sim_rss * 1024 / clients))"
    echo "  $connect_line"
}

echo "idle-memory: $clients connections, ramp-up ${ramp}s"
machine_line
start_mosquitto mosquitto
measure mosquitto "$mosquitto_pid" "mqtt://127.0.0.1:$mosquitto_port"
mosquitto_per=$last_per_conn

# measure_peer NAME: after start_cloud_broker / start_edge_agent.
measure_peer() {
    if [ -n "$peer_url" ] && measure "$1" "$peer_pid" "$peer_url"; then
        echo "RESULT idle-memory ratio $1/mosquitto=$(ratio "$last_per_conn" "$mosquitto_per")"
    else
        echo "idle-memory: $1 not measured (not accepting MQTT, or not all connections taken: ${peer_note:-no output})"
    fi
}

start_cloud_broker
measure_peer cloud-broker
start_edge_agent
measure_peer edge-agent
