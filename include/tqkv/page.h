/* SPDX-License-Identifier: MIT */
/*
 * The page: n tokens of one (layer, kv head, K or V) stream, compressed.
 * Pages live in shared memory that clients map read-only, so this layout is
 * wire ABI: little-endian, offsets not pointers, fixed-size header.  The full
 * description is docs/PAGE-FORMAT.md.
 *
 *   [header 64 B][tiles: n_tiles * tile_bytes][norms: n_tiles * 16 * 2 B]
 *   [residual norms (QJL only): n_tiles * 16 * 2 B]
 *
 * Every section starts at a multiple of 64 bytes from the page start.
 */
#ifndef TQKV_PAGE_H
#define TQKV_PAGE_H

#include <stdint.h>

#define TQKV_PAGE_MAGIC 0x504b5154u /* "TQKP" little-endian */
#define TQKV_PAGE_VERSION 2u
#define TQKV_PAGE_ALIGN 64u

enum tqkv_page_flag {
	TQKV_PAGE_QJL = 1u << 0,      /* residual sign plane and residual norms present */
	TQKV_PAGE_CENTERED = 1u << 1, /* rows were centered by a caller-held mean */
};

struct tqkv_page_header {
	uint32_t magic;          /* TQKV_PAGE_MAGIC */
	uint16_t version;        /* TQKV_PAGE_VERSION */
	uint8_t kind;            /* enum tqkv_kind */
	uint8_t flags;           /* enum tqkv_page_flag */
	uint16_t head_dim;
	uint16_t padded_dim;
	uint16_t n_tokens;
	uint16_t n_tiles;        /* ceil(n_tokens / 16) */
	uint32_t tile_bytes;     /* packed bytes of one tile */
	uint32_t tiles_offset;   /* from the page start */
	uint32_t norms_offset;   /* fp16 per token: norm (TurboQuant) or scale (int8) */
	uint32_t rnorms_offset;  /* fp16 per token: QJL residual norm, 0 if absent */
	uint32_t page_bytes;     /* total size, a multiple of 64 */
	uint32_t reserved0;      /* 0 */
	uint64_t model_seed;     /* rotation identity: seed, layer, head, stream */
	uint32_t layer;
	uint16_t kv_head;
	uint8_t stream;          /* enum tqkv_stream */
	uint8_t reserved1;       /* 0 */
	uint32_t reserved2;      /* 0 */
	uint32_t header_crc;     /* CRC-32C of the 60 bytes before it */
};

_Static_assert(sizeof(struct tqkv_page_header) == 64, "page header is 64 bytes");

#endif
