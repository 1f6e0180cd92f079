/* SPDX-License-Identifier: MIT */
/* Codec behaviour: layouts, round trips, padding, centering, bad input. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "test-util.h"
#include "tq3-words.h"

static const unsigned head_dims[] = { 32, 64, 96, 128, 192, 256, 512, 80, 7 };
#define N_HEAD_DIMS (sizeof(head_dims) / sizeof(head_dims[0]))

static double rel_err2(const float *a, const float *b, unsigned d)
{
	double e = 0, n = 0;

	for (unsigned j = 0; j < d; j++) {
		e += ((double)a[j] - b[j]) * ((double)a[j] - b[j]);
		n += (double)a[j] * a[j];
	}
	return n > 0 ? e / n : e;
}

static double cosine(const float *a, const float *b, unsigned d)
{
	double dot = 0, na = 0, nb = 0;

	for (unsigned j = 0; j < d; j++) {
		dot += (double)a[j] * b[j];
		na += (double)a[j] * a[j];
		nb += (double)b[j] * b[j];
	}
	return dot / sqrt(na * nb);
}

Test(codec, rejects_bad_parameters)
{
	struct tqkv_codec_params p = { .head_dim = 128, .kind = TQKV_KIND_TQ4 };
	struct tqkv_codec *c = NULL;

	p.head_dim = 0;
	cr_assert_eq(tqkv_codec_new(&p, &c), -EINVAL);
	p.head_dim = TQKV_HEAD_DIM_MAX + 1;
	cr_assert_eq(tqkv_codec_new(&p, &c), -EINVAL);
	p.head_dim = 128;
	p.kind = TQKV_KIND_MAX;
	cr_assert_eq(tqkv_codec_new(&p, &c), -EINVAL);
	p.kind = TQKV_KIND_FP16;
	p.flags = TQKV_CODEC_QJL;
	cr_assert_eq(tqkv_codec_new(&p, &c), -EINVAL);
	p.kind = TQKV_KIND_TQ1;
	cr_assert_eq(tqkv_codec_new(&p, &c), -EINVAL);
	p.kind = TQKV_KIND_TQ4;
	p.flags = 1u << 9;
	cr_assert_eq(tqkv_codec_new(&p, &c), -EINVAL);
	p.flags = 0;
	p.kv_head = 70000;  /* the page header has 16 bits for it */
	cr_assert_eq(tqkv_codec_new(&p, &c), -EINVAL);
	p.kv_head = 0;
	p.stream = 7;
	cr_assert_eq(tqkv_codec_new(&p, &c), -EINVAL);
	cr_assert_eq(tqkv_codec_new(NULL, &c), -EINVAL);
	cr_assert_null(c);
	tqkv_codec_free(NULL);
}

Test(codec, kind_names_round_trip)
{
	for (int k = 0; k < TQKV_KIND_MAX; k++)
		cr_assert_eq(tqkv_kind_from_string(tqkv_kind_to_string(k)), k);
	cr_assert_str_eq(tqkv_kind_to_string(TQKV_KIND_TQ3_5), "tq3.5");
	cr_assert_eq(tqkv_kind_from_string("tq5"), -EINVAL);
	cr_assert_null(tqkv_kind_to_string(TQKV_KIND_MAX));
}

/* b * d bits per vector, no wasted bits, padded dims included. */
Test(codec, packing_is_bit_tight)
{
	for (int k = TQKV_KIND_TQ1; k < TQKV_KIND_MAX; k++)
		for (size_t i = 0; i < N_HEAD_DIMS; i++)
			for (int qjl = 0; qjl < 2; qjl++) {
				struct tqkv_codec *c;
				const struct tqkv_layout *l;
				double bits = tqkv_kind_bits(k);

				if (qjl && k == TQKV_KIND_TQ1)
					continue;
				c = test_codec(k, head_dims[i], qjl ? TQKV_CODEC_QJL : 0, 1);
				l = tqkv_codec_layout(c);
				cr_assert_geq(l->padded_dim, head_dims[i], "no channel may be dropped");
				cr_assert_eq(l->tile_bytes * 8.0, TQKV_TILE_TOKENS * bits * l->padded_dim,
					     "%s d=%u qjl=%d: %u bytes", tqkv_kind_to_string(k), head_dims[i], qjl,
					     l->tile_bytes);
				tqkv_codec_free(c);
			}
}

