/* SPDX-License-Identifier: MIT */
/*
 * Decode attention over pages and the FP16 tail: the portable path.
 *
 * Per KV head and tile of 16 tokens, the packed indices are unpacked once
 * and shared by every query head of the group (GQA).  TurboQuant keys are
 * scored in the rotated domain against a per-query float table
 * T[j][m] = q'_j * c_j[m] (exact, no int8 rounding); values are accumulated
 * there too and rotated back once per query head.  int8 and fp16 streams
 * work in the original domain.  Softmax is online (running max and sum),
 * so one pass reads every byte once.
 *
 * The AVX-512 table-lookup kernels of PERFORMANCE.md replace the inner
 * loops in a later step; this file is their reference.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <tqkv/attention.h>
#include <tqkv/page.h>

#include "attention-private.h"
#include "codec-private.h"
#include "cpu.h"
#include "model.h"
#include "tq3-words.h"
#include "view-page.h"

#define TILE TQKV_TILE_TOKENS
/* Chunks prefetched ahead of the one computed. */
#ifndef ATTN_LOOKAHEAD
#define ATTN_LOOKAHEAD 4
#endif

/* What one query head keeps while it walks the tokens. */
struct head_state {
	/* float64, so that the portable path is the reference the SIMD
	 * kernels are tested against. */
	double m, l;           /* running max of scores, sum of exp(score - m) */
	double *acc_rot;       /* values in the rotated domain (TurboQuant V) */
	double *acc;           /* values in the original domain (other V, tail) */
	float *table;          /* K score table [padded_dim][16] (TurboQuant K) */
	float *qrot;           /* rotated query, padded */
	const float *q;
	float q_mean;          /* q . key mean (centered keys), in score units */
	unsigned d, d_rot;     /* lengths of acc (head_dim) and acc_rot (padded) */
	float *lanes;          /* [d_rot][16] for the SIMD tile kernels */
	uint8_t *btab;         /* byte score tables of the 4-bit kernel */
	float bstep;
	int32_t bbias;         /* 8-bit tables only: their offset */
	bool int8;             /* 8-bit tables (TQKV_ATTN_INT8_SCORES) */
};

/* Multiplies the portable accumulators of a head by f. */
static void scale_accumulators(struct head_state *st, double f)
{
	for (unsigned j = 0; j < st->d; j++)
		st->acc[j] *= f;
	if (st->acc_rot)
		for (unsigned j = 0; j < st->d_rot; j++)
			st->acc_rot[j] *= f;
}

void attn_move_max(struct attn_lane_state *ls, float m_new)
{
	/* Before the first weight every sum is still zero. */
	if (*ls->m != -INFINITY) {
		struct head_state *st = ls->owner;
		float f = (float)exp(*ls->m - m_new);

		*ls->l *= f;
		for (unsigned i = 0; i < st->d_rot * 16; i++)
			ls->lanes[i] *= f;
		scale_accumulators(st, f);
	}
	*ls->m = m_new;
}

void attn_tail_move_max(struct attn_tail_head *h, double m_new)
{
	if (*h->m != -INFINITY) {
		double f = exp(*h->m - m_new);

		*h->l *= f;
		scale_accumulators(h->owner, f);
	}
	*h->m = m_new;
}

/* The kernels that serve a pair of K and V streams. */
enum kernel {
	KERNEL_PORTABLE,     /* token by token, float tables */
	KERNEL_TQ_AVX512,    /* tiles of any TurboQuant kinds, float tables */
	KERNEL_TQ4_AVX512,   /* tiles of 2-, 3- or 4-bit K and V as nibbles, byte tables */
	KERNEL_NIBBLE_AVX2,  /* the same tiles with AVX2, float tables */
};

/* Whether the nibble kernel reads a stream: one index width over all
 * coordinates, and whole 32-bit words in every plane. */
static bool nibble_stream(const struct tqkv_codec *c)
{
	return c->cls == CODEC_CLASS_TQ && c->bits_hi == c->bits_lo && c->bits_hi >= 2 && c->d % 32 == 0;
}

/* The codebook of a uniform-width stream as the nibble kernels look it
 * up: out[16 T + n] is the centroid of nibble n of a nibble word of type
 * T (word w mod 4).  A 2-bit index has other bits above it; a 3-bit one
 * sits at the bits tq3-words.h gives for the type. */
static void nibble_centroids(const struct tqkv_codec *c, float out[64])
{
	unsigned levels = 1u << c->bits_hi;

	for (unsigned T = 0; T < 4; T++)
		for (unsigned n = 0; n < 16; n++)
			out[16 * T + n] = c->cent_hi[levels == 8 ? tq3_nibble_index(T, n) : n % levels];
}

/* The nibble centroids (nibble_centroids()) as signed bytes for
 * TQKV_ATTN_INT8_VALUES, each type's 16 repeated four times (struct
 * attn_tile.vcent8); returns the unit, cmax / 127. */
static float nibble_centroids8(const float cent[64], int8_t out[256])
{
	float cmax = 0, unit;

	for (unsigned i = 0; i < 64; i++)
		cmax = fabsf(cent[i]) > cmax ? fabsf(cent[i]) : cmax;
	unit = cmax > 0 ? cmax / 127.0f : 1.0f;
	for (unsigned T = 0; T < 4; T++)
		for (unsigned r = 0; r < 4; r++)
			for (unsigned n = 0; n < 16; n++)
				out[64 * T + 16 * r + n] = (int8_t)lrintf(cent[16 * T + n] / unit);
	return unit;
}

/* The instruction set a request resolves to on this CPU, or CPU_ISA_MAX
 * for one it lacks. */
static enum cpu_isa isa_for(enum tqkv_attn_kernel k)
{
	switch (k) {
	case TQKV_ATTN_KERNEL_AUTO:
		return cpu_best_isa();
	case TQKV_ATTN_KERNEL_SCALAR:
		return CPU_ISA_SCALAR;
	case TQKV_ATTN_KERNEL_AVX2:
		return cpu_has_isa(CPU_ISA_AVX2) ? CPU_ISA_AVX2 : CPU_ISA_MAX;
	case TQKV_ATTN_KERNEL_AVX512:
		return cpu_has_isa(CPU_ISA_AVX512) ? CPU_ISA_AVX512 : CPU_ISA_MAX;
	}
	return CPU_ISA_MAX;
}

static enum kernel kernel_for(const struct tqkv_codec *kc, const struct tqkv_codec *vc, enum cpu_isa isa)
{
	bool tq = kc->cls == CODEC_CLASS_TQ && vc->cls == CODEC_CLASS_TQ && kc->d == vc->d;
	bool nibbles = tq && nibble_stream(kc) && nibble_stream(vc);

#ifdef TQKV_HAVE_X86_SIMD
	if (isa == CPU_ISA_AVX512 && tq)
		return nibbles ? KERNEL_TQ4_AVX512 : KERNEL_TQ_AVX512;
	if (isa == CPU_ISA_AVX2 && nibbles)
		return KERNEL_NIBBLE_AVX2;
#endif
	(void)nibbles;
	return KERNEL_PORTABLE;
}

