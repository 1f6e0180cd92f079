/* SPDX-License-Identifier: MIT */
#ifndef TQKV_BENCH_H
#define TQKV_BENCH_H

#include <stdbool.h>

struct bench_options {
	bool json;   /* one JSON object per line instead of a table */
	bool quick;  /* shorter runs (CI smoke test) */
	const char *isa;  /* force a kernel set: scalar, avx2, avx512 */
	unsigned long context;  /* attention: only this context length (0: all) */
	bool int8_scores; /* attention: tqkv with TQKV_ATTN_INT8_SCORES */
	bool int8_values; /* attention: tqkv with TQKV_ATTN_INT8_VALUES */
	unsigned batch;   /* attention: query tokens per call (0: 1) */
	unsigned group;   /* attention: only this many query heads per KV head (0: 1 and 4) */
	unsigned kv_heads; /* attention: KV heads of the layer (0: 8) */
	const char *dir;  /* snapshot: where the file goes */
	unsigned clients; /* load: client processes (0: default) */
	double seconds;   /* load: duration (0: default) */
};

/* Monotonic seconds. */
double bench_now(void);

int bench_codec(const struct bench_options *o);
int bench_append(const struct bench_options *o);
int bench_latency(const struct bench_options *o);
int bench_attention(const struct bench_options *o);
int bench_prefix(const struct bench_options *o);
int bench_snapshot(const struct bench_options *o);
int bench_load(const struct bench_options *o);
int bench_window(const struct bench_options *o);

#endif
