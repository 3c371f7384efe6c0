#!/usr/bin/env bash
# What reading the messages topics back costs a cloud-broker node: every node consumes every record (for its
# subscribers and for the index that recognises publishes resent after a node loss, PublishDeduplicator), so
# this cost is paid once per record per node, whatever node produced it. Records are written straight into
# Kafka (Tansu) by a Python producer, shaped as the broker writes them, and the node's CPU is measured until
# its records-consumed counter has counted them all. Nothing subscribes.
#
#   bench/broker-read-back.sh [RECORDS=200000] [SIZE=1024]
#
# Kinds of records (KINDS, default "plain qos2 agent"):
#   plain  a QoS 1 device publish (mqtt.* headers; nothing for the index)
#   qos2   a QoS 2 publish of 10 clients (mqtt.packet_id: indexed by client, packet id and a payload hash)
#   agent  what the edge agent forwards (tributary-agent / tributary-seq of 4 agents: indexed by sequence)
# CLOUD_BROKERS="A B" (release binaries) measures each binary in turn, ROUNDS times (default 2), alternating,
# for a before/after comparison in one run; CLOUD_BROKER (one binary) otherwise.
set -euo pipefail
source "$(dirname "$0")/loadgen/common.sh"
records=${1:-200000}
size=${2:-1024}
kinds=${KINDS:-plain qos2 agent}
rounds=${ROUNDS:-2}
binaries=${CLOUD_BROKERS:-${CLOUD_BROKER:-$root/.build/release/cloud-broker}}
python="$root/.tools/venv/bin/python3"
[ -x "$python" ] || { echo "broker-read-back: $python missing (run scripts/setup first)" >&2; exit 1; }

cat >"$work/produce.py" <<'PY'
import sys, time
from confluent_kafka import Producer
bootstrap, kind, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True,
                     "queue.buffering.max.messages": 200000})
payload = b"." * size
failed = []
def report(err, msg):
    if err is not None: failed.append(err)
for i in range(count):
    client = f"dev-{i % 10}"
    topic = f"sensors/{client}/temp"
    headers = [("mqtt.topic", topic.encode()), ("mqtt.client_id", client.encode()), ("mqtt.retain", b"0")]
    if kind == "plain":
        headers.append(("mqtt.qos", b"1"))
    elif kind == "qos2":
        headers += [("mqtt.qos", b"2"), ("mqtt.packet_id", str(i % 65535 + 1).encode())]
    elif kind == "agent":
        agent = f"gw-{i % 4}"
        headers = [("mqtt.topic", topic.encode()), ("mqtt.client_id", agent.encode()), ("mqtt.retain", b"0"),
                   ("mqtt.qos", b"2"), ("mqtt.packet_id", str(i % 65535 + 1).encode()),
                   ("tributary-agent", agent.encode()), ("tributary-seq", str(i).encode()),
                   ("tributary-device", client.encode())]
    else:
        sys.exit(f"unknown kind {kind}")
    while True:
        try:
            producer.produce("mqtt.messages", key=topic.encode(), value=payload, headers=headers, on_delivery=report)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)
left = producer.flush(60)
if left or failed:
    sys.exit(f"produce: {left} not delivered, {len(failed)} failed: {failed[:3]}")
PY

consumed() {
    curl -s "127.0.0.1:$broker_http_port/metrics" | awk '$1 == "tributary_broker_kafka_records_consumed_total" {print $2 + 0}'
}

echo "broker-read-back: $records records of $size bytes per kind; kinds: $kinds; binaries: $binaries; rounds: $rounds"
machine_line
for round in $(seq 1 "$rounds"); do
    for bin in $binaries; do
        CLOUD_BROKER=$bin start_cloud_broker
        [ -n "$peer_url" ] || { echo "broker-read-back: cloud-broker did not start: $peer_note" >&2; exit 1; }
        for _ in $(seq 1 100); do curl -sf "127.0.0.1:$broker_http_port/ready" >/dev/null && break; sleep 0.1; done
        for kind in $kinds; do
            before=$(consumed)
            target=$((before + records))
            b0=$(cpu_ticks "$peer_pid")
            started=$(date +%s.%N)
            LD_LIBRARY_PATH= "$python" "$work/produce.py" "127.0.0.1:$broker_kafka_port" "$kind" "$records" "$size"
            waited=0
            while [ "$(consumed)" -lt "$target" ]; do
                sleep 0.2
                waited=$((waited + 1))
                if [ "$waited" -gt 600 ]; then echo "broker-read-back: the node consumed $(consumed) of $target in 120 s" >&2; exit 1; fi
            done
            b1=$(cpu_ticks "$peer_pid")
            seconds=$(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$started")
            echo "RESULT broker-read-back round=$round binary=$(basename "$bin") kind=$kind records=$records broker_cpu_us_per_record=$(cpu_us_per_message "$b0" "$b1" "$records") seconds=$seconds"
        done
        kill "$peer_pid" "$tansu_pid" 2>/dev/null || true
        wait "$peer_pid" "$tansu_pid" 2>/dev/null || true
    done
done
