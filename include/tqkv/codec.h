/* SPDX-License-Identifier: MIT */
/*
 * tqkv codec: compresses K or V rows of one attention head into pages.
 *
 * The codec is pure code: no I/O, no logging, no global state other than
 * read-only tables.  A struct tqkv_codec holds what one (model seed, layer,
 * kv head, K or V) stream needs: its rotation signs, its codebook and its
 * page layout.  The math is in docs/CODEC.md, the byte layout of a page in
 * docs/PAGE-FORMAT.md; both are part of the protocol.
 *
 * Thread safety: a codec is immutable after tqkv_codec_new(); any number of
 * threads may encode and decode with the same codec at once.
 */
#ifndef TQKV_CODEC_H
#define TQKV_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include <tqkv/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How the vectors of one stream are stored.  The values are wire ABI. */
enum tqkv_kind {
	TQKV_KIND_FP16 = 0,  /* IEEE half rows, lossless for fp16 input */
	TQKV_KIND_INT8 = 1,  /* symmetric int8, one fp16 scale per vector */
	TQKV_KIND_TQ1 = 2,   /* TurboQuant, 1 bit per coordinate */
	TQKV_KIND_TQ2 = 3,   /* TurboQuant, 2 bits */
	TQKV_KIND_TQ2_5 = 4, /* TurboQuant, 3 bits on half the channels, 2 on the rest */
	TQKV_KIND_TQ3 = 5,   /* TurboQuant, 3 bits */
	TQKV_KIND_TQ3_5 = 6, /* TurboQuant, 4 bits on half the channels, 3 on the rest */
	TQKV_KIND_TQ4 = 7,   /* TurboQuant, 4 bits */
	TQKV_KIND_MAX
};

/* Tokens per tile: the unit of the page layout and of the attention kernels. */
#define TQKV_TILE_TOKENS 16u
/* Largest head_dim (after padding to a power of two). */
#define TQKV_HEAD_DIM_MAX 512u
/* Smallest padded dimension of the TurboQuant kinds. */
#define TQKV_PADDED_DIM_MIN 32u

/* Codec flags. */
enum tqkv_codec_flag {
	/* TurboQuant-prod for keys: a (b-1)-bit MSE stage plus a 1-bit sign
	 * sketch of the residual, for unbiased inner products.  Off by default:
	 * its variance hurts softmax attention in most measurements. */
	TQKV_CODEC_QJL = 1u << 0,
};

/* Which stream of a head a codec serves; part of the rotation seed. */
enum tqkv_stream {
	TQKV_STREAM_K = 0,
	TQKV_STREAM_V = 1,
};

struct tqkv_codec_params {
	uint64_t model_seed;  /* derived from the model fingerprint */
	uint32_t layer;
	uint32_t kv_head;
	enum tqkv_stream stream;
	uint32_t head_dim;    /* 1 .. TQKV_HEAD_DIM_MAX */
	enum tqkv_kind kind;
	uint32_t flags;       /* enum tqkv_codec_flag */
};

struct tqkv_codec;

/* Layout of one plane of packed indices inside a tile (docs/PAGE-FORMAT.md). */
struct tqkv_plane {
	uint16_t first_coord;  /* first rotated coordinate this plane covers */
	uint16_t n_coords;     /* how many coordinates it covers */
	uint8_t bits;          /* bits per coordinate in this plane: 1, 2, 3, 4 or 8 */
	uint8_t shift;         /* which bits of the index: index bits [shift, shift+bits) */
	uint8_t role;          /* enum tqkv_plane_role */
	uint8_t word_bits;     /* 32, or 16 when the plane holds fewer than 32 bits per token */
	uint32_t words;        /* words per token */
	uint32_t offset;       /* byte offset of the plane inside a tile */
};

enum tqkv_plane_role {
	TQKV_PLANE_INDEX = 0,  /* codebook index bits (int8: the quantized values) */
	TQKV_PLANE_QJL = 1,    /* sign bits of the QJL residual sketch */
};

#define TQKV_PLANES_MAX 5u

