/* SPDX-License-Identifier: MIT */
/*
 * Decode attention, one layer of 8 KV heads x head_dim 128, in one run and
 * one harness:
 *  - FP16 baseline: K and V as contiguous fp16 rows per head, AVX-512
 *    F16C conversion + FMA, chunked online softmax, prefetch, the same
 *    threading (split over KV heads);
 *  - tqkv: tqkv_attend() over the pages a real tqkvd compressed;
 *  - the memory-bandwidth floor, measured in the same run (AVX-512 sum over
 *    1 GiB with 1 and 2 threads): bw_fraction = floor time / tqkv time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tqkv/attention.h>

#define EXP_AVX512_TARGET __attribute__((target("avx512f,fma")))
#include "exp-avx512.h"

#include "bench.h"
#include "bench-daemon.h"

#define HEADS_MAX 8
#define DIM 128
#define CHUNK 64
/* How far ahead the FP16 baseline requests its K and V rows, into L2:
 * 32 rows (8 KiB per stream) cover DRAM latency.  8 rows into L1, its
 * first setting, left it waiting on memory: 32K tokens took 222-253 ns
 * per token with one query head per KV head and 448-507 with four,
 * against 175-193 and 298-320 now (tests/bench, 4 interleaved runs). */
#define PREFETCH_ROWS 32

struct fp16_cache {
	uint64_t n;
	unsigned heads;    /* KV heads (--kv-heads; 8) */
	uint16_t *k, *v;   /* [head][token][DIM] */
};

/* ---- memory bandwidth --------------------------------------------------- */

struct bw_job {
	const float *p;
	size_t n;
	float sum;
};

__attribute__((target("avx512f"))) static void *bw_run(void *arg)
{
	struct bw_job *j = arg;
	__m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;

	for (size_t i = 0; i + 64 <= j->n; i += 64) {
		a0 = _mm512_add_ps(a0, _mm512_load_ps(j->p + i));
		a1 = _mm512_add_ps(a1, _mm512_load_ps(j->p + i + 16));
		a2 = _mm512_add_ps(a2, _mm512_load_ps(j->p + i + 32));
		a3 = _mm512_add_ps(a3, _mm512_load_ps(j->p + i + 48));
	}
	j->sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
	return NULL;
}

/* Bytes per second that threads can read from DRAM: the best of several
 * passes over 512 MiB (this machine's neighbours make single passes vary
 * by up to 2x). */
static double measure_bandwidth(unsigned threads)
{
	size_t bytes = 512ul << 20, n = bytes / sizeof(float);
	float *p = aligned_alloc(64, bytes);
	double best = 0;

	if (!p)
		return 0;
	memset(p, 1, bytes);
	for (int rep = 0; rep < 8; rep++) {
		struct bw_job jobs[2];
		pthread_t t;
		double t0;

		for (unsigned i = 0; i < threads; i++)
			jobs[i] = (struct bw_job){ p + n / threads * i, n / threads, 0 };
		if (threads > 1 && pthread_create(&t, NULL, bw_run, &jobs[1]) != 0)
			break;
		t0 = bench_now();
		bw_run(&jobs[0]);
		if (threads > 1)
			pthread_join(t, NULL);
		t0 = bench_now() - t0;
		if ((double)bytes / t0 > best)
			best = (double)bytes / t0;
	}
	free(p);
	return best;
}

/* ---- FP16 baseline ------------------------------------------------------ */

__attribute__((target("avx512f,f16c,fma"))) static __m512 load_half16(const uint16_t *p)
{
	return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* Lane t of the result = the sum of the 16 lanes of d[t]: a transposing
 * add tree, 45 operations where 16 separate reductions take ~130. */
__attribute__((target("avx512f"))) static __m512 sum16(const __m512 *d)
{
	__m512 a[8], b[4], c[2];

	for (unsigned i = 0; i < 8; i++)
		a[i] = _mm512_add_ps(_mm512_unpacklo_ps(d[2 * i], d[2 * i + 1]),
				     _mm512_unpackhi_ps(d[2 * i], d[2 * i + 1]));
	for (unsigned i = 0; i < 4; i++) {
		__m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);

		b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
				     _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
	}
	for (unsigned i = 0; i < 2; i++)
		c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
				     _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
	return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
}

