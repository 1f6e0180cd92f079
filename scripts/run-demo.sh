#!/usr/bin/env bash
# The main job of the README: builds tqkv, starts tqkvd on its embedded
# default configuration (private socket), runs two client processes that
# append K/V rows for several sequences and read them back once the daemon
# has compressed them, then prints `tqkv stats` and stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build -Dbuildtype=release >/dev/null
ninja -C build >/dev/null

dir=$(mktemp -d /tmp/tqkv-demo.XXXXXX)
sock=$dir/tqkvd.sock
./build/daemon/tqkvd --socket "$sock" --config /dev/null &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do ./build/client/tqkv --socket "$sock" ping >/dev/null 2>&1 && break; sleep 0.05; done

echo "== two clients append, the worker compresses, the clients read back"
./build/client/tqkv-demo "$sock"
echo
echo "== tqkv stats after the clients closed their sequences"
./build/client/tqkv --socket "$sock" stats
echo
echo "== the codec on its own: tqkv-bench codec --quick"
./build/tests/bench/tqkv-bench --quick codec
