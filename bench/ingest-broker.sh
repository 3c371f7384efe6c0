#!/usr/bin/env bash
# Broker ingest vs mosquitto: the same device-sim load (CLIENTS devices publishing COUNT messages each as fast
# as an in-flight window of 20 allows) against mosquitto and against cloud-broker (with Tansu behind it), at
# QoS 0, 1 and 2, in the same run. Prints both acknowledged rates and the ratio cloud-broker / mosquitto.
# While cloud-broker does not accept MQTT yet, only the mosquitto baseline is measured.
#
#   bench/ingest-broker.sh [CLIENTS] [COUNT_PER_CLIENT] [SIZE]     (defaults 8 20000 256)
# Environment: INFLIGHT (default 20), DEVICE_SIM, CLOUD_BROKER (default .build/release/...), DELIVERY (running |
# paused: see choose_delivery in loadgen/common.sh).
set -euo pipefail
source "$(dirname "$0")/loadgen/common.sh"
choose_delivery ingest-broker
start_mosquitto mosquitto
start_cloud_broker
report_delivery ingest-broker
compare_ingest ingest-broker "${1:-8}" "${2:-20000}" "${3:-256}"
