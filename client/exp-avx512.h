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

#include "exp-poly.h"

#ifndef EXP_AVX512_TARGET
#define EXP_AVX512_TARGET
#endif

/* e^x for x up to 2^7 (the kernels pass scores minus a running max, at
 * most ATTN_MAX_SLACK); exp-poly.h has the method. */
static inline EXP_AVX512_TARGET __m512 exp_avx512(__m512 x)
{
	__m512 n, r, p;

	x = _mm512_max_ps(x, _mm512_set1_ps(EXP_X_MIN));
	n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
				 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
	p = _mm512_set1_ps(exp_poly[0]);
	for (unsigned i = 1; i < EXP_POLY_TERMS; i++)
		p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly[i]));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	return _mm512_scalef_ps(p, n);
}

#endif
