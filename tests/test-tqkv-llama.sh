#!/bin/bash
# SPDX-License-Identifier: MIT
# tqkv-llama end to end: the FP32 cache reproduces the reference greedy
# text, generation through a private tqkvd at 4 bits is the reference's
# first words, compare prints its JSON contract, bad usage exits 2 and a
# bad model exits 1 with a message.  Needs ../shared/models (or
# $TQKV_MODELS).
#
# Two runs of one long prompt on a shared tqkvd: the second skips the
# cached blocks and prints the same text (a fact early in the prompt, a
# question at the end).
#
# usage: test-tqkv-llama.sh TQKV_LLAMA TQKVD SOURCE_ROOT [TQKV]
set -euo pipefail

llama=$1
export TQKVD=$2
tqkv=${4:-}
models=${TQKV_MODELS:-$3/../shared/models}
hd128=$models/selftrained-llama-hd128-20M-f16.gguf
stories=$models/stories260K-f32.gguf
fail() { echo "FAIL: $*" >&2; exit 1; }

if [ ! -f "$hd128" ]; then echo "SKIP: no model at $hd128 (set TQKV_MODELS)"; exit 77; fi

out=$("$llama" generate --model "$stories" --prompt "Once upon a time" -n 40 --greedy --kv f32)
[[ "$out" == ", there was a little girl named Lily. She loved to play outside in the park."* ]] ||
	fail "stories260K greedy text: '$out'"

out=$("$llama" generate --model "$hd128" --prompt "The Linux kernel" -n 12 --greedy --k tq4 --v tq4)
[[ "$out" == " is a Linux kernel subsystem which is a core kernel"* ]] || fail "hd128 through tqkv: '$out'"

json=$("$llama" compare --model "$hd128" --text "$models/docs_val_200k.txt" --k tq4 --v tq4 --tokens 300 --json)
for key in ppl_base ppl ppl_delta_pct kld top1 cosine compression; do
	[[ "$json" == *"\"$key\":"* ]] || fail "compare JSON lacks $key: $json"
done
top1=$(sed 's/.*"top1":\([0-9.]*\).*/\1/' <<<"$json")
awk -v t="$top1" 'BEGIN { exit !(t > 0.9) }' || fail "top-1 agreement $top1 at 4 bits"

if [ -n "$tqkv" ]; then
	dir=$(mktemp -d)
	"$TQKVD" --socket "$dir/s" --config /dev/null --state-directory none --log-level warning & dpid=$!
	trap 'kill $dpid 2>/dev/null; rm -rf "$dir"' EXIT
	for _ in $(seq 100); do "$tqkv" -s "$dir/s" ping >/dev/null 2>&1 && break; sleep 0.05; done
	prompt="The access code of the north door is 4721. $(head -c 3000 "$models/docs_val_200k.txt" | tr '\n' ' ') Question: what is the access code of the north door? Answer: the access code is"
	for run in 1 2; do
		"$llama" generate --socket "$dir/s" --model "$hd128" --prompt "$prompt" -n 16 --greedy \
			>"$dir/out$run" 2>"$dir/err$run" || fail "shared run $run: $(cat "$dir/err$run")"
	done
	grep -q ", 0 from the cache" "$dir/err1" || fail "first run hit the cache: $(cat "$dir/err1")"
	skipped=$(sed -n 's/.*tokens, \([0-9]*\) from the cache.*/\1/p' "$dir/err2")
	[ "${skipped:-0}" -ge 640 ] || fail "second run skipped ${skipped:-no} tokens: $(cat "$dir/err2")"
	cmp -s "$dir/out1" "$dir/out2" || fail "a cache hit changed the text: '$(cat "$dir/out1")' vs '$(cat "$dir/out2")'"
	hits=$("$tqkv" -s "$dir/s" stats --json | sed 's/.*"prefix_hit_tokens":\([0-9]*\).*/\1/')
	[ "$hits" = "$skipped" ] || fail "stats prefix_hit_tokens $hits, skipped $skipped"
	kill $dpid; wait $dpid || fail "tqkvd exit status $?"
	trap - EXIT; rm -rf "$dir"
fi

set +e
"$llama" generate --model "$hd128" 2>/dev/null; [ $? -eq 2 ] || fail "missing --prompt: not exit 2"
"$llama" compare --model "$hd128" --text x --k tq9 2>/dev/null; [ $? -eq 2 ] || fail "bad kind: not exit 2"
"$llama" frobnicate --model "$hd128" 2>/dev/null; [ $? -eq 2 ] || fail "bad mode: not exit 2"
msg=$("$llama" generate --model /dev/null --prompt x 2>&1); [ $? -eq 1 ] || fail "bad model: not exit 1"
[[ "$msg" == *"/dev/null"* ]] || fail "bad model message: $msg"
"$llama" --help | grep -q "compare" || fail "--help"
echo "tqkv-llama: all checks passed"
