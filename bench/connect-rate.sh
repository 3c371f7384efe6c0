#!/usr/bin/env bash
# Connect rate: N devices connect at once (no ramp-up), each publishes one QoS 1 message and disconnects.
# Connect rate = N / (time from the first CONNECT until the last CONNACK), per target, in the same run:
# mosquitto, then cloud-broker (with Tansu; a CONNACK of a clean session waits for nothing in Kafka, a
# persistent one for the node's sessions consumer to be caught up). Prints connect latency p50/p99 too.
#
#   bench/connect-rate.sh [CLIENTS=10000] [ROUNDS=3] [CLEAN=true]
# Environment: DEVICE_SIM, CLOUD_BROKER (release builds).
set -euo pipefail
source "$(dirname "$0")/loadgen/common.sh"
clients=${1:-10000}
rounds=${2:-3}
clean=${3:-true}
sim=$(device_sim)
start_mosquitto mosquitto
start_cloud_broker
[ -n "$peer_url" ] || { echo "connect-rate: cloud-broker did not start: $peer_note" >&2; exit 1; }
echo "connect-rate: $clients devices connecting at once, clean session $clean, $rounds rounds per target"
machine_line

# connect NAME URL ROUND: one round; prints the rate and sets last_rate.
connect() {
    local name=$1 url=$2 round=$3 line max
    line=$("$sim" --broker "$url" --clients "$clients" --count 1 --qos 1 --rate 0 --clean-session "$clean" \
        --client-id-prefix "cr-$name-$round" --progress-interval 60 | grep '^device-sim summary')
    [ "$(field connected "$line")" = "$clients" ] || { echo "connect-rate: $name: not all connected: $line" >&2; exit 1; }
    max=$(field connect_max_ms "$line")
    last_rate=$(python3 -c "import sys; print(f'{int(sys.argv[1]) / (float(sys.argv[2]) / 1000):.0f}')" "$clients" "$max")
    echo "  $name round $round: connect p50 $(field connect_p50_ms "$line") ms, p99 $(field connect_p99_ms "$line") ms, last CONNACK after $max ms: $last_rate connects/s"
}

for round in $(seq "$rounds"); do
    connect mosquitto "mqtt://127.0.0.1:$mosquitto_port" "$round"; m_rate=$last_rate
    connect cloud-broker "$peer_url" "$round"; b_rate=$last_rate
    echo "RESULT connect-rate round=$round clients=$clients clean=$clean mosquitto_connects_per_s=$m_rate broker_connects_per_s=$b_rate ratio=$(ratio "$b_rate" "$m_rate")"
done
