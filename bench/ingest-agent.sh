#!/usr/bin/env bash
# Edge agent ingest vs mosquitto: the same device-sim load against mosquitto and against edge-agent (whose
# upstream is a second mosquitto standing in for the cloud), QoS 0, 1 and 2, in the same run. Prints both
# acknowledged rates and the ratio edge-agent / mosquitto. While edge-agent does not accept MQTT yet, only
# the mosquitto baseline is measured.
#
#   bench/ingest-agent.sh [CLIENTS] [COUNT_PER_CLIENT] [SIZE]     (defaults 8 20000 256)
# Environment: INFLIGHT (default 20), DEVICE_SIM, EDGE_AGENT (default .build/release/...).
set -euo pipefail
source "$(dirname "$0")/loadgen/common.sh"
start_mosquitto mosquitto
start_edge_agent
compare_ingest ingest-agent "${1:-8}" "${2:-20000}" "${3:-256}"
