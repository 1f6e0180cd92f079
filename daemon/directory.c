/* SPDX-License-Identifier: MIT */
/* A tenant's block directory in a memfd (directory.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "directory.h"

#define DIR_MAGIC "TQKVDIR1"
#define ENTRY_MAGIC 0x544e4544u /* "DENT" */

struct dir_header {
	char magic[8];
	uint64_t capacity;        /* entries */
	uint32_t crc;             /* of magic and capacity */
	uint32_t reserved0;
	uint64_t high_water;      /* slots below it were used; readers scan those */
	uint8_t reserved[32];
};

struct raw_entry {
	uint32_t magic;           /* ENTRY_MAGIC, 0 when free */
	uint32_t means_bytes;
	uint64_t hash_low, hash_high;
	uint64_t offset, bytes, fp16_bytes, means_offset;
	uint32_t crc;             /* of the bytes before it */
};
_Static_assert(sizeof(struct dir_header) == 64 && sizeof(struct raw_entry) == 64, "directory entries are 64 bytes");

struct directory {
	int fd;
	uint8_t *map;
	uint64_t capacity, map_bytes;
	uint64_t *free_slots;     /* a stack of free slots */
	uint64_t n_free, next;    /* slots below next were handed out once */
};

static struct raw_entry *entry_at(const struct directory *d, uint64_t slot)
{
	return (struct raw_entry *)(d->map + sizeof(struct dir_header)) + slot;
}

static int map_fd(struct directory *d)
{
	d->map = mmap(NULL, d->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, 0);
	if (d->map == MAP_FAILED) {
		d->map = NULL;
		return -errno;
	}
	return 0;
}

int directory_new(uint64_t arena_bytes, struct directory **ret)
{
	struct directory *d = calloc(1, sizeof(*d));
	struct dir_header *h;
	int r;

	if (!d)
		return -ENOMEM;
	d->capacity = arena_bytes / 4096 + 16;
	d->map_bytes = sizeof(*h) + d->capacity * sizeof(struct raw_entry);
	d->fd = memfd_create("tqkv-directory", MFD_CLOEXEC);
	if (d->fd < 0) {
		r = -errno;
		free(d);
		return r;
	}
	r = ftruncate(d->fd, (off_t)d->map_bytes) < 0 ? -errno : map_fd(d);
	if (r < 0) {
		directory_free(d);
		return r;
	}
	h = (struct dir_header *)d->map;
	memcpy(h->magic, DIR_MAGIC, 8);
	h->capacity = d->capacity;
	h->crc = crc32c(0, h, offsetof(struct dir_header, crc));
	*ret = d;
	return 0;
}

int directory_adopt(int fd, struct directory **ret)
{
	struct directory *d = calloc(1, sizeof(*d));
	struct dir_header h;
	struct stat st;
	int r;

	if (!d)
		return -ENOMEM;
	d->fd = fd;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < sizeof(h) || pread(fd, &h, sizeof(h), 0) != sizeof(h)) {
		free(d);
		return -EINVAL;
	}
	if (memcmp(h.magic, DIR_MAGIC, 8) || h.crc != crc32c(0, &h, offsetof(struct dir_header, crc)) ||
	    h.capacity > ((uint64_t)st.st_size - sizeof(h)) / sizeof(struct raw_entry) || h.high_water > h.capacity) {
		free(d);
		return -EINVAL;
	}
	d->capacity = h.capacity;
	d->map_bytes = sizeof(h) + d->capacity * sizeof(struct raw_entry);
	d->next = h.high_water;
	d->capacity = h.high_water;  /* adopted: read, never added to */
	r = map_fd(d);
	if (r < 0) {
		free(d);
		return r;
	}
	*ret = d;
	return 0;
}

void directory_free(struct directory *d)
{
	if (!d)
		return;
	if (d->map)
		munmap(d->map, d->map_bytes);
	if (d->fd >= 0)
		close(d->fd);
	free(d->free_slots);
	free(d);
}

int directory_fd(const struct directory *d)
{
	return d->fd;
}

uint64_t directory_put(struct directory *d, const struct dir_entry *e)
{
	struct raw_entry *r;
	uint64_t slot;

	if (d->n_free)
		slot = d->free_slots[--d->n_free];
	else if (d->next < d->capacity) {
		slot = d->next++;
		__atomic_store_n(&((struct dir_header *)d->map)->high_water, d->next, __ATOMIC_RELEASE);
	} else {
		return 0;
	}
	r = entry_at(d, slot);
	*r = (struct raw_entry){
		.means_bytes = e->means_bytes,
		.hash_low = e->hash.low64,
		.hash_high = e->hash.high64,
		.offset = e->offset,
		.bytes = e->bytes,
		.fp16_bytes = e->fp16_bytes,
		.means_offset = e->means_offset,
	};
	r->crc = crc32c(0, &r->magic + 1, offsetof(struct raw_entry, crc) - sizeof(r->magic));
	/* The magic last: a reader after a kill sees a whole entry or none. */
	__atomic_store_n(&r->magic, ENTRY_MAGIC, __ATOMIC_RELEASE);
	return slot + 1;
}

void directory_clear(struct directory *d, uint64_t slot_plus_1)
{
	uint64_t slot = slot_plus_1 - 1;
	uint64_t *p;

	if (slot_plus_1 == 0 || slot >= d->capacity)
		return;
	__atomic_store_n(&entry_at(d, slot)->magic, 0, __ATOMIC_RELEASE);
	if (d->n_free % 1024 == 0) {
		p = realloc(d->free_slots, (d->n_free + 1024) * sizeof(*p));
		if (!p)
			return;  /* the slot stays unused */
		d->free_slots = p;
	}
	d->free_slots[d->n_free++] = slot;
}

uint64_t directory_for_each(const struct directory *d, void (*fn)(void *userdata, const struct dir_entry *e),
			    void *userdata)
{
	uint64_t torn = 0;

	for (uint64_t slot = 0; slot < d->capacity; slot++) {
		const struct raw_entry *r = entry_at(d, slot);
		struct dir_entry e;

		if (r->magic != ENTRY_MAGIC)
			continue;
		if (r->crc != crc32c(0, &r->magic + 1, offsetof(struct raw_entry, crc) - sizeof(r->magic))) {
			torn++;
			continue;
		}
		e = (struct dir_entry){
			.hash = { .low64 = r->hash_low, .high64 = r->hash_high },
			.offset = r->offset,
			.bytes = r->bytes,
			.fp16_bytes = r->fp16_bytes,
			.means_offset = r->means_offset,
			.means_bytes = r->means_bytes,
		};
		fn(userdata, &e);
	}
	return torn;
}
