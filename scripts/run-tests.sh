#!/usr/bin/env bash
# The test command of the README (and of CI): installs the dependencies,
# builds with gcc in release mode and with ASan+UBSan, warnings as errors,
# and runs every test in both builds; a clang build runs the quick suites;
# a clang ThreadSanitizer build runs tests/tsan.sh; the memcheck setup runs the fast
# suites under valgrind (not the shell-script tests: valgrind would test bash).  Ends with "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

export CC=${CC:-gcc}
# The engine's tests run the real models of ../shared/models (or
# $TQKV_MODELS); without them they say so and skip those checks.
if [ -z "${TQKV_MODELS:-}" ]; then
	for dir in "$PWD/../shared/models" /work/shared/models; do
		if [ -d "$dir" ]; then
			export TQKV_MODELS=$dir
			break
		fi
	done
fi
echo "== models: ${TQKV_MODELS:-none found}"
jobs=$(nproc)
passed=0
failed=0

count() {
	local log=$1/meson-logs/testlog${2:+-$2}.json ok bad
	if [ ! -f "$log" ]; then
		failed=$((failed + 1))  # meson itself failed
		return
	fi
	ok=$(grep -c '"result": "OK"' "$log" || true)
	bad=$(grep -Ec '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS|INTERRUPT)"' "$log" || true)
	passed=$((passed + ok))
	failed=$((failed + bad))
}

run() {
	local dir=$1; shift
	echo "== $dir: meson setup $*"
	meson setup --wipe "$dir" --werror "$@" >/dev/null 2>&1 || meson setup "$dir" --werror "$@"
	ninja -C "$dir" -j "$jobs"
}

status=0

run build-release -Dbuildtype=release -Db_ndebug=false
meson test -C build-release --num-processes "$jobs" --print-errorlogs || status=1
count build-release

run build-asan -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false \
	-Dc_args=-fno-sanitize-recover=all
LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	meson test -C build-asan --num-processes "$jobs" --print-errorlogs || status=1
count build-asan

# clang 14: warnings as errors, the quick suites.
CC=clang run build-clang -Dbuildtype=debugoptimized
meson test -C build-clang --no-suite slow --num-processes "$jobs" --print-errorlogs || status=1
count build-clang

# ThreadSanitizer over the threaded programs (Criterion cannot run under it).
CC=clang run build-tsan -Dbuildtype=debugoptimized -Db_sanitize=thread -Db_lundef=false
if bash tests/tsan.sh build-tsan; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; fi

meson test -C build-release --setup valgrind --no-suite slow --no-suite systemd --no-suite script --num-processes "$jobs" --print-errorlogs || status=1
count build-release valgrind

echo "tests: $passed passed, $failed failed"
exit $status
