/* SPDX-License-Identifier: MIT */
/* Error of a codec on random unit vectors: shared by test-codec-mse and
 * tqkv-bench, so the test and the published table measure the same thing. */
#ifndef TQKV_TESTS_CODEC_STATS_H
#define TQKV_TESTS_CODEC_STATS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <tqkv/codec.h>

struct codec_mse {
	double raw;        /* E|x - P^T c[idx]|^2: before norm correction */
	double corrected;  /* E|x - decode(encode(x))|^2 */
	double optimum;    /* the Lloyd-Max optimum for the codec's bits */
};

/* Scales each of the n rows of v (d floats each) to unit length. */
static inline void unit_normalize(float *v, size_t n, unsigned d)
{
	for (size_t i = 0; i < n; i++) {
		double ss = 0;

		for (unsigned j = 0; j < d; j++)
			ss += (double)v[i * d + j] * v[i * d + j];
		for (unsigned j = 0; j < d; j++)
			v[i * d + j] = (float)(v[i * d + j] / sqrt(ss));
	}
}

/* Encodes n random unit vectors (Gaussian from seed, normalised) with c
 * and measures both errors.  Returns 0 or a negative errno. */
int codec_unit_mse(const struct tqkv_codec *c, unsigned n, uint64_t seed, struct codec_mse *ret);

#endif