/* Everything a reader needs to interpret the tiles of a page. */
struct tqkv_layout {
	enum tqkv_kind kind;
	uint32_t flags;
	uint32_t head_dim;      /* as registered */
	uint32_t padded_dim;    /* rotation size (TurboQuant); stored row length otherwise */
	uint32_t tile_bytes;    /* packed index bytes of one tile of 16 tokens */
	uint32_t n_planes;
	struct tqkv_plane planes[TQKV_PLANES_MAX];
	uint8_t bits_hi;        /* index bits of coordinates [0, split) */
	uint8_t bits_lo;        /* index bits of coordinates [split, padded_dim) */
	uint16_t split;         /* first coordinate of the lower-bit half */
};

/* Creates a codec.  Returns 0, or -EINVAL for parameters out of range
 * (head_dim 0 or above TQKV_HEAD_DIM_MAX, unknown kind or flag, QJL on a
 * non-TurboQuant kind or on TQ1, kv_head above 65535), -ENOMEM. */
TQKV_EXPORT int tqkv_codec_new(const struct tqkv_codec_params *params, struct tqkv_codec **ret_codec);

/* Frees a codec; accepts NULL. */
TQKV_EXPORT void tqkv_codec_free(struct tqkv_codec *codec);

TQKV_EXPORT const struct tqkv_layout *tqkv_codec_layout(const struct tqkv_codec *codec);

/* Rotation signs of this codec: bit j of d1 (d2) is 1 when coordinate j is
 * negated before (after) the Walsh-Hadamard transform.  Each array holds
 * padded_dim / 64 words (at least one).  Only meaningful for TurboQuant. */
TQKV_EXPORT const uint64_t *tqkv_codec_signs(const struct tqkv_codec *codec, int which);

/* Centroids for unit vectors of the coordinates [0, split) (hi) and
 * [split, padded_dim) (lo): 2^bits floats each, ascending. */
TQKV_EXPORT const float *tqkv_codec_centroids(const struct tqkv_codec *codec, int lo_half);

/* Bytes of a page that holds n_tokens vectors (header, tiles, norms). */
TQKV_EXPORT size_t tqkv_page_size(const struct tqkv_codec *codec, uint32_t n_tokens);

/*
 * Encodes n_tokens rows into a page.  Row t of the input starts at
 * rows + t * row_stride (in elements).  mean, if not NULL, holds head_dim
 * values subtracted from every row before encoding (centering).
 * page must hold tqkv_page_size() bytes.  Defined for every input: non-finite
 * components are encoded as 0, norms above 65504 saturate (docs/CODEC.md).
 * Returns 0 or -EINVAL (n_tokens 0 or above 65535, buffer too small).
 */
TQKV_EXPORT int tqkv_page_encode_f32(const struct tqkv_codec *codec, const float *rows, size_t row_stride,
				     uint32_t n_tokens, const float *mean, void *page, size_t page_size);
TQKV_EXPORT int tqkv_page_encode_f16(const struct tqkv_codec *codec, const uint16_t *rows, size_t row_stride,
				     uint32_t n_tokens, const float *mean, void *page, size_t page_size);

/*
 * Decodes tokens [first, first + n) of a page into float rows (head_dim
 * values each, at out + t * row_stride), adding mean back when given.
 * The page must have been produced by a codec with the same parameters;
 * its header is checked (-EBADMSG when it does not match or is damaged).
 * A page encoded with a mean decodes only with a mean and one encoded
 * without only without (-EINVAL otherwise).  The header is read once, so
 * a page that another process rewrites meanwhile cannot steer the reads
 * outside page_size.
 */
TQKV_EXPORT int tqkv_page_decode_f32(const struct tqkv_codec *codec, const void *page, size_t page_size,
				     uint32_t first, uint32_t n, const float *mean, float *out, size_t row_stride);

/* Name of a kind as used on command lines and in JSON ("tq3.5"), or NULL. */
TQKV_EXPORT const char *tqkv_kind_to_string(enum tqkv_kind kind);
/* Parses a kind name; returns the kind or -EINVAL. */
TQKV_EXPORT int tqkv_kind_from_string(const char *s);
/* Mean bits per coordinate of a kind (16, 8, 1 ... 4). */
TQKV_EXPORT double tqkv_kind_bits(enum tqkv_kind kind);

/* IEEE half conversions with round-to-nearest-even, identical on every CPU. */
TQKV_EXPORT uint16_t tqkv_f32_to_f16(float f);
TQKV_EXPORT float tqkv_f16_to_f32(uint16_t h);

#ifdef __cplusplus
}
#endif

#endif