struct kv_job {
	const struct tqkv_layer_view *v;
	const struct tqkv_attn *a;
	enum cpu_isa isa;
	const float *q;
	float *out;
	uint32_t n_queries;
	uint32_t head_first, head_count;  /* KV heads of this job */
	uint32_t query_first;             /* its queries: [query_first, + n_queries) */
	int result;
};

static bool is_tq(const struct tqkv_codec *c)
{
	return c->cls == CODEC_CLASS_TQ || c->cls == CODEC_CLASS_TQ_QJL;
}

/* Applies score s with value row y (d values, for acc: acc or acc_rot) to
 * the running state. */
static void online_update(struct head_state *st, double s, const float *y, double *acc, unsigned d)
{
	if (s > st->m) {
		double f = exp(st->m - s);

		st->l *= f;
		scale_accumulators(st, f);
		st->m = s;
	}
	{
		double p = exp(s - st->m);

		st->l += p;
		for (unsigned j = 0; j < d; j++)
			acc[j] += p * y[j];
	}
}

/* The row of token t of a tile in the stream's working domain: rotated and
 * scaled by the norm (TurboQuant), or decoded (int8, fp16). */
static void tile_row(const struct tqkv_codec *c, const uint8_t *bits, const uint16_t *norms, const uint8_t *idx,
		     unsigned t, float *y)
{
	unsigned d = c->d;

	if (is_tq(c)) {
		float g = tqkv_f16_to_f32(norms[t]);

		for (unsigned j = 0; j < d; j++)
			y[j] = g * (j < c->split ? c->cent_hi : c->cent_lo)[idx[j] & 0x0f];
	} else if (c->cls == CODEC_CLASS_INT8) {
		float s = tqkv_f16_to_f32(norms[t]);

		for (unsigned j = 0; j < c->params.head_dim; j++)
			y[j] = (float)(int8_t)idx[j] * s;
	} else {
		const uint16_t *row = (const uint16_t *)(bits + (size_t)t * c->d * 2);

		for (unsigned j = 0; j < c->params.head_dim; j++)
			y[j] = tqkv_f16_to_f32(row[j]);
	}
}

static double dot(const float *a, const float *b, unsigned d)
{
	double s = 0;

	for (unsigned j = 0; j < d; j++)
		s += (double)a[j] * b[j];
	return s;
}

/* Score of a tile token for one query head. */
static double tile_score(const struct tqkv_codec *kc, const struct head_state *st, const uint8_t *idx,
			 const float *krow, unsigned d)
{
	if (is_tq(kc)) {
		double s = 0;

		for (unsigned j = 0; j < kc->d; j++)
			s += st->table[j * 16 + (idx[j] & 0x0f)];
		return s;
	}
	return dot(st->q, krow, d);
}

/* A page checked against its codec: offsets come from the codec's own
 * geometry, never from the (shared, untrusted) header. */
struct page_ref {
	const uint8_t *base;
	uint32_t tiles_offset, norms_offset, tile_bytes;
};

/* A head's last validated page header per stream.  Every full page of one
 * (layer, head, stream) has the same 64 header bytes, so a page whose
 * header equals the last one needs no second check: one compare instead
 * of a CRC and the geometry (a short context is mostly this). */
struct page_memo {
	size_t size[2];  /* tqkv_page_size() of the head's codecs */
	bool valid[2];
	uint8_t header[2][sizeof(struct tqkv_page_header)];
	struct page_ref ref[2];
};

static int page_of(const struct tqkv_layer_view *v, uint64_t block, uint32_t head, unsigned stream,
		   struct page_memo *memo, struct page_ref *ret)
{
	const struct tqkv_codec *c = v->codecs[head * 2 + stream];
	struct page_geometry g;
	uint32_t n_tokens;
	size_t size = memo ? memo->size[stream] : tqkv_page_size(c, v->block_tokens);
	const void *p = view_page_sized(v, block, head, stream, size);
	int r = 0;

	if (!p)
		return -EBADMSG;
	if (memo && memo->valid[stream] && memcmp(p, memo->header[stream], sizeof(memo->header[stream])) == 0) {
		*ret = memo->ref[stream];
		ret->base = p;
		return 0;
	}
	r = page_check(c, p, size, stream == 0 && v->key_mean, &g, &n_tokens);
	if (r < 0)
		return r;
	if (n_tokens != v->block_tokens)
		return -EBADMSG;
	*ret = (struct page_ref){ p, g.tiles, g.norms, c->layout.tile_bytes };
	if (memo) {
		/* page_check() validated a copy; keep the bytes it saw only if
		 * they have not changed since (else check again next time). */
		memcpy(memo->header[stream], p, sizeof(memo->header[stream]));
		memo->valid[stream] = page_check(c, memo->header[stream], size, stream == 0 && v->key_mean, &g,
						 &n_tokens) == 0 && n_tokens == v->block_tokens &&
				      g.tiles == ret->tiles_offset && g.norms == ret->norms_offset;
		memo->ref[stream] = *ret;
	}
	return 0;
}

/* Requests what page_of() will read for block's pages of head, whose
 * misses would otherwise come one after another: stage 0 the record's
 * header and page table entries, stage 1 (when those have arrived) the
 * two page headers.  Reads only what stage 0 brought; checks bounds as
 * tqkv_view_page() does, since a prefetch address is still computed.
 * Always inline, as every function here that only prefetches: GCC counts
 * a prefetch as no side effect, so it finds an out-of-line call to such a
 * function pure and deletes it (it did: these requests never ran). */
static inline __attribute__((always_inline)) void prefetch_block_meta(const struct tqkv_layer_view *v, uint64_t block,
								      uint32_t head, unsigned stage)
{
	const uint8_t *rec = view_record(v, block);
	const uint64_t *pt;
	uint64_t off;

	if (!rec)
		return;
	off = (uint64_t)(rec - v->arena);
	pt = (const uint64_t *)(rec + MODEL_PAGE_TABLE_OFFSET) + v->page_index + head * 2;
	if (stage == 0) {
		__builtin_prefetch(rec);
		__builtin_prefetch(pt);
		return;
	}
	for (unsigned s = 0; s < 2; s++)
		if (pt[s] < v->arena_bytes - off)
			__builtin_prefetch(rec + pt[s]);
}

