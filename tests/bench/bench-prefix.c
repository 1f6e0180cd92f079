/* SPDX-License-Identifier: MIT */
/*
 * The daemon's prefix index and eviction, in process, at 100k and 1M
 * cached blocks: the cost of a lookup next to the cost of the hash it
 * looks up (the baseline: what every block of a prompt pays anyway), and
 * how fast the LRU list gives memory back.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "arena.h"
#include "bench.h"
#include "cache.h"

#define BLOCK_TOKENS 64
#define RECORD_BYTES 4096  /* small records: the index and the allocator are what is measured */

static uint64_t rng_next(uint64_t *s)
{
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	return *s >> 11;
}

/* Chains of 1000 blocks (a 64k-token prompt each): ids differ per chain. */
static XXH128_hash_t block_hash(XXH128_hash_t parent, uint64_t chain, uint64_t index)
{
	uint32_t ids[BLOCK_TOKENS];

	for (unsigned i = 0; i < BLOCK_TOKENS; i++)
		ids[i] = (uint32_t)(chain * 7919 + index * BLOCK_TOKENS + i);
	return prefix_next(parent, ids, BLOCK_TOKENS);
}

static int run_size(uint64_t n_blocks, const struct bench_options *o)
{
	const uint64_t chain_len = 1000, n_chains = n_blocks / chain_len;
	struct cache *c;
	struct arena *a;
	XXH128_hash_t root = prefix_root("bench", 5), h;
	uint64_t seed = 1, found = 0, lookups = o->quick ? 200000 : 2000000, evicted = 0;
	double t0, t_insert, t_hash, t_lookup, t_evict;
	int r;

	r = cache_new(&c);
	if (r < 0)
		return r;
	r = arena_new(n_blocks * RECORD_BYTES + (64u << 20), &a);
	if (r < 0) {
		cache_free(c);
		return r;
	}
	t0 = bench_now();
	for (uint64_t ch = 0; ch < n_chains; ch++) {
		h = root;
		for (uint64_t b = 0; b < chain_len; b++) {
			uint64_t off;
			struct cblock *blk;

			h = block_hash(h, ch, b);
			if (arena_alloc(a, RECORD_BYTES, &off) < 0 ||
			    !(blk = cache_block_new(c, NULL, off, RECORD_BYTES, RECORD_BYTES * 4, 0))) {
				r = -ENOMEM;
				goto out;
			}
			cache_index(c, blk, h);
			(void)cache_unref(c, blk, false);  /* closed sequence: cached, unheld */
		}
	}
	t_insert = (bench_now() - t0) / (double)n_blocks;

	/* Hashing alone (the baseline), then hashing + lookup, over random
	 * (chain, depth) prefixes: the loop an attach runs per block. */
	t0 = bench_now();
	for (uint64_t i = 0; i < lookups; i++) {
		h = block_hash(root, rng_next(&seed) % n_chains, 0);
		found += h.low64 & 1;
	}
	t_hash = (bench_now() - t0) / (double)lookups;
	found = 0;
	seed = 1;
	t0 = bench_now();
	for (uint64_t i = 0; i < lookups; i++) {
		uint64_t ch = rng_next(&seed) % n_chains;

		found += cache_lookup(c, block_hash(root, ch, 0)) != NULL;
	}
	t_lookup = (bench_now() - t0) / (double)lookups;
	if (found != lookups) {
		fprintf(stderr, "tqkv-bench prefix: %llu of %llu lookups missed\n", (unsigned long long)(lookups - found),
			(unsigned long long)lookups);
		r = -EIO;
		goto out;
	}

	t0 = bench_now();
	for (struct cblock *b; (b = cache_evict(c, NULL)); evicted++) {
		arena_release(a, b->offset, b->bytes);
		cache_block_free(c, b);
	}
	t_evict = bench_now() - t0;
	if (o->json)
		printf("{\"bench\":\"prefix\",\"blocks\":%llu,\"insert_ns\":%.0f,\"hash_ns\":%.0f,\"lookup_ns\":%.0f,"
		       "\"lookup_over_hash\":%.2f,\"evictions_per_s\":%.0f}\n",
		       (unsigned long long)n_blocks, t_insert * 1e9, t_hash * 1e9, t_lookup * 1e9, t_lookup / t_hash,
		       (double)evicted / t_evict);
	else
		printf("%10llu %12.0f %10.0f %16.0f %10.2fx %16.2f\n", (unsigned long long)n_blocks, t_insert * 1e9,
		       t_hash * 1e9, t_lookup * 1e9, t_lookup / t_hash, (double)evicted / t_evict / 1e6);
out:
	cache_free(c);
	arena_free(a);
	return r;
}

int bench_prefix(const struct bench_options *o)
{
	static const uint64_t sizes[] = { 100000, 1000000 };

	if (!o->json)
		printf("%10s %12s %10s %16s %11s %16s\n", "blocks", "insert ns", "hash ns", "hash+lookup ns",
		       "vs hash", "evictions M/s");
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		int r = run_size(sizes[i], o);

		if (r < 0)
			return r;
	}
	return 0;
}
