#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Interleaved A/B runs of `tqkv-bench attention` (docs/PERFORMANCE.md).

usage: scripts/attention-ab.py CONTEXT RUNS NAME=COMMAND [NAME=COMMAND ...]

Runs each COMMAND as `COMMAND attention --context=CONTEXT --json`, RUNS
times in turn, and prints per build and case (kind, g, threads, batch)
the minimum FP16 and tqkv ns per token and the ratio of the two minima.
Interleaving makes the slow spells of a shared machine hit every build
alike.  A COMMAND is split as a shell would (no expansion), so it can
carry options (--batch=4, --g=8) and another build's daemon and library:

  scripts/attention-ab.py 32768 5 exact=build/tests/bench/tqkv-bench \
      "both=build/tests/bench/tqkv-bench --int8-scores --int8-values" \
      "old=env TQKVD=/tmp/old/build/daemon/tqkvd LD_LIBRARY_PATH=/tmp/old/build/client
           /tmp/old/build/tests/bench/tqkv-bench"
"""
import collections
import json
import shlex
import subprocess
import sys


def main(argv):
    if len(argv) < 4 or any("=" not in a for a in argv[3:]):
        sys.exit(__doc__.strip())
    context, runs = argv[1], int(argv[2])
    builds = dict(a.split("=", 1) for a in argv[3:])
    times = collections.defaultdict(lambda: collections.defaultdict(list))
    for _ in range(runs):
        for name, command in builds.items():
            out = subprocess.run(shlex.split(command) + ["attention", "--context=" + context, "--json"],
                                 capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                row = json.loads(line)
                case = (row["kind"], row["g"], row["threads"], row.get("batch", 1))
                times[case]["fp16:" + name].append(row["fp16_ns_per_token"])
                times[case][name].append(row["tqkv_ns_per_token"])
    print("kind g threads batch  " + "  ".join("%24s" % name for name in builds))
    for case in sorted(times):
        t = times[case]
        cells = ("%7.1f / %6.1f = %.2fx" % (min(t["fp16:" + n]), min(t[n]), min(t["fp16:" + n]) / min(t[n]))
                 for n in builds)
        print("%-4s %d %-7d %-5d " % case + "  ".join(cells))


if __name__ == "__main__":
    main(sys.argv)
