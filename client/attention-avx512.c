/* SPDX-License-Identifier: MIT */
/*
 * AVX-512 tile kernel for 4-bit TurboQuant K and V (PERFORMANCE.md): one
 * zmm lane per token of a 16-token tile, so a 64-byte chunk of a plane is
 * one word of every token.  Scores: per nibble field, vpermps looks the
 * nibbles of 16 tokens up in the query's float table row T_i (exact: no
 * int8 rounding) and adds them.  Values: per coordinate, vpermps looks up
 * the centroids and one FMA adds p * norm * c into a per-lane accumulator;
 * lanes are summed once at the end of the call.  Softmax is online per
 * tile with a vector exp.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <tqkv/codec.h>
#include <tqkv/page.h>

#include "attention-private.h"
#include "exp-avx512.h"
#include "tq3-words.h"

/* The unit of a score table that spans units steps: the largest entry,
 * max |qs_j| * max |c|, over units (1 if that is 0 or not finite); *qmax
 * gets max |qs_j|.  Every word type's table holds the same centroids, so
 * cent's first 16 are enough. */
static float table_step(const float *qs, const float *cent, unsigned d, float units, float *qmax)
{
	float q = 0, step;

	for (unsigned j = 0; j < d; j++)
		q = fabsf(qs[j]) > q ? fabsf(qs[j]) : q;
	step = q * _mm512_reduce_max_ps(_mm512_abs_ps(_mm512_loadu_ps(cent))) / units;
	*qmax = q;
	return step > 0 && isfinite(step) ? step : 1.0f;
}

/* The byte tables of the 4-bit score kernel, per query: for the scaled
 * rotated query qs, T[j][m] = qs_j * c_j[m] = step * (65536 h + 256 m + l)
 * with h a signed byte and m, l unsigned ones (24 bits: an int16 table
 * alone moves the output by ~1e-4).  For packed word w, byte b of a
 * token's dword holds the nibbles of coordinates w + 2bW (low) and
 * w + (2b+1)W (high), so the low-nibble tables of word w have
 * T[w + 2bW][m] at byte 16b + m and the high-nibble ones T[w + (2b+1)W][m].
 * Per word: low h, m, l, then high h, m, l (64 bytes each).  c_j is the
 * centroid table of word w's type (attention.c). */
float attn_tq4_tables_avx512(const float *qs, const float *cent, unsigned d, uint8_t *btab)
{
	const unsigned W = d / 8;
	float qmax;
	/* Below 2^23 by a margin that float rounding of T / step cannot cross. */
	float step = table_step(qs, cent, d, 8388352.0f, &qmax);
	__m512 inv = _mm512_set1_ps(1.0f / step);
	for (unsigned w = 0; w < W; w++)
		for (unsigned half = 0; half < 2; half++) {
			uint8_t *t = btab + (size_t)w * ATTN_TQ4_WORD_TABLE + half * 192;
			__m512i v[4];

			for (unsigned b = 0; b < 4; b++) {
				unsigned j = w + (2 * b + half) * W;
				__m512 row = _mm512_mul_ps(_mm512_set1_ps(qs[j]), _mm512_loadu_ps(cent + 16 * (w % 4)));

				v[b] = _mm512_cvtps_epi32(_mm512_mul_ps(row, inv));
			}
			/* Byte 2 of the 24-bit values (h, signed as the value is),
			 * then bytes 1 and 0: each table gathers one byte of every
			 * dword, two registers per vpermt2b (a loop of 16-entry
			 * narrowing stores took twice as long). */
			for (unsigned plane = 0; plane < 3; plane++) {
				const __m512i pick = _mm512_add_epi8(_mm512_set1_epi8((char)(2 - plane)),
								     _mm512_set_epi64(0, 0, 0, 0, 0x7c7874706c686460ll,
										      0x5c5854504c484440ll, 0x3c3834302c282420ll,
										      0x1c1814100c080400ll));
				__m512i lo = _mm512_permutex2var_epi8(v[0], pick, v[1]);
				__m512i hi = _mm512_permutex2var_epi8(v[2], pick, v[3]);

				_mm512_storeu_si512(t + plane * 64, _mm512_inserti64x4(lo, _mm512_castsi512_si256(hi), 1));
			}
		}
	return step;
}

