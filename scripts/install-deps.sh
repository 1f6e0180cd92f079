#!/usr/bin/env bash
# Installs the Debian (bookworm) packages tqkv builds, tests and runs with.
# Idempotent: does nothing when everything is present.  Needs root (or sudo)
# only when something is missing.
set -euo pipefail

packages=(
	meson ninja-build pkg-config gcc clang
	libuv1-dev liburing-dev libsystemd-dev libcriterion-dev libxxhash-dev
	valgrind redis-server redis-tools groff-base
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "tqkv: installing ${missing[*]}" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
