/* SPDX-License-Identifier: MIT */
/*
 * The arena: one memfd the daemon maps read-write and seals (no shrink, no
 * grow, no new writable mappings, no more seals) before any client sees it.
 * Clients map it read-only.  Everything in it is addressed by offset.
 * Allocation (loop thread only) is first fit over a sorted list of freed
 * ranges that merge with their neighbours, then a bump pointer.
 */
#ifndef TQKVD_ARENA_H
#define TQKVD_ARENA_H

#include <stddef.h>
#include <stdint.h>

struct arena;

/* Creates a sealed arena of size bytes (rounded up to pages). */
int arena_new(uint64_t size, struct arena **ret);
void arena_free(struct arena *a);

int arena_fd(const struct arena *a);
uint64_t arena_size(const struct arena *a);
void *arena_ptr(const struct arena *a, uint64_t offset);

/* Allocates size bytes (64-byte aligned, not zeroed: every user writes
 * what it publishes); -ENOMEM when full. */
int arena_alloc(struct arena *a, uint64_t size, uint64_t *ret_offset);
/* Returns an allocation of exactly size bytes. */
void arena_release(struct arena *a, uint64_t offset, uint64_t size);

uint64_t arena_bytes_used(const struct arena *a);
/* Bytes of the arena that hold memory: written or faulted in ahead of use
 * at some time.  Freed ranges stay resident (hole punching is sealed off)
 * and are reused, so this only grows, up to the arena's size. */
uint64_t arena_bytes_resident(const struct arena *a);

#endif
