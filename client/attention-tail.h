/* SPDX-License-Identifier: MIT */
/*
 * The FP16 tail kernel, written once for both vector widths and included
 * by attention-tail-avx512.c and attention-tail-avx2.c, which define:
 *
 *   TAIL_LANES              floats per vector (16 or 8)
 *   tail_vec                the vector type
 *   tail_zero(), tail_set1(x), tail_fmadd(a, b, c), tail_load(p),
 *   tail_storeu(p, v)       the usual operations
 *   tail_hsum(v)            the sum of the lanes
 *   tail_weights(x, m)      e^(x - m), 0 in the lanes where x is -inf
 *   tail_row(row, d, r)     elements [TAIL_LANES r, TAIL_LANES (r + 1)) of
 *                           an fp16 row of d, as floats (0 past d)
 *   tail_floats(row, d, r)  the same of a float row
 *   TAIL_KERNEL             the name of the kernel it defines
 *
 * The rows are the sequence's current block, not yet compressed, in the
 * original domain.  Every decode step has up to a block of them, and the
 * float64 reference loop (a scalar fp16 conversion per element, exp() per
 * token) took ~0.85 us per token and KV head: 63 tail tokens cost a
 * 1K-token call five times its pages' time.
 *
 * Up to 16 tokens at a time: each K row is converted once (F16C) for the
 * whole query group and scored in float against every query head; one
 * online-softmax step per head; each V row is converted once and added
 * with its weights into float sums, which join the head's float64
 * accumulator once per 16 tokens.  Float is exact enough here: a dot
 * product of head_dim terms and a sum of 16.
 */
#ifndef TQKV_CLIENT_ATTENTION_TAIL_H
#define TQKV_CLIENT_ATTENTION_TAIL_H

#include <math.h>

#include <tqkv/codec.h>

#include "attention-private.h"

/* Inlined with g a constant for the common group sizes, so that the value
 * sums stay in registers: in memory, each token's FMA waited on the last
 * one's store (1087 tokens, G=1: 92.6 -> 88.5 ns per token). */
static inline __attribute__((always_inline)) void tail_group(const uint16_t *const *krow,
							      const uint16_t *const *vrow, unsigned n, float scale,
							      struct attn_tail_head *h, unsigned g)
{
	const unsigned d = h[0].d, R = (d + TAIL_LANES - 1) / TAIL_LANES;
	float s[ATTN_TAIL_HEADS][16] __attribute__((aligned(64)));

	/* Scores: the dot product of each token's key with every query. */
	for (unsigned t = 0; t < n; t++) {
		tail_vec k[TQKV_HEAD_DIM_MAX / TAIL_LANES];

		for (unsigned r = 0; r < R; r++)
			k[r] = tail_row(krow[t], d, r);
		for (unsigned i = 0; i < g; i++) {
			tail_vec dot = tail_zero();

			for (unsigned r = 0; r < R; r++)
				dot = tail_fmadd(tail_floats(h[i].q, d, r), k[r], dot);
			s[i][t] = scale * tail_hsum(dot);
		}
	}
	/* One online-softmax step per head; s becomes the weights (0 past n). */
	for (unsigned i = 0; i < g; i++) {
		float top = -INFINITY, sum = 0;

		for (unsigned t = 0; t < n; t++)
			top = s[i][t] > top ? s[i][t] : top;
		if (top > *h[i].m)
			attn_tail_move_max(&h[i], top);
		for (unsigned t = n; t < 16; t++)
			s[i][t] = -INFINITY;
		for (unsigned t = 0; t < 16; t += TAIL_LANES) {
			tail_vec p = tail_weights(tail_load(s[i] + t), (float)*h[i].m);

			sum += tail_hsum(p);
			tail_storeu(s[i] + t, p);
		}
		*h[i].l += sum;
	}
	/* Values: float sums of the n weighted rows, then into float64. */
	for (unsigned r = 0; r < R; r++) {
		tail_vec acc[ATTN_TAIL_HEADS];

		for (unsigned i = 0; i < g; i++)
			acc[i] = tail_zero();
		for (unsigned t = 0; t < n; t++) {
			tail_vec v = tail_row(vrow[t], d, r);

			for (unsigned i = 0; i < g; i++)
				acc[i] = tail_fmadd(tail_set1(s[i][t]), v, acc[i]);
		}
		for (unsigned i = 0; i < g; i++) {
			float part[TAIL_LANES];

			tail_storeu(part, acc[i]);
			for (unsigned j = TAIL_LANES * r; j < d && j < TAIL_LANES * (r + 1); j++)
				h[i].acc[j] += part[j - TAIL_LANES * r];
		}
	}
}

#define TAIL_CASE(G)                                    \
	case G:                                         \
		tail_group(krow, vrow, n, scale, h, G); \
		break;

void TAIL_KERNEL(const uint16_t *const *krow, const uint16_t *const *vrow, unsigned n, float scale,
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

#endif
