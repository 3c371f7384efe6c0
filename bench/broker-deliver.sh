#!/usr/bin/env bash
# Delivery to a subscriber: CLIENTS device-sim publishers at full speed and one device-sim subscriber on
# `sensors/#`, against mosquitto and against cloud-broker (Tansu behind it) in the same run. device-sim counts
# every (publisher, sequence) the subscriber received: lost, duplicated, out of order, and the end-to-end
# latency (publish to receipt). cloud-broker's subscriber is served from Kafka (the record is produced,
# read back by the node's delivery consumer, then sent), so its latency includes a Kafka round trip; when
# the subscriber is slower than the publishers, the overflow of its queue is read back from Kafka
# (docs/broker.md, "Kafka is its queue"), where mosquitto (max_queued_messages 0 here: unbounded) keeps it
# in memory.
#
#   bench/broker-deliver.sh [CLIENTS=4] [COUNT=10000] [SIZE=1024] [QOS=1]
# Environment: DEVICE_SIM, CLOUD_BROKER (release builds); TRIBUTARY_* settings reach the broker
# (e.g. TRIBUTARY_MQTT_SESSION_QUEUE_LIMIT); SUBSCRIBERS (default 1): that many subscribers on `sensors/#`,
# each getting every message (many read-backs at once); DRAIN_TIMEOUT (default 60): seconds device-sim waits for
# the subscribers after publishing. Each side's peak RSS (VmHWM) is printed too.
set -euo pipefail
source "$(dirname "$0")/loadgen/common.sh"
clients=${1:-4}
count=${2:-10000}
size=${3:-1024}
qos=${4:-1}
subscribers=${SUBSCRIBERS:-1}
subscribe_args=()
for _ in $(seq "$subscribers"); do subscribe_args+=(--subscribe 'sensors/#'); done
start_mosquitto mosquitto
start_cloud_broker
[ -n "$peer_url" ] || { echo "broker-deliver: cloud-broker did not start: $peer_note" >&2; exit 1; }
sim=$(device_sim)
echo "broker-deliver: $clients publishers x $count messages of $size bytes (payload fill ${PAYLOAD_FILL:-json}: cloud-broker compresses what it writes to Kafka), QoS $qos, $subscribers subscriber(s) on sensors/#"
machine_line
for side in mosquitto cloud-broker; do
    if [ "$side" = mosquitto ]; then url="mqtt://127.0.0.1:$mosquitto_port"; pid=$mosquitto_pid; else url=$peer_url; pid=$peer_pid; fi
    c0=$(cpu_ticks "$pid")
    line=$("$sim" --broker "$url" --client-id-prefix "d-$side" --clients "$clients" --count "$count" --rate 0 --size "$size" \
        --qos "$qos" --inflight 20 --payload-fill "${PAYLOAD_FILL:-json}" "${subscribe_args[@]}" --drain-timeout "${DRAIN_TIMEOUT:-60}" --progress-interval 60 | grep '^device-sim summary' || true)
    c1=$(cpu_ticks "$pid")
    total=$((clients * count))
    peak_mib=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status" 2>/dev/null || echo n/a)
    extra=""
    [ "$side" = cloud-broker ] && extra=" read_backs=$(broker_metric tributary_broker_subscriber_read_backs_total) stale_batches=$(broker_metric tributary_broker_subscriber_read_back_stale_batches_total) dropped_qos$qos=$(broker_metric "tributary_broker_messages_dropped_total{qos=\"$qos\",reason=\"queue_full\"}")"
    echo "RESULT broker-deliver side=$side publish_rate=$(field rate_msgs_per_s "$line") disconnects=$(field disconnects "$line") reconnects=$(field reconnects "$line") received=$(field received "$line") expected=$((total * subscribers)) lost=$(field lost "$line") duplicates=$(field duplicates "$line") out_of_order=$(field out_of_order "$line") e2e_p50_ms=$(field e2e_p50_ms "$line") e2e_p99_ms=$(field e2e_p99_ms "$line") e2e_max_ms=$(field e2e_max_ms "$line") elapsed_s=$(field elapsed_s "$line") cpu_us_per_msg=$(cpu_us_per_message "$c0" "$c1" "$total") peak_rss_mib=$peak_mib$extra"
done
