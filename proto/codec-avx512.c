/* SPDX-License-Identifier: MIT */
/*
 * AVX-512 kernels (F/BW/VL/DQ).  One token at a time, the whole padded row
 * in registers (d / 16 zmm): sign flips by XOR, the Walsh-Hadamard stages
 * h = 1..8 inside registers and h >= 16 across them, a branchless binary
 * search over the thresholds with vpermps, and bit packing with shifts and
 * a 16-way scatter.  Every operation mirrors the canonical arithmetic of
 * codec-private.h, so the bytes equal the scalar reference's.
 */
#include <immintrin.h>
#include <stdbool.h>
#include <math.h>
#include <string.h>

#include "codec-private.h"
#include "tq3-words.h"

#define MAX_REGS (TQKV_HEAD_DIM_MAX / 16)
/* The per-token helpers are inlined into bodies specialised for each
 * register count, so the row stays in registers. */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE __mmask16 row_mask(unsigned hd, unsigned j0)
{
	if (j0 >= hd)
		return 0;
	return hd - j0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (hd - j0)) - 1);
}

/* Step 1: load, center, zero non-finite components and the padding. */
ALWAYS_INLINE void load_row(const struct tqkv_codec *c, const struct codec_src *src, unsigned t, __m512 *v,
		     unsigned nr)
{
	unsigned hd = c->params.head_dim;

	for (unsigned r = 0; r < nr; r++) {
		__mmask16 m = hd >= 16 * nr ? (__mmask16)0xffff : row_mask(hd, 16 * r);
		__m512 x;

		if (src->f16) {
			const uint16_t *p = (const uint16_t *)src->rows + t * src->stride + 16 * r;

			x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
		} else {
			const float *p = (const float *)src->rows + t * src->stride + 16 * r;

			x = _mm512_maskz_loadu_ps(m, p);
		}
		if (src->mean)
			x = _mm512_sub_ps(x, _mm512_maskz_loadu_ps(m, src->mean + 16 * r));
		/* QNaN, SNaN, +Inf, -Inf -> 0 */
		v[r] = _mm512_mask_mov_ps(x, _mm512_fpclass_ps_mask(x, 0x99), _mm512_setzero_ps());
	}
}

/* The canonical 16-lane fold: lanes 8, 4, 2, 1. */
ALWAYS_INLINE float fold_lanes(__m512 acc)
{
	__m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
	__m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
	__m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
	__m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));

	return _mm_cvtss_f32(s1);
}

ALWAYS_INLINE float sum_sq(const __m512 *v, unsigned nr)
{
	__m512 acc = _mm512_setzero_ps();

	for (unsigned r = 0; r < nr; r++)
		acc = _mm512_add_ps(acc, _mm512_mul_ps(v[r], v[r]));
	return fold_lanes(acc);
}

ALWAYS_INLINE void xor_signs(__m512 *v, const uint32_t *mask, unsigned nr)
{
	for (unsigned r = 0; r < nr; r++)
		v[r] = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v[r]),
							    _mm512_load_si512(mask + 16 * r)));
}

/* One butterfly stage inside a register: lanes with bit h clear get
 * v[i] + v[i+h], lanes with it set get v[i-h] + (-v[i]), which is exactly
 * v[i-h] - v[i]: negating is exact, so XOR + add replaces add, sub, blend. */
ALWAYS_INLINE __m512 wht_lane_stage(__m512 v, __m512 swapped, __m512i upper_sign)
{
	return _mm512_add_ps(swapped, _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), upper_sign)));
}

