#!/usr/bin/env bash
# The main job of the README: builds tqkv, starts tqkvd on its embedded
# default configuration (private socket), runs two tqkv-llama engine
# processes on the head_dim-128 model of ../shared/models that share a long
# prompt (the second attaches the first one's compressed blocks and skips
# them), shows `tqkv stats` (prefix hit rate, compression ratio) and
# `tqkv ls`, runs the low-level two-client demo, and stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build -Dbuildtype=release >/dev/null
ninja -C build >/dev/null

models=${TQKV_MODELS:-../shared/models}
[ -d "$models" ] || models=/work/shared/models
model=$models/selftrained-llama-hd128-20M-f16.gguf

dir=$(mktemp -d /tmp/tqkv-demo.XXXXXX)
sock=$dir/tqkvd.sock
./build/daemon/tqkvd --socket "$sock" --config /dev/null --state-directory none --log-level notice &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do ./build/client/tqkv --socket "$sock" ping >/dev/null 2>&1 && break; sleep 0.05; done

if [ -f "$model" ]; then
	prompt="$(head -c 3000 "$models/docs_val_200k.txt" | tr '\n' ' ') In summary,"
	for engine in A B; do
		echo "== engine $engine: tqkv-llama generate --socket $sock (a prompt of 3000 characters)"
		./build/client/tqkv-llama generate --socket "$sock" --model "$model" --prompt "$prompt" -n 32 --greedy
	done
	echo
else
	echo "(no model at $model: set TQKV_MODELS to run the two engines)"
fi

echo "== tqkv stats"
./build/client/tqkv --socket "$sock" stats | sed -n '/^# Blocks/,/^# Worker/p' | grep -v '^# Worker'
echo
echo "== tqkv ls"
./build/client/tqkv --socket "$sock" ls
echo
echo "== libtqkv directly: two clients append K/V, the worker compresses, the clients read back"
./build/client/tqkv-demo "$sock"
