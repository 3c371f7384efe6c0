#!/usr/bin/env python3
"""A device fleet for the edge agent's end-to-end tests and benchmarks (paho-mqtt 2.x).

Each of --devices clients (client id <prefix><i>, clean session 0, MQTT 3.1.1) publishes --messages
messages to devices/<client id>/data with payload "<client id>:<n>" at --qos, at most --rate messages/s
per device (0: as fast as the in-flight window allows). Clients reconnect on their own and, because their
session is persistent, resend unacknowledged QoS 1/2 publishes (DUP) and PUBRELs after an agent restart.

Exits 0 once every publish was acknowledged (PUBACK / PUBCOMP), 1 on timeout. Prints one summary line:
"devices done acknowledged=<n> seconds=<s> rate=<msg/s>".
"""
import argparse
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--qos", type=int, default=2)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--prefix", default="dev-")
    parser.add_argument("--payload-bytes", type=int, default=0, help="pad payloads to this size")
    parser.add_argument("--inflight", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    acknowledged = 0
    lock = threading.Lock()
    all_done = threading.Event()
    total = args.devices * args.messages

    def on_publish(client, userdata, mid, reason_code, properties):
        nonlocal acknowledged
        with lock:
            acknowledged += 1
            if acknowledged >= total:
                all_done.set()

    clients = []
    for index in range(args.devices):
        client_id = f"{args.prefix}{index}"
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.max_inflight_messages_set(args.inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        client.on_publish = on_publish
        client.connect_async(args.host, args.port, keepalive=10)
        client.loop_start()
        clients.append((client_id, client))

    start = time.monotonic()

    def publisher(client_id, client):
        interval = 1.0 / args.rate if args.rate > 0 else 0.0
        next_time = time.monotonic()
        for n in range(args.messages):
            payload = f"{client_id}:{n}"
            if args.payload_bytes > len(payload):
                payload = payload + "|" + "x" * (args.payload_bytes - len(payload) - 1)
            client.publish(f"devices/{client_id}/data", payload, qos=args.qos)
            if interval:
                next_time += interval
                delay = next_time - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    threads = [threading.Thread(target=publisher, args=pair, daemon=True) for pair in clients]
    for thread in threads:
        thread.start()
    finished = all_done.wait(args.timeout)
    seconds = time.monotonic() - start
    with lock:
        count = acknowledged
    print(f"devices done acknowledged={count} expected={total} seconds={seconds:.2f} rate={count / max(seconds, 0.001):.0f}", flush=True)
    for _, client in clients:
        client.disconnect()
        client.loop_stop()
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
