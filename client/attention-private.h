/* SPDX-License-Identifier: MIT */
/* The interface between the portable attention driver and its SIMD tile
 * kernels. */
#ifndef TQKV_CLIENT_ATTENTION_PRIVATE_H
#define TQKV_CLIENT_ATTENTION_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ATTN_CHUNK_TILES 4
/* Bytes of the 4-bit score tables per packed word (8 coordinates). */
#define ATTN_TQ4_WORD_TABLE 384

/* Four tiles (16 tokens each) of a K page and a V page, not necessarily
 * consecutive: a chunk that ends early repeats its last tile with no valid
 * token, so the kernels always work on four. */
struct attn_tile {
	const uint8_t *kbits[ATTN_CHUNK_TILES], *vbits[ATTN_CHUNK_TILES];
	uint32_t tile_bytes, vtile_bytes;        /* of K, of V */
	const uint16_t *knorms[ATTN_CHUNK_TILES], *vnorms[ATTN_CHUNK_TILES];  /* 16 fp16 each */
	const float *kcent;                  /* K centroids (16, canonical nibbles): AVX2 */
	const float *vcent;                  /* V centroids (16) of [0, vsplit); the
					      * nibble kernels: [4][16], per nibble
					      * word type (attention.c) */
	const float *vcent_lo;               /* V centroids of [vsplit, d) */
	/* TQKV_ATTN_INT8_VALUES (4-bit kernel), else NULL: the V centroids
	 * per nibble word type as signed bytes, each type's 16 repeated four
	 * times (64 bytes, so that vpermb ignores index bits 4 and 5); a
	 * centroid is vcent8_unit times its byte. */
	const int8_t *vcent8;
	float vcent8_unit;
	unsigned vsplit;
	unsigned d;                          /* padded dim */
	uint16_t valid[ATTN_CHUNK_TILES];    /* tokens inside [lo, pos] */
	/* Bytes of a later chunk that the kernel requests while it computes,
	 * spread over its work (a burst of misses stalls it). */
	const uint8_t *ahead[2];
	uint32_t ahead_bytes[2];
	/* Any-bit kernel only: the planes, and room for unpacked indices
	 * (2 * ATTN_CHUNK_TILES * d zmm, 64-byte aligned). */
	const struct tqkv_layout *klayout, *vlayout;
	uint32_t *idx;
};

/* How far (in score units, natural log) a chunk's scores may pass a
 * head's running max before the max moves and the accumulators are
 * rescaled.  Softmax weights are then at most e^8 ~ 3000, far from fp32
 * overflow and with the same relative precision, and the result is the
 * same for any reference max; most chunks that raise the max raise it a
 * little, and now skip the horizontal maximum and the rescale. */
#define ATTN_MAX_SLACK 8.0f

/* Requests slice w of n of the later chunk's bytes (tile->ahead), into L2:
 * L1 stays with the chunk being computed. */
static inline __attribute__((always_inline)) void attn_prefetch_slice(const struct attn_tile *tile, unsigned w, unsigned n)
{
	for (unsigned s = 0; s < 2; s++) {
		uint32_t from = tile->ahead_bytes[s] * w / n & ~63u, to = tile->ahead_bytes[s] * (w + 1) / n;

		for (uint32_t off = from; off < to; off += 64)
			__builtin_prefetch(tile->ahead[s] + off, 0, 2);
	}
}

/* A query head's running softmax, shared with the portable path. */
struct attn_lane_state {
	const float *table;   /* [d][16]: scale * q'_j * c_j[m] */
	const float *qs;      /* scale * q'_j (padded): the AVX2 kernel's, against dequantised keys */
	const uint8_t *btab;  /* the 4-bit kernel's byte tables (64-byte aligned) */
	float bstep;          /* their unit */
	int32_t bbias;        /* 8-bit tables: their offset, times the multipliers */
	bool int8;            /* 8-bit tables (TQKV_ATTN_INT8_SCORES) */
	float q_mean;
	double *m, *l;        /* running max and sum */
	float *lanes;         /* [d][16] per-lane value sums, 64-byte aligned */
	void *owner;          /* the portable state, for attn_move_max */
};

/* A query head as the FP16 tail kernel sees it (attention.c owns it). */
#define ATTN_TAIL_HEADS 8
struct attn_tail_head {
	const float *q;        /* the query, d floats */
	unsigned d;            /* head_dim */
	double *m, *l;         /* running max and sum */
	double *acc;           /* values in the original domain (d) */
	void *owner;           /* the portable state, for attn_tail_move_max */
};

/* Moves a tail head's running max up to m_new, rescaling its sum and
 * every accumulator of its owner (attention.c; rare, so portable code
 * serves both ISAs). */
void attn_tail_move_max(struct attn_tail_head *h, double m_new);

/* Runs fn(args + i * stride) for i in [0, n): i = 0 on the calling thread,
 * the others on the pool's workers (attention-pool.c); returns when all
 * are done. */
void attn_pool_run(void (*fn)(void *arg), void *args, size_t stride, unsigned n);

/* Moves a head's running max up to m_new: every sum it holds (l, the
 * lanes, the portable accumulators) is rescaled to it (attention.c).  Rare
 * (ATTN_MAX_SLACK), so portable code serves every kernel. */
void attn_move_max(struct attn_lane_state *st, float m_new);

/* Builds btab (d / 8 * ATTN_TQ4_WORD_TABLE bytes) for the scaled rotated query qs (d
 * floats) and the key centroids per nibble word type (16 floats per type;
 * word w's at cent + 16 (w % 4)); returns the tables' unit. */
float attn_tq4_tables_avx512(const float *qs, const float *cent, unsigned d, uint8_t *btab);
/* The same as 8-bit tables, each coordinate's own range (the
 * approximate TQKV_ATTN_INT8_SCORES): per word, the low and the high
 * nibbles' tables (64 bytes each), then their multipliers (a dword each);
 * *bias is subtracted from the sums. */
float attn_tq4_tables8_avx512(const float *qs, const float *cent, unsigned d, uint8_t *btab, int32_t *bias);
void attn_tile_tq4_avx512(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g);
/* The same for any TurboQuant kinds of K and V: unpacks each tile's planes
 * to one index per lane first. */
void attn_tile_tq_avx512(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g);
/* Tokens [0, n) of the FP16 tail, n <= 16 (krow[t], vrow[t]: head_dim
 * fp16 each), for g <= ATTN_TAIL_HEADS query heads: scores scale * q . k,
 * the online softmax, the values into h->acc. */
void attn_tail_avx512(const uint16_t *const *krow, const uint16_t *const *vrow, unsigned n, float scale,
		      struct attn_tail_head *h, unsigned g);
/* The same with AVX2, F16C and FMA. */
void attn_tail_avx2(const uint16_t *const *krow, const uint16_t *const *vrow, unsigned n, float scale,
		    struct attn_tail_head *h, unsigned g);
/* acc[i] += the sum of the 16 lanes of coordinate i (d a multiple of 16). */
void attn_lanes_fold_avx512(const float *lanes, unsigned d, double *acc);
/* The AVX2 kernel over nibble words (uniform 2-, 3- or 4-bit K and V),
 * float tables with 16 entries per coordinate. */
void attn_tile_nibbles_avx2(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g);

#endif
