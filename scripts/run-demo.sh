#!/usr/bin/env bash
# The main job of the README: builds tqkv and runs the codec benchmark
# (encode/decode throughput and MSE against the Lloyd-Max optimum).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build -Dbuildtype=release >/dev/null
ninja -C build
./build/tests/bench/tqkv-bench codec
