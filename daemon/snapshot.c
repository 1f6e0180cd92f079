/* SPDX-License-Identifier: MIT */
/* Cache snapshots with io_uring (snapshot.h, docs/SNAPSHOT.md). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <liburing.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "snapshot.h"

#define SNAPSHOT_MAGIC "TQKVSNAP"
#define SNAPSHOT_VERSION 2u
#define RECORD_MAGIC 0x4b4c4253u /* "SBLK" */
#define QUEUE_DEPTH 64u
#define READ_CHUNK (16u << 20)
/* One read at most: io_uring takes an unsigned length, and read() stops
 * short of 2 GiB anyway. */
#define READ_MAX (1u << 30)

struct snap_header {
	char magic[8];
	uint32_t version;
	uint32_t header_bytes;
	uint32_t record_header_bytes;
	uint32_t block_tokens;
	uint64_t created_usec;     /* CLOCK_REALTIME */
	uint64_t n_records;
	uint64_t data_bytes;       /* bytes after this header */
	uint8_t reserved[12];
	uint32_t crc;              /* CRC-32C of the bytes before it */
};
_Static_assert(sizeof(struct snap_header) == 64, "snapshot header is 64 bytes");

struct snap_record {
	uint32_t magic;
	uint32_t means_bytes;
	char tenant[SNAPSHOT_TENANT_MAX];
	uint64_t hash_low, hash_high;
	uint64_t record_bytes;
	uint64_t fp16_bytes;
	uint32_t payload_crc;      /* the record bytes, then the means */
	uint8_t reserved[20];
	uint32_t crc;              /* CRC-32C of the bytes before it */
};
_Static_assert(sizeof(struct snap_record) == 96, "snapshot record header is 96 bytes");

/* Fuzzers cannot forge checksums: their builds accept any (libFuzzer's
 * convention), so they reach the parsing behind them. */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define CRC_OK(computed, stored) ((void)(computed), (void)(stored), true)
#else
#define CRC_OK(computed, stored) ((computed) == (stored))
#endif

static int fail(char *err, size_t errlen, int r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return r;
}

static double now_sec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits for one completion; returns its result (bytes or -errno) and the
 * request's expected length through user_data. */
static int reap(struct io_uring *ring, uint64_t *ret_expected)
{
	struct io_uring_cqe *cqe;
	int r = io_uring_wait_cqe(ring, &cqe);

	if (r < 0)
		return r;
	r = cqe->res;
	*ret_expected = io_uring_cqe_get_data64(cqe);
	io_uring_cqe_seen(ring, cqe);
	return r;
}

/* The writes of one snapshot: user_data is a record's index, or n for the
 * file header.  Completions come in any order. */
struct writer {
	struct io_uring ring;
	const struct snapshot_block *blocks;
	const struct snap_record *recs;
	size_t n;
	unsigned in_flight;        /* queued or submitted, not reaped */
	int error;                 /* the first failure */
};

static uint64_t write_len(const struct writer *wr, uint64_t id)
{
	if (id >= wr->n)
		return sizeof(struct snap_header);
	return sizeof(struct snap_record) + wr->recs[id].record_bytes + wr->recs[id].means_bytes;
}

/* A record written in full: its block's bytes are read no more. */
static void take_cqe(struct writer *wr, struct io_uring_cqe *cqe)
{
	uint64_t id = io_uring_cqe_get_data64(cqe);
	int r = cqe->res;

	io_uring_cqe_seen(&wr->ring, cqe);
	wr->in_flight--;
	if (r >= 0 && (uint64_t)r != write_len(wr, id))
		r = -EIO;  /* a short write: the disk is full */
	if (r < 0 && !wr->error)
		wr->error = r;
	if (r >= 0 && id < wr->n && wr->blocks[id].written)
		atomic_store_explicit(wr->blocks[id].written, true, memory_order_release);
}

/* Waits for one completion, then takes every one that is there. */
static void reap_writes(struct writer *wr)
{
	struct io_uring_cqe *cqe;
	int r = io_uring_wait_cqe(&wr->ring, &cqe);

	if (r < 0) {
		/* Counted as done, so that a broken ring cannot loop forever. */
		wr->in_flight--;
		if (!wr->error)
			wr->error = r;
		return;
	}
	take_cqe(wr, cqe);
	while (wr->in_flight && io_uring_peek_cqe(&wr->ring, &cqe) == 0)
		take_cqe(wr, cqe);
}

