/* SPDX-License-Identifier: MIT */
/*
 * Attention over a real daemon's pages against a float64 reference over
 * the same view's decoded K/V: every K/V kind, centering, GQA 1-8, windows,
 * threads, partial tiles, tail-only, pages-only, the batched form, and an
 * engine attending while the worker publishes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>

#include <tqkv/attention.h>

#include "daemon-harness.h"
#include "rotation.h"
#include "test-util.h"

#define KV_HEADS 2
#define N_LAYERS 11
#define MAX_DIM 128

static const struct tqkv_layer_desc layers[N_LAYERS] = {
	{ .n_kv_heads = KV_HEADS, .head_dim = 64, .kv_source = -1, .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ4 },
	{ .n_kv_heads = KV_HEADS, .head_dim = 64, .kv_source = -1, .k_kind = TQKV_KIND_TQ3, .v_kind = TQKV_KIND_TQ2_5,
	  .flags = TQKV_LAYER_CENTER_KEYS },
	{ .n_kv_heads = KV_HEADS, .head_dim = 96, .kv_source = -1, .k_kind = TQKV_KIND_TQ2, .v_kind = TQKV_KIND_TQ3_5 },
	{ .n_kv_heads = KV_HEADS, .head_dim = 64, .kv_source = -1, .k_kind = TQKV_KIND_INT8, .v_kind = TQKV_KIND_FP16 },
	{ .n_kv_heads = KV_HEADS, .head_dim = 64, .kv_source = -1, .k_kind = TQKV_KIND_FP16, .v_kind = TQKV_KIND_INT8,
	  .flags = TQKV_LAYER_CENTER_KEYS },
	/* Both read as nibbles by the AVX-512 kernel. */
	{ .n_kv_heads = KV_HEADS, .head_dim = 64, .kv_source = -1, .k_kind = TQKV_KIND_TQ3, .v_kind = TQKV_KIND_TQ3,
	  .flags = TQKV_LAYER_CENTER_KEYS },
	{ .n_kv_heads = KV_HEADS, .head_dim = 96, .kv_source = -1, .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ2 },
	/* head_dim 128 at 4 and 3 bits: the AVX-512 kernel's specialised cases. */
	{ .n_kv_heads = KV_HEADS, .head_dim = 128, .kv_source = -1, .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ4 },
	{ .n_kv_heads = KV_HEADS, .head_dim = 128, .kv_source = -1, .k_kind = TQKV_KIND_TQ3, .v_kind = TQKV_KIND_TQ3,
	  .flags = TQKV_LAYER_CENTER_KEYS },
	/* A head_dim that is no multiple of 8: the FP16 tail kernels' last
	 * partial vector of a row. */
	{ .n_kv_heads = KV_HEADS, .head_dim = 36, .kv_source = -1, .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ4 },
	{ .kv_source = 0 },
};

static const struct tqkv_model model = {
	.fingerprint = 0xa77e,
	.n_layers = N_LAYERS,
	.layers = layers,
	.staging_tokens = 256,
	.max_sequences = 2,
};

/* The query vectors check_all_layers() uses for layer l at position pos
 * (n_q * d floats). */
static void queries(uint64_t seed, uint64_t pos, uint32_t l, unsigned n_q, unsigned d, float *q)
{
	gaussian_fill(seed + pos * 31 + l, q, n_q * d);
}

/* Keys with a per-channel offset, as real keys have, so centering matters.
 * With rise > 0, each key also holds the direction of the query that
 * check_all_layers(.., seed, to - 1, 1, ..) asks with, growing so that its
 * scores climb by ~rise (natural log units) every 64 tokens. */
static void append_keys(struct tqkv_seq *s, uint64_t seed, uint64_t from, uint64_t to, bool wait_publish, float rise)
{
	for (uint64_t t = from; t < to; t++) {
		for (uint32_t l = 0; l < N_LAYERS; l++) {
			uint16_t k[KV_HEADS * MAX_DIM], v[KV_HEADS * MAX_DIM];
			float f[2 * KV_HEADS * MAX_DIM], q[KV_HEADS * MAX_DIM];
			unsigned d = layers[l].head_dim, n = KV_HEADS * d;
			/* scores are scale * q.k with scale 1/sqrt(d) and |q|^2 ~ d */
			float grow = rise * (float)t / (64.0f * sqrtf((float)d));
			int r;

			if (layers[l].kv_source >= 0)
				continue;
			gaussian_fill(seed ^ (t * 0x9e3779b97f4a7c15ull) ^ l, f, 2 * n);
			if (rise > 0)
				queries(seed, to - 1, l, KV_HEADS, d, q);
			for (unsigned i = 0; i < n; i++) {
				k[i] = tqkv_f32_to_f16(f[i] + (float)(i % 7) - 3.0f + (rise > 0 ? grow * q[i] : 0.0f));
				v[i] = tqkv_f32_to_f16(f[n + i]);
			}
			while ((r = tqkv_seq_write(s, t, l, k, v)) == -EAGAIN) {
				cr_assert_eq(tqkv_seq_commit(s, t), 0);
				cr_assert_eq(tqkv_seq_wait(s, t + 1 - 256), 0);
			}
			cr_assert_eq(r, 0);
		}
		if ((t + 1) % 32 == 0)
			cr_assert_eq(tqkv_seq_commit(s, t + 1), 0);
	}
	cr_assert_eq(tqkv_seq_commit(s, to), 0);
	if (wait_publish)
		cr_assert_eq(tqkv_seq_wait(s, to), 0);
}

