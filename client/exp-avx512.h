/* SPDX-License-Identifier: MIT */
/*
 * e^x on 16 floats for the softmax: libtqkv's AVX-512 kernel and the FP16
 * baseline of tqkv-bench share it, so that both pay the same for it.  The
 * includer compiles it for AVX-512F and FMA: with those flags, or by
 * defining EXP_AVX512_TARGET to a target attribute first.
 */
#ifndef TQKV_CLIENT_EXP_AVX512_H
#define TQKV_CLIENT_EXP_AVX512_H

#include <immintrin.h>

#ifndef EXP_AVX512_TARGET
#define EXP_AVX512_TARGET
#endif

/* e^x for x up to 2^7 (the kernels pass scores minus a running max, at
 * most ATTN_MAX_SLACK), relative error ~1e-7; below -87, e^-87. */
static inline EXP_AVX512_TARGET __m512 exp_avx512(__m512 x)
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

#endif