/* The 8-bit tables of TQKV_ATTN_INT8_SCORES: T[j][m] = qs_j * c_j[m] ~
 * step * s_j * (t - 128), t an unsigned byte and s_j in 1..127 about
 * 127 |qs_j| / max |qs|, so that each coordinate's table spans 8 bits of
 * its own range (a single scale for all would round small coordinates
 * to nothing).  vpdpbusd multiplies the looked-up bytes by their s_j.
 * Byte positions as in attn_tq4_tables_avx512.  *bias = 128 * sum s_j. */
float attn_tq4_tables8_avx512(const float *qs, const float *cent, unsigned d, uint8_t *btab, int32_t *bias)
{
	const unsigned W = d / 8;
	float qmax;
	/* |T| / (step s_j) stays below 127 by a margin for float rounding. */
	float step = table_step(qs, cent, d, 126.9f * 127.0f, &qmax);
	int32_t sum = 0;
	for (unsigned w = 0; w < W; w++)
		for (unsigned half = 0; half < 2; half++) {
			uint8_t *tab = btab + (size_t)w * ATTN_TQ4_WORD_TABLE;

			for (unsigned b = 0; b < 4; b++) {
				unsigned j = w + (2 * b + half) * W;
				float s = fminf(fmaxf(ceilf(fabsf(qs[j]) / qmax * 127.0f), 1.0f), 127.0f);
				__m512 row = _mm512_mul_ps(_mm512_set1_ps(qs[j] / (step * s)), _mm512_loadu_ps(cent + 16 * (w % 4)));
				__m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(row), _mm512_set1_epi32(128));

				_mm_storeu_si128((__m128i *)(tab + half * 64 + b * 16), _mm512_cvtusepi32_epi8(v));
				tab[128 + half * 4 + b] = (uint8_t)s;
				sum += (int32_t)s;
			}
		}
	*bias = 128 * sum;
	return step;
}

/* Nibble word w of a 3-bit plane (tq3-words.h): a stored word for types
 * 0-2, and (A & 8) | (B & 4) | (C & 3) per nibble for type 3. */
static inline __attribute__((always_inline)) __m512i tq3_nibble_word(const uint8_t *plane, unsigned w)
{
	const uint8_t *group = plane + (w / 4) * 3 * 64;
	__m512i ab;

	if (w % 4 < 3)
		return _mm512_loadu_si512(group + (w % 4) * 64);
	/* (a & m) | (b & ~m) */
	ab = _mm512_ternarylogic_epi32(_mm512_loadu_si512(group), _mm512_loadu_si512(group + 64),
				       _mm512_set1_epi32((int)0x88888888u), 0xe4);
	return _mm512_ternarylogic_epi32(ab, _mm512_loadu_si512(group + 128), _mm512_set1_epi32((int)0xccccccccu),
					 0xe4);
}

/* Word w of a tile as 4-bit nibble words: coordinate w + W k (W = d / 8)
 * in nibble k.  4-bit tiles are that already, and 3-bit ones nearly
 * (tq3_nibble_word; their nibbles are looked up per word type).  2-bit
 * tiles hold 16 fields per word: coordinate i = w + W2 f (W2 = W / 2) in
 * field f of word w, so the even fields of word w are nibble word w and
 * the odd ones nibble word w + W2.  A nibble's bits above its index then
 * belong to other indices, so the tables repeat their centroids.
 *
 * B (index bits) and D (padded dimension) are the layout's when constant
 * (the kernel is specialised for the common cases), else 0: read them
 * from the layout. */
