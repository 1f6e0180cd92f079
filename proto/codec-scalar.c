/* SPDX-License-Identifier: MIT */
/*
 * The scalar reference kernels: the definition of every kind's result, in
 * the canonical arithmetic of codec-private.h.  The SIMD paths must produce
 * the same bytes; test-codec-simd compares them on random and edge inputs.
 */
#include <math.h>
#include <string.h>

#include "codec-private.h"
#include "qjl.h"
#include "tq3-words.h"

#define F16_MAX 65504.0f

float codec_lane_sum_sq(const float *v, unsigned d)
{
	float acc[CODEC_LANES] = { 0 };

	for (unsigned j = 0; j < d; j++)
		acc[j % CODEC_LANES] += v[j] * v[j];
	for (unsigned w = CODEC_LANES / 2; w; w /= 2)
		for (unsigned l = 0; l < w; l++)
			acc[l] += acc[l + w];
	return acc[0];
}

uint16_t codec_norm_to_f16(float norm)
{
	return tqkv_f32_to_f16(norm < F16_MAX ? norm : F16_MAX);
}

void codec_prepare_row(const struct tqkv_codec *c, const struct codec_src *src, unsigned t, float *x)
{
	unsigned hd = c->params.head_dim;

	for (unsigned j = 0; j < hd; j++) {
		float v;

		if (src->f16)
			v = tqkv_f16_to_f32(((const uint16_t *)src->rows)[t * src->stride + j]);
		else
			v = ((const float *)src->rows)[t * src->stride + j];
		if (src->mean)
			v -= src->mean[j];
		x[j] = isfinite(v) ? v : 0.0f;
	}
	for (unsigned j = hd; j < c->d; j++)
		x[j] = 0.0f;
}

/* Pages are little-endian; on little-endian hosts these are plain moves. */
static void store_le(uint8_t *p, uint32_t v, unsigned bytes)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	if (bytes == 4) {
		memcpy(p, &v, 4);
		return;
	}
