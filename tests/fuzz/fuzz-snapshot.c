/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the snapshot loader: any bytes as
 * STATE_DIRECTORY/cache.snapshot, read with io_uring as tqkvd does at
 * start; every record handed out is read in full.  Build and run (clang):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION \
 *     -Idaemon -Iproto -Iinclude tests/fuzz/fuzz-snapshot.c daemon/snapshot.c proto/crc32c.c \
 *     -luring -lxxhash -o fuzz-snapshot
 *
 * (checksums are not checked in such a build, so the fuzzer gets past them).
 *   ./fuzz-snapshot -max_total_time=600 tests/fuzz/corpus/snapshot
 *
 * tests/fuzz/replay.c runs the corpus as an ordinary test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int take(void *userdata, const struct snapshot_block *b)
{
	volatile uint8_t *sink = userdata;
	const uint8_t *p = b->record;
	const uint8_t *m = (const uint8_t *)b->means;

	for (uint64_t i = 0; i < b->record_bytes; i++)
		*sink ^= p[i];
	for (uint32_t i = 0; i < b->means_bytes; i++)
		*sink ^= m[i];
	return (b->hash.low64 & 1) ? -1 : 0;  /* exercise both answers */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char dir[64];
	char path[128], err[256];
	struct snapshot_result res;
	volatile uint8_t sink = 0;
	FILE *f;

	if (!dir[0]) {
		snprintf(dir, sizeof(dir), "/tmp/tqkv-fuzz-snapshot-%d", (int)getpid());
		mkdir(dir, 0700);
	}
	snprintf(path, sizeof(path), "%s/%s", dir, SNAPSHOT_FILE);
	f = fopen(path, "wb");
	if (!f)
		return 0;
	fwrite(data, 1, size, f);
	fclose(f);
	snapshot_read(dir, 64, take, (void *)&sink, &res, err, sizeof(err));
	unlink(path);
	/* A file not loaded in full is kept aside under this name. */
	snprintf(path, sizeof(path), "%s/%s", dir, SNAPSHOT_REJECTED);
	unlink(path);
	return 0;
}