/* acc[i] += the 16 per-token lanes of coordinate i, or with int8 values
 * (TQKV_ATTN_INT8_VALUES) the lanes of packed word w's nibble half h, in
 * which lane l holds coordinate w + (2 (l % 4) + h) d / 8
 * (attention-avx512.c). */
static void lanes_fold(enum kernel kernel, bool int8_values, const float *lanes, unsigned d, double *acc)
{
	if (int8_values) {
		for (unsigned w = 0; w < d / 8; w++)
			for (unsigned h = 0; h < 2; h++)
				for (unsigned l = 0; l < 16; l++)
					acc[w + (2 * (l % 4) + h) * (d / 8)] += lanes[(2 * w + h) * 16 + l];
		return;
	}
#ifdef TQKV_HAVE_X86_SIMD
	if (kernel == KERNEL_TQ4_AVX512 || kernel == KERNEL_TQ_AVX512) {
		attn_lanes_fold_avx512(lanes, d, acc);
		return;
	}
#endif
	for (unsigned i = 0; i < d; i++) {
		float s = 0;

		for (unsigned l = 0; l < 16; l++)
			s += lanes[i * 16 + l];
		acc[i] += s;
	}
}

/* The query's rotation and the values' rotation back, with AVX-512 where
 * the tile kernels run on it (d is then 16 or more). */
static void rotate(const struct tqkv_codec *c, enum kernel kernel, float *x)
{
#ifdef TQKV_HAVE_X86_SIMD
	if ((kernel == KERNEL_TQ4_AVX512 || kernel == KERNEL_TQ_AVX512) && c->d >= 16) {
		codec_rotate_avx512(c, x);
		return;
	}
#endif
	codec_rotate(c, x);
}

static void unrotate(const struct tqkv_codec *c, enum kernel kernel, float *y, float f)
{
#ifdef TQKV_HAVE_X86_SIMD
	if ((kernel == KERNEL_TQ4_AVX512 || kernel == KERNEL_TQ_AVX512) && c->d >= 16) {
		codec_unrotate_avx512(c, y, f);
		return;
	}
#endif
	codec_unrotate(c, y, f);
}

static void prepare_queries(const struct tqkv_layer_view *v, uint32_t head, const struct tqkv_attn *a,
			    enum kernel kernel, const float *q, struct head_state *st, unsigned g)
{
	const struct tqkv_codec *kc = v->codecs[head * 2];
	unsigned d = v->head_dim;
	float nibble_cent[64];  /* the AVX-512 nibble kernel's key centroids */

	if (kernel == KERNEL_TQ4_AVX512)
		nibble_centroids(kc, nibble_cent);
	for (unsigned k = 0; k < g; k++) {
		const float *qh = q + ((size_t)head * g + k) * d;

		st[k].m = -INFINITY;
		st[k].l = 0;
		st[k].q = qh;
		st[k].int8 = false;  /* set where the 4-bit kernel's tables are built */
		st[k].q_mean = v->key_mean ? a->scale * dot(qh, v->key_mean + (size_t)head * d, d) : 0.0f;
		if (is_tq(kc)) {
			/* q' = P q (P = D2 H D1 / sqrt(d)); the table folds in the scale. */
			memset(st[k].qrot, 0, sizeof(float) * kc->d);
			memcpy(st[k].qrot, qh, sizeof(float) * d);
			rotate(kc, kernel, st[k].qrot);
			for (unsigned j = 0; j < kc->d; j++)
				st[k].qrot[j] *= a->scale / kc->sqrt_d;
			if (kernel == KERNEL_TQ4_AVX512) {
				st[k].int8 = a->flags & TQKV_ATTN_INT8_SCORES;
				st[k].bstep = st[k].int8
					? attn_tq4_tables8_avx512(st[k].qrot, nibble_cent, kc->d, st[k].btab, &st[k].bbias)
					: attn_tq4_tables_avx512(st[k].qrot, nibble_cent, kc->d, st[k].btab);
				continue;
			}
			if (kernel == KERNEL_NIBBLE_AVX2)
				continue;  /* it scores dequantised keys against qrot */
			for (unsigned j = 0; j < kc->d; j++) {
				const float *cent = j < kc->split ? kc->cent_hi : kc->cent_lo;

				for (unsigned m = 0; m < 16; m++)
					st[k].table[j * 16 + m] = st[k].qrot[j] * cent[m];
			}
		}
	}
}

/* The chunk of up to four tiles that starts at token t0 (a tile boundary)
 * inside its block and ends at the block's, the publication's or pos's
 * tile; *n_tiles are real, the rest repeat the last with no valid token. */
static int chunk_at(const struct tqkv_layer_view *v, uint32_t head, uint64_t lo, uint64_t pos, uint64_t t0,
		    const float *vcent, uint32_t *idx_scratch, struct page_memo *memo, struct attn_tile *tile,
		    unsigned *n_tiles)
{
	const struct tqkv_codec *kc = v->codecs[head * 2], *vc = v->codecs[head * 2 + 1];
	uint64_t b = t0 / v->block_tokens, published = v->n_blocks * v->block_tokens;
	uint64_t end = (b + 1) * v->block_tokens;
	struct page_ref kp, vp;
	int r = page_of(v, b, head, 0, memo, &kp);

	if (r >= 0)
		r = page_of(v, b, head, 1, memo, &vp);
	if (r < 0)
		return r;
	if (end > published)
		end = published;
	if (end > pos + 1)
		end = (pos + 1 + TILE - 1) / TILE * TILE;
	*tile = (struct attn_tile){
		.tile_bytes = kp.tile_bytes,
		.vtile_bytes = vp.tile_bytes,
		.vcent = vcent,
		.vcent_lo = vc->cent_lo,
		.vsplit = vc->split,
		.d = vc->d,
		.klayout = &kc->layout,
		.vlayout = &vc->layout,
		.idx = idx_scratch,
	};
	*n_tiles = (end - t0) / TILE < ATTN_CHUNK_TILES ? (unsigned)((end - t0) / TILE) : ATTN_CHUNK_TILES;
	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++) {
		uint64_t first = t0 + (uint64_t)(t < *n_tiles ? t : *n_tiles - 1) * TILE;
		uint64_t tin = (first - b * v->block_tokens) / TILE;
		uint64_t from = lo > first ? lo - first : 0, to = pos - first;  /* valid lanes [from, to] */

		tile->kbits[t] = kp.base + kp.tiles_offset + tin * kp.tile_bytes;
		tile->vbits[t] = vp.base + vp.tiles_offset + tin * vp.tile_bytes;
		tile->knorms[t] = (const uint16_t *)(kp.base + kp.norms_offset) + tin * TILE;
		tile->vnorms[t] = (const uint16_t *)(vp.base + vp.norms_offset) + tin * TILE;
		if (to > TILE - 1)
			to = TILE - 1;
		tile->valid[t] = t < *n_tiles && pos >= first && from <= to
			? (uint16_t)((0xffffu >> (TILE - 1 - to)) & (0xffffu << from)) : 0;
	}
	return 0;
}

