#!/bin/bash
# SPDX-License-Identifier: MIT
# The tqkv command line against a real tqkvd: every command and output
# format, the Prometheus exposition syntax, and exit codes (0 success,
# 1 daemon unreachable or output not written, 2 bad usage).
#
# usage: test-cli.sh TQKV TQKVD TQKV_DEMO
set -euo pipefail

tqkv=$1 tqkvd=$2 demo=$3
fail() { echo "FAIL: $*" >&2; exit 1; }
dir=$(mktemp -d)
"$tqkvd" --socket "$dir/s" --config /dev/null --state-directory none --log-level warning & dpid=$!
trap 'kill $dpid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do "$tqkv" -s "$dir/s" ping >/dev/null 2>&1 && break; sleep 0.05; done
export TQKV_SOCKET=$dir/s

[ "$("$tqkv" ping)" = pong ] || fail "ping"
"$demo" "$dir/s" >/dev/null 2>&1 || fail "tqkv-demo"

"$tqkv" stats | grep -q '^# Cache$' || fail "stats: no Cache section"
json=$("$tqkv" stats --json)
for key in prefix_lookups prefix_hit_tokens evicted_blocks bytes_pinned bytes_cached compression_ratio '"tenants":{"uid:'; do
	[[ "$json" == *"$key"* ]] || fail "stats --json lacks $key: $json"
done

prom=$("$tqkv" stats --format=prometheus)
grep -q '^tqkv_memory_budget_bytes [0-9]' <<<"$prom" || fail "prometheus: no tqkv_memory_budget_bytes"
grep -q '^tqkv_blocks_compressed_total [1-9]' <<<"$prom" || fail "prometheus: no blocks compressed"
grep -q '^tqkv_tenant_bytes_cached{tenant="uid:[0-9]*"} ' <<<"$prom" || fail "prometheus: no tenant metric"
bad=$(grep -Ev '^# TYPE tqkv_[a-z0-9_]+ (counter|gauge)$|^tqkv_[a-z0-9_]+(\{[a-z]+="[^"]*"\})? -?[0-9.e+-]+$' <<<"$prom" || true)
[ -z "$bad" ] || fail "prometheus lines not in the exposition format: $bad"
names=$(grep '^# TYPE' <<<"$prom" | awk '{print $3}' | sort | uniq -d)
[ -z "$names" ] || fail "prometheus: metrics typed twice: $names"

"$tqkv" ls | grep -q '^TENANT' || fail "ls"
[[ "$("$tqkv" ls --json)" == '{"tenants":{"uid:'* ]] || fail "ls --json"
[ "$("$tqkv" top --batch -n 2 -d 0.1 | grep -c '^tqkvd pid')" -eq 2 ] || fail "top --batch -n 2"
[[ "$("$tqkv" flush --json)" == '{"blocks":'* ]] || fail "flush --json"
[ "$("$tqkv" stats --json | sed 's/.*"blocks_cached":\([0-9]*\).*/\1/')" -eq 0 ] || fail "flush left cached blocks"
"$tqkv" --help | grep -q 'prometheus' || fail "--help"

set +e
# 2^32 + 1 must not wrap to 1.
for args in "" "frobnicate" "stats --format=xml" "top -n 0" "top -n 4294967297" "top -n -1" "top -d x" \
	"stats extra" "ls --format=prometheus"; do
	# shellcheck disable=SC2086
	"$tqkv" $args >/dev/null 2>"$dir/err"; rc=$?
	[ $rc -eq 2 ] || fail "'tqkv $args': exit $rc, not 2"
	grep -q "tqkv: " "$dir/err" || fail "'tqkv $args': no message"
done
"$tqkv" -s "$dir/nonexistent" stats >/dev/null 2>&1; [ $? -eq 1 ] || fail "unreachable daemon: not exit 1"
# Output that cannot be written is a failure, not a silent success.
if [ -w /dev/full ]; then
	for args in "stats --format=prometheus" "stats --json" "ls" "ping" "flush" "top --batch -n 2 -d 0.1" "--help"; do
		# shellcheck disable=SC2086
		"$tqkv" $args >/dev/full 2>"$dir/err"; rc=$?
		[ $rc -eq 1 ] || fail "'tqkv $args >/dev/full': exit $rc, not 1"
		grep -q "tqkv: cannot write output" "$dir/err" || fail "'tqkv $args >/dev/full': no message"
	done
fi
set -e

kill $dpid; wait $dpid || fail "tqkvd exit status $?"
trap - EXIT; rm -rf "$dir"
echo "tqkv CLI: all checks passed"
