/* SPDX-License-Identifier: MIT */
/*
 * AVX2 kernels (AVX2 + FMA + F16C) for CPUs without AVX-512.  The row sits
 * in d / 8 ymm registers; register k holds coordinates 8k..8k+7, so the
 * canonical 16-lane sums keep even registers in one accumulator and odd
 * ones in another.  16-entry tables are two vpermps plus a blend.  Packing
 * uses the shared scalar packer: the bytes equal the reference's.
 */
#include <immintrin.h>
#include <math.h>

#include "codec-private.h"

#define MAX_REGS (TQKV_HEAD_DIM_MAX / 8)

static __m256i lane_mask(unsigned hd, unsigned j0)
{
	const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
	int valid = j0 >= hd ? 0 : (int)(hd - j0 >= 8 ? 8 : hd - j0);

	return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lanes);
}

/* Step 1: load, center, zero non-finite components and the padding. */
static void load_row(const struct tqkv_codec *c, const struct codec_src *src, unsigned t, __m256 *v, unsigned nr)
{
	unsigned hd = c->params.head_dim;
	const __m256 exp_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7f800000));

	for (unsigned r = 0; r < nr; r++) {
		__m256i m = lane_mask(hd, 8 * r);
		float buf[8] = { 0 };
		__m256 x;

		if (src->f16) {
			const uint16_t *p = (const uint16_t *)src->rows + t * src->stride + 8 * r;
			uint16_t h[8] = { 0 };

			for (unsigned j = 0; j < 8 && 8 * r + j < hd; j++)
				h[j] = p[j];
			x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
		} else {
			const float *p = (const float *)src->rows + t * src->stride + 8 * r;

			if (8 * r + 8 <= hd) {
				x = _mm256_loadu_ps(p);
			} else {
				for (unsigned j = 0; j < 8 && 8 * r + j < hd; j++)
					buf[j] = p[j];
				x = _mm256_loadu_ps(buf);
			}
		}
		if (src->mean)
			x = _mm256_sub_ps(x, _mm256_maskload_ps(src->mean + 8 * r, m));
		/* Non-finite (all exponent bits set) and padding lanes -> 0. */
		m = _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps(_mm256_and_ps(x, exp_mask), exp_mask,
									  _CMP_EQ_OQ)), m);
		v[r] = _mm256_and_ps(x, _mm256_castsi256_ps(m));
	}
}

/* Canonical fold of the 16 lanes held as (lanes 0-7, lanes 8-15). */
static float fold_lanes(__m256 a, __m256 b)
{
	__m256 s8 = _mm256_add_ps(a, b);
	__m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
	__m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));

	return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

static void xor_signs(__m256 *v, const uint32_t *mask, unsigned nr)
{
	for (unsigned r = 0; r < nr; r++)
		v[r] = _mm256_xor_ps(v[r], _mm256_load_ps((const float *)(mask + 8 * r)));
}

/* Lanes with bit h clear get v[i] + v[i+h], lanes with it set get
 * v[i-h] + (-v[i]) == v[i-h] - v[i] (negation is exact). */
static __m256 wht_lane_stage(__m256 v, __m256 swapped, __m256 upper_sign)
{
	return _mm256_add_ps(swapped, _mm256_xor_ps(v, upper_sign));
}

static void wht(__m256 *v, unsigned nr)
{
	const float n = -0.0f;
	const __m256 sign_h1 = _mm256_setr_ps(0, n, 0, n, 0, n, 0, n);
	const __m256 sign_h2 = _mm256_setr_ps(0, 0, n, n, 0, 0, n, n);
	const __m256 sign_h4 = _mm256_setr_ps(0, 0, 0, 0, n, n, n, n);

	for (unsigned r = 0; r < nr; r++) {
		__m256 x = v[r];

		x = wht_lane_stage(x, _mm256_permute_ps(x, 0xb1), sign_h1);
		x = wht_lane_stage(x, _mm256_permute_ps(x, 0x4e), sign_h2);
		x = wht_lane_stage(x, _mm256_permute2f128_ps(x, x, 0x01), sign_h4);
		v[r] = x;
	}
	for (unsigned k = 1; k < nr; k <<= 1)
		for (unsigned r = 0; r < nr; r += 2 * k)
			for (unsigned s = r; s < r + k; s++) {
				__m256 a = v[s], b = v[s + k];

				v[s] = _mm256_add_ps(a, b);
				v[s + k] = _mm256_sub_ps(a, b);
			}
}

/* table[idx] for a 16-entry table held as two halves. */
static __m256 lookup16(__m256i idx, __m256 lo, __m256 hi)
{
	__m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  /* bit 3 -> sign bit */

	return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), upper);
}

static __m256i search(__m256 y, __m256 thr_lo, __m256 thr_hi, unsigned bits)
{
	__m256i idx = _mm256_setzero_si256();

	for (unsigned step = 1u << (bits - 1); step; step >>= 1) {
		__m256 t = lookup16(_mm256_add_epi32(idx, _mm256_set1_epi32((int)step - 1)), thr_lo, thr_hi);
		__m256i gt = _mm256_castps_si256(_mm256_cmp_ps(y, t, _CMP_GT_OQ));

		idx = _mm256_add_epi32(idx, _mm256_and_si256(gt, _mm256_set1_epi32((int)step)));
	}
	return idx;
}

