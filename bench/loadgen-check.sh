#!/usr/bin/env bash
# Load generator check: is device-sim the bottleneck? Runs the same load against one mosquitto with
# device-sim and with bench/loadgen/mqtt-loadgen (C, libmosquitto), alternately, QoS 0, 1 and 2, and prints
# both rates and their ratio. device-sim passes when it reaches at least 80% of the C generator's rate.
#
#   bench/loadgen-check.sh [CLIENTS] [COUNT_PER_CLIENT] [SIZE] [INFLIGHT]     (defaults 4 50000 256 20)
#
# Environment: DEVICE_SIM (default .build/release/device-sim), ROUNDS (default 2; the best round counts).
set -euo pipefail
source "$(dirname "$0")/loadgen/common.sh"

clients=${1:-4}
count=${2:-50000}
size=${3:-256}
inflight=${4:-20}
rounds=${ROUNDS:-2}
sim=$(device_sim)
loadgen=$("$root/bench/loadgen/build.sh")

start_mosquitto broker
echo "loadgen-check: $clients clients x $count messages of $size bytes, in-flight $inflight, MQTT 3.1.1, mosquitto on :$broker_port"
machine_line
status=0
for qos in 0 1 2; do
    best_c=0
    best_sim=0
    for round in $(seq 1 "$rounds"); do
        ticks=$(cpu_ticks "$broker_pid")
        c_line=$("$loadgen" 127.0.0.1 "$broker_port" "$clients" "$count" "$qos" "$size" "$inflight" 4 "loadgen$round")
        c_rate=$(field rate_msgs_per_s "$c_line")
        c_busy=$(busy "$broker_pid" "$ticks" "$(field elapsed_s "$c_line")")
        ticks=$(cpu_ticks "$broker_pid")
        sim_line=$("$sim" --broker "mqtt://127.0.0.1:$broker_port" --clients "$clients" --count "$count" --rate 0 \
            --size "$size" --qos "$qos" --inflight "$inflight" --topic "sim/{client}/data" --client-id-prefix "sim$round" \
            --progress-interval 60 | grep '^device-sim summary')
        sim_rate=$(field rate_msgs_per_s "$sim_line")
        sim_busy=$(busy "$broker_pid" "$ticks" "$(field elapsed_s "$sim_line")")
        echo "  qos $qos round $round: mqtt-loadgen $c_rate msg/s (mosquitto CPU ${c_busy}%), device-sim $sim_rate msg/s (mosquitto CPU ${sim_busy}%, acked $(field acked "$sim_line"), ack p50 $(field ack_p50_ms "$sim_line") ms)"
        best_c=$(python3 -c "print(max($best_c, $c_rate))")
        best_sim=$(python3 -c "print(max($best_sim, $sim_rate))")
    done
    r=$(ratio "$best_sim" "$best_c")
    verdict=$(python3 -c "print('PASS' if $r >= 0.8 else 'FAIL')")
    [ "$verdict" = PASS ] || status=1
    echo "RESULT loadgen-check qos=$qos mqtt_loadgen_msgs_per_s=$best_c device_sim_msgs_per_s=$best_sim ratio=$r $verdict"
done
exit $status