/* Random indices packed into every layout come back unchanged. */
Test(codec, pack_unpack_round_trip)
{
	uint64_t state = test_seed();

	for (int k = TQKV_KIND_INT8; k < TQKV_KIND_MAX; k++)
		for (size_t i = 0; i < N_HEAD_DIMS; i++)
			for (int qjl = 0; qjl < 2; qjl++) {
				struct tqkv_codec *c;
				const struct tqkv_layout *l;
				uint8_t tile[TQKV_TILE_TOKENS * TQKV_HEAD_DIM_MAX];
				uint8_t in[TQKV_TILE_TOKENS][TQKV_HEAD_DIM_MAX], out[TQKV_HEAD_DIM_MAX];

				if (qjl && k <= TQKV_KIND_TQ1)
					continue;
				c = test_codec(k, head_dims[i], qjl ? TQKV_CODEC_QJL : 0, 1);
				l = tqkv_codec_layout(c);
				memset(tile, 0xa5, sizeof(tile));
				for (unsigned t = 0; t < TQKV_TILE_TOKENS; t++) {
					for (unsigned j = 0; j < l->padded_dim; j++) {
						unsigned b = j < l->split ? l->bits_hi : l->bits_lo;
						uint8_t v = (uint8_t)splitmix64_next(&state);

						if (k != TQKV_KIND_INT8)
							v = (uint8_t)((v & ((1u << b) - 1)) | (qjl ? (v & 0x80) : 0));
						in[t][j] = v;
					}
					codec_pack_token(l, in[t], t, tile);
				}
				for (unsigned t = 0; t < TQKV_TILE_TOKENS; t++) {
					codec_unpack_token(l, tile, t, out);
					cr_assert_arr_eq(out, in[t], l->padded_dim, "%s d=%u t=%u",
							 tqkv_kind_to_string(k), head_dims[i], t);
				}
				tqkv_codec_free(c);
			}
}

/* The 3-bit plane: words made from nibble words give them back, and read
 * the way the attention kernels read them (stored words for types 0-2,
 * (A & 8) | (B & 4) | (C & 3) per nibble for type 3, nibbles through
 * tq3_nibble_index) every index is where PAGE-FORMAT.md says. */
Test(codec, tq3_words_as_nibble_words)
{
	uint64_t state = test_seed();

	for (unsigned W = 4; W <= TQKV_HEAD_DIM_MAX / 8; W *= 2) {
		uint32_t nib[TQKV_HEAD_DIM_MAX / 8], back[TQKV_HEAD_DIM_MAX / 8], words[3 * TQKV_HEAD_DIM_MAX / 32];

		for (unsigned w = 0; w < W; w++)
			nib[w] = (uint32_t)splitmix64_next(&state) & 0x77777777u;
		tq3_words_from_nibbles(nib, W, words);
		tq3_nibbles_from_words(words, W, back);
		cr_assert_arr_eq(back, nib, W * sizeof(nib[0]), "W=%u", W);
		for (unsigned w = 0; w < W; w++) {
			const uint32_t *group = words + w / 4 * 3;
			unsigned type = w % 4;
			uint32_t view = type < 3 ? group[type]
						 : (group[0] & 0x88888888u) | (group[1] & 0x44444444u) |
							   (group[2] & 0x33333333u);

			for (unsigned k = 0; k < 8; k++)
				cr_assert_eq(tq3_nibble_index(type, view >> (4 * k) & 15), nib[w] >> (4 * k) & 7,
					     "W=%u w=%u k=%u", W, w, k);
		}
	}
}

/* 3-bit indices take one plane where whole groups of 32 coordinates
 * allow, else a 2-bit and a 1-bit plane. */
Test(codec, tq3_plane_choice)
{
	struct tqkv_codec *c = test_codec(TQKV_KIND_TQ3, 128, 0, 1);
	const struct tqkv_layout *l = tqkv_codec_layout(c);

	cr_assert_eq(l->n_planes, 1);
	cr_assert_eq(l->planes[0].bits, 3);
	cr_assert_eq(l->planes[0].words, 12);
	cr_assert_eq(l->tile_bytes, 768);
	tqkv_codec_free(c);
	c = test_codec(TQKV_KIND_TQ2_5, 32, 0, 1);  /* 16 coordinates at 3 bits */
	l = tqkv_codec_layout(c);
	cr_assert_eq(l->n_planes, 3);
	cr_assert_eq(l->planes[0].bits, 2);
	cr_assert_eq(l->planes[1].bits, 1);
	cr_assert_eq(l->planes[1].shift, 2);
	tqkv_codec_free(c);
}

/* Every kind and head_dim decodes what it encoded, within its precision;
 * 37 tokens leave a partial last tile.  The mean error is the codec's
 * precision.  One token's error can be several times it where a rotated
 * coordinate lands in the Gaussian tail beyond the outer centroid (at
 * 4.7 sigma, 2 sigma past it: seen at d = 64 once in ~150 runs), which
 * adds up to (z - c_max)^2 / d; the per-token bound allows 8 / d for that
 * and still catches a token decoded wrong (error ~2). */
