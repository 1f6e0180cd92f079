/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "arena.h"

#define ARENA_ALIGN 64u

/* A free range below the bump pointer.  The list is kept sorted by offset
 * and neighbours are merged, so freed memory is never stranded whatever
 * sizes clients use; a range that reaches the top lowers the top. */
struct free_range {
	struct free_range *next;
	uint64_t offset, size;
};

struct arena {
	int fd;
	uint8_t *base;
	uint64_t size;
	uint64_t top;    /* bump pointer */
	uint64_t populated;  /* pages below this were faulted in ahead of use */
	uint64_t high;       /* the highest top so far: pages below it were written */
	uint64_t used;
	struct free_range *free;
};

int arena_new(uint64_t size, struct arena **ret)
{
	long page = sysconf(_SC_PAGESIZE);
	struct arena *a;
	int r;

	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->size = (size + (uint64_t)page - 1) & ~(uint64_t)(page - 1);
	/* Offset 0 means "none" everywhere, so the first chunk starts later. */
	a->top = ARENA_ALIGN;
	a->fd = memfd_create("tqkv-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (a->fd < 0) {
		r = -errno;
		goto fail;
	}
	if (ftruncate(a->fd, (off_t)a->size) < 0) {
		r = -errno;
		goto fail;
	}
	a->base = mmap(NULL, a->size, PROT_READ | PROT_WRITE, MAP_SHARED, a->fd, 0);
	if (a->base == MAP_FAILED) {
		a->base = NULL;
		r = -errno;
		goto fail;
	}
	/* Attention walks every page of a sequence: with transparent huge
	 * pages for shmem (shmem_enabled=advise or always) a 2 MiB page
	 * covers what 512 TLB entries would.  Best effort. */
	madvise(a->base, a->size, MADV_HUGEPAGE);
	/* Our writable mapping stays valid; nobody can make another one. */
	if (fcntl(a->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0) {
		r = -errno;
		goto fail;
	}
	*ret = a;
	return 0;
fail:
	arena_free(a);
	return r;
}

void arena_free(struct arena *a)
{
	if (!a)
		return;
	while (a->free) {
		struct free_range *f = a->free;

		a->free = f->next;
		free(f);
	}
	if (a->base)
		munmap(a->base, a->size);
	if (a->fd >= 0)
		close(a->fd);
	free(a);
}

int arena_fd(const struct arena *a)
{
	return a->fd;
}

uint64_t arena_size(const struct arena *a)
{
	return a->size;
}

void *arena_ptr(const struct arena *a, uint64_t offset)
{
	return a->base + offset;
}

uint64_t arena_bytes_used(const struct arena *a)
{
	return a->used;
}

uint64_t arena_bytes_resident(const struct arena *a)
{
	return a->populated > a->high ? a->populated : a->high;
}

/* Faults fresh pages in bulk, on the loop thread, a few MiB ahead of the
 * bump pointer: one madvise is much cheaper than a page fault per 4 KiB in
 * the worker's encoder.  Best effort (Linux >= 5.14). */
static void populate_ahead(struct arena *a)
{
	const uint64_t ahead = 8u << 20;
	uint64_t end;

	if (a->top + ahead / 2 <= a->populated)
		return;
	end = a->top + ahead < a->size ? a->top + ahead : a->size;
	if (end > a->populated) {
#ifdef MADV_POPULATE_WRITE
		madvise(a->base + a->populated, end - a->populated, MADV_POPULATE_WRITE);
#endif
		a->populated = end;
	}
}

int arena_alloc(struct arena *a, uint64_t size, uint64_t *ret_offset)
{
	struct free_range **pp;
	uint64_t off;

	if (size == 0)
		return -EINVAL;
	size = (size + ARENA_ALIGN - 1) & ~(uint64_t)(ARENA_ALIGN - 1);
	/* First fit among freed ranges, then the bump pointer. */
	for (pp = &a->free; *pp; pp = &(*pp)->next) {
		struct free_range *f = *pp;

		if (f->size < size)
			continue;
		off = f->offset;
		f->offset += size;
		f->size -= size;
		if (f->size == 0) {
			*pp = f->next;
			free(f);
		}
		a->used += size;
		*ret_offset = off;
		return 0;
	}
	if (size > a->size - a->top)
		return -ENOMEM;
	off = a->top;
	a->top += size;
	if (a->top > a->high)
		a->high = a->top;
	populate_ahead(a);
	a->used += size;
	*ret_offset = off;
	return 0;
}

void arena_release(struct arena *a, uint64_t offset, uint64_t size)
{
	struct free_range **pp, *prev = NULL, *f;

	size = (size + ARENA_ALIGN - 1) & ~(uint64_t)(ARENA_ALIGN - 1);
	a->used -= size;
	for (pp = &a->free; *pp && (*pp)->offset < offset; pp = &(*pp)->next)
		prev = *pp;
	if (prev && prev->offset + prev->size == offset) {
		prev->size += size;
		f = prev;
	} else {
		f = malloc(sizeof(*f));
		if (!f)
			return;  /* out of memory: the range stays unused, never handed out twice */
		*f = (struct free_range){ .next = *pp, .offset = offset, .size = size };
		*pp = f;
	}
	if (f->next && f->offset + f->size == f->next->offset) {
		struct free_range *n = f->next;

		f->size += n->size;
		f->next = n->next;
		free(n);
	}
	if (f->offset + f->size == a->top) {
		/* The last range: give it back to the bump pointer. */
		for (pp = &a->free; *pp != f; pp = &(*pp)->next)
			;
		*pp = NULL;
		a->top = f->offset;
		free(f);
		return;
	}
	/* The pages stay: a sealed memfd refuses hole punching (EPERM, also
	 * for the daemon), so freed ranges are reused, and the arena's memory
	 * stays at its high-water mark, within the budget. */
}
