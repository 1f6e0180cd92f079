/* SPDX-License-Identifier: MIT */
/*
 * e^x, the maximum and the sum of 8 floats, for the AVX2 kernels (pages and
 * FP16 tail).  The includer compiles it for AVX2 and FMA.
 */
#ifndef TQKV_CLIENT_EXP_AVX2_H
#define TQKV_CLIENT_EXP_AVX2_H

#include <immintrin.h>

#include "exp-poly.h"

/* e^x for x <= ATTN_MAX_SLACK (exp-poly.h). */
static inline __m256 exp256(__m256 x)
{
	__m256 n, r, p;
	__m256i e;

	x = _mm256_max_ps(x, _mm256_set1_ps(EXP_X_MIN));
	n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
	p = _mm256_set1_ps(exp_poly[0]);
	for (unsigned i = 1; i < EXP_POLY_TERMS; i++)
		p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly[i]));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
	/* 2^n for n in [-126, 12]: the exponent field. */
	e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline float hmax256(__m256 v)
{
	__m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	m = _mm_max_ps(m, _mm_movehl_ps(m, m));
	m = _mm_max_ss(m, _mm_movehdup_ps(m));
	return _mm_cvtss_f32(m);
}

static inline float hsum256(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

#endif