/* Asks for a chunk's norms, and with tiles its packed tiles too (the
 * first chunks; later ones are requested by the kernel, spread over its
 * work, as a burst of misses stalls it). */
static inline __attribute__((always_inline)) void prefetch_chunk(const struct attn_tile *tile, unsigned n_tiles, bool tiles)
{
	for (unsigned t = 0; t < n_tiles && tiles; t++) {
		for (unsigned line = 0; line < tile->tile_bytes; line += 64)
			__builtin_prefetch(tile->kbits[t] + line);
		for (unsigned line = 0; line < tile->vtile_bytes; line += 64)
			__builtin_prefetch(tile->vbits[t] + line);
	}
	__builtin_prefetch(tile->knorms[0]);
	__builtin_prefetch(tile->knorms[n_tiles - 1]);
	__builtin_prefetch(tile->vnorms[0]);
	__builtin_prefetch(tile->vnorms[n_tiles - 1]);
}

/* The K and V rows of tail tokens [first, first + n) of head, n <= 16,
 * checked once and the ring slot stepped: tqkv_view_tail_row() checks
 * and divides by the ring's size per row (1087 tokens, 63 in the tail,
 * G=1: 97.1 -> 92.6 ns per token). */
static int tail_rows(const struct tqkv_layer_view *v, uint32_t head, uint64_t first, unsigned n,
		     const uint16_t **krow, const uint16_t **vrow)
{
	uint64_t slot;

	if (first < v->n_blocks * v->block_tokens || first + n > v->n_tokens || head >= v->n_kv_heads || !v->staging_tokens)
		return -EINVAL;
	slot = first % v->staging_tokens;
	for (unsigned t = 0; t < n; t++) {
		krow[t] = view_tail_slot_row(v, slot, head, 0);
		vrow[t] = view_tail_slot_row(v, slot, head, 1);
		if (++slot == v->staging_tokens)
			slot = 0;
	}
	return 0;
}

/* The FP16 tail tokens [first, pos] of head with AVX-512 or AVX2 (isa),
 * 16 at a time. */
static int attend_tail_simd(const struct tqkv_layer_view *v, uint32_t head, const struct tqkv_attn *a,
			    enum cpu_isa isa, uint64_t first, uint64_t pos, struct head_state *st, unsigned g)
{
#ifdef TQKV_HAVE_X86_SIMD
	struct attn_tail_head h[ATTN_TAIL_HEADS];

	for (uint64_t t0 = first; t0 <= pos; t0 += 16) {
		const uint16_t *krow[16], *vrow[16];
		unsigned n = pos + 1 - t0 < 16 ? (unsigned)(pos + 1 - t0) : 16;
		int r = tail_rows(v, head, t0, n, krow, vrow);

		if (r < 0)
			return r;
		for (unsigned k0 = 0; k0 < g; k0 += ATTN_TAIL_HEADS) {
			unsigned m = g - k0 < ATTN_TAIL_HEADS ? g - k0 : ATTN_TAIL_HEADS;

			for (unsigned i = 0; i < m; i++) {
				struct head_state *s = &st[k0 + i];

				h[i] = (struct attn_tail_head){ s->q, s->d, &s->m, &s->l, s->acc, s };
			}
			(isa == CPU_ISA_AVX512 ? attn_tail_avx512 : attn_tail_avx2)(krow, vrow, n, a->scale, h, m);
		}
	}
	return 0;
#else
	(void)v, (void)head, (void)a, (void)isa, (void)first, (void)pos, (void)st, (void)g;
	return -ENOTSUP;
#endif
}

/* A head's query rows before their first token: empty sums. */
static void rows_init(const struct tqkv_layer_view *v, uint32_t head, struct head_state *st, unsigned rows)
{
	const struct tqkv_codec *kc = v->codecs[head * 2], *vc = v->codecs[head * 2 + 1];
	unsigned D = kc->d > vc->d ? kc->d : vc->d;

	for (unsigned k = 0; k < rows; k++) {
		st[k].d = v->head_dim;
		st[k].d_rot = vc->d;
		memset(st[k].acc, 0, sizeof(double) * D);
		if (st[k].acc_rot)
			memset(st[k].acc_rot, 0, sizeof(double) * D);
	}
}

/* How many of left query rows one tile kernel call takes: 1, 2 or 4, the
 * group sizes it is compiled for; further calls on the same chunk find
 * it in cache.  (Eight rows in one call of the generic kernel ran at
 * 526 ns per token at 32K, two calls of four at 394-400; three rows at
 * the speed of three single rows.) */
static unsigned kernel_rows(unsigned left)
{
	return left >= 4 ? 4 : left >= 2 ? 2 : 1;
}

/* The published tokens [lo, hi] of head for rows query rows with a tile
 * kernel: chunks of up to four tiles inside one block, in a ring (the one
 * computed and the ATTN_LOOKAHEAD after it, whose bytes are on their way:
 * blocks of one head are not adjacent in memory, so the hardware
 * prefetcher alone falls behind).  The rows' lanes hold this range's
 * sums, folded into acc_rot at its end: the tail's rescales (and the
 * next range) see only that. */
