/* SPDX-License-Identifier: MIT */
/* The snapshot writer's contract with the daemon's loop: every block it
 * was given is flagged once its record no longer needs the block's memory
 * (so the loop may let go of it mid-save), and the file keeps the order
 * given, whatever order the writes went in. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "snapshot.h"

#define N_BLOCKS 200

struct taken {
	unsigned n;
	uint64_t low[N_BLOCKS];
};

static int take(void *userdata, const struct snapshot_block *b)
{
	struct taken *t = userdata;
	const uint8_t *p = b->record;

	cr_assert_lt(t->n, N_BLOCKS);
	/* Each record's bytes are its index, as written. */
	for (uint64_t i = 0; i < b->record_bytes; i++)
		cr_assert_eq(p[i], (uint8_t)b->hash.low64);
	t->low[t->n++] = b->hash.low64;
	return 0;
}

Test(snapshot, every_block_flagged_and_order_kept)
{
	char dir[] = "/tmp/tqkv-test-snapshot-XXXXXX", path[96], err[256];
	static uint8_t records[N_BLOCKS][3000];
	struct snapshot_block blocks[N_BLOCKS];
	atomic_bool written[N_BLOCKS];
	struct snapshot_result res;
	struct taken t = { 0 };

	cr_assert_not_null(mkdtemp(dir));
	for (unsigned i = 0; i < N_BLOCKS; i++) {
		/* Sizes that vary, so that writes differ in length. */
		memset(records[i], (int)i, sizeof(records[i]));
		blocks[i] = (struct snapshot_block){ .tenant = "uid:0", .hash = { .low64 = i, .high64 = ~(uint64_t)i },
						     .record = records[i], .record_bytes = 64 + 11 * i,
						     .written = &written[i] };
		atomic_init(&written[i], false);
	}
	cr_assert_eq(snapshot_write(dir, 64, blocks, N_BLOCKS, &res, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(res.blocks, N_BLOCKS);
	for (unsigned i = 0; i < N_BLOCKS; i++)
		cr_assert(atomic_load(&written[i]), "block %u never flagged as written", i);
	cr_assert_eq(snapshot_read(dir, 64, take, &t, &res, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(t.n, N_BLOCKS);
	for (unsigned i = 0; i < N_BLOCKS; i++)
		cr_assert_eq(t.low[i], i, "record %u of the file is block %llu", i, (unsigned long long)t.low[i]);
	snprintf(path, sizeof(path), "%s/%s", dir, SNAPSHOT_FILE);
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(rmdir(dir), 0);
}