Test(codec, round_trip_every_kind)
{
	static const double max_rel_err2[TQKV_KIND_MAX] = {
		[TQKV_KIND_FP16] = 1e-6, [TQKV_KIND_INT8] = 1e-3, [TQKV_KIND_TQ1] = 0.6,
		[TQKV_KIND_TQ2] = 0.2, [TQKV_KIND_TQ2_5] = 0.12, [TQKV_KIND_TQ3] = 0.07,
		[TQKV_KIND_TQ3_5] = 0.04, [TQKV_KIND_TQ4] = 0.02,
	};
	uint64_t seed = test_seed();
	const uint32_t n = 37;

	for (int k = 0; k < TQKV_KIND_MAX; k++)
		for (size_t i = 0; i < N_HEAD_DIMS; i++) {
			unsigned d = head_dims[i];
			struct tqkv_codec *c = test_codec(k, d, 0, seed);
			float *x = test_gaussian(seed + (uint64_t)k, n, d), *y = calloc((size_t)n * d, sizeof(float));
			double err = 0;
			size_t size;
			void *page = test_encode(c, x, n, d, NULL, &size);

			cr_assert_eq(tqkv_page_decode_f32(c, page, size, 0, n, NULL, y, d), 0);
			for (uint32_t t = 0; t < n; t++) {
				double e = rel_err2(x + t * d, y + t * d, d);

				cr_assert_lt(e, max_rel_err2[k] * 3 + 8.0 / d, "%s d=%u t=%u err %g", tqkv_kind_to_string(k),
					     d, t, e);
				err += e / n;
			}
			cr_assert_lt(err, max_rel_err2[k], "%s d=%u mean err %g", tqkv_kind_to_string(k), d, err);
			free(page);
			free(x);
			free(y);
			tqkv_codec_free(c);
		}
}

/* Norm correction: the decoded vector has the input's norm (to fp16). */
Test(codec, norm_correction_keeps_norm)
{
	uint64_t seed = test_seed();
	const uint32_t n = 256;

	for (int k = TQKV_KIND_TQ1; k < TQKV_KIND_MAX; k++) {
		struct tqkv_codec *c = test_codec(k, 128, 0, seed);
		float *x = test_gaussian(seed ^ 77, n, 128), y[128];
		size_t size;
		void *page = test_encode(c, x, n, 128, NULL, &size);

		for (uint32_t t = 0; t < n; t++) {
			double nx = 0, ny = 0;

			cr_assert_eq(tqkv_page_decode_f32(c, page, size, t, 1, NULL, y, 128), 0);
			for (unsigned j = 0; j < 128; j++) {
				nx += (double)x[t * 128 + j] * x[t * 128 + j];
				ny += (double)y[j] * y[j];
			}
			cr_assert(fabs(sqrt(ny) / sqrt(nx) - 1) < 1e-3, "%s t=%u %g vs %g",
				  tqkv_kind_to_string(k), t, sqrt(ny), sqrt(nx));
		}
		free(page);
		free(x);
		tqkv_codec_free(c);
	}
}

/* Padded head dims keep every channel: energy in the last channels of a
 * 96- or 192-dim vector comes back there. */
Test(codec, padding_drops_no_channel)
{
	static const unsigned dims[] = { 96, 192, 80 };

	for (size_t i = 0; i < 3; i++) {
		unsigned d = dims[i];
		struct tqkv_codec *c = test_codec(TQKV_KIND_TQ4, d, 0, 9);
		float x[192] = { 0 }, y[192];
		size_t size;
		void *page;

		for (unsigned j = d - 8; j < d; j++)
			x[j] = 1.0f + (float)j / 100;
		page = test_encode(c, x, 1, d, NULL, &size);
		cr_assert_eq(tqkv_page_decode_f32(c, page, size, 0, 1, NULL, y, d), 0);
		cr_assert_lt(rel_err2(x, y, d), 0.03, "d=%u", d);
		free(page);
		tqkv_codec_free(c);
	}
}

/* Centering: the mean is subtracted before encoding and added back. */
Test(codec, centering_round_trip)
{
	uint64_t seed = test_seed();
	const unsigned d = 128, n = 64;
	struct tqkv_codec *c = test_codec(TQKV_KIND_TQ4, d, 0, seed);
	float *x = test_gaussian(seed, n, d), *mean = test_gaussian(seed + 1, 1, d), *shifted, *y, *y0;
	size_t size;
	void *page, *page0;

	shifted = malloc(sizeof(float) * n * d);
	y = malloc(sizeof(float) * n * d);
	y0 = malloc(sizeof(float) * n * d);
	for (unsigned t = 0; t < n; t++)
		for (unsigned j = 0; j < d; j++) {
			mean[j] *= t == 0 ? 10.0f : 1.0f;  /* a large constant offset per channel */
			shifted[t * d + j] = x[t * d + j] + mean[j];
		}
	/* The reference encodes what the encoder sees after subtracting the
	 * mean: (x + mean) - mean is not always x in float, and a row near a
	 * decision boundary then takes the other centroid (seed
	 * 0x9509bd5cf91bc083 did). */
	for (unsigned i = 0; i < n * d; i++)
		x[i] = shifted[i] - mean[i % d];
	page = test_encode(c, shifted, n, d, mean, &size);
	page0 = test_encode(c, x, n, d, NULL, &size);
	cr_assert_eq(tqkv_page_decode_f32(c, page, size, 0, n, mean, y, d), 0);
	cr_assert_eq(tqkv_page_decode_f32(c, page0, size, 0, n, NULL, y0, d), 0);
	for (unsigned i = 0; i < n * d; i++)
		cr_assert(fabsf((y[i] - mean[i % d]) - y0[i]) < 1e-4f, "i=%u", i);
	free(page);
	free(page0);
	free(x);
	free(mean);
	free(shifted);
	free(y);
	free(y0);
	tqkv_codec_free(c);
}

