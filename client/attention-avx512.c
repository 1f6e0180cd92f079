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
#include <string.h>

#include "attention-private.h"

/* e^x for x <= 0 (scores minus the running max), relative error ~1e-7. */
static __m512 exp_ps(__m512 x)
{
	const __m512 log2e = _mm512_set1_ps(1.44269504f), ln2_hi = _mm512_set1_ps(0.693359375f),
		     ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
	__m512 n, r, p;

	x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
	n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm512_fnmadd_ps(n, ln2_hi, x);
	r = _mm512_fnmadd_ps(n, ln2_lo, r);
	p = _mm512_set1_ps(1.9875691500e-4f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	return _mm512_scalef_ps(p, n);
}

void attn_tile_tq4_avx512(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g)
{
	const unsigned D = tile->d, W = D / 8;
	const __m512i nib = _mm512_set1_epi32(0xf);
	const __m512 kn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)tile->knorms));
	const __m512 vn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)tile->vnorms));
	const __m512 vcent = _mm512_loadu_ps(tile->vcent);
	__m512 s[8], p[8];

	/* Scores of the 16 tokens for each query head. */
	for (unsigned k = 0; k < g; k++)
		s[k] = _mm512_setzero_ps();
	for (unsigned w = 0; w < W; w++) {
		__m512i word = _mm512_loadu_si512(tile->kbits + w * 64);

		_mm_prefetch((const char *)tile->kbits + w * 64 + 4096, _MM_HINT_T0);
		for (unsigned f = 0; f < 8; f++) {
			__m512i idx = _mm512_and_si512(_mm512_srli_epi32(word, 4 * f), nib);
			unsigned i = w + f * W;

			for (unsigned k = 0; k < g; k++)
				s[k] = _mm512_add_ps(s[k], _mm512_permutexvar_ps(idx, _mm512_loadu_ps(st[k].table + i * 16)));
		}
	}
	for (unsigned k = 0; k < g; k++) {
		__m512 sc = _mm512_add_ps(_mm512_mul_ps(s[k], kn), _mm512_set1_ps(st[k].q_mean));
		float m_tile, m_new;

		sc = _mm512_mask_blend_ps(tile->valid, _mm512_set1_ps(-INFINITY), sc);
		m_tile = _mm512_reduce_max_ps(sc);
		m_new = m_tile > *st[k].m ? m_tile : *st[k].m;
		if (m_new > *st[k].m) {
			float f = expf(*st[k].m - m_new);
			__m512 fv = _mm512_set1_ps(f);

			*st[k].l *= f;
			for (unsigned i = 0; i < D; i++)
				_mm512_store_ps(st[k].lanes + i * 16, _mm512_mul_ps(_mm512_load_ps(st[k].lanes + i * 16), fv));
			attn_rescale_scalar(&st[k], f);
			*st[k].m = m_new;
		}
		p[k] = _mm512_maskz_mov_ps(tile->valid, exp_ps(_mm512_sub_ps(sc, _mm512_set1_ps(m_new))));
		*st[k].l += _mm512_reduce_add_ps(p[k]);
		p[k] = _mm512_mul_ps(p[k], vn);  /* weights times value norms */
	}
	/* Values: per coordinate, the centroids of 16 tokens, weighted. */
	for (unsigned w = 0; w < W; w++) {
		__m512i word = _mm512_loadu_si512(tile->vbits + w * 64);

		_mm_prefetch((const char *)tile->vbits + w * 64 + 4096, _MM_HINT_T0);
		for (unsigned f = 0; f < 8; f++) {
			__m512 c = _mm512_permutexvar_ps(_mm512_and_si512(_mm512_srli_epi32(word, 4 * f), nib), vcent);
			unsigned i = w + f * W;

			for (unsigned k = 0; k < g; k++) {
				float *a = st[k].lanes + i * 16;

				_mm512_store_ps(a, _mm512_fmadd_ps(p[k], c, _mm512_load_ps(a)));
			}
		}
	}
}

void attn_lanes_fold_avx512(const float *lanes, unsigned d, float *acc)
{
	for (unsigned i = 0; i < d; i++)
		acc[i] += _mm512_reduce_add_ps(_mm512_load_ps(lanes + i * 16));
}