/* Lanes of tokens [t, t + 16) that are below n. */
static __mmask16 tail_mask(unsigned n, unsigned t)
{
	return n >= t + 16 ? 0xffff : n > t ? (__mmask16)((1u << (n - t)) - 1) : 0;
}

/* One KV head, g query heads (g <= 8), tokens [0, n): every K and V row is
 * read from memory once for the whole group, as a good FP16 decode kernel
 * does.  Chunks of 64 tokens: the scores of 16 tokens at a time (one FMA
 * chain per token and head, then one add tree), one rescale per head and
 * chunk, the softmax 16 tokens at a time with libtqkv's own vector exp
 * (scalar expf cost this baseline 15-20% at g = 4), then the values with
 * the group's accumulators in registers. */
/* FP16 attention of KV head h's g query rows over tokens [from, to): the
 * normalised outputs to out, or with part, each row's max, sum and
 * unnormalised accumulators there (2 + DIM floats per row) for
 * fp16_merge(). */
__attribute__((target("avx512f,f16c,fma"))) static void fp16_head(const struct fp16_cache *c, unsigned h,
								   const float *q, unsigned g, float scale, uint64_t from,
								   uint64_t to, float *out, float *part)
{
	const uint16_t *K = c->k + (size_t)h * c->n * DIM, *V = c->v + (size_t)h * c->n * DIM;
	/* Dimension blocks per pass over a chunk's values: 8 * g accumulators
	 * fit in registers up to g = 2; larger groups take two or four passes
	 * (the chunk's V rows are in L1 by then). */
	const unsigned rb = g <= 2 ? DIM / 16 : g <= 4 ? DIM / 32 : DIM / 64;
	__m512 qv[8][DIM / 16], acc[8][DIM / 16], dots[8][16];
	float m[8], l[8];
	float s[8][CHUNK] __attribute__((aligned(64)));

	for (unsigned k = 0; k < g; k++) {
		for (unsigned r = 0; r < DIM / 16; r++) {
			qv[k][r] = _mm512_mul_ps(_mm512_loadu_ps(q + k * DIM + 16 * r), _mm512_set1_ps(scale));
			acc[k][r] = _mm512_setzero_ps();
		}
		m[k] = -INFINITY;
		l[k] = 0;
	}
	for (uint64_t t0 = from; t0 < to; t0 += CHUNK) {
		unsigned n = to - t0 < CHUNK ? (unsigned)(to - t0) : CHUNK;

		for (unsigned t16 = 0; t16 < n; t16 += 16) {
			for (unsigned t = 0; t < 16; t++) {
				const uint16_t *kr = K + (t0 + t16 + (t < n - t16 ? t : 0)) * DIM;
				__m512 kx[DIM / 16];

				for (unsigned line = 0; line < DIM * 2; line += 64)
					_mm_prefetch((const char *)(kr + PREFETCH_ROWS * DIM) + line, _MM_HINT_T1);
				for (unsigned r = 0; r < DIM / 16; r++)
					kx[r] = load_half16(kr + 16 * r);
				for (unsigned k = 0; k < g; k++) {
					__m512 d0 = _mm512_mul_ps(qv[k][0], kx[0]), d1 = _mm512_mul_ps(qv[k][1], kx[1]);

					for (unsigned r = 2; r < DIM / 16; r += 2) {
						d0 = _mm512_fmadd_ps(qv[k][r], kx[r], d0);
						d1 = _mm512_fmadd_ps(qv[k][r + 1], kx[r + 1], d1);
					}
					dots[k][t] = _mm512_add_ps(d0, d1);
				}
			}
			for (unsigned k = 0; k < g; k++)
				_mm512_store_ps(&s[k][t16], sum16(dots[k]));
		}
		for (unsigned k = 0; k < g; k++) {
			float cm, f, sum;
			__m512 mx = _mm512_set1_ps(m[k]), total = _mm512_setzero_ps();

			for (unsigned t = 0; t < CHUNK; t += 16)
				mx = _mm512_max_ps(mx, _mm512_mask_load_ps(mx, tail_mask(n, t), &s[k][t]));
			cm = _mm512_reduce_max_ps(mx);
			f = expf(m[k] - cm);
			for (unsigned r = 0; r < DIM / 16; r++)
				acc[k][r] = _mm512_mul_ps(acc[k][r], _mm512_set1_ps(f));
			m[k] = cm;
			for (unsigned t = 0; t < CHUNK; t += 16) {
				__m512 p = _mm512_maskz_mov_ps(tail_mask(n, t),
							       exp_avx512(_mm512_sub_ps(_mm512_load_ps(&s[k][t]), _mm512_set1_ps(cm))));

				_mm512_store_ps(&s[k][t], p);
				total = _mm512_add_ps(total, p);
			}
			sum = _mm512_reduce_add_ps(total);
			l[k] = l[k] * f + sum;
		}
		for (unsigned r0 = 0; r0 < DIM / 16; r0 += rb)
			for (unsigned t = 0; t < n; t++) {
				const uint16_t *vr = V + (t0 + t) * DIM;

				if (r0 == 0)
					for (unsigned line = 0; line < DIM * 2; line += 64)
						_mm_prefetch((const char *)(vr + PREFETCH_ROWS * DIM) + line, _MM_HINT_T1);
				for (unsigned r = r0; r < r0 + rb; r++) {
					__m512 vx = load_half16(vr + 16 * r);

					for (unsigned k = 0; k < g; k++)
						acc[k][r] = _mm512_fmadd_ps(_mm512_set1_ps(s[k][t]), vx, acc[k][r]);
				}
			}
	}
	for (unsigned k = 0; k < g; k++) {
		float *row = part ? part + k * (2 + DIM) : NULL;

		if (row) {
			row[0] = m[k];
			row[1] = l[k];
		}
		for (unsigned r = 0; r < DIM / 16; r++)
			if (row)
				_mm512_storeu_ps(row + 2 + 16 * r, acc[k][r]);
			else
				_mm512_storeu_ps(out + k * DIM + 16 * r, _mm512_mul_ps(acc[k][r], _mm512_set1_ps(1.0f / l[k])));
	}
}