/* Bad input has a defined result (docs/CODEC.md): non-finite components
 * encode as 0, a zero vector decodes to zeros, norms saturate at 65504 with
 * the direction kept (fp16 input: f16_input_matches_f32). */
Test(codec, bad_input_is_defined)
{
	for (int k = 0; k < TQKV_KIND_MAX; k++) {
		const unsigned d = 128;
		struct tqkv_codec *c = test_codec(k, d, 0, 3);
		float x[4][128], y[4][128], ref[128];
		size_t size;
		void *page;

		for (unsigned j = 0; j < d; j++) {
			ref[j] = (float)((int)(j % 7) - 3) / 4.0f;
			x[0][j] = j % 3 ? ref[j] : (j % 2 ? NAN : INFINITY);
			x[1][j] = 0.0f;
			x[2][j] = ref[j] * 1e30f;
			x[3][j] = j & 1 ? -INFINITY : NAN;
		}
		page = test_encode(c, &x[0][0], 4, d, NULL, &size);
		cr_assert_eq(tqkv_page_decode_f32(c, page, size, 0, 4, NULL, &y[0][0], d), 0);
		for (unsigned j = 0; j < d; j++) {
			cr_assert(isfinite(y[0][j]) && isfinite(y[2][j]), "%s j=%u", tqkv_kind_to_string(k), j);
			cr_assert_eq(y[1][j], 0.0f, "%s zero vector", tqkv_kind_to_string(k));
			cr_assert_eq(y[3][j], 0.0f, "%s all non-finite", tqkv_kind_to_string(k));
			if (j % 3 == 0)
				x[0][j] = 0.0f;
		}
		if (k >= TQKV_KIND_TQ1) {
			double n2 = 0;

			for (unsigned j = 0; j < d; j++)
				n2 += (double)y[2][j] * y[2][j];
			/* The stored norm saturates at 65504, so the decoded norm is
			 * 65504 * |c[idx]| (about 0.8 .. 1 of it). */
			cr_assert(sqrt(n2) <= 65504.0 * 1.001 && sqrt(n2) > 65504.0 * 0.75, "%s saturated norm %g",
				  tqkv_kind_to_string(k), sqrt(n2));
			cr_assert_gt(cosine(ref, y[2], d), k == TQKV_KIND_TQ1 ? 0.7 : 0.93, "%s direction kept", tqkv_kind_to_string(k));
		}
		cr_assert_lt(rel_err2(x[0], y[0], d), k == TQKV_KIND_TQ1 ? 0.6 : 0.25, "%s",
			     tqkv_kind_to_string(k));
		free(page);
		tqkv_codec_free(c);
	}
}

/* fp16 rows encode exactly like the same values given as floats. */
Test(codec, f16_input_matches_f32)
{
	uint64_t seed = test_seed();
	const unsigned d = 128, n = 40;
	float *x = test_gaussian(seed, n, d);
	uint16_t *h = malloc(sizeof(uint16_t) * n * d);

	for (unsigned i = 0; i < n * d; i++) {
		h[i] = tqkv_f32_to_f16(x[i]);
		x[i] = tqkv_f16_to_f32(h[i]);
	}
	for (int k = 0; k < TQKV_KIND_MAX; k++) {
		struct tqkv_codec *c = test_codec(k, d, 0, seed);
		size_t size = tqkv_page_size(c, n);
		void *a = malloc(size), *b = malloc(size);

		cr_assert_eq(tqkv_page_encode_f32(c, x, d, n, NULL, a, size), 0);
		cr_assert_eq(tqkv_page_encode_f16(c, h, d, n, NULL, b, size), 0);
		cr_assert_eq(memcmp(a, b, size), 0, "%s", tqkv_kind_to_string(k));
		free(a);
		free(b);
		tqkv_codec_free(c);
	}
	free(x);
	free(h);
}
