/* SPDX-License-Identifier: MIT */
#include <math.h>

#include "test-util.h"

/* Pinned outputs (docs/CODEC.md "Rotation"). */
#define GOLDEN_SEED 0x4a1e84a57f5c7fd4ull
#define GOLDEN_S1_0 0x1db8126a2311c919ull
#define GOLDEN_S1_1 0x284e03ef33e6df1bull
#define GOLDEN_S2_0 0xaa97fe52ea78e6f9ull
#define GOLDEN_S2_1 0x4feb61d60db8dc20ull

/* The codec's rotation and its inverse, normalised (orthogonal). */
static void rotate(const struct tqkv_codec *c, float *v)
{
	codec_rotate(c, v);
	for (unsigned j = 0; j < c->d; j++)
		v[j] /= c->sqrt_d;
}

static void unrotate(const struct tqkv_codec *c, float *v)
{
	codec_unrotate(c, v, 1.0f / c->sqrt_d);
}

/* The columns of the rotation are orthonormal: <P e_i, P e_j> = delta_ij. */
Test(rotation, orthonormal_columns)
{
	uint64_t seed = test_seed();

	for (unsigned d = 32; d <= 512; d *= 2) {
		struct tqkv_codec *c = test_codec(TQKV_KIND_TQ4, d, 0, seed);
		float *m = calloc((size_t)d * d, sizeof(float));

		for (unsigned i = 0; i < d; i++) {
			m[(size_t)i * d + i] = 1.0f;
			rotate(c, m + (size_t)i * d);
		}
		for (unsigned i = 0; i < d; i++)
			for (unsigned j = i; j < d; j++) {
				double dot = 0;

				for (unsigned k = 0; k < d; k++)
					dot += (double)m[(size_t)i * d + k] * m[(size_t)j * d + k];
				cr_assert(fabs(dot - (i == j)) < 1e-6, "d=%u <%u,%u>=%g", d, i, j, dot);
			}
		free(m);
		tqkv_codec_free(c);
	}
}

/* unrotate(rotate(x)) == x and norms are kept. */
Test(rotation, inverse_restores_input)
{
	uint64_t seed = test_seed();

	for (unsigned d = 32; d <= 512; d *= 2) {
		struct tqkv_codec *c = test_codec(TQKV_KIND_TQ3, d, 0, seed);
		float *x = test_gaussian(seed + d, 1, d), y[TQKV_HEAD_DIM_MAX];
		double n0 = 0, n1 = 0;

		for (unsigned j = 0; j < d; j++)
			y[j] = x[j];
		rotate(c, y);
		for (unsigned j = 0; j < d; j++) {
			n0 += (double)x[j] * x[j];
			n1 += (double)y[j] * y[j];
		}
		cr_assert(fabs(n0 - n1) < 1e-4 * n0);
		unrotate(c, y);
		for (unsigned j = 0; j < d; j++)
			cr_assert(fabsf(x[j] - y[j]) < 1e-5f, "d=%u j=%u %g vs %g", d, j, x[j], y[j]);
		free(x);
		tqkv_codec_free(c);
	}
}

/* The derivation is pinned: these words must never change, or pages
 * written before a restart would decode with the wrong rotation. */
Test(rotation, golden_signs)
{
	uint64_t s1[ROTATION_SIGN_WORDS], s2[ROTATION_SIGN_WORDS];
	uint64_t seed = rotation_stream_seed(0x0123456789abcdefull, 3, 5, TQKV_STREAM_K);

	uint64_t state = 0;

	/* SplitMix64's published first output for state 0. */
	cr_assert_eq(splitmix64_next(&state), 0xe220a8397b1dcdafull);
	cr_assert_eq(seed, GOLDEN_SEED, "seed %#" PRIx64, seed);
	rotation_draw_signs(seed, 128, s1, s2);
	cr_assert_eq(s1[0], GOLDEN_S1_0, "%#" PRIx64, s1[0]);
	cr_assert_eq(s1[1], GOLDEN_S1_1, "%#" PRIx64, s1[1]);
	cr_assert_eq(s2[0], GOLDEN_S2_0, "%#" PRIx64, s2[0]);
	cr_assert_eq(s2[1], GOLDEN_S2_1, "%#" PRIx64, s2[1]);
	rotation_draw_signs(seed, 32, s1, s2);
	cr_assert_eq(s1[0], GOLDEN_S1_0 & 0xffffffffu);
	cr_assert_eq(s1[1], 0);
}

/* Every part of the identity changes the signs. */
Test(rotation, streams_differ)
{
	uint64_t base = rotation_stream_seed(42, 1, 1, TQKV_STREAM_K);

	cr_assert_neq(base, rotation_stream_seed(43, 1, 1, TQKV_STREAM_K));
	cr_assert_neq(base, rotation_stream_seed(42, 2, 1, TQKV_STREAM_K));
	cr_assert_neq(base, rotation_stream_seed(42, 1, 2, TQKV_STREAM_K));
	cr_assert_neq(base, rotation_stream_seed(42, 1, 1, TQKV_STREAM_V));
}