static void append(struct tqkv_seq *s, uint64_t seed, uint64_t from, uint64_t to, bool wait_publish)
{
	append_keys(s, seed, from, to, wait_publish, 0);
}

/* float64 attention over the view's decoded K/V. */
static void reference(const struct tqkv_layer_view *v, const float *q, unsigned n_q, float scale, uint64_t pos,
		      uint32_t window, double *out)
{
	unsigned d = v->head_dim, g = n_q / v->n_kv_heads;
	uint64_t lo = window && pos + 1 > window ? pos + 1 - window : 0, n = pos + 1 - lo;
	float *k = malloc(sizeof(float) * n * d), *val = malloc(sizeof(float) * n * d);
	double *s = malloc(sizeof(double) * n);

	for (uint32_t h = 0; h < v->n_kv_heads; h++) {
		cr_assert_eq(tqkv_view_read(v, h, 0, lo, (uint32_t)n, k), 0);
		cr_assert_eq(tqkv_view_read(v, h, 1, lo, (uint32_t)n, val), 0);
		for (unsigned qh = h * g; qh < (h + 1) * g; qh++) {
			double m = -INFINITY, sum = 0;

			for (uint64_t t = 0; t < n; t++) {
				double dot = 0;

				for (unsigned j = 0; j < d; j++)
					dot += (double)q[qh * d + j] * k[t * d + j];
				s[t] = dot * scale;
				m = s[t] > m ? s[t] : m;
			}
			for (unsigned j = 0; j < d; j++)
				out[qh * d + j] = 0;
			for (uint64_t t = 0; t < n; t++) {
				double p = exp(s[t] - m);

				sum += p;
				for (unsigned j = 0; j < d; j++)
					out[qh * d + j] += p * val[t * d + j];
			}
			for (unsigned j = 0; j < d; j++)
				out[qh * d + j] /= sum;
		}
	}
	free(k);
	free(val);
	free(s);
}

static double rel_error(const float *got, const double *want, size_t n)
{
	double e = 0, w = 0;

	for (size_t i = 0; i < n; i++) {
		e += (got[i] - want[i]) * (got[i] - want[i]);
		w += want[i] * want[i];
	}
	return sqrt(e / w);
}

/* n query tokens at first_pos .. first_pos + n - 1 in one call (of
 * tqkv_attend_batch(), or of tqkv_attend() for one), each against the
 * reference at its own position, for every layer and every kernel this
 * CPU has (the scalar float64 path, AVX2, AVX-512). */
