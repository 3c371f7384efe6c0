#!/usr/bin/env python3
"""The upstream side of the edge agent's end-to-end tests: a QoS 2 subscriber with a persistent session
(MQTT 5, clean start 0, session expiry 1 h) that writes one line per message to --output, flushed:

    <tributary-agent> <tributary-seq> <tributary-device> <payload>

It prints "subscriber ready" once SUBACK arrived and runs until SIGTERM (it reconnects on its own, keeping
its session, so mosquitto's QoS 2 state towards it survives connection loss).
"""
import argparse
import signal
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", default="#")
    parser.add_argument("--client-id", default="tributary-e2e-subscriber")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    output = open(args.output, "a", buffering=1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(args.topic, qos=2)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        print("subscriber ready", flush=True)

    def on_message(client, userdata, message):
        props = dict(getattr(message.properties, "UserProperty", []) or [])
        output.write(
            f"{props.get('tributary-agent', '-')} {props.get('tributary-seq', '-')} "
            f"{props.get('tributary-device', '-')} {message.payload.decode(errors='replace').split('|')[0]}\n"
        )

    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.reconnect_delay_set(min_delay=0.1, max_delay=1)
    connect_properties = Properties(PacketTypes.CONNECT)
    connect_properties.SessionExpiryInterval = 3600
    client.connect(args.host, args.port, keepalive=60, clean_start=False, properties=connect_properties)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    output.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
