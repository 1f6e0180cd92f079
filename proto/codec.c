/* SPDX-License-Identifier: MIT */
/* Codec construction: validates parameters, derives the rotation, picks the
 * codebooks, lays out the tile and selects the kernels for this CPU. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codebook.h"
#include "codec-private.h"

/* Index bits of the two halves of each TurboQuant kind (hi, lo). */
static const uint8_t tq_bits[TQKV_KIND_MAX][2] = {
	[TQKV_KIND_TQ1] = { 1, 1 },
	[TQKV_KIND_TQ2] = { 2, 2 },
	[TQKV_KIND_TQ2_5] = { 3, 2 },
	[TQKV_KIND_TQ3] = { 3, 3 },
	[TQKV_KIND_TQ3_5] = { 4, 3 },
	[TQKV_KIND_TQ4] = { 4, 4 },
};

static unsigned next_pow2(unsigned v)
{
	unsigned p = 1;

	while (p < v)
		p <<= 1;
	return p;
}

static void layout_add_plane(struct tqkv_layout *l, unsigned first, unsigned n, unsigned bits,
			     unsigned shift, enum tqkv_plane_role role)
{
	struct tqkv_plane *p = &l->planes[l->n_planes++];
	unsigned token_bits = n * bits;

	p->first_coord = (uint16_t)first;
	p->n_coords = (uint16_t)n;
	p->bits = (uint8_t)bits;
	p->shift = (uint8_t)shift;
	p->role = (uint8_t)role;
	p->word_bits = token_bits >= 32 ? 32 : 16;
	p->words = token_bits / p->word_bits;
	p->offset = l->tile_bytes;
	l->tile_bytes += TQKV_TILE_TOKENS * token_bits / 8;
}

/* Index planes of b-bit indices: 4 -> {4}; 3 -> {3} (read as nibbles,
 * tq3-words.h) for whole groups of 32 coordinates, else {2 low bits, 1
 * high bit}; 2 -> {2}; 1 -> {1}.  Power-of-two fields keep every word
 * self-aligned. */
static void layout_add_index(struct tqkv_layout *l, unsigned first, unsigned n, unsigned b)
{
	if (n == 0)
		return;
	if (b == 3 && n % 32 == 0) {
		layout_add_plane(l, first, n, 3, 0, TQKV_PLANE_INDEX);
	} else if (b == 3) {
		layout_add_plane(l, first, n, 2, 0, TQKV_PLANE_INDEX);
		layout_add_plane(l, first, n, 1, 2, TQKV_PLANE_INDEX);
	} else {
		layout_add_plane(l, first, n, b, 0, TQKV_PLANE_INDEX);
	}
}

static void codec_build_layout(struct tqkv_codec *c)
{
	struct tqkv_layout *l = &c->layout;

	memset(l, 0, sizeof(*l));
	l->kind = c->params.kind;
	l->flags = c->params.flags;
	l->head_dim = c->params.head_dim;
	l->padded_dim = c->d;
	l->split = (uint16_t)c->split;
	l->bits_hi = (uint8_t)c->bits_hi;
	l->bits_lo = (uint8_t)c->bits_lo;

	switch (c->cls) {
	case CODEC_CLASS_FP16:
		l->tile_bytes = TQKV_TILE_TOKENS * c->d * 2;
		break;
	case CODEC_CLASS_INT8:
		layout_add_plane(l, 0, c->d, 8, 0, TQKV_PLANE_INDEX);
		break;
	case CODEC_CLASS_TQ:
	case CODEC_CLASS_TQ_QJL:
		layout_add_index(l, 0, c->split, c->bits_hi);
		layout_add_index(l, c->split, c->d - c->split, c->bits_lo);
		if (c->cls == CODEC_CLASS_TQ_QJL)
			layout_add_plane(l, 0, c->d, 1, 7, TQKV_PLANE_QJL);
		break;
	}
}

static void fill_codebook(const struct tqkv_codec *c, unsigned bits, float *cent, float *bound,
			  float step_bound[4][16])
{
	unsigned di = (unsigned)__builtin_ctz(c->d) - CODEBOOK_DIM_MIN_LOG2;
	unsigned k, levels = 1u << bits;

	for (k = 0; k < 16; k++) {
		cent[k] = k < levels ? codebook_centroids[di][bits - 1][k] : 0.0f;
		bound[k] = k + 1 < levels ? (cent[k] + codebook_centroids[di][bits - 1][k + 1]) * 0.5f
					  : INFINITY;
	}
	for (unsigned s = 0; s < 4; s++)
		for (k = 0; k < 16; k++)
			step_bound[s][k] = k + (1u << s) - 1 < 16 ? bound[k + (1u << s) - 1] : INFINITY;
}