static void check_batch(struct tqkv_seq *s, uint64_t seed, uint64_t first_pos, unsigned n, unsigned g,
			uint32_t window, unsigned threads)
{
	static const enum tqkv_attn_kernel kernels[] = { TQKV_ATTN_KERNEL_AUTO, TQKV_ATTN_KERNEL_SCALAR,
							 TQKV_ATTN_KERNEL_AVX2, TQKV_ATTN_KERNEL_AVX512 };

	for (uint32_t l = 0; l < N_LAYERS; l++) {
		struct tqkv_layer_view v;
		unsigned n_q = KV_HEADS * g, d;
		float *q, *out;
		double *ref;

		cr_assert_eq(tqkv_seq_view(s, l, &v), 0);
		d = v.head_dim;
		q = malloc(sizeof(float) * n * n_q * d);
		out = malloc(sizeof(float) * n * n_q * d);
		ref = malloc(sizeof(double) * n * n_q * d);
		for (unsigned i = 0; i < n; i++) {
			queries(seed, first_pos + i, l, n_q, d, q + (size_t)i * n_q * d);
			reference(&v, q + (size_t)i * n_q * d, n_q, 1.0f / sqrtf((float)d), first_pos + i, window,
				  ref + (size_t)i * n_q * d);
		}
		for (size_t k = 0; k < sizeof(kernels) / sizeof(kernels[0]); k++) {
			struct tqkv_attn a = { .n_q_heads = n_q, .scale = 1.0f / sqrtf((float)d), .position = first_pos,
					       .window = window, .threads = threads, .kernel = kernels[k] };
			int r = n == 1 ? tqkv_attend(&v, q, &a, out) : tqkv_attend_batch(&v, q, n, &a, out);

			if (r == -ENOTSUP) {
				cr_assert_neq(kernels[k], TQKV_ATTN_KERNEL_SCALAR);
				continue;  /* this CPU lacks the instruction set */
			}
			cr_assert_eq(r, 0);
			for (unsigned i = 0; i < n; i++) {
				double e = rel_error(out + (size_t)i * n_q * d, ref + (size_t)i * n_q * d, (size_t)n_q * d);

				cr_assert_lt(e, 1e-4,
					     "layer %u query %u of %u at %llu g %u window %u threads %u kernel %d "
					     "(published %llu): relative error %g",
					     l, i, n, (unsigned long long)first_pos, g, window, threads, kernels[k],
					     (unsigned long long)(v.n_blocks * 64), e);
			}
		}
		free(q);
		free(out);
		free(ref);
	}
}

/* One query token at pos against the reference. */
static void check_all_layers(struct tqkv_seq *s, uint64_t seed, uint64_t pos, unsigned g, uint32_t window,
			     unsigned threads)
{
	check_batch(s, seed, pos, 1, g, window, threads);
}

static struct tqkv_client *connect_model(const struct test_daemon *d)
{
	struct tqkv_client *c;

	cr_assert_eq(tqkv_client_connect(d->socket, &c), 0);
	cr_assert_eq(tqkv_client_register_model(c, &model), 0, "%s", tqkv_client_error(c));
	return c;
}

/* Tail only (< one block), one block exactly (pages only), partial tiles,
 * and a longer sequence; GQA 1, 2, 4, 8; windows; 1 and 2 threads, and
 * more threads than KV heads. */
Test(attention, matches_float64_reference, .timeout = 240)
{
	static const uint64_t lengths[] = { 1, 15, 64, 100, 1000 };
	struct test_daemon d;
	struct tqkv_client *c;
	uint64_t seed = test_seed();

	daemon_start(&d, NULL);
	c = connect_model(&d);
	for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
		struct tqkv_seq *s;
		uint64_t n = lengths[i];

		cr_assert_eq(tqkv_seq_open(c, &s), 0);
		append(s, seed + i, 0, n, true);
		for (unsigned g = 1; g <= 8; g *= 2)
			check_all_layers(s, seed, n - 1, g, 0, g % 2 ? 1 : 2);
		check_all_layers(s, seed, n - 1, 2, 37, 1);
		if (n > 20)
			check_all_layers(s, seed, n / 2, 4, 0, 2);  /* a position before the end */
		/* More threads than KV heads, too little work to split a head's
		 * tokens: split by heads (long_context_40000_tokens splits). */
		check_all_layers(s, seed, n - 1, 8, 0, 8);
		cr_assert_eq(tqkv_seq_close(s), 0);
	}
	tqkv_client_free(c);
	daemon_stop(&d);
}

