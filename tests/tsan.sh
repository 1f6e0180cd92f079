#!/bin/bash
# SPDX-License-Identifier: MIT
# The threaded paths under ThreadSanitizer (Criterion cannot start under
# TSan, so these are the programs users run): tqkvd's worker threads and
# background snapshots with client processes appending and reading back,
# the attention thread pool, and the engine with attention threads.  Any
# report fails (halt_on_error).
#
# usage: tsan.sh BUILD_DIR   (a -Db_sanitize=thread build)
set -euo pipefail

b=$1
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
fail() { echo "FAIL: $*" >&2; exit 1; }
dir=$(mktemp -d)
trap 'kill $dpid 2>/dev/null || true; rm -rf "$dir"' EXIT

"$b/daemon/tqkvd" --socket "$dir/s" --config /dev/null --state-directory "$dir" --worker-threads 2 \
	--set snapshot_interval=1 --log-level warning & dpid=$!
for _ in $(seq 200); do "$b/client/tqkv" -s "$dir/s" ping >/dev/null 2>&1 && break; sleep 0.05; done
for round in 1 2 3; do
	"$b/client/tqkv-demo" "$dir/s" >/dev/null || fail "tqkv-demo round $round"
	"$b/client/tqkv" -s "$dir/s" stats >/dev/null
	sleep 1  # a background snapshot while clients come and go
done
kill $dpid; wait $dpid || fail "tqkvd exit status $? (a TSan report?)"
echo "tsan: daemon workers and snapshots: clean"

"$b/tests/bench/tqkv-bench" --quick --context=4096 attention >/dev/null || fail "attention threads"
# One KV head: two threads split its tokens (ranges merged in the
# caller's scratch), and a batch's queries.
"$b/tests/bench/tqkv-bench" --quick --context=8192 --g=1 --kv-heads=1 attention >/dev/null ||
	fail "attention threads over one head's tokens"
"$b/tests/bench/tqkv-bench" --quick --context=4096 --g=1 --kv-heads=1 --batch=4 attention >/dev/null ||
	fail "attention threads over a batch's queries"
echo "tsan: attention thread pool: clean"

models=${TQKV_MODELS:-}
if [ -n "$models" ] && [ -f "$models/stories260K-f32.gguf" ]; then
	TQKVD="$b/daemon/tqkvd" "$b/client/tqkv-llama" generate --model "$models/stories260K-f32.gguf" \
		--prompt "Once upon a time" -n 40 --greedy --threads 2 >/dev/null || fail "engine with attention threads"
	echo "tsan: engine through tqkvd with 2 attention threads: clean"
fi
echo "tsan: all checks passed"