/* The outputs of g rows from two parts of their tokens (fp16_head()). */
static void fp16_merge(const float *a, const float *b, unsigned g, float *out)
{
	for (unsigned k = 0; k < g; k++) {
		const float *x = a + k * (2 + DIM), *y = b + k * (2 + DIM);
		float m = x[0] > y[0] ? x[0] : y[0], fx = expf(x[0] - m), fy = expf(y[0] - m);
		float inv = 1.0f / (fx * x[1] + fy * y[1]);

		for (unsigned i = 0; i < DIM; i++)
			out[k * DIM + i] = (fx * x[2 + i] + fy * y[2 + i]) * inv;
	}
}

/* KV heads [first, first + count) of a call, or with part, the tokens
 * [from, to) of head first. */
struct fp16_job {
	const struct fp16_cache *c;
	const float *q;
	float *out;
	unsigned g, first, count;
	float scale;
	uint64_t from, to;
	float *part;
};

static void *fp16_run(void *arg)
{
	struct fp16_job *j = arg;

	for (unsigned h = j->first; h < j->first + j->count; h++)
		fp16_head(j->c, h, j->q + (size_t)h * j->g * DIM, j->g, j->scale, j->part ? j->from : 0,
			  j->part ? j->to : j->c->n, j->out + (size_t)h * j->g * DIM, j->part);
	return NULL;
}

/* The baseline's second thread: started once and woken per call, as
 * libtqkv's pool is, so both pay the same for threading. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct fp16_job *job;  /* to run; NULL when done */
	bool started;
} helper = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, false };

static void *helper_main(void *unused)
{
	pthread_mutex_lock(&helper.lock);
	for (;;) {
		while (!helper.job)
			pthread_cond_wait(&helper.cond, &helper.lock);
		pthread_mutex_unlock(&helper.lock);
		fp16_run(helper.job);
		pthread_mutex_lock(&helper.lock);
		helper.job = NULL;
		pthread_cond_broadcast(&helper.cond);
	}
	return NULL;
}

/* The baseline on 1 or 2 threads: split over KV heads, or with one KV
 * head over its tokens (two halves merged), as libtqkv splits. */
