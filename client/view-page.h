/* SPDX-License-Identifier: MIT */
/*
 * The page of a published block, found through the block's record in the
 * mapped arena: shared by tqkv_view_page() and the attention loop, which
 * calls it once per chunk and so wants it inline.
 */
#ifndef TQKV_VIEW_PAGE_H
#define TQKV_VIEW_PAGE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tqkv/client.h>
#include <tqkv/page.h>

#include "model.h"

/* The record of a published block, where the arena holds its header and
 * whole page table; else NULL. */
static inline const uint8_t *view_record(const struct tqkv_layer_view *v, uint64_t block)
{
	uint64_t rec;

	if (block >= v->n_blocks)
		return NULL;
	rec = v->block_table[block];
	if (rec > v->arena_bytes || v->arena_bytes - rec < MODEL_PAGE_TABLE_OFFSET + 8ull * (v->page_index + 2 * v->n_kv_heads))
		return NULL;
	return v->arena + rec;
}

/* The page of (block, head, stream), of size bytes (tqkv_page_size() of
 * its codec), or NULL where the record does not hold it whole: checked
 * against the arena's bounds, since the arena is another process's
 * memory.  Offset 0: a windowed layer's page the daemon freed (out of the
 * window); record_bytes shrank then too. */
static inline const void *view_page_sized(const struct tqkv_layer_view *v, uint64_t block, uint32_t head,
					  unsigned stream, size_t size)
{
	const uint8_t *rec = view_record(v, block);
	struct tqkv_block_header h;
	uint64_t off;

	if (!rec || head >= v->n_kv_heads || stream > 1)
		return NULL;
	/* One copy of what is checked: shared memory may change between
	 * two reads. */
	memcpy(&h, rec, sizeof(h));
	memcpy(&off, rec + MODEL_PAGE_TABLE_OFFSET + ((size_t)v->page_index + head * 2 + stream) * sizeof(off),
	       sizeof(off));
	if (h.magic != TQKV_BLOCK_MAGIC || h.record_bytes > v->arena_bytes - (uint64_t)(rec - v->arena) ||
	    off < MODEL_PAGE_TABLE_OFFSET || off > h.record_bytes || size > h.record_bytes - off)
		return NULL;
	return rec + off;
}

/* The row of stream (0 K, 1 V) of head in slot of the view's FP16 tail
 * ring (token % staging_tokens); the caller has checked token, head and
 * stream. */
static inline const uint16_t *view_tail_slot_row(const struct tqkv_layer_view *v, uint64_t slot, uint32_t head,
						 unsigned stream)
{
	return (const uint16_t *)(v->tail + slot * v->token_bytes + v->row_offset[stream] + (size_t)head * v->head_dim * 2u);
}

#endif
