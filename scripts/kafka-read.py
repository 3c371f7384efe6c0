#!/usr/bin/env python3
"""Reads a Kafka topic back (all partitions, up to the high watermark from Fetch responses) and prints a
summary: record count, per-agent exactly-once accounting by the tributary-agent / tributary-seq headers, and
the first few records with key and headers. Used by scripts/demo; tests use the Swift reader in TestSupport.

Usage: kafka-read.py BOOTSTRAP TOPIC [--show N] [--timeout S] [--expect-agent ID --expect N]
With --expect, exits 1 unless agent ID's records are exactly sequences 1..N, each once.
"""
import argparse
import collections
import sys
import time

from confluent_kafka import Consumer, TopicPartition


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("--show", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--expect-agent")
    parser.add_argument("--expect", type=int)
    args = parser.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "tributary-demo-reader",  # never joins: manual assignment, no commits
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 50,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    metadata = consumer.list_topics(args.topic, timeout=10)
    topic = metadata.topics.get(args.topic)
    if topic is None or topic.error is not None or not topic.partitions:
        print(f"kafka-read: topic {args.topic} not found on {args.bootstrap}", file=sys.stderr)
        return 1
    partitions = sorted(topic.partitions)
    consumer.assign([TopicPartition(args.topic, p, 0) for p in partitions])

    records = []
    idle_since = time.monotonic()
    deadline = time.monotonic() + args.timeout
    # Stop when every partition has reached its high watermark (as reported by Fetch responses; Tansu's
    # ListOffsets is wrong) or nothing new arrived for 2 s.
    while time.monotonic() < deadline:
        batch = consumer.consume(num_messages=1000, timeout=0.2)
        if batch:
            idle_since = time.monotonic()
        for message in batch:
            if message.error():
                continue
            records.append(message)
        done = True
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p), cached=True)
            position = consumer.position([TopicPartition(args.topic, p)])[0].offset
            if high is None or high < 0 or position < high:
                done = False
        if done and time.monotonic() - idle_since > 0.5:
            break
        if time.monotonic() - idle_since > 2.0:
            break
    consumer.close()

    by_agent = collections.defaultdict(collections.Counter)
    for message in records:
        headers = dict((k, v) for k, v in (message.headers() or []))
        agent = headers.get("tributary-agent")
        seq = headers.get("tributary-seq")
        if agent is not None and seq is not None:
            by_agent[agent.decode()][int(seq.decode())] += 1
    print(f"kafka-read: {len(records)} records in {args.topic} ({len(partitions)} partitions)")
    for agent, counts in sorted(by_agent.items()):
        duplicates = sum(c - 1 for c in counts.values() if c > 1)
        top = max(counts) if counts else 0
        missing = top - len(counts)
        print(f"kafka-read: agent {agent}: {len(counts)} distinct sequences, highest {top}, "
              f"duplicates {duplicates}, gaps {missing}")
    verdict = 0
    if args.expect is not None:
        counts = by_agent.get(args.expect_agent or "", collections.Counter())
        duplicates = sum(c - 1 for c in counts.values() if c > 1)
        lost = sum(1 for seq in range(1, args.expect + 1) if seq not in counts)
        extra = sum(1 for seq in counts if seq > args.expect or seq < 1)
        print(f"kafka-read: expected sequences 1..{args.expect} of agent {args.expect_agent}: "
              f"lost {lost}, duplicates {duplicates}, unexpected {extra}")
        if lost or duplicates or extra:
            verdict = 1
    for message in records[: args.show]:
        headers = ", ".join(f"{k}={v.decode(errors='replace')}" for k, v in (message.headers() or []))
        value = message.value() or b""
        print(f"  partition {message.partition()} offset {message.offset()} key={message.key()!r} "
              f"value={len(value)} bytes headers: {headers}")
    return verdict


if __name__ == "__main__":
    sys.exit(main())
