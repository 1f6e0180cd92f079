/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

__attribute__((format(printf, 3, 4)))
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

static uint64_t align64(uint64_t v)
{
	return (v + 63) & ~(uint64_t)63;
}

static int validate(const struct tqkv_register_model *reg, const struct tqkv_layer_desc *layers,
		    const struct model_limits *lim, char *err, size_t errlen)
{
	if (reg->n_layers == 0 || reg->n_layers > lim->max_layers)
		return fail(err, errlen, "n_layers %u out of range 1..%u", reg->n_layers, lim->max_layers);
	if (reg->max_sequences == 0 || reg->max_sequences > lim->max_sequences)
		return fail(err, errlen, "max_sequences %u out of range 1..%u", reg->max_sequences,
			    lim->max_sequences);
	if (reg->staging_tokens < 2 * lim->block_tokens || reg->staging_tokens > lim->max_tokens_per_sequence ||
	    reg->staging_tokens % lim->block_tokens)
		return fail(err, errlen, "staging_tokens %u must be a multiple of the block size %u, at least two blocks",
			    reg->staging_tokens, lim->block_tokens);
	if (reg->reserved)
		return fail(err, errlen, "reserved field not zero");
	for (uint32_t i = 0; i < reg->n_layers; i++) {
		const struct tqkv_layer_desc *l = &layers[i];

		if (l->kv_source >= 0) {
			if ((uint32_t)l->kv_source >= i || layers[l->kv_source].kv_source >= 0)
				return fail(err, errlen, "layer %u: kv_source %d must be an earlier layer that stores its own KV",
					    i, l->kv_source);
			continue;
		}
		if (l->kv_source != -1)
			return fail(err, errlen, "layer %u: kv_source %d invalid", i, l->kv_source);
		if (l->n_kv_heads == 0 || l->n_kv_heads > lim->max_kv_heads)
			return fail(err, errlen, "layer %u: n_kv_heads %u out of range 1..%u", i, l->n_kv_heads,
				    lim->max_kv_heads);
		if (l->head_dim == 0 || l->head_dim > lim->max_head_dim)
			return fail(err, errlen, "layer %u: head_dim %u out of range 1..%u", i, l->head_dim,
				    lim->max_head_dim);
		if (l->k_kind >= TQKV_KIND_MAX || l->v_kind >= TQKV_KIND_MAX)
			return fail(err, errlen, "layer %u: unknown codec kind", i);
		if ((l->flags & ~(uint8_t)TQKV_LAYER_CENTER_KEYS) || l->reserved[0] || l->reserved[1] || l->reserved[2])
			return fail(err, errlen, "layer %u: unknown flags or reserved bytes set", i);
	}
	return 0;
}

void model_free(struct model *m)
{
	if (!m)
		return;
	for (uint32_t i = 0; m->layers && i < m->reg.n_layers; i++) {
		struct model_layer *l = &m->layers[i];

		for (uint32_t k = 0; l->codecs && k < 2u * l->desc.n_kv_heads; k++)
			tqkv_codec_free(l->codecs[k]);
		free(l->codecs);
	}
	free(m->layers);
	free(m);
}

static int build_layer(struct model *m, uint32_t i, const struct tqkv_layer_desc *d)
{
	struct model_layer *l = &m->layers[i];

	l->desc = *d;
	if (d->kv_source >= 0)
		return 0;
	l->codecs = calloc(2u * d->n_kv_heads, sizeof(*l->codecs));
	if (!l->codecs)
		return -ENOMEM;
	for (uint32_t h = 0; h < d->n_kv_heads; h++)
		for (unsigned s = 0; s < 2; s++) {
			struct tqkv_codec_params p = {
				.model_seed = m->reg.fingerprint,
				.layer = i,
				.kv_head = h,
				.stream = s ? TQKV_STREAM_V : TQKV_STREAM_K,
				.head_dim = d->head_dim,
				.kind = s ? d->v_kind : d->k_kind,
			};
			int r = tqkv_codec_new(&p, &l->codecs[h * 2 + s]);

			if (r < 0)
				return r;
			l->page_bytes[s] = (uint32_t)tqkv_page_size(l->codecs[h * 2 + s], m->block_tokens);
		}
	return 0;
}

/*
 * A stored layer is windowed when it and every layer reusing its KV have a
 * sliding window: its pages serve the largest of those windows.  The
 * record holds the page table, the other layers' pages, then the windowed
 * layers' (64-byte aligned), so that the daemon can free the latter alone.
 */
