/* SPDX-License-Identifier: MIT */
/* The arena allocator: freed memory of any sizes, freed in any order,
 * comes back whole (a review found sizes stranded forever). */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <fcntl.h>
#include <sys/mman.h>

#include "arena.h"

Test(arena, freed_ranges_merge_and_come_back)
{
	struct arena *a;
	uint64_t off[300], sizes[300], total = 0, big;
	unsigned n = 0;

	cr_assert_eq(arena_new(8u << 20, &a), 0);
	/* Fill with 300 allocations of many different sizes. */
	for (; n < 300; n++) {
		sizes[n] = 64 * (1 + (n * 7919) % 97);
		if (arena_alloc(a, sizes[n], &off[n]) < 0)
			break;
		total += sizes[n];
	}
	cr_assert_eq(arena_bytes_used(a), total);
	/* Free every other one, then the rest, in a scrambled order. */
	for (unsigned i = 0; i < n; i += 2)
		arena_release(a, off[i], sizes[i]);
	for (unsigned i = n; i-- > 0;)
		if (i % 2)
			arena_release(a, off[i], sizes[i]);
	cr_assert_eq(arena_bytes_used(a), 0);
	/* Everything merged: one allocation of almost the whole arena fits. */
	cr_assert_eq(arena_alloc(a, (8u << 20) - 4096, &big), 0);
	arena_release(a, big, (8u << 20) - 4096);
	arena_free(a);
}

Test(arena, is_sealed)
{
	struct arena *a;
	int seals;

	cr_assert_eq(arena_new(1u << 20, &a), 0);
	seals = fcntl(arena_fd(a), F_GET_SEALS);
	cr_assert_eq(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL),
		     F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL);
	cr_assert_eq(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, arena_fd(a), 0), MAP_FAILED);
	arena_free(a);
}
