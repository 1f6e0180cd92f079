/* SPDX-License-Identifier: MIT */
/*
 * Cache snapshots (docs/SNAPSHOT.md): the indexed blocks of every tenant
 * written to one file with io_uring, and read back at start.  The file is
 * self-describing and versioned; every header and every record carries a
 * CRC-32C; it is written under a temporary name, synced and renamed, so a
 * crash mid-write leaves the previous snapshot.  Reading stops at the
 * first damaged record and keeps the ones before it; a file that was not
 * loaded in full is renamed to SNAPSHOT_REJECTED, so that the next save
 * cannot destroy it.  No server structures here: blocks come and go
 * through the records and a callback.
 */
#ifndef TQKVD_SNAPSHOT_H
#define TQKVD_SNAPSHOT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <xxhash.h>

#include "config.h"

#define SNAPSHOT_FILE "cache.snapshot"
/* Where a snapshot that was not loaded in full goes (one generation). */
#define SNAPSHOT_REJECTED SNAPSHOT_FILE ".rejected"
#define SNAPSHOT_TENANT_MAX 24  /* bytes of a tenant name, NUL included */
/* What the writer writes and the reader accepts.  A record lived in an
 * arena, which is never larger than the budget; key means are at most
 * 2^28 floats (proto/model.c). */
#define SNAPSHOT_RECORD_BYTES_MAX TQKVD_MEMORY_BUDGET_MAX
#define SNAPSHOT_MEANS_BYTES_MAX (UINT32_C(1) << 30)

/* One block as the daemon holds it. */
struct snapshot_block {
	char tenant[SNAPSHOT_TENANT_MAX];
	XXH128_hash_t hash;
	const void *record;        /* the block record (header, page table, pages) */
	uint64_t record_bytes;
	uint64_t fp16_bytes;       /* for the stats */
	const float *means;        /* key means (the first block of a centered chain), or NULL */
	uint32_t means_bytes;
	atomic_bool *written;      /* writing: if not NULL, set (release) once the writer no longer
	                            * reads record and means: written, or skipped */
};

struct snapshot_result {
	uint64_t blocks, bytes;    /* written, or read and taken */
	uint64_t skipped;          /* writing: out of the format's range; reading: refused by the
	                            * callback (no memory, unknown tenant, already present) */
	double seconds;
	char problem[160];         /* reading: what stopped it early or made it keep the file aside;
	                            * writing: what was skipped ("" if nothing) */
};

/* Writes n blocks to dir/SNAPSHOT_FILE, in that order (the most recently
 * used first), but issues the writes from the last block to the first, so
 * that the least recently used, which eviction wants first, are let go of
 * first (blocks[i].written).  Returns 0 or a negative errno with a message
 * in err; also when the file is in place but the directory could not be
 * synced (the rename may be lost on a power failure).  A block over the
 * SNAPSHOT_*_MAX limits is skipped, counted and named in res->problem. */
int snapshot_write(const char *dir, uint32_t block_tokens, const struct snapshot_block *blocks, size_t n,
		   struct snapshot_result *res, char *err, size_t errlen);

/* Receives one intact record; b->record and b->means point into a buffer
 * valid during the call (not aligned: copy them).  Returns 0 when taken,
 * -EEXIST when the block is already there, another negative errno to
 * refuse it (which keeps the file aside). */
typedef int (*snapshot_take_fn)(void *userdata, const struct snapshot_block *b);

/*
 * Reads dir/SNAPSHOT_FILE.  -ENOENT if there is none.  A file of another
 * block size, a damaged header, an unknown version, or one that cannot be
 * read at all: a negative errno with the reason in err, nothing taken.  A
 * damaged or truncated record: the records before it are taken,
 * res->problem says what was wrong, and the call returns 0.  In these
 * cases, and when the callback refused a record other than with -EEXIST,
 * the file is renamed to dir/SNAPSHOT_REJECTED (replacing an older one)
 * and err or res->problem says so.
 */
int snapshot_read(const char *dir, uint32_t block_tokens, snapshot_take_fn take, void *userdata,
		  struct snapshot_result *res, char *err, size_t errlen);

#endif
