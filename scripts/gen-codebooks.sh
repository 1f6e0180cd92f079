#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Regenerates proto/codebook-tables.c from tqkv-gen-codebooks.
# Usage: scripts/gen-codebooks.sh [BUILD_DIR]   (default: build)
set -euo pipefail

cd "$(dirname "$0")/.."
build=${1:-build}
out=proto/codebook-tables.c

if [ ! -f "$build/build.ninja" ]; then
	meson setup "$build"
fi
meson compile -C "$build" tqkv-gen-codebooks

# Write next to the build, then copy: a failed run leaves the committed
# table alone, and an unchanged one keeps its mtime (no rebuild).
"$build/tests/tools/tqkv-gen-codebooks" > "$build/codebook-tables.c.new"
if cmp -s "$build/codebook-tables.c.new" "$out"; then
	echo "$out is up to date"
else
	cp "$build/codebook-tables.c.new" "$out"
	echo "$out regenerated"
fi
rm -f "$build/codebook-tables.c.new"
