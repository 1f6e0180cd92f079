/* SPDX-License-Identifier: MIT */
/* tqkv-bench: the project's benchmarks, each comparing against its baseline
 * in the same run.  See docs/BENCHMARKS.md for recorded results. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

double bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const struct {
	const char *name;
	int (*run)(const struct bench_options *o);
	const char *help;
} benches[] = {
	{ "codec", bench_codec, "encode/decode throughput (vectors/s, one thread) and MSE per head_dim and kind" },
	{ "append", bench_append, "tokens/s appended by 1 and 2 client processes (32 layers, 8 KV heads, d=128)" },
	{ "attention", bench_attention, "decode attention: FP16 baseline vs tqkv pages, ns/token, speed-up, bandwidth" },
	{ "prefix", bench_prefix, "prefix index lookup and LRU eviction at 100k and 1M cached blocks" },
	{ "window", bench_window, "sliding-window pages freed: bytes held, windowed vs all-global layers, 8K and 32K" },
	{ "load", bench_load, "32 client processes append and attend for 60 s, one killed every second: ops/s, p99, RSS" },
	{ "snapshot", bench_snapshot, "cache snapshot write and restore GB/s (4 GiB) next to write()/read()" },
	{ "latency", bench_latency, "PING round trip p50/p99 next to redis-benchmark on a Unix socket" },
};

static void help(FILE *f)
{
	fprintf(f,
		"Usage: tqkv-bench [OPTIONS] BENCHMARK\n"
		"\n"
		"Runs one of tqkv's benchmarks and prints a table, or JSON lines with --json.\n"
		"\n"
		"Benchmarks:\n");
	for (size_t i = 0; i < sizeof(benches) / sizeof(benches[0]); i++)
		fprintf(f, "  %-10s %s\n", benches[i].name, benches[i].help);
	fprintf(f,
		"\n"
		"Options:\n"
		"  --json         print one JSON object per line\n"
		"  --quick        shorter runs (for smoke tests; figures are noisier)\n"
		"  --isa=NAME     force the kernels: scalar, avx2 or avx512 (default: best)\n"
		"  --context=N    attention: measure only context length N (tokens)\n"
		"  --int8-scores  attention: tqkv with 8-bit score tables (TQKV_ATTN_INT8_SCORES,\n"
		"                 approximate; the rel err column shows by how much)\n"
		"  --int8-values  attention: tqkv with 8-bit softmax weights against 8-bit value\n"
		"                 centroids (TQKV_ATTN_INT8_VALUES, approximate; combines with\n"
		"                 --int8-scores)\n"
		"  --g=N          attention: only N query heads per KV head (1..8; default 1 and 4)\n"
		"  --kv-heads=N   attention: KV heads of the layer (1..8, default 8); with one, two\n"
		"                 threads split its tokens (tqkv and the FP16 baseline alike)\n"
		"  --batch=N      attention: N query tokens per call (1..8): tqkv_attend_batch()\n"
		"                 at the last N positions against FP16 attending N * g query\n"
		"                 rows per KV head in one pass (rows over 8 are skipped)\n"
		"  --dir=DIR      snapshot: where the file goes (default /var/tmp)\n"
		"  --clients=N    load: client processes (default 32; 8 with --quick)\n"
		"  --seconds=S    load: duration (default 60; 6 with --quick)\n"
		"  -h, --help     show this help\n"
		"\n"
		"Exit status: 0 on success, 1 if a benchmark failed, 2 on bad usage.\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "quick", no_argument, NULL, 'q' },
		{ "isa", required_argument, NULL, 'i' },
		{ "context", required_argument, NULL, 'c' },
		{ "int8-scores", no_argument, NULL, '8' },
		{ "int8-values", no_argument, NULL, 'V' },
		{ "batch", required_argument, NULL, 'b' },
		{ "g", required_argument, NULL, 'g' },
		{ "kv-heads", required_argument, NULL, 'H' },
		{ "dir", required_argument, NULL, 'd' },
		{ "clients", required_argument, NULL, 'C' },
		{ "seconds", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bench_options o = { 0 };
	int c;

	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			o.json = true;
			break;
		case 'q':
			o.quick = true;
			break;
		case 'i':
			o.isa = optarg;
			break;
		case '8':
			o.int8_scores = true;
			break;
		case 'V':
			o.int8_values = true;
			break;
		case 'd':
			o.dir = optarg;
			break;
		case 'b':
		case 'g':
		case 'H': {
			char *end;
			unsigned long x;

			errno = 0;
			x = strtoul(optarg, &end, 10);
			if (errno || *end || x < 1 || x > 8) {
				fprintf(stderr, "tqkv-bench: --%s wants a count in 1..8, not '%s'\n",
					c == 'b' ? "batch" : c == 'g' ? "g" : "kv-heads", optarg);
				return 2;
			}
			*(c == 'b' ? &o.batch : c == 'g' ? &o.group : &o.kv_heads) = (unsigned)x;
			break;
		}
		case 'C':
			o.clients = (unsigned)strtoul(optarg, NULL, 10);
			if (o.clients < 1 || o.clients > 256) {
				fprintf(stderr, "tqkv-bench: --clients wants 1..256, not '%s'\n", optarg);
				return 2;
			}
			break;
		case 'S':
			o.seconds = strtod(optarg, NULL);
			if (!(o.seconds >= 1 && o.seconds <= 86400)) {
				fprintf(stderr, "tqkv-bench: --seconds wants 1..86400, not '%s'\n", optarg);
				return 2;
			}
			break;
		case 'c': {
			char *end;

			errno = 0;
			o.context = strtoul(optarg, &end, 10);
			if (errno || *end || o.context == 0 || o.context > (1ul << 24)) {
				fprintf(stderr, "tqkv-bench: --context wants a token count in 1..16777216, not '%s'\n", optarg);
				return 2;
			}
			break;
		}
		case 'h':
			help(stdout);
			return 0;
		default:
			help(stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "tqkv-bench: expected one benchmark name (try --help)\n");
		return 2;
	}
	for (size_t i = 0; i < sizeof(benches) / sizeof(benches[0]); i++)
		if (strcmp(argv[optind], benches[i].name) == 0) {
			int r = benches[i].run(&o);

			if (r == -EINVAL)
				return 2;
			if (r < 0) {
				fprintf(stderr, "tqkv-bench %s: %s\n", benches[i].name, strerror(-r));
				return 1;
			}
			return 0;
		}
	fprintf(stderr, "tqkv-bench: unknown benchmark '%s' (try --help)\n", argv[optind]);
	return 2;
}