/* Queues a write of iov at offset, reaping completions first when
 * QUEUE_DEPTH requests are in flight. */
static int queue_write(struct writer *wr, int fd, const struct iovec *iov, unsigned n_iov, uint64_t offset, uint64_t id)
{
	struct io_uring_sqe *sqe;

	if (wr->in_flight >= QUEUE_DEPTH) {
		io_uring_submit(&wr->ring);
		reap_writes(wr);
		if (wr->error)
			return wr->error;
	}
	sqe = io_uring_get_sqe(&wr->ring);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_writev(sqe, fd, iov, n_iov, offset);
	io_uring_sqe_set_data64(sqe, id);
	wr->in_flight++;
	return 0;
}

static int drain(struct writer *wr)
{
	io_uring_submit(&wr->ring);
	while (wr->in_flight)
		reap_writes(wr);
	return wr->error;
}

/* The writer's and the reader's limits: the writer never writes a record
 * the reader would stop at. */
static bool record_in_range(uint64_t record_bytes, uint64_t means_bytes)
{
	return record_bytes != 0 && record_bytes <= SNAPSHOT_RECORD_BYTES_MAX && means_bytes <= SNAPSHOT_MEANS_BYTES_MAX &&
	       means_bytes % sizeof(float) == 0;
}

static void record_header(const struct snapshot_block *b, struct snap_record *h)
{
	uint32_t crc = crc32c(0, b->record, b->record_bytes);

	*h = (struct snap_record){
		.magic = RECORD_MAGIC,
		.means_bytes = b->means ? b->means_bytes : 0,
		.hash_low = b->hash.low64,
		.hash_high = b->hash.high64,
		.record_bytes = b->record_bytes,
		.fp16_bytes = b->fp16_bytes,
	};
	memcpy(h->tenant, b->tenant, SNAPSHOT_TENANT_MAX);
	h->tenant[SNAPSHOT_TENANT_MAX - 1] = 0;
	h->payload_crc = h->means_bytes ? crc32c(crc, b->means, h->means_bytes) : crc;
	h->crc = crc32c(0, h, offsetof(struct snap_record, crc));
}

static uint64_t block_len(const struct snapshot_block *b)
{
	return sizeof(struct snap_record) + b->record_bytes + (b->means ? b->means_bytes : 0);
}

int snapshot_write(const char *dir, uint32_t block_tokens, const struct snapshot_block *blocks, size_t n,
		   struct snapshot_result *res, char *err, size_t errlen)
{
	char path[PATH_MAX], tmp[PATH_MAX];
	struct snap_header hdr = { .magic = SNAPSHOT_MAGIC };
	struct snap_record *recs = calloc(n ? n : 1, sizeof(*recs));
	struct iovec *iov = calloc(3 * n + 1, sizeof(*iov));
	uint64_t *offsets = calloc(n ? n : 1, sizeof(*offsets));  /* 0: skipped */
	struct writer wr = { .blocks = blocks, .recs = recs, .n = n };
	struct timespec ts;
	uint64_t offset = sizeof(hdr), bytes = 0, skipped = 0, want;
	size_t w = 0;  /* records written */
	double t0 = now_sec();
	int fd = -1, dfd, r = 0;

