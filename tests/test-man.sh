#!/bin/bash
# SPDX-License-Identifier: MIT
# The manual pages render without a groff warning, and each documents every
# command or option its program's --help lists.
#
# usage: test-man.sh MAN_DIR TQKVD TQKV
set -euo pipefail

dir=$1 tqkvd=$2 tqkv=$3
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v groff >/dev/null || { echo "SKIP: no groff"; exit 77; }

for page in "$dir"/*.[1-8]; do
	warnings=$(groff -man -ww -z "$page" 2>&1)
	[ -z "$warnings" ] || fail "$page: $warnings"
done
text() { groff -man -Tascii "$1" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g; s/.\x08//g'; }
page=$(text "$dir/tqkvd.8")
for opt in $("$tqkvd" --help | grep -o -- '--[a-z-]*' | sort -u); do
	grep -q -- "$opt" <<<"$page" || fail "tqkvd.8 lacks $opt"
done
page=$(text "$dir/tqkv.1")
for opt in $("$tqkv" --help | grep -o -- '--[a-z-]*' | sort -u) ping stats ls top flush; do
	grep -q -- "$opt" <<<"$page" || fail "tqkv.1 lacks $opt"
done
echo "man pages: all checks passed"
