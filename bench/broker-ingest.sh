#!/usr/bin/env bash
# Broker ingest with a chosen in-flight window: the same device-sim load against mosquitto and cloud-broker
# (Tansu behind it) in the same run, QoS 1 and 2. cloud-broker acknowledges only after Kafka did (G3), so its
# rate is bounded by in-flight / (linger + Kafka round trip): this script shows how the ratio moves with the
# window. bench/ingest-broker.sh is the fixed-window (20) comparison shared with the other peers. Also prints
# the CPU each process spent per acknowledged message (mosquitto; cloud-broker and Tansu separately): the
# part of the ratio the broker's own code decides.
#
#   bench/broker-ingest.sh [CLIENTS=4] [COUNT=10000] [SIZE=1024] [INFLIGHT=100]
# Nothing subscribes on either broker. DELIVERY=running (default, the broker's default configuration):
# cloud-broker's delivery consumer reads every record back from Kafka; DELIVERY=paused: the opt-in
# kafka.delivery_idle_pause lets it pause that consumer, and the script waits for the pause before measuring.
# Environment: DEVICE_SIM, CLOUD_BROKER (release builds), DELIVERY (paused | running), TRIBUTARY_KAFKA_LINGER
# etc. reach the broker; PAYLOAD_FILL (dots | json | random, device-sim's --payload-fill; default json:
# JSON-like readings, as compressible as real telemetry) matters because the broker compresses what it
# writes to Kafka (kafka.compression, lz4) and device-sim's own default (dots) compresses to almost nothing. The CPU line gives microseconds of CPU per acknowledged message for each process,
# the load generator included (it shares the two cores), so a run shows whether it was bound by CPU.
# THREADS=1 also prints, per process, the CPU of each thread group (threads named alike summed: NIO event
# loops, librdkafka's rdk:* threads, the Kafka consumer and producer poll threads, Tansu's tokio workers) in
# microseconds per message, user+system ("u"/"s"): where the cloud-broker side's CPU goes.
set -euo pipefail
source "$(dirname "$0")/loadgen/common.sh"
clients=${1:-4}
count=${2:-10000}
size=${3:-1024}
inflight=${4:-100}
choose_delivery broker-ingest
start_mosquitto mosquitto
start_cloud_broker
[ -n "$peer_url" ] || { echo "broker-ingest: cloud-broker did not start: $peer_note" >&2; exit 1; }
sim=$(device_sim)
# timed_sim ARGS...: runs device-sim and prints its summary line; its own CPU time (user + system, seconds)
# is left in $work/sim.cpu, so the load generator's share of the two cores is reported too.
timed_sim() {
    local TIMEFORMAT='%3U %3S'
    { time "$sim" "$@" >"$work/sim.out" 2>"$work/sim.err"; } 2>"$work/sim.time" || true
    awk '{print $1 + $2}' "$work/sim.time" >"$work/sim.cpu"
    grep '^device-sim summary' "$work/sim.out" || true
}
sim_us_per_message() {  # sim_us_per_message MESSAGES: the last timed_sim's CPU microseconds per message
    python3 -c "import sys; s,n=float(sys.argv[1]),float(sys.argv[2]); print(f'{s*1e6/n:.1f}' if n else 'n/a')" "$(cat "$work/sim.cpu")" "$1"
}
payload_fill=${PAYLOAD_FILL:-json}
echo "broker-ingest: $clients clients x $count messages of $size bytes (payload fill $payload_fill), in-flight $inflight, MQTT 3.1.1"
report_delivery broker-ingest
machine_line
for qos in 1 2; do
    args=(--clients "$clients" --count "$count" --rate 0 --size "$size" --qos "$qos" --inflight "$inflight" --progress-interval 60)
    args+=(--payload-fill "$payload_fill")
    m0=$(cpu_ticks "$mosquitto_pid")
    total=$((clients * count))
    m_line=$(timed_sim --broker "mqtt://127.0.0.1:$mosquitto_port" --client-id-prefix "m$qos" "${args[@]}")
    m1=$(cpu_ticks "$mosquitto_pid")
    m_sim=$(sim_us_per_message "$total")
    if [ "${THREADS:-0}" = 1 ]; then thread_ticks "$peer_pid" >"$work/broker.t0"; thread_ticks "$tansu_pid" >"$work/tansu.t0"; fi
    b0=$(cpu_ticks "$peer_pid"); t0=$(cpu_ticks "$tansu_pid")
    p_line=$(timed_sim --broker "$peer_url" --client-id-prefix "p$qos" "${args[@]}")
    b1=$(cpu_ticks "$peer_pid"); t1=$(cpu_ticks "$tansu_pid")
    if [ "${THREADS:-0}" = 1 ]; then thread_ticks "$peer_pid" >"$work/broker.t1"; thread_ticks "$tansu_pid" >"$work/tansu.t1"; fi
    p_sim=$(sim_us_per_message "$total")
    m_rate=$(field rate_msgs_per_s "$m_line")
    p_rate=$(field rate_msgs_per_s "$p_line")
    echo "RESULT broker-ingest qos=$qos inflight=$inflight mosquitto_msgs_per_s=$m_rate mosquitto_ack_p50_ms=$(field ack_p50_ms "$m_line") mosquitto_ack_p99_ms=$(field ack_p99_ms "$m_line") broker_msgs_per_s=${p_rate:-n/a} broker_ack_p50_ms=$(field ack_p50_ms "$p_line") broker_ack_p99_ms=$(field ack_p99_ms "$p_line") ratio=$(ratio "$p_rate" "$m_rate")"
    echo "RESULT broker-ingest-cpu qos=$qos mosquitto_cpu_us_per_msg=$(cpu_us_per_message "$m0" "$m1" "$total") broker_cpu_us_per_msg=$(cpu_us_per_message "$b0" "$b1" "$total") tansu_cpu_us_per_msg=$(cpu_us_per_message "$t0" "$t1" "$total") loadgen_cpu_us_per_msg_mosquitto_run=$m_sim loadgen_cpu_us_per_msg_broker_run=$p_sim"
    if [ "${THREADS:-0}" = 1 ]; then
        echo "RESULT broker-ingest-threads qos=$qos process=cloud-broker $(thread_us_per_message "$work/broker.t0" "$work/broker.t1" "$total")"
        echo "RESULT broker-ingest-threads qos=$qos process=tansu $(thread_us_per_message "$work/tansu.t0" "$work/tansu.t1" "$total")"
    fi
done
