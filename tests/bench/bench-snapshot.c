/* SPDX-License-Identifier: MIT */
/*
 * Snapshot write and restore throughput for a multi-GiB cache, in process:
 * snapshot_write() of block records of the head_dim-128 model's size
 * straight from memory (io_uring writev, fsync, rename) and
 * snapshot_read() back (io_uring reads, CRC-32C checks, a copy into place
 * as the daemon does), next to a plain write()+fsync() and read() of the
 * same bytes: the baseline in the same run.  The file goes to --dir
 * (default /var/tmp), which should be the state directory's file system.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "snapshot.h"

#define RECORD_BYTES (103168u)  /* one 64-token block of the hd128 model at tq4/tq4 */

struct restore {
	uint8_t *dst;
	uint64_t at, blocks;
};

static int take(void *userdata, const struct snapshot_block *b)
{
	struct restore *r = userdata;

	memcpy(r->dst + r->at, b->record, b->record_bytes);
	r->at += b->record_bytes;
	r->blocks++;
	return 0;
}

/* write()+fsync() of the same bytes, then read() back: what the disk and
 * the page cache give without io_uring, checksums or records. */
static int baseline(const char *dir, const uint8_t *data, uint64_t bytes, uint8_t *back, double *ret_w, double *ret_r)
{
	char path[4096];
	double t0;
	int fd;

	snprintf(path, sizeof(path), "%s/tqkv-bench-baseline", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	t0 = bench_now();
	for (uint64_t off = 0; off < bytes;) {
		ssize_t n = write(fd, data + off, bytes - off > (64u << 20) ? (64u << 20) : bytes - off);

		if (n <= 0) {
			close(fd);
			unlink(path);
			return -EIO;
		}
		off += (uint64_t)n;
	}
	fsync(fd);
	*ret_w = bench_now() - t0;
	t0 = bench_now();
	for (uint64_t off = 0; off < bytes;) {
		ssize_t n = pread(fd, back + off, bytes - off > (64u << 20) ? (64u << 20) : bytes - off, (off_t)off);

		if (n <= 0)
			break;
		off += (uint64_t)n;
	}
	*ret_r = bench_now() - t0;
	close(fd);
	unlink(path);
	return 0;
}

int bench_snapshot(const struct bench_options *o)
{
	const char *dir = o->dir ? o->dir : "/var/tmp";
	uint64_t n = (o->quick ? (256ull << 20) : (4ull << 30)) / RECORD_BYTES, bytes = n * RECORD_BYTES;
	uint8_t *data = malloc(bytes), *back = malloc(bytes);
	struct snapshot_block *blocks = calloc(n, sizeof(*blocks));
	struct snapshot_result wres, rres;
	struct restore rs = { .dst = back };
	char err[256], path[4096];
	double bw = 0, br = 0, gib = (double)bytes / (1u << 30);
	int r;

	if (!data || !back || !blocks) {
		r = -ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < bytes / 8; i++)
		((uint64_t *)data)[i] = i * 0x9e3779b97f4a7c15ull;
	memset(back, 0, bytes);
	for (uint64_t i = 0; i < n; i++) {
		blocks[i] = (struct snapshot_block){ .hash = { i, ~i }, .record = data + i * RECORD_BYTES,
						     .record_bytes = RECORD_BYTES, .fp16_bytes = 4 * RECORD_BYTES };
		snprintf(blocks[i].tenant, sizeof(blocks[i].tenant), "uid:%llu", (unsigned long long)(i % 4));
	}
	r = baseline(dir, data, bytes, back, &bw, &br);
	if (r < 0)
		goto out;
	r = snapshot_write(dir, 64, blocks, n, &wres, err, sizeof(err));
	if (r == 0) {
		/* Cold cache would measure the disk; this reads from the page
		 * cache like the baseline right after its write. */
		r = snapshot_read(dir, 64, take, &rs, &rres, err, sizeof(err));
	}
	snprintf(path, sizeof(path), "%s/%s", dir, SNAPSHOT_FILE);
	unlink(path);
	if (r < 0) {
		fprintf(stderr, "tqkv-bench snapshot: %s\n", err);
		goto out;
	}
	if (rs.blocks != n || memcmp(data, back, bytes) != 0) {
		fprintf(stderr, "tqkv-bench snapshot: restored %llu of %llu blocks, or different bytes\n",
			(unsigned long long)rs.blocks, (unsigned long long)n);
		r = -EIO;
		goto out;
	}
	if (o->json) {
		printf("{\"bench\":\"snapshot\",\"gib\":%.2f,\"blocks\":%llu,\"write_gb_s\":%.2f,\"restore_gb_s\":%.2f,"
		       "\"baseline_write_gb_s\":%.2f,\"baseline_read_gb_s\":%.2f}\n",
		       gib, (unsigned long long)n, (double)bytes / wres.seconds / 1e9, (double)bytes / rres.seconds / 1e9,
		       (double)bytes / bw / 1e9, (double)bytes / br / 1e9);
	} else {
		printf("%-28s %8s %10s %12s\n", "", "GiB", "GB/s", "vs baseline");
		printf("%-28s %8.2f %10.2f %12s\n", "write()+fsync() baseline", gib, (double)bytes / bw / 1e9, "1.00x");
		printf("%-28s %8.2f %10.2f %11.2fx\n", "snapshot write (io_uring)", gib, (double)bytes / wres.seconds / 1e9,
		       bw / wres.seconds);
		printf("%-28s %8.2f %10.2f %12s\n", "read() baseline", gib, (double)bytes / br / 1e9, "1.00x");
		printf("%-28s %8.2f %10.2f %11.2fx\n", "snapshot restore", gib, (double)bytes / rres.seconds / 1e9,
		       br / rres.seconds);
	}
out:
	free(data);
	free(back);
	free(blocks);
	return r;
}
