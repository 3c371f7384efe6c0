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
source "$(dirname "$0")/loadgen/common.sh"
connects=${1:-20}
start_mosquitto mosquitto
start_cloud_broker
[ -n "$peer_url" ] || { echo "connack-latency: cloud-broker did not start: $peer_note" >&2; exit 1; }
for _ in $(seq 100); do curl -sf "127.0.0.1:$broker_http_port/ready" >/dev/null && break; sleep 0.1; done
machine_line
cat >"$work/connack.py" <<'PY'
import socket, statistics, struct, sys, time, uuid
port, count, clean = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
times = []
for i in range(count):
    cid = f"connack-{uuid.uuid4().hex[:12]}".encode()
    body = b"\x00\x04MQTT\x04" + bytes([0x02 if clean else 0x00]) + b"\x00\x3c" + struct.pack("!H", len(cid)) + cid
    s = socket.create_connection(("127.0.0.1", port))
    started = time.perf_counter()
    s.sendall(bytes([0x10, len(body)]) + body)
    reply = s.recv(4)
    times.append((time.perf_counter() - started) * 1000)
    if len(reply) < 4 or reply[0] != 0x20 or reply[3] != 0:
        sys.exit(f"CONNECT refused or no CONNACK: {reply.hex()}")
    s.sendall(b"\xe0\x00")
    s.close()
times.sort()
print(f"p50_ms={statistics.median(times):.1f} p90_ms={times[int(len(times) * 0.9) - 1]:.1f} max_ms={times[-1]:.1f}")
PY
for clean in 1 0; do
    m=$(python3 "$work/connack.py" "$mosquitto_port" "$connects" "$clean")
    c=$(python3 "$work/connack.py" "${peer_url##*:}" "$connects" "$clean")
    echo "RESULT connack-latency clean_session=$clean connects=$connects mosquitto_${m// / mosquitto_} cloud_broker_${c// / cloud_broker_}"
done
