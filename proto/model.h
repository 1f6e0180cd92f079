/* SPDX-License-Identifier: MIT */
/*
 * A registered model as both sides see it: the validated layer descriptors,
 * one codec per (layer, kv head, K/V), the staging row layout and the block
 * record layout.  Computed identically by the daemon and libtqkv from the
 * REGISTER_MODEL message, so neither trusts the other's arithmetic.
 */
#ifndef TQKV_PROTO_MODEL_H
#define TQKV_PROTO_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include <tqkv/codec.h>
#include <tqkv/protocol.h>

/* Limits a model is validated against (the daemon's configuration). */
struct model_limits {
	uint32_t max_layers;
	uint32_t max_kv_heads;
	uint32_t max_head_dim;
	uint32_t max_sequences;
	uint32_t max_tokens_per_sequence;
	uint32_t block_tokens;
};

struct model_layer {
	struct tqkv_layer_desc desc;
	uint32_t row_offset;     /* bytes into a staging token row: K rows, then V rows */
	uint32_t page_index;     /* first of this layer's 2 * n_kv_heads pages in a block */
	uint32_t page_bytes[2];  /* K and V page sizes for one block */
	uint32_t mean_index;     /* first float of this layer's key means, if centered */
	uint32_t window;         /* its pages serve only the last window tokens (it and the
				  * layers reusing its KV are windowed); 0 = every token */
	uint64_t record_offset;  /* its first page in a block record; heads' K then V follow */
	struct tqkv_codec **codecs;  /* [head * 2 + stream], NULL when the layer reuses KV */
};

struct model {
	struct tqkv_register_model reg;
	uint32_t block_tokens;
	uint32_t token_bytes;        /* one token's K and V rows of every stored layer */
	uint32_t n_pages;            /* pages per block */
	uint64_t block_bytes;        /* block record size */
	uint64_t keep_bytes;         /* the record without the windowed layers' pages, which
				      * come last so that they can be freed alone */
	uint32_t window;             /* the largest window of those layers; 0 if none */
	uint64_t slot_bytes;         /* staging bytes per sequence */
	uint32_t mean_floats;        /* key-mean floats per sequence (centered layers) */
	struct model_layer *layers;
};

/* The limits a model is checked against, as the HELLO reply announces
 * them: both sides derive them from the same message. */
void model_limits_from_hello(const struct tqkv_hello_reply *h, struct model_limits *ret);

/*
 * Validates a REGISTER_MODEL payload (header + layers) against limits and
 * builds the model.  Returns 0, -EINVAL with a message in err (e.g.
 * "layer 3: head_dim 0 out of range 1..512"), or -ENOMEM.
 */
int model_new(const struct tqkv_register_model *reg, const struct tqkv_layer_desc *layers,
	      const struct model_limits *limits, struct model **ret, char *err, size_t errlen);
void model_free(struct model *m);

/* Byte offset of the K (stream 0) or V row of (layer, head) in a token row. */
static inline uint32_t model_row_offset(const struct model *m, uint32_t layer, uint32_t head, unsigned stream)
{
	const struct model_layer *l = &m->layers[layer];

	return l->row_offset + (stream * l->desc.n_kv_heads + head) * l->desc.head_dim * 2u;
}

/* Index of a page in a block's page table. */
static inline uint32_t model_page_index(const struct model *m, uint32_t layer, uint32_t head, unsigned stream)
{
	return m->layers[layer].page_index + head * 2u + stream;
}

/* The key mean of a centered layer's head, or NULL: means points at the
 * sequence's mean array. */
static inline const float *model_key_mean(const struct model *m, const float *means, uint32_t layer, uint32_t head)
{
	const struct model_layer *l = &m->layers[layer];

	if (!means || !(l->desc.flags & TQKV_LAYER_CENTER_KEYS))
		return NULL;
	return means + l->mean_index + (size_t)head * l->desc.head_dim;
}

/* The centering mean of n fp16 rows (d values, rows stride elements apart):
 * float sums in token order (non-finite values count as 0), then one
 * division.  Daemon and tests share it
 * so that both compute the same floats. */
void model_rows_mean(const uint16_t *rows, size_t stride, uint32_t n, uint32_t d, float *out);

/* Bytes of a block record that the windowed layers' pages take. */
static inline uint64_t model_window_bytes(const struct model *m)
{
	return m->block_bytes - m->keep_bytes;
}

/* Offset of the page table inside a block record. */
#define MODEL_PAGE_TABLE_OFFSET ((uint32_t)sizeof(struct tqkv_block_header))

#endif