ALWAYS_INLINE void wht(__m512 *v, unsigned nr)
{
	const __m512i neg = _mm512_set1_epi32((int)0x80000000u);

	for (unsigned r = 0; r < nr; r++) {
		__m512 x = v[r];

		x = wht_lane_stage(x, _mm512_permute_ps(x, 0xb1), _mm512_maskz_mov_epi32(0xaaaa, neg));
		x = wht_lane_stage(x, _mm512_permute_ps(x, 0x4e), _mm512_maskz_mov_epi32(0xcccc, neg));
		x = wht_lane_stage(x, _mm512_shuffle_f32x4(x, x, 0xb1), _mm512_maskz_mov_epi32(0xf0f0, neg));
		x = wht_lane_stage(x, _mm512_shuffle_f32x4(x, x, 0x4e), _mm512_maskz_mov_epi32(0xff00, neg));
		v[r] = x;
	}
	for (unsigned k = 1; k < nr; k <<= 1)
		for (unsigned r = 0; r < nr; r += 2 * k)
			for (unsigned s = r; s < r + k; s++) {
				__m512 a = v[s], b = v[s + k];

				v[s] = _mm512_add_ps(a, b);
				v[s + k] = _mm512_sub_ps(a, b);
			}
}

/* Number of thresholds below y: a branchless binary search; tab[s] holds
 * the thresholds the step of size 2^s compares with (codec.c). */
ALWAYS_INLINE __m512i search(__m512 y, const __m512 *tab, unsigned bits)
{
	/* The first step always reads entry 0 of its table. */
	__mmask16 first = _mm512_cmp_ps_mask(y, tab[bits - 1], _CMP_GT_OQ);
	__m512i idx = _mm512_maskz_mov_epi32(first, _mm512_set1_epi32(1 << (bits - 1)));

	for (int s = (int)bits - 2; s >= 0; s--) {
		__mmask16 gt = _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(idx, tab[s]), _CMP_GT_OQ);

		idx = _mm512_mask_or_epi32(idx, gt, idx, _mm512_set1_epi32(1 << s));
	}
	return idx;
}

ALWAYS_INLINE void scale_tables(const float step_bound[4][16], unsigned bits, float scale, __m512 *tab)
{
	for (unsigned s = 0; s + 1 < bits; s++)
		tab[s] = _mm512_mul_ps(_mm512_load_ps(step_bound[s]), _mm512_set1_ps(scale));
	/* The last table is only read at entry 0: broadcast it. */
	tab[bits - 1] = _mm512_set1_ps(step_bound[bits - 1][0] * scale);
}

/* Gathers fields into words: coordinate i (register i / 16, lane i % 16)
 * goes to word i % W, field i / W of fb bits (the index's bits
 * [shift, shift + bits)).  words has room for max(W, 16). */
static void fields_to_words(const __m512i *src, unsigned nq, unsigned W, unsigned shift, unsigned bits,
			    unsigned fb, uint32_t *words)
{
	const __m512i mask = _mm512_set1_epi32((1 << bits) - 1);

	if (W >= 16) {
		unsigned groups = W / 16;

		for (unsigned g = 0; g < groups; g++) {
			__m512i word = _mm512_setzero_si512();

			for (unsigned q = g; q < nq; q += groups) {
				__m512i val = _mm512_and_si512(_mm512_srli_epi32(src[q], shift), mask);

				word = _mm512_or_si512(word, _mm512_slli_epi32(val, fb * (q / groups)));
			}
			_mm512_storeu_si512(words + 16 * g, word);
		}
		return;
	}

	{
		__m512i acc = _mm512_setzero_si512();
		unsigned per_reg = 16 / W;  /* fields one register contributes per word */

		for (unsigned q = 0; q < nq; q++) {
			__m512i val = _mm512_and_si512(_mm512_srli_epi32(src[q], shift), mask);

			acc = _mm512_or_si512(acc, _mm512_slli_epi32(val, fb * q * per_reg));
		}
		_mm512_storeu_si512(words, acc);
		/* Fold lanes w + m * W into word w, field m: halve the lane
		 * count until W lanes remain. */
		for (unsigned h = 8; h >= W && h; h >>= 1)
			for (unsigned l = 0; l < h; l++)
				words[l] |= words[l + h] << (fb * (h / W));
	}
}

/* Packs one plane of a token: register q of the plane holds its coordinates
 * 16q..16q+15; coordinate i goes to word i % words, field i / words, or
 * for a 3-bit plane to nibble words that tq3-words.h stores. */
