/* SPDX-License-Identifier: MIT */
/* Pages: header, section offsets, and the tile loop around the kernels. */
#include <errno.h>
#include <string.h>

#include <tqkv/page.h>

#include "codec-private.h"
#include "crc32c.h"

#define PAGE_TOKENS_MAX 65535u

static size_t align64(size_t v)
{
	return (v + TQKV_PAGE_ALIGN - 1) & ~(size_t)(TQKV_PAGE_ALIGN - 1);
}

static void page_geometry(const struct tqkv_codec *c, uint32_t n_tokens, struct page_geometry *g)
{
	size_t off = TQKV_PAGE_ALIGN, side;

	g->n_tiles = (n_tokens + TQKV_TILE_TOKENS - 1) / TQKV_TILE_TOKENS;
	side = (size_t)g->n_tiles * TQKV_TILE_TOKENS * sizeof(uint16_t);  /* one fp16 per token */
	g->tiles = (uint32_t)off;
	off = align64(off + (size_t)g->n_tiles * c->layout.tile_bytes);
	g->norms = 0;
	g->rnorms = 0;
	if (c->cls != CODEC_CLASS_FP16) {
		g->norms = (uint32_t)off;
		off = align64(off + side);
	}
	if (c->cls == CODEC_CLASS_TQ_QJL) {
		g->rnorms = (uint32_t)off;
		off = align64(off + side);
	}
	g->bytes = (uint32_t)off;
}

TQKV_EXPORT size_t tqkv_page_size(const struct tqkv_codec *codec, uint32_t n_tokens)
{
	struct page_geometry g;

	if (!codec || n_tokens == 0 || n_tokens > PAGE_TOKENS_MAX)
		return 0;
	page_geometry(codec, n_tokens, &g);
	return g.bytes;
}

static void page_write_header(const struct tqkv_codec *c, uint32_t n_tokens, const struct page_geometry *g,
			      bool centered, struct tqkv_page_header *h)
{
	memset(h, 0, sizeof(*h));
	h->magic = TQKV_PAGE_MAGIC;
	h->version = TQKV_PAGE_VERSION;
	h->kind = (uint8_t)c->params.kind;
	h->flags = (uint8_t)((c->cls == CODEC_CLASS_TQ_QJL ? TQKV_PAGE_QJL : 0) |
			     (centered ? TQKV_PAGE_CENTERED : 0));
	h->head_dim = (uint16_t)c->params.head_dim;
	h->padded_dim = (uint16_t)c->d;
	h->n_tokens = (uint16_t)n_tokens;
	h->n_tiles = (uint16_t)g->n_tiles;
	h->tile_bytes = c->layout.tile_bytes;
	h->tiles_offset = g->tiles;
	h->norms_offset = g->norms;
	h->rnorms_offset = g->rnorms;
	h->page_bytes = g->bytes;
	h->model_seed = c->params.model_seed;
	h->layer = c->params.layer;
	h->kv_head = (uint16_t)c->params.kv_head;
	h->stream = (uint8_t)c->params.stream;
	h->header_crc = crc32c(0, h, offsetof(struct tqkv_page_header, header_crc));
}

/* Zeroes what the kernels do not write: the padding tokens of the last
 * tile, unused norm slots and the gaps between sections, so pages are
 * byte-for-byte reproducible.  (Zeroing whole pages cost more than encoding
 * them.) */
static void page_zero_padding(const struct tqkv_codec *c, uint32_t n_tokens, const struct page_geometry *g,
			      uint8_t *base)
{
	size_t tiles_end = g->tiles + (size_t)g->n_tiles * c->layout.tile_bytes;
	size_t side_end = g->rnorms ? g->rnorms : g->bytes;

	if (n_tokens % TQKV_TILE_TOKENS)
		memset(base + tiles_end - c->layout.tile_bytes, 0, c->layout.tile_bytes);
	memset(base + tiles_end, 0, (g->norms ? g->norms : g->bytes) - tiles_end);
	if (g->norms)
		memset(base + g->norms + (size_t)n_tokens * 2, 0, side_end - g->norms - (size_t)n_tokens * 2);
	if (g->rnorms)
		memset(base + g->rnorms + (size_t)n_tokens * 2, 0, g->bytes - g->rnorms - (size_t)n_tokens * 2);
}

