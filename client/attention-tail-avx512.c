/* SPDX-License-Identifier: MIT */
/* The FP16 tail with AVX-512 (attention-tail.h has the kernel). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "exp-avx512.h"

/* The lanes of elements [16 r, 16 r + 16) that are below d. */
static inline __attribute__((always_inline)) __mmask16 part_mask(unsigned d, unsigned r)
{
	return d - 16 * r >= 16 ? 0xffff : (__mmask16)((1u << (d - 16 * r)) - 1);
}

static inline __attribute__((always_inline)) __m512 row16(const uint16_t *row, unsigned d, unsigned r)
{
	return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(part_mask(d, r), row + 16 * r));
}

static inline __attribute__((always_inline)) __m512 weights16(__m512 x, float m)
{
	__mmask16 real = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);

	return _mm512_maskz_mov_ps(real, exp_avx512(_mm512_sub_ps(x, _mm512_set1_ps(m))));
}

#define TAIL_LANES 16
#define tail_vec __m512
#define tail_zero() _mm512_setzero_ps()
#define tail_set1(x) _mm512_set1_ps(x)
#define tail_fmadd(a, b, c) _mm512_fmadd_ps(a, b, c)
#define tail_load(p) _mm512_load_ps(p)
#define tail_storeu(p, v) _mm512_storeu_ps(p, v)
#define tail_hsum(v) _mm512_reduce_add_ps(v)
#define tail_weights(x, m) weights16(x, m)
#define tail_row(row, d, r) row16(row, d, r)
#define tail_floats(row, d, r) _mm512_maskz_loadu_ps(part_mask(d, r), (row) + 16 * (r))
#define TAIL_KERNEL attn_tail_avx512
#include "attention-tail.h"