static int attend_pages_tiles(const struct tqkv_layer_view *v, uint32_t head, const struct tqkv_attn *a,
			      enum kernel kernel, uint64_t lo, uint64_t hi, struct head_state *st, unsigned rows,
			      uint32_t *idx_scratch)
{
	const struct tqkv_codec *kc = v->codecs[head * 2], *vc = v->codecs[head * 2 + 1];
	uint64_t published = v->n_blocks * v->block_tokens, t0 = lo / TILE * TILE;
	struct attn_lane_state ls[4];
	struct attn_tile ring[ATTN_LOOKAHEAD + 1];
	unsigned n_tiles[ATTN_LOOKAHEAD + 1], first = 0, queued = 0, n_chunks = 0;
	struct page_memo memo = { { tqkv_page_size(kc, v->block_tokens), tqkv_page_size(vc, v->block_tokens) },
				  { false, false }, { { 0 } }, { { 0 } } };
	float cent16[64], kcent16[64], unit8 = 0;
	int8_t cent8[256] __attribute__((aligned(64)));
	const float *vcent = vc->cent_hi;
	bool int8_values = kernel == KERNEL_TQ4_AVX512 && (a->flags & TQKV_ATTN_INT8_VALUES);
	int r = 0;

	if (t0 >= published)
		return 0;  /* all in the tail (a batch's own tokens, say) */
	for (unsigned k = 0; k < rows; k++)
		memset(st[k].lanes, 0, sizeof(float) * 16 * vc->d);
	if (kernel == KERNEL_TQ4_AVX512 || kernel == KERNEL_NIBBLE_AVX2) {
		nibble_centroids(vc, cent16);
		vcent = cent16;
		if (int8_values)
			unit8 = nibble_centroids8(cent16, cent8);
	}
	if (kernel == KERNEL_NIBBLE_AVX2)
		nibble_centroids(kc, kcent16);
	/* The first blocks' page metadata, all at once: a short context is
	 * mostly these misses.  The ring requests the later ones. */
	for (unsigned stage = 0; stage < 2; stage++)
		for (uint64_t b = t0 / v->block_tokens; b < t0 / v->block_tokens + 2 * ATTN_LOOKAHEAD + 12; b++)
			prefetch_block_meta(v, b, head, stage);
	while (queued || (t0 <= hi && t0 < published)) {
		struct attn_tile *cur = &ring[first];

		while (queued <= ATTN_LOOKAHEAD && t0 <= hi && t0 < published) {
			unsigned slot = (first + queued) % (ATTN_LOOKAHEAD + 1);

			if (t0 % v->block_tokens == 0) {
				prefetch_block_meta(v, t0 / v->block_tokens + 2 * ATTN_LOOKAHEAD, head, 0);
				prefetch_block_meta(v, t0 / v->block_tokens + ATTN_LOOKAHEAD, head, 1);
			}
			r = chunk_at(v, head, lo, hi, t0, vcent, idx_scratch, &memo, &ring[slot], &n_tiles[slot]);
			if (r < 0)
				return r;
			ring[slot].kcent = kcent16;
			ring[slot].vcent8 = int8_values ? cent8 : NULL;
			ring[slot].vcent8_unit = unit8;
			prefetch_chunk(&ring[slot], n_tiles[slot], n_chunks++ < ATTN_LOOKAHEAD);
			t0 += n_tiles[slot] * TILE;
			queued++;
		}
		/* This chunk's kernel requests the one ATTN_LOOKAHEAD after it. */
		if (queued == ATTN_LOOKAHEAD + 1) {
			const struct attn_tile *later = &ring[(first + ATTN_LOOKAHEAD) % (ATTN_LOOKAHEAD + 1)];
			unsigned n = n_tiles[(first + ATTN_LOOKAHEAD) % (ATTN_LOOKAHEAD + 1)];

			cur->ahead[0] = later->kbits[0];
			cur->ahead[1] = later->vbits[0];
			cur->ahead_bytes[0] = n * later->tile_bytes;
			cur->ahead_bytes[1] = n * later->vtile_bytes;
		}
		for (unsigned k0 = 0, n; k0 < rows; k0 += n) {
			n = kernel_rows(rows - k0);

			for (unsigned k = 0; k < n; k++)
				ls[k] = (struct attn_lane_state){ st[k0 + k].table, st[k0 + k].qrot, st[k0 + k].btab,
								  st[k0 + k].bstep, st[k0 + k].bbias, st[k0 + k].int8,
								  st[k0 + k].q_mean, &st[k0 + k].m, &st[k0 + k].l,
								  st[k0 + k].lanes, &st[k0 + k] };
			if (kernel == KERNEL_TQ4_AVX512)
				attn_tile_tq4_avx512(cur, ls, n);
			else if (kernel == KERNEL_NIBBLE_AVX2)
				attn_tile_nibbles_avx2(cur, ls, n);
			else
				attn_tile_tq_avx512(cur, ls, n);
		}
		first = (first + 1) % (ATTN_LOOKAHEAD + 1);
		queued--;
	}
	for (unsigned k = 0; k < rows; k++)
		lanes_fold(kernel, int8_values, st[k].lanes, vc->d, st[k].acc_rot);
	return 0;
}

/* The published tokens [lo, hi] of head for rows query rows, token by
 * token (the reference). */
static int attend_pages_portable(const struct tqkv_layer_view *v, uint32_t head, const struct tqkv_attn *a,
				 uint64_t lo, uint64_t hi, struct head_state *st, unsigned rows, float *scratch)
{
	const struct tqkv_codec *kc = v->codecs[head * 2], *vc = v->codecs[head * 2 + 1];
	unsigned d = v->head_dim, D = kc->d > vc->d ? kc->d : vc->d;
	uint64_t published = v->n_blocks * v->block_tokens;
	float *krow = scratch, *vrow = scratch + D;
	uint8_t kidx[TQKV_HEAD_DIM_MAX], vidx[TQKV_HEAD_DIM_MAX];

	for (uint64_t t0 = lo / TILE * TILE; t0 <= hi && t0 < published; t0 += TILE) {
		uint64_t b = t0 / v->block_tokens, in = t0 % v->block_tokens;
		struct page_ref kp, vp;
		const uint8_t *kbits, *vbits;
		const uint16_t *kn, *vn;
		int r = page_of(v, b, head, 0, NULL, &kp);

		if (r >= 0)
			r = page_of(v, b, head, 1, NULL, &vp);
		if (r < 0)
			return r;
		kbits = kp.base + kp.tiles_offset + (in / TILE) * kp.tile_bytes;
		vbits = vp.base + vp.tiles_offset + (in / TILE) * vp.tile_bytes;
		kn = kp.norms_offset ? (const uint16_t *)(kp.base + kp.norms_offset) + in : NULL;
		vn = vp.norms_offset ? (const uint16_t *)(vp.base + vp.norms_offset) + in : NULL;
		for (unsigned t = 0; t < TILE; t++) {
			uint64_t tok = t0 + t;

			if (tok < lo || tok > hi)
				continue;
			if (kc->cls != CODEC_CLASS_FP16)
				codec_unpack_token(&kc->layout, kbits, t, kidx);
			if (vc->cls != CODEC_CLASS_FP16)
				codec_unpack_token(&vc->layout, vbits, t, vidx);
			if (!is_tq(kc))
				tile_row(kc, kbits, kn, kidx, t, krow);
			tile_row(vc, vbits, vn, vidx, t, vrow);
			for (unsigned k = 0; k < rows; k++) {
				double s = tile_score(kc, &st[k], kidx, krow, d);

				/* The table holds scale * q'_j * c[m]; keys add their norm. */
				s *= is_tq(kc) ? tqkv_f16_to_f32(kn[t]) : a->scale;
				online_update(&st[k], s + st[k].q_mean, vrow, is_tq(vc) ? st[k].acc_rot : st[k].acc,
					      is_tq(vc) ? vc->d : d);
			}
		}
	}
	return 0;
}

/* Tokens [lo, hi] of head for rows query rows that all see them: the
 * published ones with kernel, the FP16 tail with isa's kernel (AVX-512,
 * AVX2), else the float64 loop.  Exact keys see the same shift as
 * centered ones. */
