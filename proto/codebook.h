/* SPDX-License-Identifier: MIT */
/*
 * Lloyd-Max codebooks for one coordinate of a uniformly random unit vector
 * in R^d (density proportional to (1 - t^2)^((d - 3) / 2) on [-1, 1]).
 *
 * The committed tables (codebook-tables.c) are produced by
 * tqkv-gen-codebooks from lloyd_max_sphere(); test-codebook checks that they
 * still agree.  Centroids are for unit vectors (about N(0, 1/d) scale).
 */
#ifndef TQKV_PROTO_CODEBOOK_H
#define TQKV_PROTO_CODEBOOK_H

/* Dimensions 32, 64, 128, 256, 512: index log2(d) - 5. */
#define CODEBOOK_DIMS 5
#define CODEBOOK_DIM_MIN_LOG2 5
/* Bits 1..4: index bits - 1. */
#define CODEBOOK_BITS_MAX 4

/* Ascending centroids; entries past 2^bits are 0. */
extern const float codebook_centroids[CODEBOOK_DIMS][CODEBOOK_BITS_MAX][16];
/* The optimum's mean squared error for a unit vector: d * E[(t - Q(t))^2]. */
extern const double codebook_mse[CODEBOOK_DIMS][CODEBOOK_BITS_MAX];

/*
 * Runs Lloyd's iteration in double precision on the exact density until
 * the centroids move less than 1e-13.  Writes 2^bits ascending centroids
 * and returns the unit-vector MSE in *ret_mse.  Returns 0 or -EINVAL
 * (dim < 3 or bits outside 1..4).
 */
int lloyd_max_sphere(unsigned dim, unsigned bits, double *ret_centroids, double *ret_mse);

#endif
