/* SPDX-License-Identifier: MIT */
/*
 * Inside the codec: the state of one stream and the kernel interface that
 * the scalar reference and the SIMD paths implement.
 *
 * The canonical arithmetic (docs/CODEC.md) that every path follows exactly:
 *   1. x_j = row_j - mean_j (float), non-finite -> 0, zero-padded to d.
 *   2. ss = sum of x_j * x_j in 16 lanes (lane j mod 16, increasing j,
 *      multiply then add, never fused), lanes folded 8, 4, 2, 1;
 *      gamma = sqrtf(ss).  If ss is infinite the row is first scaled by
 *      2^-64 (exact) and the stored norm saturates.
 *   3. y = D2 H D1 x (rotation.h), scale = gamma * sqrt_d.
 *   4. index_j = number of boundaries b_k with y_j > b_k * scale.
 *   5. nn = sum of c[index_j]^2 as in 2; norm = gamma / sqrtf(nn) (0 if
 *      gamma is 0), stored as fp16, saturating at 65504.
 */
#ifndef TQKV_PROTO_CODEC_PRIVATE_H
#define TQKV_PROTO_CODEC_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tqkv/codec.h>

#include "cpu.h"
#include "rotation.h"

#define CODEC_LANES 16u

/* How a kind's vectors are computed. */
enum codec_class {
	CODEC_CLASS_FP16,
	CODEC_CLASS_INT8,
	CODEC_CLASS_TQ,      /* TurboQuant-MSE */
	CODEC_CLASS_TQ_QJL,  /* TurboQuant-prod: MSE stage + residual sign sketch */
};

/* Where the rows of one tile come from. */
struct codec_src {
	const void *rows;     /* first row of the tile */
	size_t stride;        /* elements between rows */
	bool f16;             /* rows are IEEE half, else float */
	const float *mean;    /* head_dim values or NULL */
};

/* One packed tile plus its per-token side data inside a page. */
struct codec_tile {
	uint8_t *bits;        /* layout.tile_bytes */
	uint16_t *norms;      /* 16 fp16 */
	uint16_t *rnorms;     /* 16 fp16, QJL only */
};

struct codec_kernels {
	/* Encodes n (1..16) rows into a tile; tokens n..15 are left zero. */
	void (*encode_tile)(const struct tqkv_codec *c, const struct codec_src *src, unsigned n,
			    const struct codec_tile *tile);
	/* Decodes token t of a tile into head_dim floats (plus mean). */
	void (*decode_token)(const struct tqkv_codec *c, const uint8_t *bits, const uint16_t *norms,
			     const uint16_t *rnorms, unsigned t, const float *mean, float *out);
};

struct tqkv_codec {
	struct tqkv_codec_params params;
	struct tqkv_layout layout;
	enum codec_class cls;
	enum cpu_isa isa;
	struct codec_kernels kernels;

	unsigned d;             /* padded dim (rotation size or stored row length) */
	float sqrt_d;           /* sqrtf(d) */
	unsigned split;         /* coordinates [0, split) use the hi codebook */
	unsigned bits_hi, bits_lo;  /* MSE-stage index bits of each half */

	uint64_t sign1[ROTATION_SIGN_WORDS], sign2[ROTATION_SIGN_WORDS];
	/* The same signs as float sign-bit masks, for XOR in SIMD code. */
	uint32_t sign1_mask[TQKV_HEAD_DIM_MAX] __attribute__((aligned(64)));
	uint32_t sign2_mask[TQKV_HEAD_DIM_MAX] __attribute__((aligned(64)));

	/* Centroids and boundaries of each half; entries past 2^bits - 1
	 * boundaries are +inf so branchless searches never step past them. */
	float cent_hi[16] __attribute__((aligned(64)));
	float cent_lo[16] __attribute__((aligned(64)));
	float bound_hi[16] __attribute__((aligned(64)));
	float bound_lo[16] __attribute__((aligned(64)));
	/* bound_*_step[s][i] = bound_*[i + 2^s - 1]: the table the binary
	 * search reads at step 2^s, so it needs no index arithmetic. */
	float bound_hi_step[4][16] __attribute__((aligned(64)));
	float bound_lo_step[4][16] __attribute__((aligned(64)));

	float *qjl;             /* d x d Gaussian projection, row-major, QJL only */
};

/* Section offsets of a page of n_tokens for a codec (page.c). */
struct page_geometry {
	uint32_t n_tiles, tiles, norms, rnorms, bytes;
};

/*
 * Checks an untrusted page (shared memory) against the codec: copies the
 * header once, verifies magic, version, CRC, identity, flags (centered must
 * match) and that every offset equals the geometry the codec computes.
 * Readers then use only *ret_g.  Returns 0, -EBADMSG or -EINVAL.
 */
int page_check(const struct tqkv_codec *c, const void *page, size_t page_size, bool centered,
	       struct page_geometry *ret_g, uint32_t *ret_n_tokens);

/* Kernel sets; the SIMD ones exist only in x86 builds. */
extern const struct codec_kernels codec_kernels_scalar;
extern const struct codec_kernels codec_kernels_avx2;
extern const struct codec_kernels codec_kernels_avx512;

/* Selects the kernels of an isa the CPU supports (tests and benchmarks
 * compare paths with it).  Returns 0 or -EOPNOTSUPP. */
int codec_set_isa(struct tqkv_codec *c, enum cpu_isa isa);

/* Shared helpers of the kernels (codec-scalar.c). */
float codec_lane_sum_sq(const float *v, unsigned d);
uint16_t codec_norm_to_f16(float norm);
void codec_prepare_row(const struct tqkv_codec *c, const struct codec_src *src, unsigned t, float *x);
void codec_pack_token(const struct tqkv_layout *l, const uint8_t *index, unsigned t, uint8_t *bits);
void codec_unpack_token(const struct tqkv_layout *l, const uint8_t *bits, unsigned t, uint8_t *index);
/* The reference encoder of one token (SIMD paths defer to it for rare cases). */
void codec_scalar_encode_token(const struct tqkv_codec *c, const struct codec_src *src, unsigned t,
			       const struct codec_tile *tile);
/* x <- D2 H D1 x: the rotation, unnormalised (|result| = sqrt(d) |x|). */
void codec_rotate(const struct tqkv_codec *c, float *x);
/* y <- D1 H D2 y * f: the inverse rotation scaled by f. */
void codec_unrotate(const struct tqkv_codec *c, float *y, float f);
/* The same with AVX-512, for padded dims of 16 or more: the butterflies
 * add in another order, so results match to float rounding, not bit for
 * bit (encoders keep the reference's); only where cpu_has_isa(AVX512). */
void codec_rotate_avx512(const struct tqkv_codec *c, float *x);
void codec_unrotate_avx512(const struct tqkv_codec *c, float *y, float f);

#endif
