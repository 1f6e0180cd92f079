/* SPDX-License-Identifier: MIT */
/*
 * A tenant's block directory: a memfd of fixed 64-byte entries, one per
 * indexed block (its hash, where its record and key means lie in the
 * tenant's arena), updated as blocks are indexed and freed.  Parked in
 * systemd's fd store next to the arena, it lets a daemon restarted after a
 * crash find every published block in the arena's memory.  Written only by
 * the daemon, never shared with clients; each entry has its own CRC, so an
 * entry torn by a kill mid-write is ignored, never trusted.
 */
#ifndef TQKVD_DIRECTORY_H
#define TQKVD_DIRECTORY_H

#include <stdint.h>

#include <xxhash.h>

struct dir_entry {
	XXH128_hash_t hash;
	uint64_t offset, bytes;        /* the record */
	uint64_t fp16_bytes;
	uint64_t means_offset;         /* key means in the arena, if means_bytes */
	uint32_t means_bytes;
};

struct directory;

/* A new directory for an arena of arena_bytes, at most one entry per
 * 4 KiB of arena (sparse: entries cost memory only when used). */
int directory_new(uint64_t arena_bytes, struct directory **ret);
/* Takes over a directory memfd from the fd store (reads it). */
int directory_adopt(int fd, struct directory **ret);
void directory_free(struct directory *d);
int directory_fd(const struct directory *d);

/* Records an entry; returns its slot + 1 (never 0), or 0 when full. */
uint64_t directory_put(struct directory *d, const struct dir_entry *e);
void directory_clear(struct directory *d, uint64_t slot_plus_1);

/* Calls fn for every intact entry; returns how many were torn. */
uint64_t directory_for_each(const struct directory *d, void (*fn)(void *userdata, const struct dir_entry *e),
			    void *userdata);

#endif