static int attend_range(const struct tqkv_layer_view *v, uint32_t head, const struct tqkv_attn *a,
			enum kernel kernel, enum cpu_isa isa, uint64_t lo, uint64_t hi, struct head_state *st,
			unsigned rows, float *scratch, uint32_t *idx_scratch)
{
	uint64_t published = v->n_blocks * v->block_tokens, tail = published > lo ? published : lo;
	unsigned d = v->head_dim;
	float *krow = scratch, *vrow = scratch + TQKV_HEAD_DIM_MAX;
	int r;

	if (hi < lo)
		return 0;
	r = kernel == KERNEL_PORTABLE ? attend_pages_portable(v, head, a, lo, hi, st, rows, scratch)
				      : attend_pages_tiles(v, head, a, kernel, lo, hi, st, rows, idx_scratch);
	if (r < 0)
		return r;
	if (isa == CPU_ISA_AVX512 || isa == CPU_ISA_AVX2)
		return attend_tail_simd(v, head, a, isa, tail, hi, st, rows);
	for (uint64_t tok = tail; tok <= hi; tok++) {
		const uint16_t *kr = tqkv_view_tail_row(v, tok, head, 0), *vr = tqkv_view_tail_row(v, tok, head, 1);

		if (!kr || !vr)
			return -EINVAL;
		for (unsigned j = 0; j < d; j++) {
			krow[j] = tqkv_f16_to_f32(kr[j]);
			vrow[j] = tqkv_f16_to_f32(vr[j]);
		}
		for (unsigned k = 0; k < rows; k++)
			online_update(&st[k], a->scale * dot(st[k].q, krow, d), vrow, st[k].acc, d);
	}
	return 0;
}

/* One query token's g rows of head, all tokens seen: the sums
 * normalised, rotated back and written to out. */
static void rows_finish(const struct tqkv_layer_view *v, uint32_t head, enum kernel kernel, struct head_state *st,
			unsigned g, float *out)
{
	const struct tqkv_codec *vc = v->codecs[head * 2 + 1];
	unsigned d = v->head_dim;

	for (unsigned k = 0; k < g; k++) {
		float *o = out + ((size_t)head * g + k) * d;
		double inv = st[k].l > 0 ? 1.0 / st[k].l : 0.0;

		for (unsigned j = 0; j < d; j++)
			o[j] = (float)(st[k].acc[j] * inv);
		if (st[k].acc_rot) {
			/* One float rotation back, of the normalised sums (qrot is
			 * free by now). */
			float *y = st[k].qrot;

			for (unsigned j = 0; j < vc->d; j++)
				y[j] = (float)(st[k].acc_rot[j] * inv);
			unrotate(vc, kernel, y, 1.0f / vc->sqrt_d);
			for (unsigned j = 0; j < d; j++)
				o[j] += y[j];
		}
	}
}

/* The first token query position pos sees. */
static uint64_t window_start(const struct tqkv_attn *a, uint64_t pos)
{
	return a->window && pos + 1 > a->window ? pos + 1 - a->window : 0;
}

/* Attends head for n query tokens at first_pos .. first_pos + n - 1,
 * g rows each (st holds n * g, prepared).  The tokens every query sees
 * are read once for all n * g rows, as one group of n * g query heads
 * would be; each query then adds the ones only it sees (the batch's own
 * later tokens, and with a window, earlier ones).  One query is one
 * range, as before batches were fused. */
static int attend_queries(const struct tqkv_layer_view *v, uint32_t head, const struct tqkv_attn *a,
			  enum kernel kernel, enum cpu_isa isa, uint64_t first_pos, unsigned n, struct head_state *st,
			  unsigned g, float *scratch, uint32_t *idx_scratch)
{
	uint64_t last_pos = first_pos + n - 1, common_lo = window_start(a, last_pos);
	bool shared = common_lo <= first_pos;
	int r = 0;

	rows_init(v, head, st, n * g);
	if (shared)
		r = attend_range(v, head, a, kernel, isa, common_lo, first_pos, st, n * g, scratch, idx_scratch);
	for (unsigned i = 0; i < n && r >= 0; i++) {
		uint64_t pos = first_pos + i, lo = window_start(a, pos);
		struct head_state *rows = st + (size_t)i * g;

		if (!shared) {
			r = attend_range(v, head, a, kernel, isa, lo, pos, rows, g, scratch, idx_scratch);
			continue;
		}
		if (lo < common_lo)
			r = attend_range(v, head, a, kernel, isa, lo, common_lo - 1, rows, g, scratch, idx_scratch);
		if (r >= 0 && pos > first_pos)
			r = attend_range(v, head, a, kernel, isa, first_pos + 1, pos, rows, g, scratch, idx_scratch);
	}
	return r;
}

/* What a thread needs to attend with up to g query heads per KV head:
 * allocated once per thread and kept (a 1K-token call is shorter than the
 * allocations).  Per-head regions are skewed by a few lines so that the
 * same coordinate of different heads is not 4 KiB apart, which makes
 * loads wait on unrelated stores. */
struct scratch {
	unsigned g;
	struct head_state *st;
	float *mem;           /* per head: qrot, table; then 2 rows */
	double *acc;          /* per head: acc, then acc_rot */
	float *lanes;
	uint8_t *btab;
	uint32_t *idx;        /* unpacked indices of a chunk, K and V */
	double *parts;        /* the caller's: its parts' sums (split_ranges()) */
	size_t parts_cap;     /* doubles */
};

#define SCRATCH_D TQKV_HEAD_DIM_MAX
#define SCRATCH_MEM_STRIDE (17 * SCRATCH_D + 16)                     /* floats */
#define SCRATCH_LANES_STRIDE (16 * SCRATCH_D + 80)                   /* floats */
#define SCRATCH_BTAB_STRIDE (SCRATCH_D / 8 * ATTN_TQ4_WORD_TABLE + 320)  /* bytes */

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p)
{
	struct scratch *s = p;

	if (!s)
		return;
	free(s->st);
	free(s->mem);
	free(s->acc);
	free(s->lanes);
	free(s->btab);
	free(s->idx);
	free(s->parts);
	free(s);
}

static void scratch_init(void)
{
	pthread_key_create(&scratch_key, scratch_free);
}

static struct scratch *scratch_get(unsigned g)
{
	struct scratch *s;