static void pack_plane(const struct tqkv_plane *pl, const __m512i *idx, unsigned t, uint8_t *bits)
{
	const __m512i *src = idx + pl->first_coord / 16;
	uint32_t words[TQKV_HEAD_DIM_MAX / 4 + 16];
	unsigned nq = pl->n_coords / 16;
	uint8_t *base = bits + pl->offset;

	if (pl->bits == 3) {
		uint32_t nib[TQKV_HEAD_DIM_MAX / 8 + 16];

		fields_to_words(src, nq, pl->n_coords / 8, 0, 3, 4, nib);
		tq3_words_from_nibbles(nib, pl->n_coords / 8, words);
	} else {
		fields_to_words(src, nq, pl->words, pl->shift, pl->bits, pl->bits, words);
	}
	for (unsigned w = 0; w < pl->words; w++) {
		if (pl->word_bits == 32)
			memcpy(base + (w * TQKV_TILE_TOKENS + t) * 4, &words[w], 4);
		else
			memcpy(base + (w * TQKV_TILE_TOKENS + t) * 2, &words[w], 2);
	}
}

/* Indices of registers [r0, r1) and the canonical sum of their squared
 * centroids (acc, lane j % 16, increasing j). */
ALWAYS_INLINE __m512 quantize_bits(const __m512 *v, __m512i *idx, unsigned r0, unsigned r1, const __m512 *tab,
				   __m512 cent, __m512 acc, const unsigned bits)
{
	for (unsigned r = r0; r < r1; r++) {
		__m512 y = _mm512_permutexvar_ps(idx[r] = search(v[r], tab, bits), cent);

		acc = _mm512_add_ps(acc, _mm512_mul_ps(y, y));
	}
	return acc;
}

ALWAYS_INLINE __m512 quantize(const __m512 *v, __m512i *idx, unsigned r0, unsigned r1, const __m512 *tab,
			      __m512 cent, unsigned bits, __m512 acc)
{
	switch (bits) {
	case 1: return quantize_bits(v, idx, r0, r1, tab, cent, acc, 1);
	case 2: return quantize_bits(v, idx, r0, r1, tab, cent, acc, 2);
	case 3: return quantize_bits(v, idx, r0, r1, tab, cent, acc, 3);
	default: return quantize_bits(v, idx, r0, r1, tab, cent, acc, 4);
	}
}

/* Encodes tokens t .. t + nt - 1 (nt = 1 or 2).  Two tokens are done side
 * by side so that one's long dependency chain (sum, sqrt, search, sum, sqrt,
 * divide) overlaps the other's. */
ALWAYS_INLINE void encode_tq_tokens_n(const struct tqkv_codec *c, const struct codec_src *src, unsigned t,
				      const struct codec_tile *tile, const unsigned nr, const unsigned nt)
{
	__m512 v[2][MAX_REGS], tab_hi[2][4], tab_lo[2][4], acc[2];
	__m512i idx[2][MAX_REGS];
	float ss[2], gamma[2];
	__m512 cent_hi = _mm512_load_ps(c->cent_hi), cent_lo = _mm512_load_ps(c->cent_lo);

	for (unsigned k = 0; k < nt; k++) {
		load_row(c, src, t + k, v[k], nr);
		ss[k] = sum_sq(v[k], nr);
	}
	for (unsigned k = 0; k < nt; k++)
		if (isinf(ss[k])) {
			/* Rare: the reference's rescale path. */
			for (unsigned m = 0; m < nt; m++)
				codec_scalar_encode_token(c, src, t + m, tile);
			return;
		}
	for (unsigned k = 0; k < nt; k++) {
		float scale;

		gamma[k] = sqrtf(ss[k]);
		xor_signs(v[k], c->sign1_mask, nr);
		wht(v[k], nr);
		xor_signs(v[k], c->sign2_mask, nr);
		scale = gamma[k] * c->sqrt_d;
		scale_tables(c->bound_hi_step, c->bits_hi, scale, tab_hi[k]);
		scale_tables(c->bound_lo_step, c->bits_lo, scale, tab_lo[k]);
		acc[k] = _mm512_setzero_ps();
	}
	for (unsigned k = 0; k < nt; k++) {
		if (c->split == c->d) {
			acc[k] = quantize(v[k], idx[k], 0, nr, tab_hi[k], cent_hi, c->bits_hi, acc[k]);
		} else {
			acc[k] = quantize(v[k], idx[k], 0, nr / 2, tab_hi[k], cent_hi, c->bits_hi, acc[k]);
			acc[k] = quantize(v[k], idx[k], nr / 2, nr, tab_lo[k], cent_lo, c->bits_lo, acc[k]);
		}
	}
	for (unsigned k = 0; k < nt; k++) {
		float norm = gamma[k] > 0.0f ? gamma[k] / sqrtf(fold_lanes(acc[k])) : 0.0f;

		/* F16C rounds like tqkv_f32_to_f16 (test-half). */
		tile->norms[t + k] = _cvtss_sh(fminf(norm, 65504.0f), _MM_FROUND_TO_NEAREST_INT);
		for (unsigned p = 0; p < c->layout.n_planes; p++)
			pack_plane(&c->layout.planes[p], idx[k], t + k, tile->bits);
	}
}