static inline __attribute__((always_inline)) __m512i nibble_word(const struct tqkv_layout *l, unsigned B, unsigned D,
								 const uint8_t *bits, unsigned w)
{
	const __m512i m = _mm512_set1_epi32(0x33333333);
	unsigned b = B ? B : l->bits_hi, W2 = D ? D / 16 : l->padded_dim / 16;
	__m512i L;

	if (b == 4)
		return _mm512_loadu_si512(bits + w * 64);
	if (b == 3)
		return tq3_nibble_word(bits, w);
	L = _mm512_loadu_si512(bits + (w % W2) * 64);
	if (w >= W2)
		L = _mm512_srli_epi32(L, 2);
	return _mm512_and_si512(L, m);
}

/* The vpermb indices of word w of a chunk's K tile t: low and high nibbles. */
static inline __attribute__((always_inline)) void key_indices(const struct attn_tile *tile, unsigned B, unsigned D,
							       unsigned t, unsigned w, __m512i *idx)
{
	const __m512i mask = _mm512_set1_epi8(0x0f), pos = _mm512_set1_epi32(0x30201000);
	__m512i word = nibble_word(tile->klayout, B, D, tile->kbits[t], w);

	/* (a & b) | c */
	idx[0] = _mm512_ternarylogic_epi32(word, mask, pos, 0xea);
	idx[1] = _mm512_ternarylogic_epi32(_mm512_srli_epi32(word, 4), mask, pos, 0xea);
}

/* The vpermb indices of a chunk's K words: [tile * W + w][low, high]. */
static inline __attribute__((always_inline)) void chunk_key_indices(const struct attn_tile *tile, unsigned B,
								     unsigned D, unsigned W, __m512i (*idx)[2])
{
	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
		for (unsigned w = 0; w < W; w++)
			key_indices(tile, B, D, t, w, idx[t * W + w]);
}

/* Scores of the chunk's four tiles for one query head.  Per packed word, the
 * low and the high nibbles of every byte become vpermb indices (nibble |
 * byte position << 4) into that word's 64-entry tables; vpdpbusd adds the
 * four looked-up bytes of a token into its int32 lane: h bytes as signed
 * against ones, m and l bytes as unsigned against ones.  Integer sums are
 * exact, so the only rounding is the table's (relative 2^-23).  int8
 * (TQKV_ATTN_INT8_SCORES): one 8-bit table, each byte times its
 * coordinate's multiplier (attn_tq4_tables8_avx512).  fused (one query
 * head): the indices are made here from the page words, not read from idx;
 * storing and reloading them cost 10% more (stores of a zmm take two cycles
 * on Zen 4). */
static inline __attribute__((always_inline)) void chunk_scores(const struct attn_tile *tile, unsigned B, unsigned D,
								unsigned W, __m512i (*idx)[2], bool fused, bool int8,
								const struct attn_lane_state *st, __m512 *s)
{
	const __m512i ones = _mm512_set1_epi8(1);
	__m512i h[ATTN_CHUNK_TILES], m[ATTN_CHUNK_TILES], l[ATTN_CHUNK_TILES];

	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
		h[t] = m[t] = l[t] = _mm512_setzero_si512();
	for (unsigned w = 0; w < W; w++) {
		const uint8_t *tab = st->btab + (size_t)w * ATTN_TQ4_WORD_TABLE;
		__m512i own[ATTN_CHUNK_TILES][2];

		for (unsigned t = 0; t < ATTN_CHUNK_TILES && fused; t++)
			key_indices(tile, B, D, t, w, own[t]);
		for (unsigned half = 0; half < 2; half++) {
			const __m512i th = _mm512_load_si512(tab + half * (int8 ? 64 : 192));
			__m512i tm = th, tl = th, mul = ones;

			if (int8) {
				int32_t s_j;

				memcpy(&s_j, tab + 128 + half * 4, 4);
				mul = _mm512_set1_epi32(s_j);
			} else {
				tm = _mm512_load_si512(tab + half * 192 + 64);
				tl = _mm512_load_si512(tab + half * 192 + 128);
			}
			for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++) {
				const __m512i i = fused ? own[t][half] : idx[t * W + w][half];

				if (int8) {
					h[t] = _mm512_dpbusd_epi32(h[t], _mm512_permutexvar_epi8(i, th), mul);
					continue;
				}
				h[t] = _mm512_dpbusd_epi32(h[t], ones, _mm512_permutexvar_epi8(i, th));
				m[t] = _mm512_dpbusd_epi32(m[t], _mm512_permutexvar_epi8(i, tm), ones);
				l[t] = _mm512_dpbusd_epi32(l[t], _mm512_permutexvar_epi8(i, tl), ones);
			}
		}
	}
	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++) {
		__m512 x;

		if (int8) {
			s[t] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(h[t], _mm512_set1_epi32(st->bbias))),
					     _mm512_set1_ps(st->bstep));
			continue;
		}
		x = _mm512_mul_ps(_mm512_cvtepi32_ps(h[t]), _mm512_set1_ps(st->bstep * 65536.0f));
		x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(m[t]), _mm512_set1_ps(st->bstep * 256.0f), x);
		s[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(l[t]), _mm512_set1_ps(st->bstep), x);
	}
}

