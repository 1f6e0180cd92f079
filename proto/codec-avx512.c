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
#include <math.h>
#include <string.h>

#include "codec-private.h"

#define MAX_REGS (TQKV_HEAD_DIM_MAX / 16)

static __mmask16 row_mask(unsigned hd, unsigned j0)
{
	if (j0 >= hd)
		return 0;
	return hd - j0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (hd - j0)) - 1);
}

/* Step 1: load, center, zero non-finite components and the padding. */
static void load_row(const struct tqkv_codec *c, const struct codec_src *src, unsigned t, __m512 *v,
		     unsigned nr)
{
	unsigned hd = c->params.head_dim;

	for (unsigned r = 0; r < nr; r++) {
		__mmask16 m = row_mask(hd, 16 * r);
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
static float fold_lanes(__m512 acc)
{
	__m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
	__m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
	__m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
	__m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));

	return _mm_cvtss_f32(s1);
}

static float sum_sq(const __m512 *v, unsigned nr)
{
	__m512 acc = _mm512_setzero_ps();

	for (unsigned r = 0; r < nr; r++)
		acc = _mm512_add_ps(acc, _mm512_mul_ps(v[r], v[r]));
	return fold_lanes(acc);
}

static void xor_signs(__m512 *v, const uint32_t *mask, unsigned nr)
{
	for (unsigned r = 0; r < nr; r++)
		v[r] = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v[r]),
							    _mm512_load_si512(mask + 16 * r)));
}

/* One butterfly stage inside a register: lanes with bit h clear get
 * v[i] + v[i+h], lanes with it set get v[i-h] - v[i]. */
static __m512 wht_lane_stage(__m512 v, __m512 swapped, __mmask16 upper)
{
	return _mm512_mask_blend_ps(upper, _mm512_add_ps(v, swapped), _mm512_sub_ps(swapped, v));
}

static void wht(__m512 *v, unsigned nr)
{
	for (unsigned r = 0; r < nr; r++) {
		__m512 x = v[r];

		x = wht_lane_stage(x, _mm512_permute_ps(x, 0xb1), 0xaaaa);
		x = wht_lane_stage(x, _mm512_permute_ps(x, 0x4e), 0xcccc);
		x = wht_lane_stage(x, _mm512_shuffle_f32x4(x, x, 0xb1), 0xf0f0);
		x = wht_lane_stage(x, _mm512_shuffle_f32x4(x, x, 0x4e), 0xff00);
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

/* Number of thresholds below y, by binary search (the thresholds ascend). */
static __m512i search(__m512 y, __m512 thr, unsigned bits)
{
	__m512i idx = _mm512_setzero_si512();

	for (unsigned step = 1u << (bits - 1); step; step >>= 1) {
		__m512 t = _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32((int)step - 1)), thr);
		__mmask16 gt = _mm512_cmp_ps_mask(y, t, _CMP_GT_OQ);

		idx = _mm512_mask_add_epi32(idx, gt, idx, _mm512_set1_epi32((int)step));
	}
	return idx;
}

/* Packs one plane of a token: register q of the plane holds its coordinates
 * 16q..16q+15; coordinate i goes to word i % words, field i / words. */