static int page_encode(const struct tqkv_codec *c, const void *rows, bool f16, size_t row_stride,
		       uint32_t n_tokens, const float *mean, void *page, size_t page_size)
{
	struct page_geometry g;
	uint8_t *base = page;

	if (!c || !rows || !page || n_tokens == 0 || n_tokens > PAGE_TOKENS_MAX ||
	    row_stride < c->params.head_dim)
		return -EINVAL;
	page_geometry(c, n_tokens, &g);
	if (page_size < g.bytes)
		return -EINVAL;

	page_zero_padding(c, n_tokens, &g, base);
	page_write_header(c, n_tokens, &g, mean != NULL, (struct tqkv_page_header *)base);

	for (uint32_t i = 0; i < g.n_tiles; i++) {
		uint32_t first = i * TQKV_TILE_TOKENS;
		uint32_t n = n_tokens - first < TQKV_TILE_TOKENS ? n_tokens - first : TQKV_TILE_TOKENS;
		size_t elem = f16 ? sizeof(uint16_t) : sizeof(float);
		struct codec_src src = {
			.rows = (const uint8_t *)rows + (size_t)first * row_stride * elem,
			.stride = row_stride,
			.f16 = f16,
			.mean = mean,
		};
		struct codec_tile tile = {
			.bits = base + g.tiles + (size_t)i * c->layout.tile_bytes,
			.norms = g.norms ? (uint16_t *)(base + g.norms) + first : NULL,
			.rnorms = g.rnorms ? (uint16_t *)(base + g.rnorms) + first : NULL,
		};

		c->kernels.encode_tile(c, &src, n, &tile);
	}
	return 0;
}

TQKV_EXPORT int tqkv_page_encode_f32(const struct tqkv_codec *codec, const float *rows, size_t row_stride,
				     uint32_t n_tokens, const float *mean, void *page, size_t page_size)
{
	return page_encode(codec, rows, false, row_stride, n_tokens, mean, page, page_size);
}

TQKV_EXPORT int tqkv_page_encode_f16(const struct tqkv_codec *codec, const uint16_t *rows, size_t row_stride,
				     uint32_t n_tokens, const float *mean, void *page, size_t page_size)
{
	return page_encode(codec, rows, true, row_stride, n_tokens, mean, page, page_size);
}

/* Checks a page header against this codec and the buffer it sits in.
 * Pages come from shared memory: every field is untrusted, and another
 * process may change them at any time, so the header is copied once and
 * only the copy and the geometry recomputed from the codec are used. */
int page_check(const struct tqkv_codec *c, const void *page, size_t page_size, bool centered,
	       struct page_geometry *ret_g, uint32_t *ret_n_tokens)
{
	struct tqkv_page_header h;
	uint8_t want_flags;

	if (page_size < sizeof(h))
		return -EBADMSG;
	memcpy(&h, page, sizeof(h));
	if (h.magic != TQKV_PAGE_MAGIC || h.version != TQKV_PAGE_VERSION ||
	    h.header_crc != crc32c(0, &h, offsetof(struct tqkv_page_header, header_crc)))
		return -EBADMSG;
	if (h.reserved0 || h.reserved1 || h.reserved2 ||
	    (h.flags & ~(uint8_t)(TQKV_PAGE_QJL | TQKV_PAGE_CENTERED)))
		return -EBADMSG;
	want_flags = (uint8_t)(c->cls == CODEC_CLASS_TQ_QJL ? TQKV_PAGE_QJL : 0);
	if (h.n_tokens == 0 || h.kind != c->params.kind || h.head_dim != c->params.head_dim ||
	    h.padded_dim != c->d || h.model_seed != c->params.model_seed ||
	    h.layer != c->params.layer || h.kv_head != c->params.kv_head ||
	    h.stream != c->params.stream || (h.flags & TQKV_PAGE_QJL) != want_flags)
		return -EBADMSG;
	page_geometry(c, h.n_tokens, ret_g);
	if (h.n_tiles != ret_g->n_tiles || h.tile_bytes != c->layout.tile_bytes ||
	    h.tiles_offset != ret_g->tiles || h.norms_offset != ret_g->norms ||
	    h.rnorms_offset != ret_g->rnorms || h.page_bytes != ret_g->bytes || page_size < ret_g->bytes)
		return -EBADMSG;
	/* A centered page decodes only with its mean, and only it does. */
	if (!!(h.flags & TQKV_PAGE_CENTERED) != centered)
		return -EINVAL;
	*ret_n_tokens = h.n_tokens;
	return 0;
}

TQKV_EXPORT int tqkv_page_decode_f32(const struct tqkv_codec *codec, const void *page, size_t page_size,
				     uint32_t first, uint32_t n, const float *mean, float *out, size_t row_stride)
{
	const uint8_t *base = page;
	struct page_geometry g;
	uint32_t n_tokens;
	int r;

	if (!codec || !page || !out || row_stride < codec->params.head_dim)
		return -EINVAL;
	r = page_check(codec, page, page_size, mean != NULL, &g, &n_tokens);
	if (r < 0)
		return r;
	if (first > n_tokens || n > n_tokens - first)
		return -EINVAL;

	for (uint32_t k = 0; k < n; k++) {
		uint32_t t = first + k, tile = t / TQKV_TILE_TOKENS;
		const uint16_t *norms = (const uint16_t *)(base + g.norms) + tile * TQKV_TILE_TOKENS;
		const uint16_t *rnorms = (const uint16_t *)(base + g.rnorms) + tile * TQKV_TILE_TOKENS;

		codec->kernels.decode_token(codec, base + g.tiles + (size_t)tile * codec->layout.tile_bytes,
					    norms, rnorms, t % TQKV_TILE_TOKENS, mean, out + (size_t)k * row_stride);
	}
	return 0;
}