/* One softmax update per chunk for a query head: scores s[t] become
 * weights times value norms p[t]. */
static void chunk_softmax(const struct attn_tile *tile, struct attn_lane_state *st, __m512 *s, __m512 *p)
{
	float m_new, sum = 0;
	double m_old = *st->m;
	__m512 max;

	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++) {
		__m512 kn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)tile->knorms[t]));

		s[t] = _mm512_fmadd_ps(s[t], kn, _mm512_set1_ps(st->q_mean));
		s[t] = _mm512_mask_blend_ps(tile->valid[t], _mm512_set1_ps(-INFINITY), s[t]);
	}
	/* The running max moves only when a score passes it by ATTN_MAX_SLACK
	 * (attention-private.h); one compare finds out, and the horizontal
	 * maximum and the rescale of the lanes run only then. */
	max = _mm512_max_ps(_mm512_max_ps(s[0], s[1]), _mm512_max_ps(s[2], s[3]));
	m_new = (float)m_old;
	if (_mm512_cmp_ps_mask(max, _mm512_set1_ps((float)m_old + ATTN_MAX_SLACK), _CMP_GT_OQ)) {
		m_new = _mm512_reduce_max_ps(max);
		attn_move_max(st, m_new);
	}
	{
		__m512 total = _mm512_setzero_ps();

		for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++) {
			__m512 vn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)tile->vnorms[t]));

			p[t] = _mm512_maskz_mov_ps(tile->valid[t], exp_avx512(_mm512_sub_ps(s[t], _mm512_set1_ps(m_new))));
			total = _mm512_add_ps(total, p[t]);
			p[t] = _mm512_mul_ps(p[t], vn);
		}
		sum = _mm512_reduce_add_ps(total);
	}
	*st->l += sum;
}

/* lanes[i] += sum over tiles of weights * centroids, per query head: the
 * accumulator is loaded and stored once per chunk. */
static void accumulate_values(struct attn_lane_state *st, unsigned g, unsigned i, const __m512 *c,
			      __m512 (*p)[ATTN_CHUNK_TILES])
{
	for (unsigned k = 0; k < g; k++) {
		float *a = st[k].lanes + i * 16;
		__m512 x = _mm512_load_ps(a);

		for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
			x = _mm512_fmadd_ps(p[k][t], c[t], x);
		_mm512_store_ps(a, x);
	}
}

/* The values of packed word w of a chunk, centroids cent (16; loaded
 * per word: at g = 4 registers are short). */
