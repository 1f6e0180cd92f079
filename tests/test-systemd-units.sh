#!/bin/bash
# SPDX-License-Identifier: MIT
# Checks the systemd units: `systemd-analyze verify` passes without a single
# warning about them, and `systemd-analyze security --offline=yes` scores the
# service at most 2.0 (STYLE.md).  As root, also creates the sysusers.d and
# tmpfiles.d entries inside a scratch root.  Exit 77 (skip) without
# systemd-analyze.
#
# usage: test-systemd-units.sh SERVICE SOCKET SYSUSERS TMPFILES [TQKVD]
#   SERVICE is the configured tqkvd.service; TQKVD the built daemon, if any.
set -euo pipefail

# "Fail above 2.0": --threshold= counts tenths (exposure 0..100) and
# fails only when the exposure is strictly greater.
max_exposure_tenths=20

if [ $# -lt 4 ]; then
	echo "usage: $0 SERVICE SOCKET SYSUSERS TMPFILES [TQKVD]" >&2
	exit 2
fi
if ! command -v systemd-analyze >/dev/null; then
	echo "SKIP: systemd-analyze not found"
	exit 77
fi

# Absolute: systemd-sysusers --root= resolves relative paths inside the root.
service=$(realpath "$1")
socket=$(realpath "$2")
sysusers=$(realpath "$3")
tmpfiles=$(realpath "$4")
tqkvd=${5:-}

tmp=$(mktemp -d /tmp/test-systemd-units.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# verify insists that ExecStart= is executable, and the configured path
# (@sbindir@/tqkvd) exists only after `meson install`.  Check a copy that
# starts the daemon just built, or /bin/true when this build has none;
# nothing else in the unit changes.
exe=/bin/true
if [ -n "$tqkvd" ] && [ -x "$tqkvd" ]; then
	exe=$(realpath "$tqkvd")
fi
grep -q '^ExecStart=' "$service" || { echo "FAIL: $service has no ExecStart="; exit 1; }
sed "s|^ExecStart=[^ ]*|ExecStart=$exe|" "$service" >"$tmp/tqkvd.service"
cp "$socket" "$tmp/tqkvd.socket"

# verify exits 0 on unknown keys and unparsable values (it only warns), so
# any line about our units is a failure.
echo "# systemd-analyze verify (ExecStart=$exe)"
out=$(cd "$tmp" && systemd-analyze verify --man=no ./tqkvd.service ./tqkvd.socket 2>&1) || {
	echo "$out"
	echo "FAIL: systemd-analyze verify"
	exit 1
}
if [ -n "$out" ]; then
	echo "$out"
	if grep -q -e "$tmp" -e 'tqkvd\.' <<<"$out"; then
		echo "FAIL: systemd-analyze verify warned about the units"
		exit 1
	fi
fi

echo "# systemd-analyze security --offline=yes --threshold=$max_exposure_tenths"
r=0
out=$(cd "$tmp" && systemd-analyze security --offline=yes --threshold=$max_exposure_tenths ./tqkvd.service 2>&1) || r=$?
grep -v '^✓' <<<"$out" || true
score=$(sed -n 's/.*Overall exposure level for tqkvd.service: \([0-9.]*\).*/\1/p' <<<"$out")
if [ -z "$score" ]; then
	echo "FAIL: no exposure level in the output"
	exit 1
fi
echo "exposure: $score (limit 2.0)"
if [ "$r" -ne 0 ]; then
	echo "FAIL: tqkvd.service exposure $score is above 2.0"
	exit 1
fi

# sysusers/tmpfiles syntax and references (the user must exist for the
# tmpfiles entries): apply both to a scratch root.  tmpfiles chowns, which
# needs root.
if [ "$(id -u)" -eq 0 ] && command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null; then
	echo "# systemd-sysusers and systemd-tmpfiles --root=$tmp/root"
	mkdir -p "$tmp/root/etc"
	systemd-sysusers --root="$tmp/root" "$sysusers"
	grep -q '^tqkv:' "$tmp/root/etc/passwd" || { echo "FAIL: sysusers created no tqkv user"; exit 1; }
	grep -q '^tqkv:' "$tmp/root/etc/group" || { echo "FAIL: sysusers created no tqkv group"; exit 1; }
	systemd-tmpfiles --root="$tmp/root" --create "$tmpfiles"
	uid=$(awk -F: '$1 == "tqkv" { print $3 }' "$tmp/root/etc/passwd")
	for d in run/tqkv var/lib/tqkv; do
		[ -d "$tmp/root/$d" ] && [ "$(stat -c %u "$tmp/root/$d")" = "$uid" ] || {
			echo "FAIL: tmpfiles did not create /$d owned by tqkv"
			exit 1
		}
	done
	[ "$(stat -c %a "$tmp/root/var/lib/tqkv")" = 700 ] || { echo "FAIL: /var/lib/tqkv is not 0700"; exit 1; }
else
	echo "# sysusers/tmpfiles check skipped (needs root and systemd-sysusers/systemd-tmpfiles)"
fi

echo "PASS"
