/* SPDX-License-Identifier: MIT */
/*
 * window: what freeing sliding-window pages saves on a Gemma-3-style model
 * (five layers with a 1024-token window for every global one; 4 KV heads,
 * head_dim 128, tq4 K and V).  In the same run and the same daemon, one
 * private sequence of N tokens is appended with the windows declared and
 * one with every layer global (the baseline: nothing can be freed); for
 * each, the bytes its blocks hold once all N tokens are published, and the
 * append rate (freeing must not slow the worker down).  The windowed
 * sequence keeps its global layer's pages and, of the others, the window
 * plus the staging ring (the slack engines get, docs/PROTOCOL.md).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tqkv/client.h>

#include "bench-daemon.h"
#include "bench.h"

#define LAYERS 6
#define HEADS 4
#define DIM 128
#define WINDOW 1024
#define STAGING 512

/* A key of the daemon's INFO text, or -1. */
static long long stat_of(struct tqkv_client *c, const char *key)
{
	char *text, pattern[64];
	const char *p;
	long long v = -1;

	if (tqkv_client_stats(c, &text) < 0)
		return -1;
	snprintf(pattern, sizeof(pattern), "\n%s:", key);
	p = strstr(text, pattern);
	if (p)
		v = strtoll(p + strlen(pattern), NULL, 10);
	free(text);
	return v;
}

struct window_run {
	double seconds;
	long long bytes, freed;
};

/* Appends n tokens to a new private sequence of a model with (or without)
 * the sliding windows and measures what its blocks hold at the end. */
static int run(const char *socket, uint64_t n, bool windowed, struct window_run *ret)
{
	struct tqkv_layer_desc layers[LAYERS];
	struct tqkv_model m = { .fingerprint = windowed ? 0x63e3a1 : 0x63e3a0, .n_layers = LAYERS, .layers = layers,
				.staging_tokens = STAGING, .max_sequences = 1 };
	static uint16_t k[HEADS * DIM], v[HEADS * DIM];
	struct tqkv_client *c;
	struct tqkv_seq *s;
	long long freed0;
	uint64_t cached;
	double t0;
	int r;

	for (int l = 0; l < LAYERS; l++)
		layers[l] = (struct tqkv_layer_desc){ .n_kv_heads = HEADS, .head_dim = DIM, .kv_source = -1,
						      .window = windowed && l % 6 != 5 ? WINDOW : 0,
						      .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ4 };
	bench_rows(k, v, HEADS * DIM);
	r = bench_connect(socket, &m, &c);
	if (r < 0)
		return r;
	r = tqkv_seq_open_prompt(c, NULL, 0, TQKV_SEQ_PRIVATE, &s, &cached);
	if (r < 0) {
		tqkv_client_free(c);
		return r;
	}
	freed0 = stat_of(c, "window_freed_bytes");
	t0 = bench_now();
	for (uint64_t t = 0; t < n && r >= 0; t++) {
		for (uint32_t l = 0; l < LAYERS && r >= 0; l++)
			while ((r = tqkv_seq_write(s, t, l, k, v)) == -EAGAIN) {
				r = tqkv_seq_commit(s, t);
				if (r >= 0)
					r = tqkv_seq_wait(s, t + 1 - STAGING);
				if (r < 0)
					break;
			}
		if (r >= 0 && (t + 1) % 16 == 0)
			r = tqkv_seq_commit(s, t + 1);
	}
	if (r >= 0)
		r = tqkv_seq_commit(s, n);
	if (r >= 0)
		r = tqkv_seq_wait(s, n);
	ret->seconds = bench_now() - t0;
	ret->bytes = stat_of(c, "bytes_compressed");
	ret->freed = stat_of(c, "window_freed_bytes") - freed0;
	tqkv_seq_close(s);
	tqkv_client_free(c);
	return r < 0 ? r : ret->bytes < 0 ? -EIO : 0;
}

int bench_window(const struct bench_options *o)
{
	static const uint64_t contexts[] = { 8192, 32768 };
	struct bench_daemon d;
	int r = bench_daemon_up(&d, "1", "4G");

	if (r < 0)
		return r;
	if (!o->json)
		printf("%-8s %16s %16s %8s %14s %14s\n", "context", "all global MiB", "windowed MiB", "saved",
		       "global tok/s", "windowed tok/s");
	for (unsigned i = 0; i < (o->quick ? 1 : 2) && r >= 0; i++) {
		struct window_run global, windowed;

		/* The first run faults the arena's pages in; the measured ones
		 * reuse them, both alike. */
		r = run(d.socket, contexts[i], false, &global);
		if (r >= 0)
			r = run(d.socket, contexts[i], false, &global);
		if (r >= 0)
			r = run(d.socket, contexts[i], true, &windowed);
		if (r < 0)
			break;
		if (o->json)
			printf("{\"bench\":\"window\",\"context\":%llu,\"window\":%u,\"layers\":%u,\"windowed_layers\":%u,"
			       "\"global_bytes\":%lld,\"windowed_bytes\":%lld,\"freed_bytes\":%lld,"
			       "\"global_tokens_per_s\":%.0f,\"windowed_tokens_per_s\":%.0f}\n",
			       (unsigned long long)contexts[i], WINDOW, LAYERS, LAYERS - LAYERS / 6, global.bytes,
			       windowed.bytes, windowed.freed, (double)contexts[i] / global.seconds,
			       (double)contexts[i] / windowed.seconds);
		else
			printf("%-8llu %16.2f %16.2f %7.1f%% %14.0f %14.0f\n", (unsigned long long)contexts[i],
			       (double)global.bytes / 1048576.0, (double)windowed.bytes / 1048576.0,
			       100.0 * (1.0 - (double)windowed.bytes / (double)global.bytes),
			       (double)contexts[i] / global.seconds, (double)contexts[i] / windowed.seconds);
		fflush(stdout);
	}
	bench_daemon_down(&d);
	return r;
}