	*res = (struct snapshot_result){ 0 };
	if (!recs || !iov || !offsets) {
		free(recs);
		free(iov);
		free(offsets);
		return fail(err, errlen, -ENOMEM, "out of memory");
	}
	snprintf(path, sizeof(path), "%s/%s", dir, SNAPSHOT_FILE);
	snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, SNAPSHOT_FILE);
	r = io_uring_queue_init(QUEUE_DEPTH, &wr.ring, 0);
	if (r < 0) {
		free(recs);
		free(iov);
		free(offsets);
		return fail(err, errlen, r, "io_uring_queue_init: %s", strerror(-r));
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = fail(err, errlen, -errno, "cannot create %s: %s", tmp, strerror(errno));
		goto out;
	}
	/* Where each record goes, in the order given. */
	for (size_t i = 0; i < n; i++) {
		const struct snapshot_block *b = &blocks[i];

		/* The reader would stop there and lose the records after it. */
		if (!record_in_range(b->record_bytes, b->means ? b->means_bytes : 0)) {
			skipped++;
			if (b->written)
				atomic_store_explicit(b->written, true, memory_order_release);
			continue;
		}
		offsets[i] = offset;
		offset += block_len(b);
		bytes += b->record_bytes;
		w++;
	}
	/* Written from the last: the least recently used are let go first. */
	for (size_t i = n; i-- > 0;) {
		const struct snapshot_block *b = &blocks[i];
		unsigned k = 0;

		if (!offsets[i])
			continue;
		record_header(b, &recs[i]);
		iov[3 * i + k++] = (struct iovec){ &recs[i], sizeof(recs[i]) };
		iov[3 * i + k++] = (struct iovec){ (void *)b->record, b->record_bytes };
		if (recs[i].means_bytes)
			iov[3 * i + k++] = (struct iovec){ (void *)b->means, recs[i].means_bytes };
		r = queue_write(&wr, fd, &iov[3 * i], k, offsets[i], i);
		if (r < 0)
			break;
	}
	if (r >= 0) {
		clock_gettime(CLOCK_REALTIME, &ts);
		hdr.version = SNAPSHOT_VERSION;
		hdr.header_bytes = sizeof(hdr);
		hdr.record_header_bytes = sizeof(struct snap_record);
		hdr.block_tokens = block_tokens;
		hdr.created_usec = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
		hdr.n_records = w;
		hdr.data_bytes = offset - sizeof(hdr);
		hdr.crc = crc32c(0, &hdr, offsetof(struct snap_header, crc));
		iov[3 * n] = (struct iovec){ &hdr, sizeof(hdr) };
		r = queue_write(&wr, fd, &iov[3 * n], 1, 0, n);
	}
	{
		int d = drain(&wr);

		if (r >= 0)
			r = d;
	}
	if (r >= 0) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&wr.ring);

		io_uring_prep_fsync(sqe, fd, 0);
		io_uring_sqe_set_data64(sqe, 0);
		io_uring_submit(&wr.ring);
		r = reap(&wr.ring, &want);
	}
	if (r < 0) {
		fail(err, errlen, r, "cannot write %s: %s", tmp, strerror(-r));
		unlink(tmp);
		goto out;
	}
	if (rename(tmp, path) < 0) {
		r = fail(err, errlen, -errno, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
		unlink(tmp);
		goto out;
	}
	/* The rename itself must survive a crash: until the directory is
	 * synced, a power failure can bring the previous snapshot back. */
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	r = dfd < 0 || fsync(dfd) < 0 ? -errno : 0;
	if (dfd >= 0)
		close(dfd);
	if (r < 0) {
		fail(err, errlen, r,
		     "%s is written, but syncing directory %s failed (%s): a system crash can bring back the previous one",
		     path, dir, strerror(-r));
		goto out;
	}
	res->blocks = w;
	res->bytes = bytes;
	res->skipped = skipped;
	if (skipped)
		snprintf(res->problem, sizeof(res->problem),
			 "skipped %llu blocks over the format's limits (records of %llu bytes, key means of %u bytes)",
			 (unsigned long long)skipped, (unsigned long long)SNAPSHOT_RECORD_BYTES_MAX, SNAPSHOT_MEANS_BYTES_MAX);
	res->seconds = now_sec() - t0;
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	io_uring_queue_exit(&wr.ring);
	free(recs);
	free(iov);
	free(offsets);
	return r;
}

/* A sequential reader: a buffer refilled from the file with io_uring. */
struct reader {
	struct io_uring ring;
	int fd;
	uint64_t file_size, file_pos;  /* next byte to read from the file */
	uint8_t *buf;
	size_t cap, start, end;        /* unparsed bytes: buf[start, end) */
};

