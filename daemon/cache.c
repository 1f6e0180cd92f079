/* SPDX-License-Identifier: MIT */
/* The block cache (cache.h): a chained hash table and an LRU list. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"

#define BUCKETS_MIN 1024u

struct cache {
	struct cblock **buckets;
	size_t n_buckets;             /* a power of two */
	struct cblock *lru_head;      /* least recently used */
	struct cblock *lru_tail;      /* most recently used */
	/* The oldest of the blocks in the list that were pushed as the most
	 * recently used, or NULL: a snapshot's blocks go back in before it. */
	struct cblock *lru_recent;
	struct cache_usage usage;
};

int cache_new(struct cache **ret)
{
	struct cache *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->n_buckets = BUCKETS_MIN;
	c->buckets = calloc(c->n_buckets, sizeof(*c->buckets));
	if (!c->buckets) {
		free(c);
		return -ENOMEM;
	}
	*ret = c;
	return 0;
}

void cache_free(struct cache *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_buckets; i++)
		for (struct cblock *b = c->buckets[i], *next; b; b = next) {
			next = b->hnext;
			free(b->means);
			free(b);
		}
	free(c->buckets);
	free(c);
}

static size_t bucket_of(const struct cache *c, XXH128_hash_t h)
{
	return (size_t)h.low64 & (c->n_buckets - 1);
}

static void count(struct cache *c, struct cblock *b, int64_t blocks, int64_t indexed, int64_t lru)
{
	struct cache_usage *u[2] = { &c->usage, b->usage };

	for (unsigned i = 0; i < 2; i++) {
		if (!u[i])
			continue;
		u[i]->blocks += (uint64_t)blocks;
		u[i]->bytes += (uint64_t)blocks * b->bytes;
		u[i]->fp16_bytes += (uint64_t)blocks * b->fp16_bytes;
		u[i]->indexed += (uint64_t)indexed;
		/* A held block is in the list for its window pages only. */
		u[i]->lru_blocks += b->refs ? 0 : (uint64_t)lru;
		u[i]->lru_bytes += (uint64_t)lru * (b->refs ? b->window_bytes : b->bytes);
	}
}

struct cblock *cache_block_new(struct cache *c, struct cache_usage *usage, uint64_t offset, uint64_t bytes,
			       uint64_t fp16_bytes, uint64_t window_bytes)
{
	struct cblock *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	b->offset = offset;
	b->bytes = bytes;
	b->fp16_bytes = fp16_bytes;
	b->refs = 1;
	b->window_refs = 1;
	b->window_bytes = window_bytes;
	b->usage = usage;
	count(c, b, 1, 0, 0);
	return b;
}

/* Doubles the table when it is fuller than one block per bucket; a failed
 * allocation only leaves chains longer. */
static void maybe_grow(struct cache *c)
{
	size_t n = c->n_buckets * 2;
	struct cblock **nb;

	if (c->usage.indexed < c->n_buckets)
		return;
	nb = calloc(n, sizeof(*nb));
	if (!nb)
		return;
	for (size_t i = 0; i < c->n_buckets; i++)
		for (struct cblock *b = c->buckets[i], *next; b; b = next) {
			size_t k = (size_t)b->hash.low64 & (n - 1);

			next = b->hnext;
			b->hnext = nb[k];
			nb[k] = b;
		}
	free(c->buckets);
	c->buckets = nb;
	c->n_buckets = n;
}

struct cblock *cache_lookup(const struct cache *c, XXH128_hash_t hash)
{
	for (struct cblock *b = c->buckets[bucket_of(c, hash)]; b; b = b->hnext)
		if (XXH128_isEqual(b->hash, hash))
			return b;
	return NULL;
}

bool cache_index(struct cache *c, struct cblock *b, XXH128_hash_t hash)
{
	size_t k;

	b->hash = hash;
	b->hashed = true;
	if (b->indexed || cache_lookup(c, hash))
		return false;
	maybe_grow(c);
	k = bucket_of(c, hash);
	b->hnext = c->buckets[k];
	c->buckets[k] = b;
	b->indexed = true;
	count(c, b, 0, 1, 0);
	return true;
}

static void unindex(struct cache *c, struct cblock *b)
{
	struct cblock **pp = &c->buckets[bucket_of(c, b->hash)];

	while (*pp != b)
		pp = &(*pp)->hnext;
	*pp = b->hnext;
	b->hnext = NULL;
	b->indexed = false;
	count(c, b, 0, -1, 0);
}

static void lru_remove(struct cache *c, struct cblock *b)
{
	if (!b->in_lru)
		return;
	if (c->lru_recent == b)
		c->lru_recent = b->lru_next;
	if (b->lru_prev)
		b->lru_prev->lru_next = b->lru_next;
	else
		c->lru_head = b->lru_next;
	if (b->lru_next)
		b->lru_next->lru_prev = b->lru_prev;
	else
		c->lru_tail = b->lru_prev;
	b->lru_prev = b->lru_next = NULL;
	b->in_lru = false;
	count(c, b, 0, 0, -1);
}

/* Where lru_push() links a block in. */
enum lru_place {
	LRU_NEWEST,
	LRU_OLDEST,
	LRU_SAVED,   /* older than those pushed as the newest, newer than the rest */
};

