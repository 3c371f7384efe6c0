#!/usr/bin/env bash
# An offline subscriber's backlog: a persistent session (mosquitto_sub -c, MQTT 3.1.1 clean session 0)
# subscribes to `sensors/#` and disconnects; CLIENTS device-sim publishers then publish COUNT messages each
# (QoS QOS, all acknowledged); then the subscriber reconnects and takes the whole backlog. Against mosquitto
# (in memory, max_queued_messages 0 = unbounded here) and cloud-broker (Tansu behind it: the session queues
# up to mqtt.session_queue_limit in memory, the rest is read back from Kafka at reconnect, docs/broker.md
# "An offline session's backlog, too") in the same run.
#
# Printed per side: the broker's RSS holding the backlog, the time from the reconnect to the last message,
# and every (publisher, sequence) accounted for from the payloads (lost, duplicated, out of order).
#
#   bench/offline-backlog.sh [CLIENTS=4] [COUNT=25000] [SIZE=256] [QOS=1]
# Environment: DEVICE_SIM, CLOUD_BROKER (release builds); TRIBUTARY_* settings reach the broker; PAYLOAD_FILL
# (default json): device-sim's --payload-fill, JSON-like readings, since cloud-broker compresses what it writes;
# THREADS=1 also prints cloud-broker's CPU per message drained by thread group.
set -euo pipefail
source "$(dirname "$0")/loadgen/common.sh"
clients=${1:-4}
count=${2:-25000}
size=${3:-256}
qos=${4:-1}
total=$((clients * count))
for tool in mosquitto_sub; do command -v "$tool" >/dev/null || { echo "offline-backlog: needs $tool (Debian mosquitto-clients)" >&2; exit 1; }; done
start_mosquitto mosquitto
start_cloud_broker
[ -n "$peer_url" ] || { echo "offline-backlog: cloud-broker did not start: $peer_note" >&2; exit 1; }
sim=$(device_sim)
echo "offline-backlog: $clients publishers x $count messages of $size bytes (payload fill ${PAYLOAD_FILL:-json}), QoS $qos, while one persistent subscriber on sensors/# is offline"
machine_line

# check FILE: lost / duplicated / out of order from mosquitto_sub's "%t %x" lines (device-sim payloads).
check() {
    python3 - "$1" "$total" <<'EOF'
import sys
path, expected = sys.argv[1], int(sys.argv[2])
seen, last, duplicates, out_of_order, lines = set(), {}, 0, 0, 0
with open(path) as lines_in:
    for line in lines_in:
        topic, _, payload = line.rstrip("\n").partition(" ")
        if len(payload) < 46 or payload[:8] != "5453494d":
            continue
        lines += 1
        sequence = int(payload[26:42], 16)
        length = int(payload[42:46], 16)
        client = payload[46:46 + 2 * length]
        if (client, sequence) in seen:
            duplicates += 1
            continue
        seen.add((client, sequence))
        if sequence < last.get(client, -1):
            out_of_order += 1
        last[client] = max(last.get(client, -1), sequence)
print(f"received={lines} distinct={len(seen)} lost={expected - len(seen)} duplicates={duplicates} out_of_order={out_of_order}")
EOF
}

for side in mosquitto cloud-broker; do
    if [ "$side" = mosquitto ]; then port=$mosquitto_port; pid=$mosquitto_pid; else port=${peer_url##*:}; pid=$peer_pid; fi
    sub_id="backlog-$side"
    mosquitto_sub -h 127.0.0.1 -p "$port" -V mqttv311 -c -i "$sub_id" -q "$qos" -t 'sensors/#' -E
    rss_before=$(rss_kib "$pid")
    echo "offline-backlog: $side: subscriber offline; publishing $total messages"
    line=$("$sim" --broker "mqtt://127.0.0.1:$port" --client-id-prefix "b-$side" --clients "$clients" --count "$count" --rate 0 \
        --size "$size" --qos "$qos" --inflight 20 --payload-fill "${PAYLOAD_FILL:-json}" --progress-interval 30 | grep '^device-sim summary' || true)
    acked=$(field acked "$line")
    [ "$acked" = "$total" ] || { echo "offline-backlog: $side acknowledged $acked of $total: $line" >&2; exit 1; }
    if [ "$side" = cloud-broker ]; then
        # Routed to the offline session once the node has read them from Kafka (polls its counter, 60 s at most).
        for _ in $(seq 600); do
            [ "$(broker_metric tributary_broker_kafka_records_consumed_total)" -ge "$total" ] 2>/dev/null && break
            sleep 0.1
        done
    fi
    rss_backlog=$(rss_kib "$pid")
    echo "offline-backlog: $side: subscriber reconnecting for the backlog"
    c0=$(cpu_ticks "$pid")
    k0=$(cpu_ticks "${tansu_pid:-0}")
    [ "${THREADS:-0}" = 1 ] && thread_ticks "$pid" >"$work/$side.t0"
    t0=$(date +%s.%N)
    timeout 600 mosquitto_sub -h 127.0.0.1 -p "$port" -V mqttv311 -c -i "$sub_id" -q "$qos" -t 'sensors/#' -C "$total" -W 300 \
        -F '%t %x' >"$work/$side.received" || echo "offline-backlog: $side: the subscriber stopped before $total messages (timeout)" >&2
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$pid")
    k1=$(cpu_ticks "${tansu_pid:-0}")
    [ "${THREADS:-0}" = 1 ] && thread_ticks "$pid" >"$work/$side.t1"
    result=$(check "$work/$side.received")
    drain_s=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    extra=""
    [ "$side" = cloud-broker ] && extra=" tansu_cpu_us_per_msg=$(cpu_us_per_message "$k0" "$k1" "$total") read_backs=$(broker_metric tributary_broker_subscriber_read_backs_total) dropped_qos$qos=$(broker_metric "tributary_broker_messages_dropped_total{qos=\"$qos\",reason=\"queue_full\"}")"
    echo "RESULT offline-backlog side=$side publish_rate=$(field rate_msgs_per_s "$line") $result backlog_rss_mib=$(python3 -c "print(f'{($rss_backlog - $rss_before) / 1024:.1f}')") drain_s=$drain_s drain_rate=$(python3 -c "print(f'{$total / ($t1 - $t0):.0f}')") cpu_us_per_msg=$(cpu_us_per_message "$c0" "$c1" "$total")$extra"
    if [ "${THREADS:-0}" = 1 ]; then echo "RESULT offline-backlog-threads side=$side $(thread_us_per_message "$work/$side.t0" "$work/$side.t1" "$total")"; fi
done
