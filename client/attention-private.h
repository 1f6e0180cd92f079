/* SPDX-License-Identifier: MIT */
/* The interface between the portable attention driver and its SIMD tile
 * kernels. */
#ifndef TQKV_CLIENT_ATTENTION_PRIVATE_H
#define TQKV_CLIENT_ATTENTION_PRIVATE_H

#include <stdint.h>

#define ATTN_CHUNK_TILES 4

/* Up to four consecutive tiles (16 tokens each) of a 4-bit K page and a
 * 4-bit V page: tile t starts at kbits + t * tile_bytes. */
struct attn_tile {
	const uint8_t *kbits, *vbits;        /* the first tile's packed words */
	uint32_t tile_bytes;                 /* of K (and of V for the 4-bit kernel) */
	uint32_t vtile_bytes;
	unsigned n_tiles;
	const uint16_t *knorms, *vnorms;     /* 16 fp16 norms per tile */
	const float *vcent;                  /* V centroids (16) of [0, vsplit) */
	const float *vcent_lo;               /* V centroids of [vsplit, d) */
	unsigned vsplit;
	unsigned d;                          /* padded dim */
	uint16_t valid[ATTN_CHUNK_TILES];    /* tokens inside [lo, pos] */
	/* Any-bit kernel only: the planes, and room for unpacked indices
	 * (2 * ATTN_CHUNK_TILES * d zmm, 64-byte aligned). */
	const struct tqkv_layout *klayout, *vlayout;
	uint32_t *idx;
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
/* The same for any TurboQuant kinds of K and V: unpacks each tile's planes
 * to one index per lane first. */
void attn_tile_tq_avx512(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g);
/* acc[i] += sum of the 16 lanes of coordinate i. */
void attn_lanes_fold_avx512(const float *lanes, unsigned d, float *acc);

#endif