static void lru_link_before(struct cache *c, struct cblock *b, struct cblock *next)
{
	b->lru_next = next;
	b->lru_prev = next ? next->lru_prev : c->lru_tail;
	if (b->lru_prev)
		b->lru_prev->lru_next = b;
	else
		c->lru_head = b;
	if (next)
		next->lru_prev = b;
	else
		c->lru_tail = b;
}

static void lru_push(struct cache *c, struct cblock *b, enum lru_place place)
{
	switch (place) {
	case LRU_NEWEST:
		lru_link_before(c, b, NULL);
		if (!c->lru_recent)
			c->lru_recent = b;
		break;
	case LRU_OLDEST:
		lru_link_before(c, b, c->lru_head);
		break;
	case LRU_SAVED:
		lru_link_before(c, b, c->lru_recent);
		break;
	}
	b->in_lru = true;
	count(c, b, 0, 0, 1);
}

void cache_ref(struct cache *c, struct cblock *b)
{
	lru_remove(c, b);
	b->refs++;
	b->window_refs++;
}

/* No holder of b needs its window pages any more: an indexed block's
 * become evictable; true when the caller frees them now. */
static bool window_unneeded(struct cache *c, struct cblock *b)
{
	if (b->window_refs || !b->window_bytes || !b->refs || b->in_lru)
		return false;
	if (!b->indexed)
		return true;
	lru_push(c, b, LRU_NEWEST);
	return false;
}

static enum cache_release unref(struct cache *c, struct cblock *b, bool passed, enum lru_place place)
{
	if (!passed)
		b->window_refs--;
	if (b->refs == 1)
		lru_remove(c, b);  /* its window pages go back with the whole block */
	if (--b->refs > 0)
		return window_unneeded(c, b) ? CACHE_FREE_WINDOW : CACHE_KEEP;
	if (!b->indexed)
		return CACHE_FREE_BLOCK;
	lru_push(c, b, place);
	return CACHE_KEEP;
}

enum cache_release cache_unref(struct cache *c, struct cblock *b, bool passed)
{
	return unref(c, b, passed, LRU_NEWEST);
}

enum cache_release cache_unref_oldest(struct cache *c, struct cblock *b)
{
	return unref(c, b, false, LRU_OLDEST);
}

enum cache_release cache_unref_saved(struct cache *c, struct cblock *b)
{
	return unref(c, b, false, LRU_SAVED);
}

bool cache_window_pass(struct cache *c, struct cblock *b)
{
	b->window_refs--;
	return window_unneeded(c, b);
}

void cache_window_unpass(struct cache *c, struct cblock *b)
{
	if (b->refs)
		lru_remove(c, b);
	b->window_refs++;
}

void cache_window_learn(struct cblock *b, uint64_t window_bytes)
{
	if (!b->in_lru)
		b->window_bytes = window_bytes;
}

void cache_window_drop(struct cache *c, struct cblock *b)
{
	struct cache_usage *u[2] = { &c->usage, b->usage };

	lru_remove(c, b);
	for (unsigned i = 0; i < 2; i++)
		if (u[i])
			u[i]->bytes -= b->window_bytes;
	b->bytes -= b->window_bytes;
	b->window_bytes = 0;
}

struct cblock *cache_evict(struct cache *c, const struct cache_usage *only)
{
	struct cblock *b = c->lru_head;

	while (b && only && b->usage != only)
		b = b->lru_next;
	if (!b)
		return NULL;
	lru_remove(c, b);
	if (!b->refs)
		unindex(c, b);
	return b;
}

void cache_block_free(struct cache *c, struct cblock *b)
{
	count(c, b, -1, 0, 0);
	free(b->means);
	free(b);
}

const struct cache_usage *cache_usage(const struct cache *c)
{
	return &c->usage;
}

void cache_for_each_indexed(const struct cache *c, void (*fn)(void *userdata, struct cblock *b), void *userdata)
{
	for (size_t i = 0; i < c->n_buckets; i++)
		for (struct cblock *b = c->buckets[i]; b; b = b->hnext)
			if (b->refs)
				fn(userdata, b);
	for (struct cblock *b = c->lru_tail; b; b = b->lru_prev)
		if (!b->refs)
			fn(userdata, b);
}

XXH128_hash_t prefix_root(const void *key, size_t key_size)
{
	return XXH3_128bits_withSeed(key, key_size, 0x74716b76u /* "tqkv" */);
}

XXH128_hash_t prefix_next(XXH128_hash_t parent, const uint32_t *tokens, uint32_t n)
{
	/* The seed carries half of the parent, the input the other half. */
	uint8_t buf[8 + 4 * PREFIX_BLOCK_TOKENS_MAX];

	if (n > PREFIX_BLOCK_TOKENS_MAX)
		n = PREFIX_BLOCK_TOKENS_MAX;
	memcpy(buf, &parent.high64, 8);
	memcpy(buf + 8, tokens, (size_t)n * sizeof(*tokens));
	return XXH3_128bits_withSeed(buf, 8 + (size_t)n * sizeof(*tokens), parent.low64);
}