static void layout_record(struct model *m)
{
	uint64_t off = align64(MODEL_PAGE_TABLE_OFFSET + (uint64_t)m->n_pages * 8);

	for (uint32_t i = 0; i < m->reg.n_layers; i++) {
		struct model_layer *l = &m->layers[i];
		int16_t src = l->desc.kv_source;

		if (src < 0)
			l->window = l->desc.window;
		else if (!l->desc.window || !m->layers[src].window)
			m->layers[src].window = 0;
		else if (l->desc.window > m->layers[src].window)
			m->layers[src].window = l->desc.window;
	}
	m->window = 0;
	for (unsigned windowed = 0; windowed < 2; windowed++) {
		for (uint32_t i = 0; i < m->reg.n_layers; i++) {
			struct model_layer *l = &m->layers[i];

			if (l->desc.kv_source >= 0 || (l->window != 0) != windowed)
				continue;
			l->record_offset = off;
			off += (uint64_t)l->desc.n_kv_heads * (l->page_bytes[0] + l->page_bytes[1]);
			if (l->window > m->window)
				m->window = l->window;
		}
		if (!windowed) {
			m->keep_bytes = off;
			off = align64(off);
		}
	}
	m->block_bytes = m->window ? off : m->keep_bytes;
	if (m->window)
		m->keep_bytes = align64(m->keep_bytes);
}

int model_new(const struct tqkv_register_model *reg, const struct tqkv_layer_desc *layers,
	      const struct model_limits *limits, struct model **ret, char *err, size_t errlen)
{
	struct model *m;
	uint64_t row = 0, pages = 0, means = 0;
	int r;

	r = validate(reg, layers, limits, err, errlen);
	if (r < 0)
		return r;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->reg = *reg;
	m->block_tokens = limits->block_tokens;
	m->layers = calloc(reg->n_layers, sizeof(*m->layers));
	if (!m->layers) {
		model_free(m);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < reg->n_layers; i++) {
		struct model_layer *l = &m->layers[i];

		r = build_layer(m, i, &layers[i]);
		if (r < 0) {
			model_free(m);
			return r;
		}
		l->row_offset = (uint32_t)row;
		l->page_index = (uint32_t)pages;
		if (layers[i].kv_source >= 0)
			continue;
		row += 2ull * l->desc.n_kv_heads * l->desc.head_dim * 2u;
		if (l->desc.flags & TQKV_LAYER_CENTER_KEYS) {
			l->mean_index = (uint32_t)means;
			means += (uint64_t)l->desc.n_kv_heads * l->desc.head_dim;
		}
		pages += 2u * l->desc.n_kv_heads;
	}
	/* Raised limits could push these past 32 bits: refuse, never wrap. */
	if (row > (1u << 30) || pages > (1u << 24) || means > (1u << 28)) {
		model_free(m);
		return fail(err, errlen, "model too large: %llu bytes per token, %llu pages per block",
			    (unsigned long long)row, (unsigned long long)pages);
	}
	m->token_bytes = (uint32_t)row;
	m->n_pages = (uint32_t)pages;
	m->mean_floats = (uint32_t)means;
	layout_record(m);
	m->slot_bytes = align64((uint64_t)reg->staging_tokens * m->token_bytes);
	*ret = m;
	return 0;
}

void model_rows_mean(const uint16_t *rows, size_t stride, uint32_t n, uint32_t d, float *out)
{
	for (uint32_t j = 0; j < d; j++)
		out[j] = 0.0f;
	for (uint32_t t = 0; t < n; t++)
		for (uint32_t j = 0; j < d; j++) {
			float v = tqkv_f16_to_f32(rows[t * stride + j]);

			/* Garbage must not poison every later block's keys. */
			out[j] += isfinite(v) ? v : 0.0f;
		}
	for (uint32_t j = 0; j < d; j++)
		out[j] /= (float)n;
}

void model_limits_from_hello(const struct tqkv_hello_reply *h, struct model_limits *ret)
{
	*ret = (struct model_limits){
		.max_layers = h->max_layers,
		.max_kv_heads = h->max_kv_heads,
		.max_head_dim = h->max_head_dim,
		.max_sequences = h->max_sequences,
		.max_tokens_per_sequence = h->max_tokens_per_sequence,
		.block_tokens = h->block_tokens,
	};
}
