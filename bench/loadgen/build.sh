#!/usr/bin/env bash
# Builds bench/loadgen/mqtt-loadgen.c into .build/loadgen/mqtt-loadgen. Needs libmosquitto-dev.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${LOADGEN_BUILD_DIR:-$root/.build/loadgen}"
mkdir -p "$out"
if [ ! -f /usr/include/mosquitto.h ]; then
    echo "build.sh: mosquitto.h missing: apt-get install libmosquitto-dev" >&2
    exit 2
fi
cc -O2 -Wall -Wextra -std=c11 -D_GNU_SOURCE -o "$out/mqtt-loadgen" "$root/bench/loadgen/mqtt-loadgen.c" -lmosquitto -lpthread
echo "$out/mqtt-loadgen"
