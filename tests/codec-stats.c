/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <tqkv/page.h>

#include "codebook.h"
#include "codec-private.h"
#include "codec-stats.h"

#define BATCH 4096u

/* y = P x for the codec's rotation, unit scale. */
static void rotate_unit(const struct tqkv_codec *c, const float *x, float *y)
{
	memcpy(y, x, sizeof(float) * c->d);
	codec_rotate(c, y);
	for (unsigned j = 0; j < c->d; j++)
		y[j] /= c->sqrt_d;
}

/* Squared error of token t against the unquantized rotated input (only
 * for TurboQuant kinds; other kinds have no "before correction"). */
static double raw_error(const struct tqkv_codec *c, const uint8_t *page, unsigned t, const float *x)
{
	const struct tqkv_page_header *h = (const void *)page;
	float y[TQKV_HEAD_DIM_MAX];
	uint8_t idx[TQKV_HEAD_DIM_MAX];
	double e = 0;

	rotate_unit(c, x, y);
	codec_unpack_token(&c->layout, page + h->tiles_offset + (size_t)(t / 16) * h->tile_bytes, t % 16, idx);
	for (unsigned j = 0; j < c->d; j++) {
		double diff = y[j] - (double)(j < c->split ? c->cent_hi : c->cent_lo)[idx[j] & 0x0f];

		e += diff * diff;
	}
	return e;
}

static double optimum(const struct tqkv_codec *c)
{
	unsigned di;

	if (c->cls != CODEC_CLASS_TQ)
		return 0.0;
	di = (unsigned)__builtin_ctz(c->d) - CODEBOOK_DIM_MIN_LOG2;
	return (codebook_mse[di][c->bits_hi - 1] * c->split +
		codebook_mse[di][c->bits_lo - 1] * (c->d - c->split)) / c->d;
}

int codec_unit_mse(const struct tqkv_codec *c, unsigned n, uint64_t seed, struct codec_mse *ret)
{
	unsigned d = c->params.head_dim;
	size_t size = tqkv_page_size(c, BATCH);
	float *x = malloc(sizeof(float) * BATCH * d), *dec = malloc(sizeof(float) * BATCH * d);
	uint8_t *page = aligned_alloc(64, size);
	int r = 0;

	memset(ret, 0, sizeof(*ret));
	if (!x || !dec || !page) {
		r = -ENOMEM;
		goto out;
	}
	for (unsigned done = 0; done < n; done += BATCH) {
		unsigned m = n - done < BATCH ? n - done : BATCH;

		gaussian_fill(seed + done, x, m * d);
		unit_normalize(x, m, d);
		r = tqkv_page_encode_f32(c, x, d, m, NULL, page, size);
		if (r >= 0)
			r = tqkv_page_decode_f32(c, page, size, 0, m, NULL, dec, d);
		if (r < 0)
			goto out;
		for (unsigned t = 0; t < m; t++) {
			const float *xt = x + (size_t)t * d;
			double e = 0;

			for (unsigned j = 0; j < d; j++)
				e += ((double)xt[j] - dec[(size_t)t * d + j]) * ((double)xt[j] - dec[(size_t)t * d + j]);
			ret->corrected += e;
			ret->raw += c->cls == CODEC_CLASS_TQ ? raw_error(c, page, t, xt) : e;
		}
	}
	ret->raw /= n;
	ret->corrected /= n;
	ret->optimum = optimum(c);
out:
	free(x);
	free(dec);
	free(page);
	return r;
}