ALWAYS_INLINE void encode_tq_tokens(const struct tqkv_codec *c, const struct codec_src *src, unsigned t,
				    const struct codec_tile *tile, const unsigned nt)
{
	switch (c->d) {
	case 32: encode_tq_tokens_n(c, src, t, tile, 2, nt); break;
	case 64: encode_tq_tokens_n(c, src, t, tile, 4, nt); break;
	case 128: encode_tq_tokens_n(c, src, t, tile, 8, nt); break;
	case 256: encode_tq_tokens_n(c, src, t, tile, 16, nt); break;
	default: encode_tq_tokens_n(c, src, t, tile, 32, nt); break;
	}
}

/* Whether pack_plane can pack a plane: whole registers, and word groups
 * that are whole registers or divide one. */
static bool plane_fits_registers(const struct tqkv_plane *pl)
{
	unsigned words = pl->bits == 3 ? pl->n_coords / 8 : pl->words;

	return pl->n_coords % 16 == 0 && (words % 16 == 0 || 16 % words == 0);
}

static void encode_int8_token(const struct tqkv_codec *c, const struct codec_src *src, unsigned t,
			      const struct codec_tile *tile)
{
	__m512 v[MAX_REGS];
	__m512i q[MAX_REGS];
	unsigned nr = (c->d + 15) / 16;
	__m512 m = _mm512_setzero_ps(), inv;
	uint16_t scale;

	load_row(c, src, t, v, nr);
	for (unsigned r = 0; r < nr; r++)
		m = _mm512_max_ps(m, _mm512_abs_ps(v[r]));
	scale = codec_norm_to_f16(_mm512_reduce_max_ps(m) / 127.0f);
	inv = _mm512_set1_ps(scale ? 1.0f / tqkv_f16_to_f32(scale) : 0.0f);
	for (unsigned r = 0; r < nr; r++) {
		__m512 x = _mm512_mul_ps(v[r], inv);

		x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
		q[r] = _mm512_cvtps_epi32(x);
	}
	if (plane_fits_registers(&c->layout.planes[0])) {
		pack_plane(&c->layout.planes[0], q, t, tile->bits);
	} else {
		uint8_t bytes[TQKV_HEAD_DIM_MAX + 16];

		for (unsigned r = 0; r < nr; r++)
			_mm_storeu_si128((__m128i *)(bytes + 16 * r), _mm512_cvtepi32_epi8(q[r]));
		codec_pack_token(&c->layout, bytes, t, tile->bits);
	}
	tile->norms[t] = scale;
}