static int validate_params(const struct tqkv_codec_params *p)
{
	if (!p || p->head_dim == 0 || p->head_dim > TQKV_HEAD_DIM_MAX)
		return -EINVAL;
	if ((unsigned)p->kind >= TQKV_KIND_MAX || (unsigned)p->stream > TQKV_STREAM_V)
		return -EINVAL;
	if (p->kv_head > 0xffff || (p->flags & ~(uint32_t)TQKV_CODEC_QJL))
		return -EINVAL;  /* kv_head has 16 bits in the page header */
	if ((p->flags & TQKV_CODEC_QJL) && (tq_bits[p->kind][1] < 2))
		return -EINVAL;  /* needs a TurboQuant kind with >= 1 bit left for the MSE stage */
	return 0;
}

TQKV_EXPORT int tqkv_codec_new(const struct tqkv_codec_params *params, struct tqkv_codec **ret_codec)
{
	struct tqkv_codec *c;
	int r;

	if (!ret_codec)
		return -EINVAL;
	r = validate_params(params);
	if (r < 0)
		return r;

	c = aligned_alloc(64, sizeof(*c));
	if (!c)
		return -ENOMEM;
	memset(c, 0, sizeof(*c));
	c->params = *params;

	switch (params->kind) {
	case TQKV_KIND_FP16:
		c->cls = CODEC_CLASS_FP16;
		c->d = params->head_dim;
		break;
	case TQKV_KIND_INT8:
		c->cls = CODEC_CLASS_INT8;
		c->d = (params->head_dim + 3) & ~3u;  /* whole 4-byte words per token */
		break;
	default:
		c->cls = (params->flags & TQKV_CODEC_QJL) ? CODEC_CLASS_TQ_QJL : CODEC_CLASS_TQ;
		c->d = next_pow2(params->head_dim);
		if (c->d < TQKV_PADDED_DIM_MIN)
			c->d = TQKV_PADDED_DIM_MIN;
		c->bits_hi = tq_bits[params->kind][0];
		c->bits_lo = tq_bits[params->kind][1];
		if (c->cls == CODEC_CLASS_TQ_QJL) {
			c->bits_hi--;
			c->bits_lo--;
		}
		c->split = c->bits_hi == c->bits_lo ? c->d : c->d / 2;
		break;
	}
	c->sqrt_d = sqrtf((float)c->d);

	if (c->cls == CODEC_CLASS_TQ || c->cls == CODEC_CLASS_TQ_QJL) {
		uint64_t seed = rotation_stream_seed(params->model_seed, params->layer, params->kv_head,
						     params->stream);

		rotation_draw_signs(seed, c->d, c->sign1, c->sign2);
		for (unsigned j = 0; j < c->d; j++) {
			c->sign1_mask[j] = ((c->sign1[j / 64] >> (j % 64)) & 1) ? 0x80000000u : 0;
			c->sign2_mask[j] = ((c->sign2[j / 64] >> (j % 64)) & 1) ? 0x80000000u : 0;
		}
		fill_codebook(c, c->bits_hi, c->cent_hi, c->bound_hi, c->bound_hi_step);
		fill_codebook(c, c->bits_lo, c->cent_lo, c->bound_lo, c->bound_lo_step);

		if (c->cls == CODEC_CLASS_TQ_QJL) {
			c->qjl = malloc((size_t)c->d * c->d * sizeof(float));
			if (!c->qjl) {
				free(c);
				return -ENOMEM;
			}
			/* A second, independent stream of the same identity. */
			gaussian_fill(splitmix64_mix(seed), c->qjl, c->d * c->d);
		}
	}

	codec_build_layout(c);
	r = codec_set_isa(c, cpu_best_isa());
	if (r < 0)
		codec_set_isa(c, CPU_ISA_SCALAR);
	*ret_codec = c;
	return 0;
}

TQKV_EXPORT void tqkv_codec_free(struct tqkv_codec *codec)
{
	if (!codec)
		return;
	free(codec->qjl);
	free(codec);
}

int codec_set_isa(struct tqkv_codec *c, enum cpu_isa isa)
{
	if (!cpu_has_isa(isa))
		return -EOPNOTSUPP;
	switch (isa) {
#ifdef TQKV_HAVE_X86_SIMD
	case CPU_ISA_AVX2:
		c->kernels = codec_kernels_avx2;
		break;
	case CPU_ISA_AVX512:
		c->kernels = codec_kernels_avx512;
		break;
#endif
	default:
		c->kernels = codec_kernels_scalar;
		isa = CPU_ISA_SCALAR;
		break;
	}
	c->isa = isa;
	return 0;
}

TQKV_EXPORT const struct tqkv_layout *tqkv_codec_layout(const struct tqkv_codec *codec)
{
	return &codec->layout;
}

TQKV_EXPORT const uint64_t *tqkv_codec_signs(const struct tqkv_codec *codec, int which)
{
	return which ? codec->sign2 : codec->sign1;
}

TQKV_EXPORT const float *tqkv_codec_centroids(const struct tqkv_codec *codec, int lo_half)
{
	return lo_half ? codec->cent_lo : codec->cent_hi;
}