#endif
	for (unsigned i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t load_le(const uint8_t *p, unsigned bytes)
{
	uint32_t v = 0;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	if (bytes == 4) {
		memcpy(&v, p, 4);
		return v;
	}
#endif
	for (unsigned i = 0; i < bytes; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

/* The words of a 3-bit plane of a token, as W = n / 8 nibble words:
 * coordinate i in nibble i / W of word i % W (tq3-words.h). */
static void pack_tq3(const struct tqkv_plane *pl, const uint8_t *index, uint32_t *words)
{
	uint32_t nib[TQKV_HEAD_DIM_MAX / 8] = { 0 };
	unsigned W = pl->n_coords / 8;

	for (unsigned i = 0; i < pl->n_coords; i++)
		nib[i % W] |= (uint32_t)(index[pl->first_coord + i] & 7) << (4 * (i / W));
	tq3_words_from_nibbles(nib, W, words);
}

static void unpack_tq3(const struct tqkv_plane *pl, const uint32_t *words, uint8_t *index)
{
	uint32_t nib[TQKV_HEAD_DIM_MAX / 8];
	unsigned W = pl->n_coords / 8;

	tq3_nibbles_from_words(words, W, nib);
	for (unsigned i = 0; i < pl->n_coords; i++)
		index[pl->first_coord + i] |= (uint8_t)((nib[i % W] >> (4 * (i / W))) & 7);
}

/* Coordinate i of a plane lives in word i % words, field i / words; a
 * 3-bit plane's words are nibble words in the layout of tq3-words.h. */
void codec_pack_token(const struct tqkv_layout *l, const uint8_t *index, unsigned t, uint8_t *bits)
{
	for (unsigned p = 0; p < l->n_planes; p++) {
		const struct tqkv_plane *pl = &l->planes[p];
		unsigned wb = pl->word_bits / 8, mask = (1u << pl->bits) - 1;
		uint32_t tq3[3 * TQKV_HEAD_DIM_MAX / 32];

		if (pl->bits == 3)
			pack_tq3(pl, index, tq3);
		for (unsigned w = 0; w < pl->words; w++) {
			uint32_t word = 0;

			if (pl->bits == 3)
				word = tq3[w];
			else
				for (unsigned i = w, f = 0; i < pl->n_coords; i += pl->words, f++)
					word |= (uint32_t)((index[pl->first_coord + i] >> pl->shift) & mask)
						<< (f * pl->bits);
			store_le(bits + pl->offset + (w * TQKV_TILE_TOKENS + t) * wb, word, wb);
		}
	}
}

void codec_unpack_token(const struct tqkv_layout *l, const uint8_t *bits, unsigned t, uint8_t *index)
{
	memset(index, 0, l->padded_dim);
	for (unsigned p = 0; p < l->n_planes; p++) {
		const struct tqkv_plane *pl = &l->planes[p];
		unsigned wb = pl->word_bits / 8, mask = (1u << pl->bits) - 1;
		uint32_t tq3[3 * TQKV_HEAD_DIM_MAX / 32];

		for (unsigned w = 0; w < pl->words; w++) {
			uint32_t word = load_le(bits + pl->offset + (w * TQKV_TILE_TOKENS + t) * wb, wb);

			if (pl->bits == 3) {
				tq3[w] = word;
				continue;
			}
			for (unsigned i = w, f = 0; i < pl->n_coords; i += pl->words, f++)
				index[pl->first_coord + i] |=
					(uint8_t)(((word >> (f * pl->bits)) & mask) << pl->shift);
		}
		if (pl->bits == 3)
			unpack_tq3(pl, tq3, index);
	}
}

static void encode_fp16(const struct tqkv_codec *c, const float *x, unsigned t, const struct codec_tile *tile)
{
	uint8_t *row = tile->bits + (size_t)t * c->d * 2;

	for (unsigned j = 0; j < c->d; j++) {
		float v = fminf(fmaxf(x[j], -F16_MAX), F16_MAX);

		store_le(row + 2 * j, tqkv_f32_to_f16(v), 2);
	}
}

static void encode_int8(const struct tqkv_codec *c, const float *x, unsigned t, const struct codec_tile *tile)
{
	uint8_t q[TQKV_HEAD_DIM_MAX];
	float m = 0.0f, inv = 0.0f;
	uint16_t scale;

	for (unsigned j = 0; j < c->d; j++)
		m = fmaxf(m, fabsf(x[j]));
	scale = codec_norm_to_f16(m / 127.0f);
	if (scale)
		inv = 1.0f / tqkv_f16_to_f32(scale);
	for (unsigned j = 0; j < c->d; j++) {
		float v = fminf(fmaxf(x[j] * inv, -127.0f), 127.0f);

		q[j] = (uint8_t)(int8_t)nearbyintf(v);
	}
	codec_pack_token(&c->layout, q, t, tile->bits);
	tile->norms[t] = scale;
}

/* Steps 2-5 of the canonical arithmetic on a prepared row; returns the
 * unit-scale divisor (gamma * sqrt_d) and leaves y rotated. */
static float rotate_and_index(const struct tqkv_codec *c, float *x, uint8_t *index, float *ret_gamma,
			      int *ret_saturated)
{
	float ss = codec_lane_sum_sq(x, c->d), gamma, scale;

	*ret_saturated = 0;
	if (isinf(ss)) {
		for (unsigned j = 0; j < c->d; j++)
			x[j] *= 0x1p-64f;
		ss = codec_lane_sum_sq(x, c->d);
		*ret_saturated = 1;
	}
	gamma = sqrtf(ss);
	codec_rotate(c, x);
	scale = gamma * c->sqrt_d;

	for (unsigned j = 0; j < c->d; j++) {
		const float *bound = j < c->split ? c->bound_hi : c->bound_lo;
		unsigned levels = 1u << (j < c->split ? c->bits_hi : c->bits_lo);
		uint8_t idx = 0;

		for (unsigned k = 0; k + 1 < levels; k++)
			idx += x[j] > bound[k] * scale;
		index[j] = idx;
	}
	*ret_gamma = gamma;
	return scale;
}

static float centroid_of(const struct tqkv_codec *c, unsigned j, unsigned idx)
{
	return j < c->split ? c->cent_hi[idx] : c->cent_lo[idx];
}

static void encode_tq(const struct tqkv_codec *c, float *x, unsigned t, const struct codec_tile *tile)
{
	uint8_t index[TQKV_HEAD_DIM_MAX];
	float yhat[TQKV_HEAD_DIM_MAX];
	float gamma, scale, norm = 0.0f;
	int saturated;

	scale = rotate_and_index(c, x, index, &gamma, &saturated);
	for (unsigned j = 0; j < c->d; j++)
		yhat[j] = centroid_of(c, j, index[j]);

	if (c->cls == CODEC_CLASS_TQ_QJL) {
		float rho = 0.0f;

		if (gamma > 0.0f) {
			/* Residual of the unit vector in the rotated domain. */
			for (unsigned j = 0; j < c->d; j++)
				x[j] = x[j] / scale - yhat[j];
			rho = sqrtf(codec_lane_sum_sq(x, c->d));
			qjl_sketch(c, x, index);
		}
		norm = gamma;
		tile->rnorms[t] = codec_norm_to_f16(rho);
	} else if (gamma > 0.0f) {
		norm = gamma / sqrtf(codec_lane_sum_sq(yhat, c->d));
	}
	tile->norms[t] = saturated ? codec_norm_to_f16(INFINITY) : codec_norm_to_f16(norm);
	codec_pack_token(&c->layout, index, t, tile->bits);
}

void codec_scalar_encode_token(const struct tqkv_codec *c, const struct codec_src *src, unsigned t,
			       const struct codec_tile *tile)
{
	float x[TQKV_HEAD_DIM_MAX];

	codec_prepare_row(c, src, t, x);
	switch (c->cls) {
	case CODEC_CLASS_FP16:
		encode_fp16(c, x, t, tile);
		break;
	case CODEC_CLASS_INT8:
		encode_int8(c, x, t, tile);
		break;
	case CODEC_CLASS_TQ:
	case CODEC_CLASS_TQ_QJL:
		encode_tq(c, x, t, tile);
		break;
	}
}

static void scalar_encode_tile(const struct tqkv_codec *c, const struct codec_src *src, unsigned n,
			       const struct codec_tile *tile)
{
	for (unsigned t = 0; t < n; t++)
		codec_scalar_encode_token(c, src, t, tile);
}

void codec_rotate(const struct tqkv_codec *c, float *x)
{
	apply_signs_f32(x, c->sign1, c->d);
	wht_f32(x, c->d);
	apply_signs_f32(x, c->sign2, c->d);
}

void codec_unrotate(const struct tqkv_codec *c, float *y, float f)
{
	apply_signs_f32(y, c->sign2, c->d);
	wht_f32(y, c->d);
	apply_signs_f32(y, c->sign1, c->d);
	for (unsigned j = 0; j < c->d; j++)
		y[j] *= f;
}

static void scalar_decode_token(const struct tqkv_codec *c, const uint8_t *bits, const uint16_t *norms,
				const uint16_t *rnorms, unsigned t, const float *mean, float *out)
{
	uint8_t index[TQKV_HEAD_DIM_MAX];
	float y[TQKV_HEAD_DIM_MAX];
	unsigned hd = c->params.head_dim;

	switch (c->cls) {
	case CODEC_CLASS_FP16:
		for (unsigned j = 0; j < hd; j++)
			y[j] = tqkv_f16_to_f32((uint16_t)load_le(bits + ((size_t)t * c->d + j) * 2, 2));
		break;
	case CODEC_CLASS_INT8: {
		float scale = tqkv_f16_to_f32(norms[t]);

		codec_unpack_token(&c->layout, bits, t, index);
		for (unsigned j = 0; j < hd; j++)
			y[j] = (float)(int8_t)index[j] * scale;
		break;
	}
	case CODEC_CLASS_TQ:
	case CODEC_CLASS_TQ_QJL:
		codec_unpack_token(&c->layout, bits, t, index);
		for (unsigned j = 0; j < c->d; j++)
			y[j] = centroid_of(c, j, index[j] & 0x0f);
		if (c->cls == CODEC_CLASS_TQ_QJL)
			qjl_expand(c, index, tqkv_f16_to_f32(rnorms[t]), y);
		codec_unrotate(c, y, tqkv_f16_to_f32(norms[t]) / c->sqrt_d);
		break;
	}
	for (unsigned j = 0; j < hd; j++)
		out[j] = mean ? y[j] + mean[j] : y[j];
}

const struct codec_kernels codec_kernels_scalar = {
	.encode_tile = scalar_encode_tile,
	.decode_token = scalar_decode_token,
};