static void pack_plane(const struct tqkv_plane *pl, const __m512i *idx, unsigned t, uint8_t *bits)
{
	const __m512i lane_offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
									  12, 13, 14, 15),
							_mm512_set1_epi32(64));
	const __m512i *src = idx + pl->first_coord / 16;
	__m512i mask = _mm512_set1_epi32((1 << pl->bits) - 1);
	unsigned nq = pl->n_coords / 16, W = pl->words;
	uint8_t *base = bits + pl->offset;

	if (W >= 16) {
		unsigned groups = W / 16;

		for (unsigned g = 0; g < groups; g++) {
			__m512i word = _mm512_setzero_si512();

			for (unsigned q = g; q < nq; q += groups) {
				__m512i val = _mm512_and_si512(_mm512_srli_epi32(src[q], pl->shift), mask);

				word = _mm512_or_si512(word, _mm512_slli_epi32(val, pl->bits * (q / groups)));
			}
			_mm512_i32scatter_epi32(base + (g * 16 * TQKV_TILE_TOKENS + t) * 4, lane_offsets, word, 1);
		}
		return;
	}

	{
		uint32_t words[16];
		__m512i acc = _mm512_setzero_si512();
		unsigned per_reg = 16 / W;  /* fields one register contributes per word */

		for (unsigned q = 0; q < nq; q++) {
			__m512i val = _mm512_and_si512(_mm512_srli_epi32(src[q], pl->shift), mask);

			acc = _mm512_or_si512(acc, _mm512_slli_epi32(val, pl->bits * q * per_reg));
		}
		_mm512_storeu_si512(words, acc);
		/* Fold lanes w + m * W into word w, field m (see pack_plane's
		 * comment): halve the lane count until W lanes remain. */
		for (unsigned h = 8; h >= W && h; h >>= 1)
			for (unsigned l = 0; l < h; l++)
				words[l] |= words[l + h] << (pl->bits * (h / W));
		for (unsigned w = 0; w < W; w++) {
			if (pl->word_bits == 32)
				memcpy(base + (w * TQKV_TILE_TOKENS + t) * 4, &words[w], 4);
			else
				memcpy(base + (w * TQKV_TILE_TOKENS + t) * 2, &words[w], 2);
		}
	}
}

static void encode_tq_token(const struct tqkv_codec *c, const struct codec_src *src, unsigned t,
			    const struct codec_tile *tile)
{
	__m512 v[MAX_REGS];
	__m512i idx[MAX_REGS];
	unsigned nr = c->d / 16;
	float ss, gamma, scale, norm = 0.0f;
	__m512 thr_hi, thr_lo, acc = _mm512_setzero_ps();
	__m512 cent_hi = _mm512_load_ps(c->cent_hi), cent_lo = _mm512_load_ps(c->cent_lo);

	load_row(c, src, t, v, nr);
	ss = sum_sq(v, nr);
	if (isinf(ss)) {
		codec_scalar_encode_token(c, src, t, tile);  /* rare: rescale path */
		return;
	}
	gamma = sqrtf(ss);
	xor_signs(v, c->sign1_mask, nr);
	wht(v, nr);
	xor_signs(v, c->sign2_mask, nr);
	scale = gamma * c->sqrt_d;
	thr_hi = _mm512_mul_ps(_mm512_load_ps(c->bound_hi), _mm512_set1_ps(scale));
	thr_lo = _mm512_mul_ps(_mm512_load_ps(c->bound_lo), _mm512_set1_ps(scale));

	for (unsigned r = 0; r < nr; r++) {
		int hi = 16 * r < c->split;
		__m512 cent;

		idx[r] = search(v[r], hi ? thr_hi : thr_lo, hi ? c->bits_hi : c->bits_lo);
		cent = _mm512_permutexvar_ps(idx[r], hi ? cent_hi : cent_lo);
		acc = _mm512_add_ps(acc, _mm512_mul_ps(cent, cent));
	}
	if (gamma > 0.0f)
		norm = gamma / sqrtf(fold_lanes(acc));
	tile->norms[t] = codec_norm_to_f16(norm);
	for (unsigned p = 0; p < c->layout.n_planes; p++)
		pack_plane(&c->layout.planes[p], idx, t, tile->bits);
}

static void encode_int8_token(const struct tqkv_codec *c, const struct codec_src *src, unsigned t,
			      const struct codec_tile *tile)
{
	__m512 v[MAX_REGS];
	uint8_t q[TQKV_HEAD_DIM_MAX + 16];
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
		_mm_storeu_si128((__m128i *)(q + 16 * r), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(x)));
	}
	codec_pack_token(&c->layout, q, t, tile->bits);
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
	for (unsigned t = 0; t < n; t++) {
		switch (c->cls) {
		case CODEC_CLASS_TQ:
			encode_tq_token(c, src, t, tile);
			break;
		case CODEC_CLASS_INT8:
			encode_int8_token(c, src, t, tile);
			break;
		case CODEC_CLASS_FP16:
			encode_fp16_token(c, src, t, tile);
			break;
		case CODEC_CLASS_TQ_QJL:
			codec_scalar_encode_token(c, src, t, tile);  /* O(d^2) sketch: not worth a SIMD path */
			break;
		}
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

const struct codec_kernels codec_kernels_avx512 = {
	.encode_tile = avx512_encode_tile,
	.decode_token = avx512_decode_token,
};