	pthread_once(&scratch_once, scratch_init);
	s = pthread_getspecific(scratch_key);
	if (s && s->g >= g)
		return s;
	scratch_free(s);
	pthread_setspecific(scratch_key, NULL);
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->g = g;
	s->st = calloc(g, sizeof(*s->st));
	s->mem = malloc(sizeof(float) * ((size_t)g * SCRATCH_MEM_STRIDE + 2 * SCRATCH_D));
	s->acc = malloc(sizeof(double) * (size_t)g * 2 * SCRATCH_D);
	s->lanes = aligned_alloc(64, sizeof(float) * (size_t)g * SCRATCH_LANES_STRIDE);
	s->btab = aligned_alloc(64, (size_t)g * SCRATCH_BTAB_STRIDE);
	s->idx = aligned_alloc(64, sizeof(uint32_t) * 2 * ATTN_CHUNK_TILES * 16 * SCRATCH_D);
	if (!s->st || !s->mem || !s->acc || !s->lanes || !s->btab || !s->idx || pthread_setspecific(scratch_key, s) != 0) {
		scratch_free(s);
		return NULL;
	}
	for (unsigned k = 0; k < g; k++) {
		float *p = s->mem + (size_t)k * SCRATCH_MEM_STRIDE;

		s->st[k].acc = s->acc + (size_t)k * 2 * SCRATCH_D;
		s->st[k].qrot = p;
		s->st[k].table = p + SCRATCH_D;
		s->st[k].lanes = s->lanes + (size_t)k * SCRATCH_LANES_STRIDE;
		s->st[k].btab = s->btab + (size_t)k * SCRATCH_BTAB_STRIDE;
	}
	return s;
}

/* The first rows of s for KV head head of v: with TurboQuant values,
 * each gets its rotated-domain sums. */
static struct head_state *scratch_rows(struct scratch *s, const struct tqkv_layer_view *v, uint32_t head,
				       unsigned rows)
{
	bool v_tq = is_tq(v->codecs[head * 2 + 1]);

	for (unsigned k = 0; k < rows; k++)
		s->st[k].acc_rot = v_tq ? s->acc + (size_t)k * 2 * SCRATCH_D + SCRATCH_D : NULL;
	return s->st;
}

/* Query tokens fused into one pass over the tokens they share: as many
 * as make 8 rows (g query heads of a KV head per token), so that each
 * chunk serves two kernel calls of four rows while it is in cache.  More
 * rows would only save bytes, and a pass of 8 rows is compute-bound. */
static unsigned fused_queries(unsigned g)
{
	return g < 8 ? 8 / g : 1;
}

static void run_job(void *arg)
{
	struct kv_job *j = arg;
	const struct tqkv_layer_view *v = j->v;
	const size_t row_floats = (size_t)j->a->n_q_heads * v->head_dim;
	const float *q = j->q + j->query_first * row_floats;
	float *out = j->out + j->query_first * row_floats;
	unsigned g = j->a->n_q_heads / v->n_kv_heads, batch = fused_queries(g);
	struct scratch *s = scratch_get(g * (j->n_queries < batch ? j->n_queries : batch));

	if (!s) {
		j->result = -ENOMEM;
		return;
	}
	for (uint32_t h = j->head_first; h < j->head_first + j->head_count && j->result == 0; h++) {
		enum kernel kernel = kernel_for(v->codecs[h * 2], v->codecs[h * 2 + 1], j->isa);

		for (uint32_t i0 = 0; i0 < j->n_queries && j->result == 0; i0 += batch) {
			unsigned n = j->n_queries - i0 < batch ? j->n_queries - i0 : batch;
			struct head_state *st = scratch_rows(s, v, h, n * g);

			for (unsigned i = 0; i < n; i++)
				prepare_queries(v, h, j->a, kernel, q + (i0 + i) * row_floats, st + i * g, g);
			j->result = attend_queries(v, h, j->a, kernel, j->isa, j->a->position + j->query_first + i0, n,
						   st, g, s->mem + (size_t)s->g * SCRATCH_MEM_STRIDE, s->idx);
			for (unsigned i = 0; i < n && j->result == 0; i++)
				rows_finish(v, h, kernel, st + i * g, g, out + (i0 + i) * row_floats);
		}
	}
}

/* One query's tokens [from, to) of one KV head, a part of them: its g
 * rows' sums, not yet normalised, go to sums (PART_ROW doubles per row:
 * m, l, acc, acc_rot). */
struct part_job {
	const struct tqkv_layer_view *v;
	const struct tqkv_attn *a;
	enum cpu_isa isa;
	const float *q;
	uint32_t head;
	uint64_t from, to;
	double *sums;
	int result;
};

#define PART_ROW (2 + 2 * SCRATCH_D)

static void run_part(void *arg)
{
	struct part_job *j = arg;
	const struct tqkv_layer_view *v = j->v;
	unsigned g = j->a->n_q_heads / v->n_kv_heads;
	enum kernel kernel = kernel_for(v->codecs[j->head * 2], v->codecs[j->head * 2 + 1], j->isa);
	struct scratch *s = scratch_get(g);
	struct head_state *st;

	if (!s) {
		j->result = -ENOMEM;
		return;
	}
	st = scratch_rows(s, v, j->head, g);
	prepare_queries(v, j->head, j->a, kernel, j->q, st, g);
	rows_init(v, j->head, st, g);
	if (j->to > j->from)
		j->result = attend_range(v, j->head, j->a, kernel, j->isa, j->from, j->to - 1, st, g,
					 s->mem + (size_t)s->g * SCRATCH_MEM_STRIDE, s->idx);
	for (unsigned k = 0; k < g; k++) {
		double *row = j->sums + (size_t)k * PART_ROW;

		row[0] = st[k].m;
		row[1] = st[k].l;
		memcpy(row + 2, st[k].acc, sizeof(double) * st[k].d);
		if (st[k].acc_rot)
			memcpy(row + 2 + SCRATCH_D, st[k].acc_rot, sizeof(double) * st[k].d_rot);
	}
}

/* parts, or fewer where PART_ROWS_MIN allows only most; 1 below 2. */
static unsigned worthwhile_parts(uint64_t parts, uint64_t most)
{
	if (parts > most)
		parts = most;
	return parts < 2 ? 1 : (unsigned)parts;
}

/* Parts per KV head when a call asks for more threads than there are KV
 * heads (one query): each head's tokens are cut into that many ranges,
 * attended on their own threads and merged by their maxima
 * (flash-decoding), each at least PART_ROWS_MIN tokens times query heads,
 * so that a thread's wake-up (microseconds in a VM) stays small beside
 * its share.  With one KV head (ns per token, one part -> two): 1K tokens
 * and one query head 9.3 -> 11.4, with four 27.1-27.8 -> 26.7-34.3; 2K
 * with four 25.8 -> 18.6; 32K with one 8.4 -> 5.0.  1: split by heads. */
#define PART_ROWS_MIN 4096

static unsigned parts_per_head(const struct tqkv_layer_view *v, const struct tqkv_attn *a, uint32_t n,
			       unsigned threads)
{
	uint64_t lo = window_start(a, a->position), tokens = a->position + 1 - lo, parts = threads / v->n_kv_heads;
	uint64_t most = tokens * (a->n_q_heads / v->n_kv_heads) / PART_ROWS_MIN;

	return n == 1 ? worthwhile_parts(parts, most) : 1;
}

