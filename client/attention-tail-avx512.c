/* SPDX-License-Identifier: MIT */
/*
 * The FP16 tail with AVX-512: the rows of the sequence's current block,
 * not yet compressed, in the original domain.  Every decode step has up
 * to a block of them, and the float64 reference loop (a scalar fp16
 * conversion per element, exp() per token) took ~0.85 us per token and
 * KV head: 63 tail tokens cost a 1K-token call five times its pages' time.
 *
 * Up to 16 tokens at a time: each K row is converted once (F16C) for the
 * whole query group, scored in float against every query head, and the
 * scores go through one online-softmax step per head; each V row is then
 * converted once and added with its weights into float sums, which join
 * the head's float64 accumulator once per 16 tokens.  Float is exact
 * enough here: a dot product of head_dim terms and a sum of 16.
 */
#include <immintrin.h>
#include <math.h>

#include <tqkv/codec.h>

#include "attention-private.h"
#include "exp-avx512.h"

/* The lanes of elements [16 r, 16 r + 16) that are below d. */
static inline __attribute__((always_inline)) __mmask16 part_mask(unsigned d, unsigned r)
{
	return d - 16 * r >= 16 ? 0xffff : (__mmask16)((1u << (d - 16 * r)) - 1);
}

/* Elements [16 r, 16 r + 16) of an fp16 row of d, as floats (0 past d). */
static inline __attribute__((always_inline)) __m512 row16(const uint16_t *row, unsigned d, unsigned r)
{
	return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(part_mask(d, r), row + 16 * r));
}

/* Moves head h's running max up to m_new: its sum and both accumulators
 * are rescaled (in float64, as the rest of the call keeps them). */
static void move_max(struct attn_tail_head *h, double m_new)
{
	if (*h->m != -INFINITY) {
		double f = exp(*h->m - m_new);

		*h->l *= f;
		for (unsigned j = 0; j < h->d; j++)
			h->acc[j] *= f;
		for (unsigned j = 0; h->acc_rot && j < h->d_rot; j++)
			h->acc_rot[j] *= f;
	}
	*h->m = m_new;
}

/* Inlined with g a constant for the common group sizes, so that the
 * value sums stay in registers (in memory, each token's FMA waited on
 * the last one's store: three quarters of the kernel's time). */
static inline __attribute__((always_inline)) void tail_group(const uint16_t *const *krow,
							      const uint16_t *const *vrow, unsigned n, float scale,
							      struct attn_tail_head *h, unsigned g)
{
	const unsigned d = h[0].d, R = (d + 15) / 16;
	const __mmask16 valid = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
	float s[ATTN_TAIL_HEADS][16] __attribute__((aligned(64)));
	__m512 p[ATTN_TAIL_HEADS];

	/* Scores: the dot product of each token's key with every query. */
	for (unsigned t = 0; t < n; t++) {
		__m512 k[TQKV_HEAD_DIM_MAX / 16];

		for (unsigned r = 0; r < R; r++)
			k[r] = row16(krow[t], d, r);
		for (unsigned i = 0; i < g; i++) {
			__m512 dot = _mm512_setzero_ps();

			for (unsigned r = 0; r < R; r++)
				dot = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(part_mask(d, r), h[i].q + 16 * r), k[r], dot);
			s[i][t] = scale * _mm512_reduce_add_ps(dot);
		}
	}
	/* One online-softmax step per head for the n tokens. */
	for (unsigned i = 0; i < g; i++) {
		__m512 x = _mm512_mask_load_ps(_mm512_set1_ps(-INFINITY), valid, s[i]);
		double top = _mm512_reduce_max_ps(x);

		if (top > *h[i].m)
			move_max(&h[i], top);
		p[i] = _mm512_maskz_mov_ps(valid, exp_avx512(_mm512_sub_ps(x, _mm512_set1_ps((float)*h[i].m))));
		*h[i].l += _mm512_reduce_add_ps(p[i]);
		_mm512_store_ps(s[i], p[i]);
	}
	/* Values: float sums of the n weighted rows, then into float64. */
	for (unsigned r = 0; r < R; r++) {
		__m512 sum[ATTN_TAIL_HEADS];

		for (unsigned i = 0; i < g; i++)
			sum[i] = _mm512_setzero_ps();
		for (unsigned t = 0; t < n; t++) {
			__m512 v = row16(vrow[t], d, r);

			for (unsigned i = 0; i < g; i++)
				sum[i] = _mm512_fmadd_ps(_mm512_set1_ps(s[i][t]), v, sum[i]);
		}
		for (unsigned i = 0; i < g; i++) {
			float part[16];

			_mm512_storeu_ps(part, sum[i]);
			for (unsigned j = 16 * r; j < d && j < 16 * r + 16; j++)
				h[i].acc[j] += part[j - 16 * r];
		}
	}
}

#define TAIL_CASE(G)                                    \
	case G:                                         \
		tail_group(krow, vrow, n, scale, h, G); \
		break;

void attn_tail_avx512(const uint16_t *const *krow, const uint16_t *const *vrow, unsigned n, float scale,
		      struct attn_tail_head *h, unsigned g)
{
	switch (g) {
	TAIL_CASE(1)
	TAIL_CASE(2)
	TAIL_CASE(4)
	TAIL_CASE(8)
	default:
		tail_group(krow, vrow, n, scale, h, g);
	}
}
