/* SPDX-License-Identifier: MIT */
/*
 * The block cache: every published block record, its reference count (the
 * sequence tables that hold it), the prefix index (chained content hash →
 * block) and the LRU list of indexed blocks that no sequence holds.  Pure
 * bookkeeping on the loop thread; the server owns the arena bytes and frees
 * what cache_unref() and cache_evict() hand back.
 *
 * A model's sliding-window layers keep their pages at the end of each
 * record (window_bytes).  Once every sequence holding a block has passed
 * it by more than the window, those pages are no longer pinned: an
 * unindexed block's are freed at once, an indexed block's join the LRU list
 * (a later prompt may attach right after the block and need them), where
 * eviction takes them alone and the block stays.
 *
 * A block's hash is XXH3-128 of its parent's hash and its token ids; the
 * root is a hash of the tenant, the model fingerprint and the codec policy
 * (prefix_root()).  Blocks are immutable, so a hit is shared, never copied.
 */
#ifndef TQKVD_CACHE_H
#define TQKVD_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <xxhash.h>

/* Counts kept for the whole cache and for each tenant. */
struct cache_usage {
	uint64_t blocks, bytes;              /* every block */
	uint64_t fp16_bytes;                 /* what their tokens take as FP16 rows */
	uint64_t indexed;                    /* in the prefix index */
	uint64_t lru_blocks, lru_bytes;      /* indexed, held by no sequence: evictable */
};

struct cblock {
	struct cblock *hnext;          /* index bucket chain */
	struct cblock *lru_prev, *lru_next;
	uint64_t offset, bytes;        /* the record in its tenant's arena */
	uint64_t fp16_bytes;           /* its tokens as FP16 rows */
	XXH128_hash_t hash;            /* valid when hashed */
	uint32_t refs;                 /* sequence tables holding it */
	uint32_t window_refs;          /* holders that have not passed its window pages */
	uint64_t window_bytes;         /* the windowed layers' pages at its end, while they exist */
	bool hashed, indexed;
	bool in_lru;                   /* unheld and evictable; or held, its window pages evictable */
	struct cache_usage *usage;     /* the tenant's counts */
	float *means;                  /* block 0 of a centered model: its sequence's key means */
	uint64_t means_bytes;
	uint64_t dir_slot;             /* its entry in the tenant's directory + 1, or 0 */
	uint64_t means_arena_offset, means_arena_bytes;  /* the means' copy in the arena (directory) */
};

struct cache;

int cache_new(struct cache **ret);
/* Frees the bookkeeping of every block left (not the arena bytes). */
void cache_free(struct cache *c);

/* A new block held by one sequence, which has not passed it. */
struct cblock *cache_block_new(struct cache *c, struct cache_usage *usage, uint64_t offset, uint64_t bytes,
			       uint64_t fp16_bytes, uint64_t window_bytes);

/* Indexes b under hash (b->hashed becomes true either way); false when
 * another block already has that hash (b then stays private). */
bool cache_index(struct cache *c, struct cblock *b, XXH128_hash_t hash);
struct cblock *cache_lookup(const struct cache *c, XXH128_hash_t hash);

/* One more sequence holds b (inside its window): it leaves the LRU list. */
void cache_ref(struct cache *c, struct cblock *b);

/* What the caller of cache_unref() frees. */
enum cache_release {
	CACHE_KEEP,
	CACHE_FREE_BLOCK,   /* unheld and not indexed: its bytes, then cache_block_free() */
	CACHE_FREE_WINDOW,  /* held, not indexed, its window pages needed by none: free_window */
};

/* One holder less (passed: it had passed b's window).  An unheld indexed
 * block becomes the most recently used of the LRU list. */
enum cache_release cache_unref(struct cache *c, struct cblock *b, bool passed);
/* As cache_unref(), but an unheld indexed block becomes the least
 * recently used (loading a snapshot written most recent first). */
enum cache_release cache_unref_oldest(struct cache *c, struct cblock *b);
/* As cache_unref(), for a snapshot letting go (in the order it listed
 * them, reversed): an unheld indexed block goes in after the ones it let
 * go of before, and before every block unheld since it held them all
 * (which emptied the LRU list). */
enum cache_release cache_unref_saved(struct cache *c, struct cblock *b);
/* A holder has passed b's window.  Returns true when b's window pages are
 * needed by no holder and b is not indexed: the caller frees them at once
 * (cache_window_drop()); an indexed b's become evictable instead. */
bool cache_window_pass(struct cache *c, struct cblock *b);
/* A holder went back inside b's window (trimmed): its pages are pinned
 * again; the caller checked that they exist. */
void cache_window_unpass(struct cache *c, struct cblock *b);
/* A block restored without its model learns which bytes are window
 * pages when a sequence of that model attaches it. */
void cache_window_learn(struct cblock *b, uint64_t window_bytes);
/* b's window pages are gone: its bytes shrink by window_bytes. */
void cache_window_drop(struct cache *c, struct cblock *b);

/* The least recently used entry of the LRU list (of the tenant counted in
 * only, unless NULL), taken out of the list, or NULL.  An unheld block
 * also leaves the index: the caller frees it.  A held one (b->refs) is
 * its window pages: the caller frees those (cache_window_drop()). */
struct cblock *cache_evict(struct cache *c, const struct cache_usage *only);
void cache_block_free(struct cache *c, struct cblock *b);

const struct cache_usage *cache_usage(const struct cache *c);

/* The largest block_tokens the configuration allows. */
#define PREFIX_BLOCK_TOKENS_MAX 4096u

/* Calls fn for every indexed block, the most recently used first: the
 * held ones, then the unheld ones from the most to the least recently
 * used (a chain's first block before its later ones). */
void cache_for_each_indexed(const struct cache *c, void (*fn)(void *userdata, struct cblock *b), void *userdata);

/* The root of a prefix chain: a key made of the tenant's name, the model
 * fingerprint and the codec policy. */
XXH128_hash_t prefix_root(const void *key, size_t key_size);
/* The hash of a block: its parent's and its token ids. */
XXH128_hash_t prefix_next(XXH128_hash_t parent, const uint32_t *tokens, uint32_t n);

#endif
