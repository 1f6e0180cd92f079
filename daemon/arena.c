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
#define SIZE_CLASSES_MAX 64

/* Freed chunks of one size, linked through their first 8 bytes. */
struct size_class {
	uint64_t size;
	uint64_t head;   /* offset of the first free chunk, 0 = none */
};

struct arena {
	int fd;
	uint8_t *base;
	uint64_t size;
	uint64_t top;    /* bump pointer */
	uint64_t populated;  /* pages below this were faulted in ahead of use */
	uint64_t used;
	unsigned n_classes;
	struct size_class classes[SIZE_CLASSES_MAX];
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

static struct size_class *class_of(struct arena *a, uint64_t size, int create)
{
	for (unsigned i = 0; i < a->n_classes; i++)
		if (a->classes[i].size == size)
			return &a->classes[i];
	if (!create || a->n_classes == SIZE_CLASSES_MAX)
		return NULL;
	a->classes[a->n_classes] = (struct size_class){ .size = size };
	return &a->classes[a->n_classes++];
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
	struct size_class *c;
	uint64_t off;

	if (size == 0)
		return -EINVAL;
	size = (size + ARENA_ALIGN - 1) & ~(uint64_t)(ARENA_ALIGN - 1);
	c = class_of(a, size, 0);
	if (c && c->head) {
		off = c->head;
		memcpy(&c->head, a->base + off, sizeof(c->head));
	} else {
		if (size > a->size - a->top)
			return -ENOMEM;
		off = a->top;
		a->top += size;
		populate_ahead(a);
	}
	a->used += size;
	*ret_offset = off;
	return 0;
}

void arena_release(struct arena *a, uint64_t offset, uint64_t size)
{
	struct size_class *c;

	size = (size + ARENA_ALIGN - 1) & ~(uint64_t)(ARENA_ALIGN - 1);
	a->used -= size;
	if (offset + size == a->top) {
		a->top = offset;
		return;
	}
	c = class_of(a, size, 1);
	if (!c) {
		/* Out of classes: the chunk is lost until restart, but never
		 * handed out twice. */
		return;
	}
	memcpy(a->base + offset, &c->head, sizeof(c->head));
	c->head = offset;
	/* Give whole pages of large chunks back to the kernel (after the
	 * free-list link). */
	if (size >= 1u << 20) {
		uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
		uint64_t start = (offset + sizeof(c->head) + page - 1) & ~(page - 1);
		uint64_t end = (offset + size) & ~(page - 1);

		if (end > start)
			madvise(a->base + start, end - start, MADV_REMOVE);
	}
}