static void fp16_attend(const struct fp16_cache *c, const float *q, unsigned g, unsigned threads, float *out)
{
	struct fp16_job jobs[2] = { { 0 } };
	float parts[2][8 * (2 + DIM)];  /* up to 8 rows */
	bool split = threads > 1 && c->heads == 1;

	for (unsigned i = 0; i < threads; i++)
		jobs[i] = (struct fp16_job){ c, q, out, g, split ? 0 : c->heads * i / threads,
					     split ? 1 : c->heads * (i + 1) / threads - c->heads * i / threads,
					     1.0f / sqrtf(DIM), i ? c->n / 2 / CHUNK * CHUNK : 0, i ? c->n : c->n / 2 / CHUNK * CHUNK,
					     split ? parts[i] : NULL };
	if (threads > 1) {
		pthread_mutex_lock(&helper.lock);
		if (!helper.started) {
			pthread_t t;

			helper.started = pthread_create(&t, NULL, helper_main, NULL) == 0;
			if (helper.started)
				pthread_detach(t);
		}
		if (helper.started) {
			helper.job = &jobs[1];
			pthread_cond_broadcast(&helper.cond);
		}
		pthread_mutex_unlock(&helper.lock);
		if (!helper.started)
			fp16_run(&jobs[1]);
	}
	fp16_run(&jobs[0]);
	if (threads > 1) {
		pthread_mutex_lock(&helper.lock);
		while (helper.job)
			pthread_cond_wait(&helper.cond, &helper.lock);
		pthread_mutex_unlock(&helper.lock);
	}
	if (split)
		fp16_merge(parts[0], parts[1], g, out);
}

/* ---- the benchmark ------------------------------------------------------ */

/* Every timed output is checked against a float64 attention over the
 * FP16 K/V (relative L2 error): the baseline must match it (a fast
 * baseline that computes something else would flatter nobody), and tqkv
 * must be within its codec's error (~0.1 for tq4 and ~0.2 for tq3 on this
 * data: uniform rows, so the average of many values keeps their
 * per-vector error), far from an output that is wrong. */
#define BASELINE_ERR_MAX 1e-4
#define TQKV_ERR_MAX 0.5

/* The float64 reference: out[k] for query head k of KV head k / g. */
static void fp16_reference(const struct fp16_cache *c, const float *q, unsigned g, float scale, float *out)
{
	double *sc = malloc(sizeof(double) * c->n), acc[DIM];

	if (!sc)
		abort();
	for (unsigned qh = 0; qh < c->heads * g; qh++) {
		const uint16_t *K = c->k + (size_t)(qh / g) * c->n * DIM, *V = c->v + (size_t)(qh / g) * c->n * DIM;
		double m = -INFINITY, l = 0;

		for (uint64_t t = 0; t < c->n; t++) {
			double d = 0;

			for (unsigned i = 0; i < DIM; i++)
				d += (double)q[qh * DIM + i] * tqkv_f16_to_f32(K[t * DIM + i]);
			sc[t] = d * scale;
			m = sc[t] > m ? sc[t] : m;
		}
		memset(acc, 0, sizeof(acc));
		for (uint64_t t = 0; t < c->n; t++) {
			double w = exp(sc[t] - m);

			l += w;
			for (unsigned i = 0; i < DIM; i++)
				acc[i] += w * tqkv_f16_to_f32(V[t * DIM + i]);
		}
		for (unsigned i = 0; i < DIM; i++)
			out[qh * DIM + i] = (float)(acc[i] / l);
	}
	free(sc);
}

static double rel_err(const float *ref, const float *x, size_t n)
{
	double e = 0, norm = 0;

	for (size_t i = 0; i < n; i++) {
		e += ((double)x[i] - ref[i]) * ((double)x[i] - ref[i]);
		norm += (double)ref[i] * ref[i];
	}
	return sqrt(e / norm);
}

/* One timed call: the FP16 baseline or tqkv_attend_batch(). */
struct call {
	const struct fp16_cache *fc;
	const struct tqkv_layer_view *v;
	const struct tqkv_attn *a;
	const float *q;
	float *out;
	unsigned g, threads, batch;
	int result;
};

static void run_call(struct call *c)
{
	if (c->fc)
		fp16_attend(c->fc, c->q, c->g, c->threads, c->out);
	else
		c->result = tqkv_attend_batch(c->v, c->q, c->batch, c->a, c->out);
}

/* Reads 128 MiB, several times the last-level cache, so that a timed call
 * finds its K/V in DRAM, as it does in a model, where every other layer's
 * K/V and weights pass through the caches between two calls of a layer
 * (a 32K-token tq4 layer, 34 MB, would otherwise partly stay in L3). */