Test(attention, long_context_40000_tokens, .timeout = 300)
{
	uint64_t seed = test_seed();
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s;

	daemon_start(&d, NULL);
	c = connect_model(&d);
	cr_assert_eq(tqkv_seq_open(c, &s), 0);
	append(s, seed, 0, 40000, true);
	check_all_layers(s, seed, 39999, 4, 0, 2);
	check_all_layers(s, seed, 39999, 1, 4096, 1);
	/* More threads than KV heads: each head's tokens in 3 parts, and in 4
	 * parts of a window, merged. */
	check_all_layers(s, seed, 39999, 2, 0, 6);
	check_all_layers(s, seed, 39999, 4, 10000, 8);
	tqkv_seq_close(s);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* A sequence of n tokens whose scores climb by rise nats per 64 tokens
 * (append_keys), published. */
static struct tqkv_seq *rising_sequence(struct tqkv_client *c, uint64_t seed, uint64_t n, float rise)
{
	struct tqkv_seq *s;

	cr_assert_eq(tqkv_seq_open(c, &s), 0);
	append_keys(s, seed, 0, n, true, rise);
	return s;
}

/* Scores that climb through the sequence, so that the running max moves
 * often: by less than ATTN_MAX_SLACK per chunk (weights above 1 in the
 * kernels, the max left where it was) and by more (rescales). */
Test(attention, rising_scores, .timeout = 120)
{
	static const float rises[] = { 0.5f, 3.0f, 20.0f };
	uint64_t base = test_seed();
	struct test_daemon d;
	struct tqkv_client *c;

	daemon_start(&d, NULL);
	c = connect_model(&d);
	for (size_t i = 0; i < sizeof(rises) / sizeof(rises[0]); i++) {
		uint64_t seed = base + i, n = 1000;
		struct tqkv_seq *s = rising_sequence(c, seed, n, rises[i]);

		check_all_layers(s, seed, n - 1, 1, 0, 1);
		check_all_layers(s, seed, n - 1, 1, 0, 2);
		cr_assert_eq(tqkv_seq_close(s), 0);
	}
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* TQKV_ATTN_INT8_SCORES and TQKV_ATTN_INT8_VALUES are approximate: alone
 * and together their output stays within INT8_ERR_MAX of the float64
 * reference (relative L2), on plain and on climbing scores, GQA 1, 4 and
 * 8, with and without a window, and an unknown flag is refused. */
#define INT8_ERR_MAX 6e-2

Test(attention, int8_options_within_their_bound, .timeout = 120)
{
	static const float rises[] = { 0.0f, 3.0f };
	static const uint32_t flag_sets[] = { TQKV_ATTN_INT8_SCORES, TQKV_ATTN_INT8_VALUES,
					      TQKV_ATTN_INT8_SCORES | TQKV_ATTN_INT8_VALUES };
	static const unsigned groups[] = { 1, 4, 8 };
	uint64_t base = test_seed();
	struct test_daemon d;
	struct tqkv_client *c;
	double worst[3] = { 0 };

	daemon_start(&d, NULL);
	c = connect_model(&d);
	for (size_t i = 0; i < sizeof(rises) / sizeof(rises[0]); i++) {
		uint64_t seed = base + i, n = 1000;
		struct tqkv_seq *s = rising_sequence(c, seed, n, rises[i]);

		for (uint32_t l = 0; l < N_LAYERS; l++)
			for (size_t gi = 0; gi < sizeof(groups) / sizeof(groups[0]); gi++) {
				struct tqkv_layer_view v;
				unsigned g = groups[gi], n_q = KV_HEADS * g, dim;
				/* g = 8 with a window that cuts a tile. */
				struct tqkv_attn a = { .n_q_heads = n_q, .position = n - 1, .window = g == 8 ? 301 : 0 };
				float *q, *out;
				double *ref;

				cr_assert_eq(tqkv_seq_view(s, l, &v), 0);
				dim = v.head_dim;
				a.scale = 1.0f / sqrtf((float)dim);
				q = malloc(sizeof(float) * n_q * dim);
				out = malloc(sizeof(float) * n_q * dim);
				ref = malloc(sizeof(double) * n_q * dim);
				queries(seed, n - 1, l, n_q, dim, q);
				reference(&v, q, n_q, a.scale, n - 1, a.window, ref);
				for (size_t f = 0; f < sizeof(flag_sets) / sizeof(flag_sets[0]); f++) {
					double err;

					a.flags = flag_sets[f];
					cr_assert_eq(tqkv_attend(&v, q, &a, out), 0);
					err = rel_error(out, ref, (size_t)n_q * dim);
					cr_assert_lt(err, INT8_ERR_MAX, "layer %u g %u window %u rise %g flags %#x: relative error %g",
						     l, g, a.window, rises[i], a.flags, err);
					worst[f] = err > worst[f] ? err : worst[f];
				}
				a.flags = 1u << 7;
				cr_assert_eq(tqkv_attend(&v, q, &a, out), -EINVAL);
				free(q);
				free(out);
				free(ref);
			}
		cr_assert_eq(tqkv_seq_close(s), 0);
	}
	fprintf(stderr, "largest relative error: int8 scores %.3g, int8 values %.3g, both %.3g\n", worst[0],
		worst[1], worst[2]);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* The batched form: its queries share the tokens they all see in one
 * pass (up to 8 query rows per KV head) and add their own; each must
 * match the reference at its own position.  Batches inside the tail,
 * across the published/tail boundary, from position 0, longer than one
 * fused pass, with windows narrower and wider than the batch, and with
 * more threads than KV heads. */
Test(attention, batch_matches_float64_reference, .timeout = 240)
{
	static const struct {
		uint64_t first;
		unsigned n;
	} batches[] = { { 289, 11 }, { 250, 12 }, { 0, 3 }, { 120, 1 } };
	static const uint32_t windows[] = { 0, 5, 100 };
	uint64_t seed = test_seed();
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s;

	daemon_start(&d, NULL);
	c = connect_model(&d);
	cr_assert_eq(tqkv_seq_open(c, &s), 0);
	append(s, seed, 0, 300, true);  /* 256 published, 44 in the tail */
	for (size_t b = 0; b < sizeof(batches) / sizeof(batches[0]); b++)
		for (unsigned g = 1; g <= 8; g *= 2)
			for (size_t w = 0; w < sizeof(windows) / sizeof(windows[0]); w++) {
				check_batch(s, seed, batches[b].first, batches[b].n, g, windows[w], g % 2 ? 1 : 2);
				/* More threads than KV heads: a head's queries in parts
				 * (3 or 4 with g = 4 or 8; too little work with less). */
				check_batch(s, seed, batches[b].first, batches[b].n, g, windows[w], 8);
			}
	{
		struct tqkv_layer_view v;
		float q[2 * KV_HEADS * 64], out[2 * KV_HEADS * 64];
		struct tqkv_attn a = { .n_q_heads = KV_HEADS, .scale = 0.125f, .position = 299 };

		cr_assert_eq(tqkv_seq_view(s, 0, &v), 0);
		gaussian_fill(seed, q, 2 * KV_HEADS * 64);
		/* the second query would be past the end */
		cr_assert_eq(tqkv_attend_batch(&v, q, 2, &a, out), -EINVAL);
	}
	tqkv_seq_close(s);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* An engine attends after every commit while the worker publishes blocks
 * behind it: each call sees a consistent snapshot (blocks + tail). */
Test(attention, concurrent_with_publishing, .timeout = 120)
{
	uint64_t seed = test_seed();
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s;

	daemon_start(&d, NULL);
	c = connect_model(&d);
	cr_assert_eq(tqkv_seq_open(c, &s), 0);
	for (uint64_t t = 0; t < 640; t += 32) {
		append(s, seed, t, t + 32, false);  /* no wait: blocks publish while we attend */
		check_all_layers(s, seed, t + 31, 2, 0, 2);
	}
	tqkv_seq_close(s);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* Calls from several threads at once share the worker pool: each thread
 * attends a sequence (the model allows two, so two threads share one)
 * with two workers, and every result equals the one computed alone
 * beforehand (the split over heads is deterministic). */
#define CALLERS 3

struct caller {
	struct tqkv_layer_view v;
	float q[KV_HEADS * 4 * 64], want[KV_HEADS * 4 * 64];
	int bad;
};

static void *caller_main(void *arg)
{
	struct caller *c = arg;
	struct tqkv_attn a = { .n_q_heads = KV_HEADS * 4, .scale = 0.125f, .position = c->v.n_tokens - 1,
			       .threads = 2 };

	for (int i = 0; i < 200; i++) {
		float out[KV_HEADS * 4 * 64];

		if (tqkv_attend(&c->v, c->q, &a, out) != 0 || memcmp(out, c->want, sizeof(out)) != 0)
			c->bad++;
	}
	return NULL;
}

Test(attention, concurrent_callers_share_the_pool, .timeout = 60)
{
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s[2];
	struct caller callers[CALLERS];
	pthread_t tid[CALLERS];

	daemon_start(&d, NULL);
	c = connect_model(&d);
	for (unsigned i = 0; i < CALLERS; i++) {
		struct tqkv_attn a = { .n_q_heads = KV_HEADS * 4, .scale = 0.125f, .threads = 1 };

		if (i < 2) {
			cr_assert_eq(tqkv_seq_open(c, &s[i]), 0);
			append(s[i], 11 + i, 0, 300 + 50 * i, true);
		}
		cr_assert_eq(tqkv_seq_view(s[i % 2], 0, &callers[i].v), 0);
		gaussian_fill(5 + i, callers[i].q, KV_HEADS * 4 * 64);
		a.position = callers[i].v.n_tokens - 1;
		cr_assert_eq(tqkv_attend(&callers[i].v, callers[i].q, &a, callers[i].want), 0);
		callers[i].bad = 0;
	}
	for (unsigned i = 0; i < CALLERS; i++)
		cr_assert_eq(pthread_create(&tid[i], NULL, caller_main, &callers[i]), 0);
	for (unsigned i = 0; i < CALLERS; i++) {
		pthread_join(tid[i], NULL);
		cr_assert_eq(callers[i].bad, 0, "caller %u: %d calls differed", i, callers[i].bad);
	}
	tqkv_seq_close(s[0]);
	tqkv_seq_close(s[1]);
	tqkv_client_free(c);
	daemon_stop(&d);
}
