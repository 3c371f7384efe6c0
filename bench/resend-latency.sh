#!/usr/bin/env bash
# Latency of a resent QoS 2 PUBLISH (DUP set) against a first attempt (DUP clear), against mosquitto in the same
# run. cloud-broker checks a resend for a duplicate only once its delivery consumer has read the messages topics
# up to their ends as observed after the PUBLISH arrived (read-your-writes: `KafkaCatchUp`, one high-watermark
# probe); a first attempt is never checked. Each PUBLISH carries a new packet id, so every one is stored; the
# time is from sending PUBLISH to reading PUBREC (the PUBREL/PUBCOMP that follow are not timed), one at a time
# on one MQTT 3.1.1 connection from a small Python client.
#
#   bench/resend-latency.sh [PUBLISHES=20]
# Environment: CLOUD_BROKER (a release build).
set -euo pipefail
source "$(dirname "$0")/loadgen/latency.sh"
publishes=${1:-20}
start_latency_peers resend-latency
echo "$latency_prelude" >"$work/resend.py"
cat >>"$work/resend.py" <<'PY'

def read_packet(s):
    header = s.recv(1)
    if not header:
        sys.exit("connection closed")
    length, shift = 0, 0
    while True:
        byte = s.recv(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = s.recv(length - len(body))
        if not chunk:
            sys.exit("connection closed")
        body += chunk
    return header[0], body

cid = f"resend-{uuid.uuid4().hex[:12]}".encode()
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(cid)) + cid
s.sendall(bytes([0x10, len(connect)]) + connect)
kind, body = read_packet(s)
if kind != 0x20 or body[1] != 0:
    sys.exit(f"CONNECT refused: {body.hex()}")
topic = b"bench/resend"
for i in range(1, count + 1):
    payload = f"resend-{i}".encode()
    publish = struct.pack("!H", len(topic)) + topic + struct.pack("!H", i) + payload
    started = time.perf_counter()
    s.sendall(bytes([0x34 | (0x08 if mode else 0), len(publish)]) + publish)
    kind, body = read_packet(s)
    times.append((time.perf_counter() - started) * 1000)
    if kind != 0x50 or struct.unpack("!H", body[:2])[0] != i:
        sys.exit(f"expected PUBREC {i}, got {kind:#x} {body.hex()}")
    s.sendall(b"\x62\x02" + struct.pack("!H", i))
    kind, body = read_packet(s)
    if kind != 0x70:
        sys.exit(f"expected PUBCOMP {i}, got {kind:#x}")
s.sendall(b"\xe0\x00")
s.close()
PY
echo "$latency_summary" >>"$work/resend.py"
compare_latency resend-latency "$work/resend.py" publishes "$publishes" dup 0 1