struct half_tables {
	__m256 thr_lo, thr_hi, cent_lo, cent_hi;
	unsigned bits;
};

static void half_tables(const float *bound, const float *cent, unsigned bits, float scale, struct half_tables *h)
{
	__m256 s = _mm256_set1_ps(scale);

	h->thr_lo = _mm256_mul_ps(_mm256_load_ps(bound), s);
	h->thr_hi = _mm256_mul_ps(_mm256_load_ps(bound + 8), s);
	h->cent_lo = _mm256_load_ps(cent);
	h->cent_hi = _mm256_load_ps(cent + 8);
	h->bits = bits;
}

static void encode_tq_token(const struct tqkv_codec *c, const struct codec_src *src, unsigned t,
			    const struct codec_tile *tile)
{
	__m256 v[MAX_REGS];
	uint8_t index[TQKV_HEAD_DIM_MAX];
	unsigned nr = c->d / 8;
	__m256 acc[2] = { _mm256_setzero_ps(), _mm256_setzero_ps() };
	struct half_tables hi, lo;
	float ss, gamma, scale, norm = 0.0f;

	load_row(c, src, t, v, nr);
	for (unsigned r = 0; r < nr; r++)
		acc[r & 1] = _mm256_add_ps(acc[r & 1], _mm256_mul_ps(v[r], v[r]));
	ss = fold_lanes(acc[0], acc[1]);
	if (isinf(ss)) {
		codec_scalar_encode_token(c, src, t, tile);  /* rare: rescale path */
		return;
	}
	gamma = sqrtf(ss);
	xor_signs(v, c->sign1_mask, nr);
	wht(v, nr);
	xor_signs(v, c->sign2_mask, nr);
	scale = gamma * c->sqrt_d;
	half_tables(c->bound_hi, c->cent_hi, c->bits_hi, scale, &hi);
	half_tables(c->bound_lo, c->cent_lo, c->bits_lo, scale, &lo);

	acc[0] = acc[1] = _mm256_setzero_ps();
	for (unsigned r = 0; r < nr; r++) {
		const struct half_tables *h = 8 * r < c->split ? &hi : &lo;
		__m256i idx = search(v[r], h->thr_lo, h->thr_hi, h->bits);
		__m256 cent = lookup16(idx, h->cent_lo, h->cent_hi);
		__m128i packed = _mm_packus_epi16(_mm_packus_epi32(_mm256_castsi256_si128(idx),
								   _mm256_extracti128_si256(idx, 1)),
						  _mm_setzero_si128());

		acc[r & 1] = _mm256_add_ps(acc[r & 1], _mm256_mul_ps(cent, cent));
		_mm_storel_epi64((__m128i *)(index + 8 * r), packed);
	}
	if (gamma > 0.0f)
		norm = gamma / sqrtf(fold_lanes(acc[0], acc[1]));
	tile->norms[t] = codec_norm_to_f16(norm);
	codec_pack_token(&c->layout, index, t, tile->bits);
}

static void avx2_encode_tile(const struct tqkv_codec *c, const struct codec_src *src, unsigned n,
			     const struct codec_tile *tile)
{
	for (unsigned t = 0; t < n; t++) {
		if (c->cls == CODEC_CLASS_TQ)
			encode_tq_token(c, src, t, tile);
		else
			codec_scalar_encode_token(c, src, t, tile);
	}
}

static void avx2_decode_token(const struct tqkv_codec *c, const uint8_t *bits, const uint16_t *norms,
			      const uint16_t *rnorms, unsigned t, const float *mean, float *out)
{
	uint8_t index[TQKV_HEAD_DIM_MAX];
	__m256 v[MAX_REGS], f;
	unsigned nr = c->d / 8, hd = c->params.head_dim;

	if (c->cls != CODEC_CLASS_TQ) {
		codec_kernels_scalar.decode_token(c, bits, norms, rnorms, t, mean, out);
		return;
	}
	codec_unpack_token(&c->layout, bits, t, index);
	for (unsigned r = 0; r < nr; r++) {
		const float *cent = 8 * r < c->split ? c->cent_hi : c->cent_lo;
		__m256i i = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(index + 8 * r)));

		v[r] = lookup16(i, _mm256_load_ps(cent), _mm256_load_ps(cent + 8));
	}
	xor_signs(v, c->sign2_mask, nr);
	wht(v, nr);
	xor_signs(v, c->sign1_mask, nr);
	f = _mm256_set1_ps(tqkv_f16_to_f32(norms[t]) / c->sqrt_d);
	for (unsigned r = 0; r < nr && 8 * r < hd; r++) {
		__m256i m = lane_mask(hd, 8 * r);
		__m256 x = _mm256_mul_ps(v[r], f);

		if (mean)
			x = _mm256_add_ps(x, _mm256_maskload_ps(mean + 8 * r, m));
		_mm256_maskstore_ps(out + 8 * r, m, x);
	}
}

const struct codec_kernels codec_kernels_avx2 = {
	.encode_tile = avx2_encode_tile,
	.decode_token = avx2_decode_token,
};