static void encode_fp16_token(const struct tqkv_codec *c, const struct codec_src *src, unsigned t,
			      const struct codec_tile *tile)
{
	__m512 v[MAX_REGS];
	unsigned nr = (c->d + 15) / 16;
	uint16_t *row = (uint16_t *)(tile->bits + (size_t)t * c->d * 2);
	const __m512 lim = _mm512_set1_ps(65504.0f);

	load_row(c, src, t, v, nr);
	for (unsigned r = 0; r < nr; r++) {
		__m512 x = _mm512_min_ps(_mm512_max_ps(v[r], _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);

		_mm256_mask_storeu_epi16(row + 16 * r, row_mask(c->d, 16 * r),
					 _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
	}
}

static void avx512_encode_tile(const struct tqkv_codec *c, const struct codec_src *src, unsigned n,
			       const struct codec_tile *tile)
{
	if (c->cls == CODEC_CLASS_TQ) {
		unsigned t = 0;

		for (; t + 2 <= n; t += 2)
			encode_tq_tokens(c, src, t, tile, 2);
		if (t < n)
			encode_tq_tokens(c, src, t, tile, 1);
		return;
	}
	for (unsigned t = 0; t < n; t++) {
		if (c->cls == CODEC_CLASS_INT8)
			encode_int8_token(c, src, t, tile);
		else if (c->cls == CODEC_CLASS_FP16)
			encode_fp16_token(c, src, t, tile);
		else
			codec_scalar_encode_token(c, src, t, tile);  /* QJL: O(d^2) sketch, no SIMD path */
	}
}

/* Centroids into y, then the inverse rotation, in registers. */
static void avx512_decode_token(const struct tqkv_codec *c, const uint8_t *bits, const uint16_t *norms,
				const uint16_t *rnorms, unsigned t, const float *mean, float *out)
{
	uint8_t index[TQKV_HEAD_DIM_MAX];
	__m512 v[MAX_REGS], f;
	unsigned nr = c->d / 16, hd = c->params.head_dim;

	if (c->cls != CODEC_CLASS_TQ) {
		codec_kernels_scalar.decode_token(c, bits, norms, rnorms, t, mean, out);
		return;
	}
	codec_unpack_token(&c->layout, bits, t, index);
	for (unsigned r = 0; r < nr; r++) {
		__m512i i = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(index + 16 * r)));

		v[r] = _mm512_permutexvar_ps(i, _mm512_load_ps(16 * r < c->split ? c->cent_hi : c->cent_lo));
	}
	xor_signs(v, c->sign2_mask, nr);
	wht(v, nr);
	xor_signs(v, c->sign1_mask, nr);
	f = _mm512_set1_ps(tqkv_f16_to_f32(norms[t]) / c->sqrt_d);
	for (unsigned r = 0; r < nr && 16 * r < hd; r++) {
		__mmask16 m = row_mask(hd, 16 * r);
		__m512 x = _mm512_mul_ps(v[r], f);

		if (mean)
			x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, mean + 16 * r));
		_mm512_mask_storeu_ps(out + 16 * r, m, x);
	}
}

/* x <- D_second H D_first x * f, in registers: the rotation and its inverse
 * differ only in the order of the sign flips. */
static void rotate_scaled(float *x, unsigned nr, const uint32_t *first, const uint32_t *second, float f)
{
	__m512 v[MAX_REGS];

	for (unsigned r = 0; r < nr; r++)
		v[r] = _mm512_loadu_ps(x + 16 * r);
	xor_signs(v, first, nr);
	wht(v, nr);
	xor_signs(v, second, nr);
	for (unsigned r = 0; r < nr; r++)
		_mm512_storeu_ps(x + 16 * r, _mm512_mul_ps(v[r], _mm512_set1_ps(f)));
}

void codec_rotate_avx512(const struct tqkv_codec *c, float *x)
{
	rotate_scaled(x, c->d / 16, c->sign1_mask, c->sign2_mask, 1.0f);
}

void codec_unrotate_avx512(const struct tqkv_codec *c, float *y, float f)
{
	rotate_scaled(y, c->d / 16, c->sign2_mask, c->sign1_mask, f);
}

const struct codec_kernels codec_kernels_avx512 = {
	.encode_tile = avx512_encode_tile,
	.decode_token = avx512_decode_token,
};