static inline __attribute__((always_inline)) void values_word(const struct attn_tile *tile,
							       struct attn_lane_state *st, unsigned g, unsigned VB,
							       unsigned D_const, unsigned W, unsigned w, const float *centroids,
							       __m512 (*p)[ATTN_CHUNK_TILES])
{
	const __m512 cent = _mm512_loadu_ps(centroids);
	__m512i word[ATTN_CHUNK_TILES];

	attn_prefetch_slice(tile, w, W);
	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
		word[t] = nibble_word(tile->vlayout, VB, D_const, tile->vbits[t], w);
	/* Unrolled, so that every shift has an immediate count: GCC left
	 * this loop rolled for g = 4, and a shift by a count in a register
	 * takes a shuffle port on Zen 4 (6% of the g = 4 time, measured). */
#pragma GCC unroll 8
	for (unsigned f = 0; f < 8; f++) {
		__m512 c[ATTN_CHUNK_TILES];

		for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
			c[t] = _mm512_permutexvar_ps(_mm512_srli_epi32(word[t], 4 * f), cent);
		accumulate_values(st, g, w + f * W, c, p);
	}
}

/* TQKV_ATTN_INT8_VALUES.  vpdpbusd adds four byte products into a dword,
 * so the four bytes must be one coordinate of four tokens: byte q of a
 * token's dword, taken from the chunk's four tiles.  transpose_bytes()
 * gathers them: y[j] holds, in each 128-bit lane, the lane's token j, its
 * dword q made of byte q of that token in tiles 0-3.  Dword q of every
 * y[j] thus holds the nibbles of the same two coordinates (w + 2qW low,
 * w + (2q+1)W high), whatever j and lane, and one accumulator per nibble
 * half serves all four y[j]: lanes[(2w + half) * 16 + l] holds
 * coordinate w + (2 (l % 4) + half) W (lanes_fold() in attention.c). */
_Static_assert(ATTN_CHUNK_TILES == 4, "the byte transposition takes four tiles");

static inline __attribute__((always_inline)) void transpose_bytes(const __m512i *x, __m512i *y)
{
	__m512i a = _mm512_unpacklo_epi8(x[0], x[1]), b = _mm512_unpackhi_epi8(x[0], x[1]);
	__m512i c = _mm512_unpacklo_epi8(x[2], x[3]), e = _mm512_unpackhi_epi8(x[2], x[3]);

	y[0] = _mm512_unpacklo_epi16(a, c);
	y[1] = _mm512_unpackhi_epi16(a, c);
	y[2] = _mm512_unpacklo_epi16(b, e);
	y[3] = _mm512_unpackhi_epi16(b, e);
}

/* A head's weights p of the chunk's four tiles as bytes, 255 for the
 * chunk's largest (rounded to nearest: a weight is off by at most 1/510
 * of that), each repeated in its token's four bytes and transposed as the
 * index words are, so that byte t of every dword of w[j] weighs tile t's
 * token there.  Returns the weight of one unit. */
static inline __attribute__((always_inline)) float chunk_weights8(const __m512 *p, __m512i *w)
{
	const __m512i spread = _mm512_set4_epi32(0x0c0c0c0c, 0x08080808, 0x04040404, 0);
	float pmax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(p[0], p[1]), _mm512_max_ps(p[2], p[3])));
	__m512 scale = _mm512_set1_ps(pmax > 0 ? 255.0f / pmax : 0.0f);
	__m512i x[ATTN_CHUNK_TILES];

	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++) {
		__m512i b = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(p[t], scale)), _mm512_set1_epi32(255));

		x[t] = _mm512_shuffle_epi8(b, spread);
	}
	transpose_bytes(x, w);
	return pmax / 255.0f;
}

/* The values of packed word w of a chunk with byte weights wv and byte
 * centroids cent8 (unit[k]: head k's product of the two units): per
 * nibble half one vpermb per y[j] and, per head, one vpdpbusd per y[j]
 * for 64 tokens of a coordinate where the float path takes four FMAs and
 * four lookups for 16. */
