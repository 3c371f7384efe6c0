#!/usr/bin/env python3
"""A device fleet for the edge agent's end-to-end tests and benchmarks (paho-mqtt 2.x).

Each of --devices clients (client id <prefix><i>, clean session 0, MQTT 3.1.1) publishes --messages
messages to devices/<client id>/data with payload "<client id>:<n>" at --qos, at most --rate messages/s
per device (0: as fast as the in-flight window allows). Clients reconnect on their own and, because their
session is persistent, resend unacknowledged QoS 1/2 publishes (DUP) and PUBRELs after an agent restart.

Two paho-mqtt 2.1 client bugs are corrected here (see `CompliantClient`), because they make a device
break the MQTT 3.1.1 / 5.0 QoS 2 rules, and no server can store such a device's messages exactly once:
- a second reconnect attempt (the first one failed: the agent is restarting) turns a message whose PUBREL
  was already sent back into a PUBLISH (DUP=0) instead of resending the PUBREL (MQTT-4.3.3-6: "MUST NOT
  re-send the PUBLISH once it has sent the corresponding PUBREL"); a server that already handled the
  PUBREL must take it for a new message reusing the packet id, so it is stored twice;
- a publish() between the new socket and the CONNACK goes out before the unacknowledged publishes that
  are resent after the CONNACK (MQTT-4.6.0-1: resend in the original order), so it is stored out of order.
`--check-client` exits 0 if the client class keeps PUBREL state across repeated reconnect attempts
(`--check-client --stock` checks paho's own class, which fails: the deterministic reproduction).

Exits 0 once every publish was acknowledged (PUBACK / PUBCOMP), 1 on timeout. Prints one summary line:
"devices done acknowledged=<n> seconds=<s> rate=<msg/s>".
"""
import argparse
import sys
import threading
import time

import paho.mqtt.client as mqtt


class CompliantClient(mqtt.Client):
    """paho's Client with the two QoS 2 resend bugs above corrected (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Set once the publishes owed after a CONNACK are queued; new publishes wait for it.
        self.resent = threading.Event()

    def _messages_reconnect_reset_out(self):
        with self._out_message_mutex:
            released = [
                m for m in self._out_messages.values()
                if m.qos == 2 and m.state in (mqtt.mqtt_ms_wait_for_pubcomp, mqtt.mqtt_ms_resend_pubrel)
            ]
            super()._messages_reconnect_reset_out()
            for message in released:
                message.state = mqtt.mqtt_ms_resend_pubrel

    def reconnect(self):
        self.resent.clear()
        return super().reconnect()

    def _handle_connack(self):
        try:
            return super()._handle_connack()
        finally:
            if self.is_connected():
                self.resent.set()

    def publish_in_order(self, *args, **kwargs):
        """publish() once the resends after the last CONNACK are queued (not between CONNECT and CONNACK)."""
        while not self.resent.wait(0.5):
            pass
        return self.publish(*args, **kwargs)


def check_client(client_class) -> int:
    """A QoS 2 message whose PUBREL was sent must stay a PUBREL to resend across several reconnect attempts."""
    client = client_class(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="check", clean_session=False,
        protocol=mqtt.MQTTv311)
    message = mqtt.MQTTMessage(mid=7, topic=b"devices/check/data")
    message.qos = 2
    message.state = mqtt.mqtt_ms_wait_for_pubcomp
    client._out_messages[7] = message
    states = []
    for _ in range(3):  # one reset per reconnect attempt (the agent is down for the first two)
        client._messages_reconnect_reset_out()
        states.append(message.state)
    ok = all(state == mqtt.mqtt_ms_resend_pubrel for state in states)
    print(f"{client_class.__name__}: states after each reconnect attempt {states} "
          f"(resend_pubrel={mqtt.mqtt_ms_resend_pubrel}, publish={mqtt.mqtt_ms_publish}): {'ok' if ok else 'PUBLISH resent after PUBREL'}",
          flush=True)
    return 0 if ok else 1


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
    parser.add_argument("--check-client", action="store_true", help="check the client class (see above) and exit")
    parser.add_argument("--stock", action="store_true", help="with --check-client: check paho's own Client")
    args = parser.parse_args()
    if args.check_client:
        return check_client(mqtt.Client if args.stock else CompliantClient)

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
        client = CompliantClient(
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
            client.publish_in_order(f"devices/{client_id}/data", payload, qos=args.qos)
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