static void evict_caches(void)
{
	static float *junk;
	static const size_t n = (128u << 20) / sizeof(float);
	struct bw_job j;

	if (!junk) {
		junk = aligned_alloc(64, n * sizeof(float));
		if (!junk)
			return;
		memset(junk, 0, n * sizeof(float));
	}
	j = (struct bw_job){ junk, n, 0 };
	bw_run(&j);
}

/* Seconds per call of a and of b, from DRAM: the best of each over enough
 * calls to fill budget seconds, the two alternating so that a slow spell
 * of this shared machine hits both alike. */
static void time_pair(double budget, struct call *a, struct call *b, double *ret_a, double *ret_b)
{
	double best[2] = { 1e30, 1e30 }, spent = 0;

	for (int i = 0; (i < 3 || spent < budget) && i < 1000; i++)
		for (unsigned which = 0; which < 2; which++) {
			double t0, dt;

			evict_caches();
			t0 = bench_now();
			run_call(which ? b : a);
			dt = bench_now() - t0;
			spent += dt;
			best[which] = dt < best[which] ? dt : best[which];
		}
	*ret_a = best[0];
	*ret_b = best[1];
}

static int fill(struct tqkv_seq *s, struct fp16_cache *fc, uint64_t n)
{
	uint16_t k[HEADS_MAX * DIM], v[HEADS_MAX * DIM];
	uint64_t state = 0x5eed;
	int r;

	for (uint64_t t = 0; t < n; t++) {
		for (unsigned i = 0; i < fc->heads * DIM; i++) {
			state = state * 6364136223846793005ull + 1442695040888963407ull;
			k[i] = tqkv_f32_to_f16((float)(int)(state >> 52) / 1024.0f - 2.0f);
			v[i] = tqkv_f32_to_f16((float)(int)((state >> 40) & 4095) / 1024.0f - 2.0f);
		}
		for (unsigned h = 0; h < fc->heads; h++) {
			memcpy(fc->k + ((size_t)h * n + t) * DIM, k + h * DIM, DIM * 2);
			memcpy(fc->v + ((size_t)h * n + t) * DIM, v + h * DIM, DIM * 2);
		}
		while ((r = tqkv_seq_write(s, t, 0, k, v)) == -EAGAIN) {
			r = tqkv_seq_commit(s, t);
			if (r >= 0)
				r = tqkv_seq_wait(s, t + 1 - 512);
			if (r < 0)
				return r;
		}
		if (r < 0)
			return r;
		if ((t + 1) % 64 == 0 && (r = tqkv_seq_commit(s, t + 1)) < 0)
			return r;
	}
	r = tqkv_seq_commit(s, n);
	return r < 0 ? r : tqkv_seq_wait(s, n);
}

/* Floats in each of measure_row()'s six buffers. */
#define ROW_FLOATS (HEADS_MAX * 8 * DIM)

/* Row (h, r) of the FP16 baseline's query rows, rows per KV head, is
 * query token r / g's query head h * g + r % g in tqkv's batch layout. */
static size_t batch_offset(unsigned heads, unsigned h, unsigned r, unsigned g)
{
	return ((size_t)(r / g) * heads * g + (size_t)h * g + r % g) * DIM;
}

/* One row of the table: g query heads per KV head on `threads` threads,
 * for o->batch query tokens per call (0: 1), tqkv against the FP16
 * baseline attending all batch * g rows of a KV head in one pass, both
 * checked against the float64 reference (which lets every row see the
 * whole context: the batch's earlier queries miss at most 7 of its
 * tokens, far inside tqkv's bound).  bufs: room for 6 * ROW_FLOATS. */
