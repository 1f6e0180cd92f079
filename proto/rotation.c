/* SPDX-License-Identifier: MIT */
#include <math.h>
#include <string.h>

#include "rotation.h"

uint64_t splitmix64_mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

uint64_t splitmix64_next(uint64_t *state)
{
	*state += 0x9e3779b97f4a7c15ull;
	return splitmix64_mix(*state);
}

uint64_t rotation_stream_seed(uint64_t model_seed, uint32_t layer, uint32_t kv_head,
			      enum tqkv_stream stream)
{
	/* The tag packs the stream identity; kv_head < 2^31 by validation. */
	uint64_t tag = ((uint64_t)layer << 32) | ((uint64_t)kv_head << 1) | (uint64_t)(stream & 1);

	return model_seed ^ splitmix64_mix(tag + 0x9e3779b97f4a7c15ull);
}

static void draw_words(uint64_t *state, unsigned d, uint64_t *w)
{
	unsigned n = (d + 63) / 64;

	memset(w, 0, ROTATION_SIGN_WORDS * sizeof(*w));
	for (unsigned i = 0; i < n; i++)
		w[i] = splitmix64_next(state);
	if (d % 64)
		w[n - 1] &= (1ull << (d % 64)) - 1;
}

void rotation_draw_signs(uint64_t seed, unsigned d, uint64_t d1[ROTATION_SIGN_WORDS],
			 uint64_t d2[ROTATION_SIGN_WORDS])
{
	uint64_t state = seed;

	draw_words(&state, d, d1);
	draw_words(&state, d, d2);
}

void wht_f32(float *v, unsigned d)
{
	for (unsigned h = 1; h < d; h <<= 1)
		for (unsigned i = 0; i < d; i += 2 * h)
			for (unsigned j = i; j < i + h; j++) {
				float a = v[j], b = v[j + h];

				v[j] = a + b;
				v[j + h] = a - b;
			}
}

void apply_signs_f32(float *v, const uint64_t *signs, unsigned d)
{
	for (unsigned j = 0; j < d; j++)
		if ((signs[j / 64] >> (j % 64)) & 1)
			v[j] = -v[j];
}

void gaussian_fill(uint64_t seed, float *out, unsigned n)
{
	uint64_t state = seed;

	for (unsigned i = 0; i < n; i += 2) {
		/* u1 in (0, 1] so the log is finite; 53-bit uniforms. */
		double u1 = (double)((splitmix64_next(&state) >> 11) + 1) * 0x1p-53;
		double u2 = (double)(splitmix64_next(&state) >> 11) * 0x1p-53;
		double r = sqrt(-2.0 * log(u1));
		double a = 2.0 * M_PI * u2;

		out[i] = (float)(r * cos(a));
		if (i + 1 < n)
			out[i + 1] = (float)(r * sin(a));
	}
}