/* Parts per KV head of a batch's queries when a call asks for more
 * threads than there are KV heads: each part's queries attend on a
 * thread of their own (fused among themselves), at least PART_ROWS_MIN
 * tokens times query rows each.  1: split by heads. */
static unsigned batch_parts(const struct tqkv_layer_view *v, const struct tqkv_attn *a, uint32_t n,
			    unsigned threads)
{
	uint64_t parts = threads / v->n_kv_heads, tokens = a->position + 1 - window_start(a, a->position);
	uint64_t most = tokens * (a->n_q_heads / v->n_kv_heads) * n / PART_ROWS_MIN;

	return n > 1 ? worthwhile_parts(parts < n ? parts : n, most) : 1;
}

/* Where part p of parts of tokens [lo, lo + tokens) starts: at a block
 * boundary, so that no page is read by two parts (non-decreasing in p). */
static uint64_t part_cut(const struct tqkv_layer_view *v, uint64_t lo, uint64_t tokens, unsigned p, unsigned parts)
{
	uint64_t B = v->block_tokens ? v->block_tokens : 1, at = (lo + tokens * p / parts) / B * B;

	return p == 0 || at < lo ? lo : p == parts ? lo + tokens : at;
}

/* One query on parts threads per KV head (parts_per_head()): the parts'
 * sums meet in the caller's scratch, are merged per row and finished. */
static int split_ranges(const struct tqkv_layer_view *v, const float *q, const struct tqkv_attn *a,
			enum cpu_isa isa, unsigned parts, float *out)
{
	unsigned g = a->n_q_heads / v->n_kv_heads, n_jobs = v->n_kv_heads * parts;
	uint64_t lo = window_start(a, a->position), tokens = a->position + 1 - lo;
	size_t need = (size_t)n_jobs * g * PART_ROW;
	struct scratch *s = scratch_get(g);
	struct part_job jobs[64];
	int r = 0;

	if (!s)
		return -ENOMEM;
	if (s->parts_cap < need) {
		double *p = realloc(s->parts, sizeof(double) * need);

		if (!p)
			return -ENOMEM;
		s->parts = p;
		s->parts_cap = need;
	}
	for (unsigned i = 0; i < n_jobs; i++) {
		unsigned h = i / parts, part = i % parts;

		jobs[i] = (struct part_job){ v, a, isa, q, h, part_cut(v, lo, tokens, part, parts),
					     part_cut(v, lo, tokens, part + 1, parts), s->parts + (size_t)i * g * PART_ROW,
					     0 };
	}
	attn_pool_run(run_part, jobs, sizeof(jobs[0]), n_jobs);
	for (unsigned i = 0; i < n_jobs; i++)
		if (jobs[i].result < 0)
			r = jobs[i].result;
	/* The caller's own part is done, so its scratch is free for the merge. */
	for (uint32_t h = 0; h < v->n_kv_heads && r == 0; h++) {
		enum kernel kernel = kernel_for(v->codecs[h * 2], v->codecs[h * 2 + 1], isa);
		struct head_state *st = scratch_rows(s, v, h, g);

		rows_init(v, h, st, g);
		for (unsigned k = 0; k < g; k++) {
			/* Row k of the head's first part; the next part's is g rows on. */
			const double *first = s->parts + ((size_t)h * parts * g + k) * PART_ROW;
			const size_t stride = (size_t)g * PART_ROW;
			double m = -INFINITY;

			for (unsigned part = 0; part < parts; part++)
				m = fmax(m, first[part * stride]);
			st[k].m = m;
			st[k].l = 0;
			for (unsigned part = 0; part < parts; part++) {
				const double *row = first + part * stride;
				double f = row[1] > 0 ? exp(row[0] - m) : 0;

				st[k].l += f * row[1];
				for (unsigned j = 0; j < st[k].d; j++)
					st[k].acc[j] += f * row[2 + j];
				for (unsigned j = 0; st[k].acc_rot && j < st[k].d_rot; j++)
					st[k].acc_rot[j] += f * row[2 + SCRATCH_D + j];
			}
		}
		rows_finish(v, h, kernel, st, g, out);
	}
	return r;
}

TQKV_EXPORT int tqkv_attend_batch(const struct tqkv_layer_view *v, const float *q, uint32_t n,
				  const struct tqkv_attn *a, float *out)
{
	unsigned threads, parts;
	enum cpu_isa isa;
	struct kv_job jobs[64];
	int r = 0;

	if (!v || !q || !a || !out || n == 0 || v->n_kv_heads == 0 || a->n_q_heads % v->n_kv_heads ||
	    a->n_q_heads == 0 || n > v->n_tokens || a->position > v->n_tokens - n ||
	    (a->flags & ~(uint32_t)(TQKV_ATTN_INT8_SCORES | TQKV_ATTN_INT8_VALUES)))
		return -EINVAL;
	isa = isa_for(a->kernel);
	if (isa == CPU_ISA_MAX)
		return -ENOTSUP;
	threads = a->threads ? a->threads : 1;
	if (threads > 64)
		threads = 64;
	parts = parts_per_head(v, a, n, threads);
	if (parts > 1)
		return split_ranges(v, q, a, isa, parts, out);
	parts = batch_parts(v, a, n, threads);
	if (parts > 1) {
		/* Each KV head's queries in parts, on threads of their own. */
		threads = v->n_kv_heads * parts;
		for (unsigned i = 0; i < threads; i++) {
			uint32_t h = i / parts, first = n * (i % parts) / parts, last = n * (i % parts + 1) / parts;

			jobs[i] = (struct kv_job){ v, a, isa, q, out, last - first, h, 1, first, 0 };
		}
	} else {
		if (threads > v->n_kv_heads)
			threads = v->n_kv_heads;
		/* Split over KV heads: each thread owns whole groups, no merge needed. */
		for (unsigned i = 0; i < threads; i++) {
			uint32_t first = v->n_kv_heads * i / threads, last = v->n_kv_heads * (i + 1) / threads;

			jobs[i] = (struct kv_job){ v, a, isa, q, out, n, first, last - first, 0, 0 };
		}
	}
	attn_pool_run(run_job, jobs, sizeof(jobs[0]), threads);
	for (unsigned i = 0; i < threads; i++)
		if (jobs[i].result < 0)
			r = jobs[i].result;
	return r;
}

TQKV_EXPORT int tqkv_attend(const struct tqkv_layer_view *v, const float *q, const struct tqkv_attn *a, float *out)
{
	return tqkv_attend_batch(v, q, 1, a, out);
}