static int measure_row(const struct bench_options *o, const struct fp16_cache *fc, const struct tqkv_layer_view *v,
		       enum tqkv_kind kind, enum tqkv_attn_kernel kernel, unsigned g, unsigned threads,
		       double page_bytes, double bw, float *bufs)
{
	const unsigned batch = o->batch ? o->batch : 1, rows = batch * g;
	const size_t len = (size_t)fc->heads * rows * DIM;
	float *q = bufs, *out16 = q + ROW_FLOATS, *ref = out16 + ROW_FLOATS, *qt = ref + ROW_FLOATS;
	float *outt = qt + ROW_FLOATS, *out = outt + ROW_FLOATS;
	struct tqkv_attn a = { .n_q_heads = fc->heads * g, .scale = 1.0f / sqrtf(DIM), .position = fc->n - batch,
			       .threads = threads, .kernel = kernel,
			       .flags = (o->int8_scores ? TQKV_ATTN_INT8_SCORES : 0) |
					(o->int8_values ? TQKV_ATTN_INT8_VALUES : 0) };
	struct call base = { .fc = fc, .q = q, .out = out16, .g = rows, .threads = threads };
	struct call ours = { .v = v, .a = &a, .q = qt, .out = outt, .batch = batch };
	double t_fp16, t_tqkv, floor, err, base_err, n = (double)fc->n;

	if (rows > 8 || batch > fc->n)
		return 0;  /* beyond the baseline's largest group */
	for (size_t i = 0; i < len; i++)
		q[i] = (float)((i * 7919) % 200) / 100.0f - 1.0f;
	for (unsigned h = 0; h < fc->heads; h++)
		for (unsigned r = 0; r < rows; r++)
			memcpy(qt + batch_offset(fc->heads, h, r, g), q + ((size_t)h * rows + r) * DIM, sizeof(float) * DIM);
	time_pair(o->quick ? 0.3 : 0.8, &base, &ours, &t_fp16, &t_tqkv);
	if (ours.result < 0)
		return ours.result;
	for (unsigned h = 0; h < fc->heads; h++)
		for (unsigned r = 0; r < rows; r++)
			memcpy(out + ((size_t)h * rows + r) * DIM, outt + batch_offset(fc->heads, h, r, g), sizeof(float) * DIM);
	fp16_reference(fc, q, rows, a.scale, ref);
	base_err = rel_err(ref, out16, len);
	err = rel_err(ref, out, len);
	if (!(base_err <= BASELINE_ERR_MAX) || !(err <= TQKV_ERR_MAX)) {
		fprintf(stderr, "tqkv-bench: output off the float64 reference: FP16 baseline %.3g (at most %g), "
			"tqkv %.3g (at most %g)\n", base_err, BASELINE_ERR_MAX, err, TQKV_ERR_MAX);
		return -EPROTO;
	}
	floor = page_bytes * n / bw;
	if (o->json)
		printf("{\"bench\":\"attention\",\"context\":%llu,\"g\":%u,\"threads\":%u,\"kind\":\"%s\","
		       "\"fp16_ns_per_token\":%.3f,\"tqkv_ns_per_token\":%.3f,\"speedup\":%.3f,\"bw_fraction\":%.3f,"
		       "\"rel_err\":%.4f,\"scores\":\"%s\",\"values\":\"%s\",\"batch\":%u,\"kv_heads\":%u}\n",
		       (unsigned long long)fc->n, g, threads, tqkv_kind_to_string(kind), t_fp16 * 1e9 / n,
		       t_tqkv * 1e9 / n, t_fp16 / t_tqkv, floor / t_tqkv, err, o->int8_scores ? "int8" : "exact",
		       o->int8_values ? "int8" : "exact", batch, fc->heads);
	else
		printf("%-8llu %-4s %-3u %-7u %14.2f %14.2f %8.2fx %9.2f %9.3f\n", (unsigned long long)fc->n,
		       tqkv_kind_to_string(kind), g, threads, t_fp16 * 1e9 / n, t_tqkv * 1e9 / n, t_fp16 / t_tqkv,
		       floor / t_tqkv, err);
	fflush(stdout);
	return 0;
}

/* The kernel an --isa name asks for, or TQKV_ATTN_KERNEL_AUTO. */
static enum tqkv_attn_kernel kernel_named(const char *name)
{
	static const struct {
		const char *name;
		enum tqkv_attn_kernel kernel;
	} names[] = {
		{ "scalar", TQKV_ATTN_KERNEL_SCALAR },
		{ "avx2", TQKV_ATTN_KERNEL_AVX2 },
		{ "avx512", TQKV_ATTN_KERNEL_AVX512 },
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(name, names[i].name) == 0)
			return names[i].kernel;
	return TQKV_ATTN_KERNEL_AUTO;
}

