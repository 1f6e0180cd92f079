/* SPDX-License-Identifier: MIT */
/*
 * The FP16 tail with AVX2, F16C and FMA (attention-tail.h has the kernel),
 * for CPUs without AVX-512.  AVX2 has no 16-bit masked load: a row whose
 * length is not a multiple of 8 goes through a zero-padded copy for its
 * last elements.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "exp-avx2.h"

static inline __attribute__((always_inline)) __m256 row8(const uint16_t *row, unsigned d, unsigned r)
{
	uint16_t part[8] = { 0 };

	if (d - 8 * r >= 8)
		return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 8 * r)));
	memcpy(part, row + 8 * r, (d - 8 * r) * sizeof(part[0]));
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)part));
}

static inline __attribute__((always_inline)) __m256 floats8(const float *row, unsigned d, unsigned r)
{
	static const int32_t ones[16] = { -1, -1, -1, -1, -1, -1, -1, -1 };
	unsigned left = d - 8 * r >= 8 ? 8 : d - 8 * r;

	return _mm256_maskload_ps(row + 8 * r, _mm256_loadu_si256((const __m256i *)(ones + 8 - left)));
}

static inline __attribute__((always_inline)) __m256 weights8(__m256 x, float m)
{
	/* exp256 clamps -inf to a tiny weight: those lanes are masked. */
	return _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ),
			     exp256(_mm256_sub_ps(x, _mm256_set1_ps(m))));
}

#define TAIL_LANES 8
#define tail_vec __m256
#define tail_zero() _mm256_setzero_ps()
#define tail_set1(x) _mm256_set1_ps(x)
#define tail_fmadd(a, b, c) _mm256_fmadd_ps(a, b, c)
#define tail_load(p) _mm256_load_ps(p)
#define tail_storeu(p, v) _mm256_storeu_ps(p, v)
#define tail_hsum(v) hsum256(v)
#define tail_weights(x, m) weights8(x, m)
#define tail_row(row, d, r) row8(row, d, r)
#define tail_floats(row, d, r) floats8(row, d, r)
#define TAIL_KERNEL attn_tail_avx2
#include "attention-tail.h"
