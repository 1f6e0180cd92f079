/* SPDX-License-Identifier: MIT */
/* The interface between the portable attention driver and its SIMD tile
 * kernels. */
#ifndef TQKV_CLIENT_ATTENTION_PRIVATE_H
#define TQKV_CLIENT_ATTENTION_PRIVATE_H

#include <stdint.h>

/* One full tile of 16 tokens of a 4-bit K page and a 4-bit V page. */
struct attn_tile {
	const uint8_t *kbits, *vbits;        /* the tiles' packed words */
	const uint16_t *knorms, *vnorms;     /* 16 fp16 norms each */
	const float *vcent;                  /* V centroids (16) */
	unsigned d;                          /* padded dim */
	uint16_t valid;                      /* tokens inside [lo, pos] */
};

/* A query head's running softmax, shared with the portable path. */
struct attn_lane_state {
	const float *table;   /* [d][16]: scale * q'_j * c_j[m] */
	float q_mean;
	float *m, *l;         /* running max and sum */
	float *lanes;         /* [d][16] per-lane value sums, 64-byte aligned */
	void *owner;          /* the portable state, for attn_rescale_scalar */
};

/* Rescales the portable accumulators of a head by f (attention.c). */
void attn_rescale_scalar(struct attn_lane_state *st, float f);

void attn_tile_tq4_avx512(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g);
/* acc[i] += sum of the 16 lanes of coordinate i. */
void attn_lanes_fold_avx512(const float *lanes, unsigned d, float *acc);

#endif