static inline __attribute__((always_inline)) void values_word8(const struct attn_tile *tile,
								struct attn_lane_state *st, unsigned g, unsigned VB,
								unsigned D_const, unsigned W, unsigned w,
								const int8_t *cent8, __m512i (*wv)[4], const float *unit)
{
	const __m512i cent = _mm512_load_si512(cent8);
	__m512i x[ATTN_CHUNK_TILES], y[4], lo[4], hi[4];

	attn_prefetch_slice(tile, w, W);
	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
		x[t] = nibble_word(tile->vlayout, VB, D_const, tile->vbits[t], w);
	transpose_bytes(x, y);
	for (unsigned j = 0; j < 4; j++) {
		lo[j] = _mm512_permutexvar_epi8(y[j], cent);
		hi[j] = _mm512_permutexvar_epi8(_mm512_srli_epi16(y[j], 4), cent);
	}
	for (unsigned k = 0; k < g; k++) {
		float *l = st[k].lanes + w * 32;
		__m512i a = _mm512_setzero_si512(), b = a;

		for (unsigned j = 0; j < 4; j++) {
			a = _mm512_dpbusd_epi32(a, wv[k][j], lo[j]);
			b = _mm512_dpbusd_epi32(b, wv[k][j], hi[j]);
		}
		_mm512_store_ps(l, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(unit[k]), _mm512_load_ps(l)));
		_mm512_store_ps(l + 16,
				_mm512_fmadd_ps(_mm512_cvtepi32_ps(b), _mm512_set1_ps(unit[k]), _mm512_load_ps(l + 16)));
	}
}

/* The values of a chunk with byte weights (TQKV_ATTN_INT8_VALUES). */
static inline __attribute__((always_inline)) void chunk_values8(const struct attn_tile *tile,
								 struct attn_lane_state *st, unsigned g, unsigned VB,
								 unsigned D_const, unsigned W, bool typed,
								 __m512 (*p)[ATTN_CHUNK_TILES])
{
	__m512i wv[8][4];
	float unit[8];

	for (unsigned k = 0; k < g; k++)
		unit[k] = chunk_weights8(p[k], wv[k]) * tile->vcent8_unit;
	if (typed) {
		for (unsigned w = 0; w < W; w += 4)
#pragma GCC unroll 4
			for (unsigned type = 0; type < 4; type++)
				values_word8(tile, st, g, VB, D_const, W, w + type, tile->vcent8 + 64 * type, wv, unit);
	} else {
		for (unsigned w = 0; w < W; w++)
			values_word8(tile, st, g, VB, D_const, W, w, tile->vcent8, wv, unit);
	}
}

/* The 4-bit kernel for g query heads; inlined with g a constant for the
 * common group sizes so that the weights stay in registers, and with the
 * K and V index bits (KB, VB) and the dimension D constant (else 0) for
 * the common layouts, so that the loops unroll. */
static inline __attribute__((always_inline)) void tile_tq4(const struct attn_tile *tile,
							    struct attn_lane_state *st, unsigned g, unsigned KB,
							    unsigned VB, unsigned D_const, bool int8)
{
	const unsigned D = D_const ? D_const : tile->d, W = D / 8;
	const bool typed = (VB ? VB : tile->vlayout->bits_hi) == 3;  /* centroids per word type */
	__m512i kidx[ATTN_CHUNK_TILES * TQKV_HEAD_DIM_MAX / 8][2];
	__m512 p[8][ATTN_CHUNK_TILES];

	if (g > 1)
		chunk_key_indices(tile, KB, D_const, W, kidx);
	for (unsigned k = 0; k < g; k++) {
		__m512 s[ATTN_CHUNK_TILES];

		chunk_scores(tile, KB, D_const, W, kidx, g == 1, int8, &st[k], s);
		chunk_softmax(tile, &st[k], s, p[k]);
	}
	if (tile->vcent8) {
		chunk_values8(tile, st, g, VB, D_const, W, typed, p);
		return;
	}
	/* Values: per coordinate, each tile's centroids, weighted.  3-bit
	 * words go by four so that each one's type, and so its centroids,
	 * is a constant (unrolling the 4-bit loop slows it). */
	if (typed) {
		for (unsigned w = 0; w < W; w += 4)
#pragma GCC unroll 4
			for (unsigned type = 0; type < 4; type++)
				values_word(tile, st, g, VB, D_const, W, w + type, tile->vcent + 16 * type, p);
	} else {
		for (unsigned w = 0; w < W; w++)
			values_word(tile, st, g, VB, D_const, W, w, tile->vcent, p);
	}
}