int bench_attention(const struct bench_options *o)
{
	static const uint64_t contexts_full[] = { 1024, 4096, 32768, 131072 }, contexts_quick[] = { 32768 };
	static const enum tqkv_kind kinds[] = { TQKV_KIND_TQ4, TQKV_KIND_TQ3 };
	const uint64_t *contexts = o->context ? &o->context : o->quick ? contexts_quick : contexts_full;
	size_t n_contexts = o->context || o->quick ? 1 : 4, n_kinds = o->quick ? 1 : 2;
	const unsigned groups_default[] = { 1, 4 }, *groups = o->group ? &o->group : groups_default;
	const unsigned heads = o->kv_heads ? o->kv_heads : HEADS_MAX;
	size_t n_groups = o->group ? 1 : 2;
	enum tqkv_attn_kernel kernel = TQKV_ATTN_KERNEL_AUTO;
	double bw[3];
	float *bufs;
	struct bench_daemon d;
	int r;

	/* --isa picks tqkv's kernels; the FP16 baseline stays AVX-512. */
	if (o->isa && (kernel = kernel_named(o->isa)) == TQKV_ATTN_KERNEL_AUTO) {
		fprintf(stderr, "tqkv-bench: unknown --isa '%s'\n", o->isa);
		return -EINVAL;
	}
	bw[0] = 0;
	bw[1] = measure_bandwidth(1);
	bw[2] = measure_bandwidth(2);
	if (!o->json)
		printf("# memory bandwidth: %.1f GB/s (1 thread), %.1f GB/s (2 threads)\n"
		       "%-8s %-4s %-3s %-7s %14s %14s %9s %9s %9s\n",
		       bw[1] / 1e9, bw[2] / 1e9, "context", "kind", "g", "threads", "fp16 ns/tok", "tqkv ns/tok",
		       "speedup", "bw frac", "rel err");
	if (!o->json && o->batch > 1)
		printf("# %u query tokens per call (tqkv_attend_batch); the FP16 baseline attends their %u * g\n"
		       "# query rows per KV head in one pass; ns per context token for the whole batch\n",
		       o->batch, o->batch);
	if (!o->json && o->kv_heads)
		printf("# %u KV heads (head_dim %u)\n", heads, DIM);
	bufs = malloc(sizeof(float) * 6 * ROW_FLOATS);
	if (!bufs)
		return -ENOMEM;
	r = bench_daemon_up(&d, "2", "4G");
	if (r < 0) {
		free(bufs);
		return r;
	}
	for (size_t ki = 0; ki < n_kinds && r >= 0; ki++)
		for (size_t ci = 0; ci < n_contexts && r >= 0; ci++) {
			uint64_t n = contexts[ci];
			struct tqkv_layer_desc layer = { .n_kv_heads = heads, .head_dim = DIM, .kv_source = -1,
							 .k_kind = kinds[ki], .v_kind = kinds[ki] };
			struct tqkv_model m = { .fingerprint = 0xa7, .n_layers = 1, .layers = &layer,
						.staging_tokens = 512, .max_sequences = 1 };
			struct fp16_cache fc = { n, heads, malloc(n * heads * DIM * 2), malloc(n * heads * DIM * 2) };
			struct tqkv_client *c = NULL;
			struct tqkv_seq *s = NULL;
			struct tqkv_layer_view v;
			double page_bytes;

			if (!fc.k || !fc.v) {
				r = -ENOMEM;
				goto next;
			}
			r = tqkv_client_connect(d.socket, &c);
			if (r >= 0)
				r = tqkv_client_register_model(c, &m);
			if (r >= 0)
				r = tqkv_seq_open(c, &s);
			if (r >= 0)
				r = fill(s, &fc, n);
			if (r >= 0)
				r = tqkv_seq_view(s, 0, &v);
			if (r < 0)
				goto next;
			/* Bytes tqkv reads per token: both pages of every head. */
			page_bytes = (double)heads * 2 * tqkv_page_size(v.codecs[0], 64) / 64.0;
			for (size_t gi = 0; gi < n_groups && r >= 0; gi++)
				for (unsigned threads = 1; threads <= 2 && r >= 0; threads++)
					r = measure_row(o, &fc, &v, kinds[ki], kernel, groups[gi], threads, page_bytes,
							bw[threads], bufs);
next:
			tqkv_seq_close(s);
			tqkv_client_free(c);
			free(fc.k);
			free(fc.v);
		}
	bench_daemon_down(&d);
	free(bufs);
	return r;
}
