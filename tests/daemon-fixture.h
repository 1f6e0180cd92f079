/* SPDX-License-Identifier: MIT */
/*
 * The model and K/V rows the daemon tests write: deterministic rows of
 * (seed, token, layer, stream), appended as an engine would, and checked
 * against the codec's own encode -> decode.
 */
#ifndef TQKV_TESTS_DAEMON_FIXTURE_H
#define TQKV_TESTS_DAEMON_FIXTURE_H

#include <math.h>

#include "daemon-harness.h"
#include "model.h"
#include "rotation.h"

#define N_LAYERS 3
#define HEADS 2
#define HEAD_DIM 64

/* Layer 0 tq4/tq3 with centered keys, layer 1 reuses layer 0's KV, layer 2
 * int8/fp16. */
static const struct tqkv_layer_desc test_layers[N_LAYERS] = {
	{ .n_kv_heads = HEADS, .head_dim = HEAD_DIM, .kv_source = -1, .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ3,
	  .flags = TQKV_LAYER_CENTER_KEYS },
	{ .kv_source = 0 },
	{ .n_kv_heads = HEADS, .head_dim = HEAD_DIM, .kv_source = -1, .k_kind = TQKV_KIND_INT8, .v_kind = TQKV_KIND_FP16 },
};

static const struct tqkv_model test_model = {
	.fingerprint = 0x7e57c0de,
	.n_layers = N_LAYERS,
	.layers = test_layers,
	.staging_tokens = 128,
	.max_sequences = 4,
};

/* Deterministic fp16 rows of (seed, token, layer, stream): both the writer
 * and the checker can regenerate them. */
static void token_rows(uint64_t seed, uint64_t token, uint32_t layer, unsigned stream, uint16_t *out)
{
	float f[HEADS * HEAD_DIM];

	gaussian_fill(seed ^ (token * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)layer << 48) ^ ((uint64_t)stream << 56), f,
		      HEADS * HEAD_DIM);
	for (unsigned i = 0; i < HEADS * HEAD_DIM; i++)
		out[i] = tqkv_f32_to_f16(f[i] * (1.0f + (float)(i % HEAD_DIM) / 8));
}

/* Appends n tokens to s, committing every chunk and waiting when the tail
 * is full, as an engine would. */
static int try_append_tokens(struct tqkv_seq *s, uint64_t seed, uint64_t from, uint64_t n)
{
	for (uint64_t t = from; t < from + n; t++) {
		uint16_t k[N_LAYERS][HEADS * HEAD_DIM], v[N_LAYERS][HEADS * HEAD_DIM];
		const uint16_t *kp[N_LAYERS], *vp[N_LAYERS];
		int r;

		for (uint32_t l = 0; l < N_LAYERS; l++) {
			token_rows(seed, t, l, 0, k[l]);
			token_rows(seed, t, l, 1, v[l]);
			kp[l] = test_layers[l].kv_source >= 0 ? NULL : k[l];
			vp[l] = test_layers[l].kv_source >= 0 ? NULL : v[l];
		}
		while ((r = tqkv_seq_write_layers(s, t, kp, vp)) == -EAGAIN) {
			if ((r = tqkv_seq_commit(s, t)) < 0 || (r = tqkv_seq_wait(s, t + 1 - 128)) < 0)  /* t >= 128 here */
				return r;
		}
		if (r < 0)
			return r;
		if ((t + 1) % 16 == 0 && (r = tqkv_seq_commit(s, t + 1)) < 0)
			return r;
	}
	return tqkv_seq_commit(s, from + n);
}

static void append_tokens(struct tqkv_seq *s, uint64_t seed, uint64_t from, uint64_t n)
{
	int r = try_append_tokens(s, seed, from, n);

	cr_assert_eq(r, 0, "appending tokens %llu..%llu: %s", (unsigned long long)from,
		     (unsigned long long)(from + n), strerror(-r));
}

/* What the daemon must have stored: the codec's own encode -> decode of the
 * same rows for published tokens, the exact rows for the tail. */
static void check_tokens(struct tqkv_seq *s, uint64_t seed, uint64_t n)
{
	uint64_t published = tqkv_seq_published(s);

	for (uint32_t l = 0; l < N_LAYERS; l++) {
		uint32_t src = test_layers[l].kv_source >= 0 ? (uint32_t)test_layers[l].kv_source : l;
		struct tqkv_layer_view v;

		cr_assert_eq(tqkv_seq_view(s, l, &v), 0);
		cr_assert_eq(v.layer, src);
		for (uint32_t h = 0; h < HEADS; h++)
			for (unsigned st = 0; st < 2; st++) {
				float *got = malloc(sizeof(float) * n * HEAD_DIM);
				const struct tqkv_codec *codec = v.codecs[h * 2 + st];
				float mean_buf[HEAD_DIM], *mean = NULL;

				if (st == 0 && (test_layers[src].flags & TQKV_LAYER_CENTER_KEYS) && published) {
					/* Centered keys: the mean of the first block's keys. */
					uint16_t rows0[64][HEADS * HEAD_DIM];

					for (uint64_t t = 0; t < 64; t++)
						token_rows(seed, t, src, 0, rows0[t]);
					model_rows_mean(&rows0[0][h * HEAD_DIM], HEADS * HEAD_DIM, 64, HEAD_DIM, mean_buf);
					mean = mean_buf;
					cr_assert_not_null(v.key_mean);
					cr_assert_eq(memcmp(v.key_mean + h * HEAD_DIM, mean, sizeof(mean_buf)), 0,
						     "the daemon's key mean differs");
				}

				cr_assert_eq(tqkv_seq_read(s, l, h, st, 0, (uint32_t)n, got), 0);
				for (uint64_t b = 0; b * 64 < n; b++) {
					uint16_t rows[64][HEADS * HEAD_DIM];
					float want[64 * HEAD_DIM];
					size_t size = tqkv_page_size(codec, 64);
					void *page = malloc(size);
					uint64_t cnt = n - b * 64 < 64 ? n - b * 64 : 64;

					for (uint64_t t = 0; t < 64; t++)
						token_rows(seed, b * 64 + t, src, st, rows[t]);
					if ((b + 1) * 64 <= published) {
						cr_assert_eq(tqkv_page_encode_f16(codec, &rows[0][h * HEAD_DIM], HEADS * HEAD_DIM, 64,
										  mean, page, size), 0);
						cr_assert_eq(tqkv_page_decode_f32(codec, page, size, 0, 64, mean, want, HEAD_DIM), 0);
					} else {
						for (uint64_t t = 0; t < cnt; t++)
							for (unsigned j = 0; j < HEAD_DIM; j++)
								want[t * HEAD_DIM + j] = tqkv_f16_to_f32(rows[t][h * HEAD_DIM + j]);
					}
					cr_assert_eq(memcmp(want, got + b * 64 * HEAD_DIM, sizeof(float) * cnt * HEAD_DIM), 0,
						     "layer %u head %u stream %u block %llu differs", l, h, st,
						     (unsigned long long)b);
					free(page);
				}
				free(got);
			}
	}
}

#endif