/* The index of each nibble value per word type (tq3_nibble_index), built
 * once. */
static int32_t tq3_map[4][16];
static pthread_once_t tq3_map_once = PTHREAD_ONCE_INIT;

static void tq3_map_build(void)
{
	for (unsigned T = 0; T < 4; T++)
		for (unsigned n = 0; n < 16; n++)
			tq3_map[T][n] = (int32_t)tq3_nibble_index(T, n);
}

/* A 3-bit plane's indices (always its coordinates' whole index): nibble
 * k of nibble word w is coordinate w + W k, mapped per word type. */
static void unpack_tq3(const struct tqkv_plane *pl, const uint8_t *bits, __m512i *idx)
{
	unsigned W = pl->n_coords / 8;

	pthread_once(&tq3_map_once, tq3_map_build);
	for (unsigned w = 0; w < W; w++) {
		__m512i word = tq3_nibble_word(bits + pl->offset, w), m = _mm512_loadu_si512(tq3_map[w % 4]);

		for (unsigned k = 0; k < 8; k++)
			idx[pl->first_coord + w + W * k] = _mm512_permutexvar_epi32(_mm512_srli_epi32(word, 4 * k), m);
	}
}

/* Unpacks a tile's planes: idx[i] holds coordinate i's index for the 16
 * tokens (one per lane).  Words of 16 bits (tiny planes) are widened.  The
 * plane with an index's low bits comes first for its coordinates (codec.c),
 * so it assigns and the others OR. */
static void unpack_tile(const struct tqkv_layout *l, const uint8_t *bits, __m512i *idx)
{
	for (unsigned p = 0; p < l->n_planes; p++) {
		const struct tqkv_plane *pl = &l->planes[p];
		const __m512i mask = _mm512_set1_epi32((1 << pl->bits) - 1);
		unsigned fields = pl->n_coords / pl->words;

		if (pl->bits == 3) {
			unpack_tq3(pl, bits, idx);
			continue;
		}
		for (unsigned w = 0; w < pl->words; w++) {
			__m512i word = pl->word_bits == 32
				? _mm512_loadu_si512(bits + pl->offset + w * 64)
				: _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(bits + pl->offset + w * 32)));

			for (unsigned f = 0; f < fields; f++) {
				__m512i v = _mm512_and_si512(_mm512_srli_epi32(word, f * pl->bits), mask);
				unsigned i = pl->first_coord + w + f * pl->words;

				idx[i] = pl->shift ? _mm512_or_si512(idx[i], _mm512_slli_epi32(v, pl->shift)) : v;
			}
		}
	}
}

/* The kernel with g, the index bits and the dimension (0: the layout's)
 * constant for 1, 2 and 4 query heads per KV head, exact or with 8-bit
 * score tables (I8). */
#define TILE_CASE_G(KB, VB, D, I8)                          \
	do {                                                \
		if (g == 1)                                 \
			tile_tq4(tile, st, 1, KB, VB, D, I8); \
		else if (g == 2)                            \
			tile_tq4(tile, st, 2, KB, VB, D, I8); \
		else if (g == 4)                            \
			tile_tq4(tile, st, 4, KB, VB, D, I8); \
		else                                        \
			tile_tq4(tile, st, g, KB, VB, D, I8); \
	} while (0)
#define TILE_CASE(KB, VB, D)                         \
	do {                                         \
		if (st[0].int8)                      \
			TILE_CASE_G(KB, VB, D, true);  \
		else                                 \
			TILE_CASE_G(KB, VB, D, false); \
	} while (0)