/* Makes at least k unparsed bytes available; -ENODATA at end of file. */
static int reader_need(struct reader *rd, size_t k)
{
	while (rd->end - rd->start < k) {
		struct io_uring_sqe *sqe;
		uint64_t want, len;
		int r;

		if (rd->file_pos >= rd->file_size)
			return -ENODATA;
		if (rd->start) {
			memmove(rd->buf, rd->buf + rd->start, rd->end - rd->start);
			rd->end -= rd->start;
			rd->start = 0;
		}
		if (rd->cap < k) {
			uint8_t *p = realloc(rd->buf, k);

			if (!p)
				return -ENOMEM;
			/* Defined for valgrind, which cannot see io_uring's writes. */
			memset(p + rd->cap, 0, k - rd->cap);
			rd->buf = p;
			rd->cap = k;
		}
		len = rd->cap - rd->end;
		if (len > rd->file_size - rd->file_pos)
			len = rd->file_size - rd->file_pos;
		if (len > READ_MAX)
			len = READ_MAX;
		sqe = io_uring_get_sqe(&rd->ring);
		io_uring_prep_read(sqe, rd->fd, rd->buf + rd->end, (unsigned)len, rd->file_pos);
		io_uring_sqe_set_data64(sqe, len);
		io_uring_submit(&rd->ring);
		r = reap(&rd->ring, &want);
		if (r < 0)
			return r;
		if (r == 0)
			return -ENODATA;
		rd->end += (size_t)r;
		rd->file_pos += (uint64_t)r;
	}
	return 0;
}

static const char *check_record(const struct snap_record *h, uint64_t left)
{
	if (h->magic != RECORD_MAGIC)
		return "bad record magic";
	if (!CRC_OK(crc32c(0, h, offsetof(struct snap_record, crc)), h->crc))
		return "record header checksum mismatch";
	if (!record_in_range(h->record_bytes, h->means_bytes) || memchr(h->tenant, 0, sizeof(h->tenant)) == NULL)
		return "record header out of range";
	if (h->record_bytes + h->means_bytes > left)
		return "record runs past the end of the file";
	return NULL;
}

/* Moves a snapshot that was not loaded in full out of the way of the next
 * save, which would replace it with what was loaded; says so in msg. */
static void keep_aside(const char *dir, const char *path, char *msg, size_t msglen)
{
	char aside[PATH_MAX];
	size_t len = strnlen(msg, msglen);

	if (len + 1 >= msglen)
		msg = NULL;
	snprintf(aside, sizeof(aside), "%s/%s", dir, SNAPSHOT_REJECTED);
	if (rename(path, aside) == 0) {
		if (msg)
			snprintf(msg + len, msglen - len, "; kept as %s", SNAPSHOT_REJECTED);
	} else if (msg) {
		snprintf(msg + len, msglen - len, "; cannot rename it to %s (%s): the next save replaces it",
			 SNAPSHOT_REJECTED, strerror(errno));
	}
}

int snapshot_read(const char *dir, uint32_t block_tokens, snapshot_take_fn take, void *userdata,
		  struct snapshot_result *res, char *err, size_t errlen)
{
	char path[PATH_MAX];
	struct reader rd = { .fd = -1 };
	struct snap_header hdr;
	struct stat st;
	double t0 = now_sec();
	uint64_t n = 0, refused = 0;
	int r;

