#!/usr/bin/env bash
# CONNACK latency of MQTT 3.1.1 CONNECTs with a fresh client id: clean session 1, and clean session 0 (a
# persistent session this node does not know: cloud-broker first makes sure no other node has just written one,
# by reading the sessions topic up to its end as observed now, read-your-writes), against mosquitto in the
# same run. Each CONNECT is a new TCP connection from a small Python client; the time is from sending CONNECT
# to reading CONNACK.
#
#   bench/connack-latency.sh [CONNECTS=20]
# Environment: CLOUD_BROKER (a release build).
set -euo pipefail
source "$(dirname "$0")/loadgen/latency.sh"
connects=${1:-20}
start_latency_peers connack-latency
echo "$latency_prelude" >"$work/connack.py"
cat >>"$work/connack.py" <<'PY'
for i in range(count):
    cid = f"connack-{uuid.uuid4().hex[:12]}".encode()
    body = b"\x00\x04MQTT\x04" + bytes([0x02 if mode else 0x00]) + b"\x00\x3c" + struct.pack("!H", len(cid)) + cid
    s = socket.create_connection(("127.0.0.1", port))
    started = time.perf_counter()
    s.sendall(bytes([0x10, len(body)]) + body)
    reply = s.recv(4)
    times.append((time.perf_counter() - started) * 1000)
    if len(reply) < 4 or reply[0] != 0x20 or reply[3] != 0:
        sys.exit(f"CONNECT refused or no CONNACK: {reply.hex()}")
    s.sendall(b"\xe0\x00")
    s.close()
PY
echo "$latency_summary" >>"$work/connack.py"
compare_latency connack-latency "$work/connack.py" connects "$connects" clean_session 1 0