/* Specialised for the common layouts.  Constant bits help every case;
 * unrolling the loops of head_dim 128 helps 3-bit pages, whose word types
 * then become constants, but slows 4-bit ones (measured,
 * docs/PERFORMANCE.md). */
void attn_tile_tq4_avx512(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g)
{
	const struct tqkv_layout *kl = tile->klayout, *vl = tile->vlayout;
	bool uniform = kl->bits_hi == kl->bits_lo && vl->bits_hi == vl->bits_lo && kl->bits_hi == vl->bits_hi;

	if (uniform && kl->bits_hi == 4)
		TILE_CASE(4, 4, 0);
	else if (uniform && kl->bits_hi == 3 && tile->d == 128)
		TILE_CASE(3, 3, 128);
	else
		TILE_CASE(0, 0, 0);
}

void attn_tile_tq_avx512(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g)
{
	const unsigned D = tile->d;
	const __m512 vc_hi = _mm512_loadu_ps(tile->vcent), vc_lo = _mm512_loadu_ps(tile->vcent_lo);
	__m512i *kidx = (__m512i *)tile->idx, *vidx = kidx + ATTN_CHUNK_TILES * D;
	__m512 p[8][ATTN_CHUNK_TILES];

	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++) {
		unpack_tile(tile->klayout, tile->kbits[t], kidx + t * D);
		unpack_tile(tile->vlayout, tile->vbits[t], vidx + t * D);
	}
	for (unsigned k = 0; k < g; k++) {
		__m512 s[ATTN_CHUNK_TILES], s2[ATTN_CHUNK_TILES];

		for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
			s[t] = s2[t] = _mm512_setzero_ps();
		for (unsigned i = 0; i < D; i += 2) {
			__m512 r0 = _mm512_loadu_ps(st[k].table + i * 16), r1 = _mm512_loadu_ps(st[k].table + i * 16 + 16);

			for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++) {
				s[t] = _mm512_add_ps(s[t], _mm512_permutexvar_ps(kidx[t * D + i], r0));
				s2[t] = _mm512_add_ps(s2[t], _mm512_permutexvar_ps(kidx[t * D + i + 1], r1));
			}
		}
		for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
			s[t] = _mm512_add_ps(s[t], s2[t]);
		chunk_softmax(tile, &st[k], s, p[k]);
	}
	for (unsigned i = 0; i < D; i++) {
		__m512 cent = i < tile->vsplit ? vc_hi : vc_lo, c[ATTN_CHUNK_TILES];

		if (i % 8 == 0)
			attn_prefetch_slice(tile, i / 8, D / 8);
		for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
			c[t] = _mm512_permutexvar_ps(vidx[t * D + i], cent);
		accumulate_values(st, g, i, c, p);
	}
}

/* acc[i] += the sum of the 16 lanes of coordinate i, 16 coordinates at a
 * time with a transposing add tree (45 operations, not 16 reductions). */
void attn_lanes_fold_avx512(const float *lanes, unsigned d, double *acc)
{
	for (unsigned i0 = 0; i0 < d; i0 += 16) {
		__m512 a[8], b[4], c[2], sum;

		for (unsigned i = 0; i < 8; i++) {
			__m512 x = _mm512_load_ps(lanes + (i0 + 2 * i) * 16), y = _mm512_load_ps(lanes + (i0 + 2 * i + 1) * 16);

			a[i] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
		}
		for (unsigned i = 0; i < 4; i++) {
			__m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);

			b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
					     _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
		}
		for (unsigned i = 0; i < 2; i++)
			c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
					     _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
		sum = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
		_mm512_storeu_pd(acc + i0, _mm512_add_pd(_mm512_loadu_pd(acc + i0),
							 _mm512_cvtps_pd(_mm512_castps512_ps256(sum))));
		_mm512_storeu_pd(acc + i0 + 8,
				 _mm512_add_pd(_mm512_loadu_pd(acc + i0 + 8),
					       _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sum), 1)))));
	}
}