	*res = (struct snapshot_result){ 0 };
	snprintf(path, sizeof(path), "%s/%s", dir, SNAPSHOT_FILE);
	rd.fd = open(path, O_RDONLY | O_CLOEXEC);
	if (rd.fd < 0) {
		if (errno == ENOENT)
			return -ENOENT;
		r = fail(err, errlen, -errno, "cannot open %s: %s", path, strerror(errno));
		keep_aside(dir, path, err, errlen);
		return r;
	}
	r = io_uring_queue_init(4, &rd.ring, 0);
	if (r < 0) {
		close(rd.fd);
		fail(err, errlen, r, "io_uring_queue_init: %s", strerror(-r));
		keep_aside(dir, path, err, errlen);
		return r;
	}
	if (fstat(rd.fd, &st) < 0) {
		r = fail(err, errlen, -errno, "cannot stat %s: %s", path, strerror(errno));
		goto out;
	}
	rd.file_size = (uint64_t)st.st_size;
	/* Grows when a record needs more. */
	rd.cap = rd.file_size < READ_CHUNK ? (size_t)rd.file_size + sizeof(hdr) : READ_CHUNK;
	rd.buf = calloc(1, rd.cap);  /* zeroed: see reader_need() */
	if (!rd.buf) {
		r = fail(err, errlen, -ENOMEM, "out of memory");
		goto out;
	}
	r = reader_need(&rd, sizeof(hdr));
	if (r < 0) {
		r = fail(err, errlen, -EINVAL, "%s: %s", path, r == -ENODATA ? "shorter than its header" : strerror(-r));
		goto out;
	}
	memcpy(&hdr, rd.buf, sizeof(hdr));
	rd.start = sizeof(hdr);
	if (memcmp(hdr.magic, SNAPSHOT_MAGIC, 8) || !CRC_OK(crc32c(0, &hdr, offsetof(struct snap_header, crc)), hdr.crc)) {
		r = fail(err, errlen, -EINVAL, "%s: not a tqkv snapshot, or its header is damaged", path);
		goto out;
	}
	if (hdr.version != SNAPSHOT_VERSION || hdr.header_bytes != sizeof(hdr) ||
	    hdr.record_header_bytes != sizeof(struct snap_record)) {
		r = fail(err, errlen, -EINVAL, "%s: snapshot version %u, this daemon reads version %u", path, hdr.version,
			 SNAPSHOT_VERSION);
		goto out;
	}
	if (hdr.block_tokens != block_tokens) {
		r = fail(err, errlen, -EINVAL, "%s: blocks of %u tokens, the daemon is configured for %u", path,
			 hdr.block_tokens, block_tokens);
		goto out;
	}
	for (r = 0; n < hdr.n_records; n++) {
		struct snap_record h;
		struct snapshot_block b;
		const uint8_t *payload;
		const char *bad;
		uint64_t left = rd.file_size - (rd.file_pos - (rd.end - rd.start));
		int taken;

		if (reader_need(&rd, sizeof(h)) < 0) {
			snprintf(res->problem, sizeof(res->problem), "truncated after %llu of %llu records",
				 (unsigned long long)n, (unsigned long long)hdr.n_records);
			break;
		}
		memcpy(&h, rd.buf + rd.start, sizeof(h));
		bad = check_record(&h, left - sizeof(h));
		if (bad) {
			snprintf(res->problem, sizeof(res->problem), "record %llu: %s", (unsigned long long)n, bad);
			break;
		}
		r = reader_need(&rd, sizeof(h) + h.record_bytes + h.means_bytes);
		if (r < 0) {
			snprintf(res->problem, sizeof(res->problem), "record %llu: %s", (unsigned long long)n,
				 r == -ENODATA ? "truncated" : strerror(-r));
			r = 0;
			break;
		}
		payload = rd.buf + rd.start + sizeof(h);
		if (!CRC_OK(crc32c(0, payload, h.record_bytes + h.means_bytes), h.payload_crc)) {
			snprintf(res->problem, sizeof(res->problem), "record %llu: checksum mismatch", (unsigned long long)n);
			break;
		}
		b = (struct snapshot_block){
			.hash = { .low64 = h.hash_low, .high64 = h.hash_high },
			.record = payload,
			.record_bytes = h.record_bytes,
			.fp16_bytes = h.fp16_bytes,
			.means = h.means_bytes ? (const float *)(payload + h.record_bytes) : NULL,
			.means_bytes = h.means_bytes,
		};
		memcpy(b.tenant, h.tenant, sizeof(b.tenant));
		taken = take(userdata, &b);
		if (taken == 0) {
			res->blocks++;
			res->bytes += h.record_bytes;
		} else {
			res->skipped++;
			refused += taken != -EEXIST;
		}
		rd.start += sizeof(h) + h.record_bytes + h.means_bytes;
	}
	res->seconds = now_sec() - t0;
	if (refused && !res->problem[0])
		snprintf(res->problem, sizeof(res->problem), "%llu records refused (no room, or a tenant not configured)",
			 (unsigned long long)refused);
	/* The next save would write only what was taken. */
	if (res->problem[0])
		keep_aside(dir, path, res->problem, sizeof(res->problem));
	r = 0;
out:
	if (r < 0)
		keep_aside(dir, path, err, errlen);
	io_uring_queue_exit(&rd.ring);
	close(rd.fd);
	free(rd.buf);
	return r;
}
