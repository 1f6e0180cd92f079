/* SPDX-License-Identifier: MIT */
/*
 * Clients and their requests.  Sockets are driven with uv_poll_t and our
 * own recvmsg/sendmsg, since libuv streams cannot carry arbitrary fds.
 * Everything here runs on the loop thread; the workers only touch the jobs
 * handed to them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <tqkv/client.h>

#include "arena.h"
#include "cache.h"
#include "directory.h"
#include "log.h"
#include "message.h"
#include "model.h"
#include "server.h"
#include "snapshot.h"
#include "worker.h"

#define OUTBUF_MAX (4u << 20)  /* unread replies before a client is dropped */
#define FDS_MAX 16
/* Work for one client per loop iteration, so that a client streaming
 * requests cannot starve the others, finished jobs and the watchdog. */
#define READS_PER_WAKEUP 4
#define REQUESTS_PER_WAKEUP 128

struct client;

struct waiter {
	struct waiter *next;
	uint32_t serial;
	uint64_t n_tokens;
};

struct sequence {
	struct sequence *next;
	struct client *client;
	uint32_t id, slot;
	uint64_t desc_offset, table_offset, table_bytes, means_offset, means_bytes;
	struct tqkv_seq_desc *desc;
	uint64_t *table;
	uint64_t committed;   /* tokens in staging, from COMMIT */
	uint64_t n_blocks;    /* published, as the loop knows it */
	struct cblock **blocks;  /* [n_blocks]: what table[] points at */
	uint64_t blocks_cap;
	uint32_t *ids;        /* token ids, from SEQ_OPEN and SEQ_TOKENS */
	uint64_t n_ids, ids_cap;
	uint64_t n_hashed;    /* leading blocks whose hash is known */
	uint64_t window_passed;  /* leading blocks whose window pages it no longer needs */
	bool private;         /* TQKV_SEQ_PRIVATE */
	bool attaching;       /* opened with a prompt, nothing committed since */
	bool job_in_flight, closed;
	bool slot_lost;       /* closed, slot reused: its job may read another sequence's rows */
	bool broken;          /* a block failed to compress: no more jobs */
	struct job job;
	struct cblock *job_block;
	struct waiter *waiters;
	unsigned n_waiters;
};

/* Who shares: by default every uid is its own tenant.  A tenant's blocks
 * and sequences live in its own arena, so its clients map only its bytes. */
struct tenant {
	struct tenant *next;
	uint32_t id;          /* uid or gid (tenants=) */
	char name[24];
	struct arena *arena;  /* created when its first client registers a model */
	uint64_t arena_used;  /* bytes allocated in it */
	struct directory *dir;  /* its indexed blocks, when parked in the fd store */
	char fd_names[2][64];   /* FDNAME= of the arena and the directory */
	struct cache_usage usage;
	uint64_t prefix_lookups, prefix_query_tokens, prefix_hit_tokens;
	uint64_t sequences;
	unsigned clients;
};
_Static_assert(sizeof(((struct tenant *)0)->name) == SNAPSHOT_TENANT_MAX, "snapshots hold tenant names");
_Static_assert(sizeof(((struct tenant *)0)->name) <= 2 * sizeof(struct tqkv_layer_desc),
	       "a tenant name fits the first two descriptors of a prefix root key");

#define WAITERS_MAX 64  /* deferred SEQ_WAIT replies per sequence */

struct client {
	struct client *next;
	struct server *server;
	uint32_t id;
	int fd;
	pid_t pid;
	uid_t uid;
	uv_poll_t poll;
	bool polling, dead, hello;
	unsigned refs;          /* the client itself + jobs in flight */
	uint8_t *in;
	size_t in_len;
	bool backlog;           /* complete requests wait in `in` for on_idle() */
	uint8_t *out;
	size_t out_len, out_cap;
	struct model *model;
	struct tenant *tenant;
	XXH128_hash_t prefix_root;  /* tenant, model and codec policy */
	int staging_fd;
	uint8_t *staging;
	uint64_t staging_bytes;
	struct sequence *seqs;
	uint32_t n_seqs;
	struct sequence **slots;
	struct ratelimit rl;
};

struct server_stats {
	uint64_t clients_total, requests, errors, violations;
	uint64_t blocks_compressed, blocks_freed, encode_nsec, compress_failures;
	uint64_t sequences_total;
	uint64_t prefix_lookups, prefix_query_tokens, prefix_hit_tokens;
	uint64_t evicted_blocks, evicted_bytes;
	uint64_t window_freed_blocks, window_freed_bytes;
	uint64_t snapshot_loaded_blocks;
	uint64_t fdstore_adopted_blocks;
};

struct server {
	uv_loop_t *loop;
	const struct tqkvd_config *cfg;
	int listen_fd;
	uv_poll_t listen_poll;
	uv_idle_t idle;  /* active while clients have a backlog */
	uv_timer_t snapshot_timer;
	uv_timer_t save_retry;    /* sequences wait for blocks a background snapshot holds */
	uv_work_t snapshot_work;
	struct save_job *saving;  /* a background snapshot in flight */
	bool save_when_done;      /* stopping: save once it is done */
	uint64_t ids_bytes;       /* heap of all sequences' token ids (add_ids()) */
	bool fdstore;             /* park tenant memfds in systemd's fd store */
	struct worker_pool *pool;
	struct cache *cache;
	uint64_t arena_used;  /* bytes allocated in every tenant's arena: within memory_budget */
	struct tenant *tenants;
	struct client *clients;
	uint32_t n_clients, next_client_id, next_seq_id;
	uint64_t start_usec;
	uint64_t staging_bytes;
	struct server_stats stats;
	struct ratelimit rl;
};

static void client_disconnect(struct client *c);
static int tenant_create_arena(struct server *s, struct tenant *t);
static int register_finish(struct client *c, const struct tqkv_msg_header *h, const struct tqkv_register_model *reg,
			   const struct tqkv_layer_desc *layers);
static void schedule(struct sequence *q);
static void on_client_event(uv_poll_t *p, int status, int events);

/* ---- output ---------------------------------------------------------- */

static int flush_out(struct client *c)
{
	while (c->out_len) {
		ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EAGAIN)
				break;
			return -errno;
		}
		memmove(c->out, c->out + n, c->out_len - (size_t)n);
		c->out_len -= (size_t)n;
	}
	return uv_poll_start(&c->poll, UV_READABLE | (c->out_len ? UV_WRITABLE : 0), on_client_event) ? -EIO : 0;
}

static int queue_out(struct client *c, const void *data, size_t len)
{
	if (c->out_len + len > OUTBUF_MAX)
		return -ENOBUFS;
	if (c->out_len + len > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		uint8_t *p;

		while (cap < c->out_len + len)
			cap *= 2;
		p = realloc(c->out, cap);
		if (!p)
			return -ENOMEM;
		c->out = p;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, data, len);
	c->out_len += len;
	return 0;
}

/* Sends a message; fds go with its first byte, so a message with fds is
 * sent only when nothing else is queued and must leave in one sendmsg. */
static int send_msg(struct client *c, uint16_t opcode, uint16_t flags, uint32_t serial, const void *payload,
		    size_t len, const int *fds, unsigned n_fds)
{
	struct tqkv_msg_header h = {
		.size = (uint32_t)(sizeof(h) + len),
		.opcode = opcode,
		.flags = flags,
		.serial = serial,
		.n_fds = (uint16_t)n_fds,
	};
	int r;

	if (c->dead)
		return -ENOTCONN;
	if (n_fds) {
		struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)payload, len } };
		union {
			char buf[CMSG_SPACE(sizeof(int) * FDS_MAX)];
			struct cmsghdr align;
		} ctl;
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2, .msg_control = ctl.buf,
				     .msg_controllen = CMSG_SPACE(sizeof(int) * n_fds) };
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		ssize_t n;

		if (c->out_len)
			return -EBUSY;
		memset(&ctl, 0, sizeof(ctl));
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * n_fds);
		n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0)
			return -errno;
		if ((size_t)n == h.size)
			return 0;
		/* The fds left with the first byte; queue the rest. */
		if ((size_t)n < sizeof(h)) {
			r = queue_out(c, (uint8_t *)&h + n, sizeof(h) - (size_t)n);
			n = 0;
		} else {
			n -= (ssize_t)sizeof(h);
			r = 0;
		}
		if (r >= 0)
			r = queue_out(c, (const uint8_t *)payload + n, len - (size_t)n);
		return r < 0 ? r : flush_out(c);
	}
	r = queue_out(c, &h, sizeof(h));
	if (r >= 0 && len)
		r = queue_out(c, payload, len);
	return r < 0 ? r : flush_out(c);
}

static int reply(struct client *c, uint16_t opcode, uint32_t serial, const void *payload, size_t len)
{
	return send_msg(c, opcode, TQKV_MSG_REPLY, serial, payload, len, NULL, 0);
}

__attribute__((format(printf, 5, 6)))
static int reply_error(struct client *c, uint16_t opcode, uint32_t serial, int error, const char *fmt, ...)
{
	struct {
		struct tqkv_error e;
		char text[256];
	} m;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(m.text, sizeof(m.text), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(m.text))
		n = sizeof(m.text) - 1;
	m.e.code = error < 0 ? -error : error;
	m.e.length = (uint32_t)n;
	c->server->stats.errors++;
	return send_msg(c, opcode, TQKV_MSG_REPLY | TQKV_MSG_ERROR, serial, &m, sizeof(m.e) + (size_t)n, NULL, 0);
}

/* A protocol violation: one error reply, then the client is gone. */
static void violation(struct client *c, uint16_t opcode, uint32_t serial, int error, const char *what)
{
	c->server->stats.violations++;
	if (ratelimit_below(&c->rl))
		log_warning("client %u (pid %d): protocol violation: %s", c->id, (int)c->pid, what);
	reply_error(c, opcode, serial, error, "protocol violation: %s", what);
	client_disconnect(c);
}

/* ---- sequences -------------------------------------------------------- */

/* What clients see: the worker stores n_blocks (release) before the loop
 * hears of the job, so read the shared value, or a client that saw a block
 * published would be told its commit does not fit. */
static uint64_t published_tokens(const struct sequence *q)
{
	uint64_t n = atomic_load_explicit((_Atomic uint64_t *)&q->desc->n_blocks, memory_order_acquire);

	return n * q->client->server->cfg->block_tokens;
}

static struct sequence *find_seq(struct client *c, uint32_t id)
{
	for (struct sequence *q = c->seqs; q; q = q->next)
		if (q->id == id && !q->closed)
			return q;
	return NULL;
}

#define tenant_of_usage(u) ((struct tenant *)((uint8_t *)(u) - offsetof(struct tenant, usage)))

/* Every arena byte goes through these two: the budget is global, quotas
 * per tenant. */
static void tenant_release(struct server *s, struct tenant *t, uint64_t offset, uint64_t size)
{
	uint64_t before = arena_bytes_used(t->arena), freed;

	arena_release(t->arena, offset, size);
	freed = before - arena_bytes_used(t->arena);
	t->arena_used -= freed;
	s->arena_used -= freed;
}

static void free_block(struct server *s, struct cblock *b)
{
	struct tenant *t = tenant_of_usage(b->usage);

	if (b->dir_slot)
		directory_clear(t->dir, b->dir_slot);
	if (b->means_arena_bytes)
		tenant_release(s, t, b->means_arena_offset, b->means_arena_bytes);
	tenant_release(s, t, b->offset, b->bytes);
	cache_block_free(s->cache, b);
	s->stats.blocks_freed++;
}

/* Where a block lies, for its tenant's directory. */
static struct dir_entry directory_entry(const struct cblock *b)
{
	return (struct dir_entry){ .hash = b->hash, .offset = b->offset, .bytes = b->bytes, .fp16_bytes = b->fp16_bytes,
				   .means_offset = b->means_arena_offset, .means_bytes = (uint32_t)b->means_arena_bytes };
}

/*
 * Frees the windowed layers' pages at the end of b's record.  Clients
 * attend only inside the window, so none reads them; still, the page
 * table forgets them and the record's size shrinks before the bytes are
 * reused, so that a stray read finds no page (tqkv_view_page()).  The
 * directory entry is rewritten: a kill in between loses the block from
 * the fd store, never serves it with a wrong size.
 */
static void free_window(struct server *s, struct cblock *b)
{
	struct tenant *t = tenant_of_usage(b->usage);
	uint8_t *rec = arena_ptr(t->arena, b->offset);
	struct tqkv_block_header *h = (struct tqkv_block_header *)rec;
	uint64_t *table = (uint64_t *)(rec + MODEL_PAGE_TABLE_OFFSET);
	uint64_t keep = b->bytes - b->window_bytes, freed = b->window_bytes;
	struct dir_entry e;

	if (b->dir_slot)
		directory_clear(t->dir, b->dir_slot);
	for (uint64_t i = 0; i < h->n_pages && MODEL_PAGE_TABLE_OFFSET + 8 * (i + 1) <= keep; i++)
		if (table[i] >= keep)
			table[i] = 0;
	h->record_bytes = keep;
	cache_window_drop(s->cache, b);
	if (b->dir_slot) {
		e = directory_entry(b);
		b->dir_slot = directory_put(t->dir, &e);
	}
	tenant_release(s, t, b->offset + keep, freed);
	s->stats.window_freed_blocks++;
	s->stats.window_freed_bytes += freed;
}

/* Frees what cache_evict() returned: an unheld block, or a held block's
 * window pages.  Returns the bytes. */
static uint64_t evict(struct server *s, struct cblock *b)
{
	uint64_t bytes = b->refs ? b->window_bytes : b->bytes;

	if (b->refs) {
		free_window(s, b);
		return bytes;
	}
	s->stats.evicted_blocks++;
	s->stats.evicted_bytes += bytes;
	free_block(s, b);
	return bytes;
}

static size_t save_let_go_written(struct server *s);
static void on_save_retry(uv_timer_t *t);

/* How often sequences waiting for memory look again while a background
 * snapshot lets go of what it has written. */
#define SAVE_RETRY_MSEC 10u

/* Allocates bytes in the tenant's arena, evicting unheld cached blocks
 * (least recently used first) while the memory budget is exhausted (any
 * tenant's), or the tenant's quota or its arena (the tenant's own).  A
 * background snapshot holds every block it lists: when nothing else is
 * left, it lets go of those already written. */
static int alloc_evicting(struct server *s, struct tenant *t, uint64_t size, uint64_t *ret)
{
	uint64_t quota = s->cfg->tenant_quota;

	for (;;) {
		bool over_budget = s->arena_used + size > s->cfg->memory_budget;
		bool over_quota = quota && t->arena_used + size > quota;
		uint64_t before = arena_bytes_used(t->arena), got;
		struct cblock *b;

		if (!over_budget && !over_quota && arena_alloc(t->arena, size, ret) == 0) {
			got = arena_bytes_used(t->arena) - before;
			t->arena_used += got;
			s->arena_used += got;
			return 0;
		}
		b = cache_evict(s->cache, over_budget && !over_quota ? NULL : &t->usage);
		if (!b && save_let_go_written(s))
			continue;
		if (!b)
			return -ENOMEM;
		evict(s, b);
	}
}

/* Drops the sequence's blocks from the last down to block from: the
 * deepest blocks of a chain become the least recently used, so eviction
 * shortens chains from their end. */
static void drop_blocks(struct server *s, struct sequence *q, uint64_t from)
{
	while (q->n_blocks > from) {
		struct cblock *b = q->blocks[--q->n_blocks];

		switch (cache_unref(s->cache, b, q->n_blocks < q->window_passed)) {
		case CACHE_FREE_BLOCK:
			free_block(s, b);
			break;
		case CACHE_FREE_WINDOW:
			free_window(s, b);
			break;
		case CACHE_KEEP:
			break;
		}
	}
	if (q->n_hashed > q->n_blocks)
		q->n_hashed = q->n_blocks;
	if (q->window_passed > q->n_blocks)
		q->window_passed = q->n_blocks;
}

/* Keeps q's first n published blocks, and tells its client. */
static void seq_truncate(struct server *s, struct sequence *q, uint64_t n)
{
	drop_blocks(s, q, n);
	atomic_store_explicit((_Atomic uint64_t *)&q->desc->n_blocks, q->n_blocks, memory_order_release);
}

/* The leading blocks whose window pages a sequence with committed tokens
 * no longer needs: their last token is more than the window plus the
 * staging ring behind.  The ring is the slack engines get: a windowed
 * layer may be attended at position p while at most p + staging_tokens
 * tokens are committed (docs/PROTOCOL.md). */
static uint64_t window_frontier(const struct model *m, uint64_t committed)
{
	uint64_t edge = (uint64_t)m->window + m->reg.staging_tokens;

	return m->window && committed > edge ? (committed - edge) / m->block_tokens : 0;
}

static bool has_window_pages(const struct model *m, const struct cblock *b)
{
	return b->bytes == m->block_bytes;
}

/* q no longer needs the window pages of its blocks before frontier. */
static void pass_windows_to(struct server *s, struct sequence *q, uint64_t frontier)
{
	while (q->window_passed < frontier && q->window_passed < q->n_blocks)
		if (cache_window_pass(s->cache, q->blocks[q->window_passed++]))
			free_window(s, q->blocks[q->window_passed - 1]);
}

static void pass_windows(struct server *s, struct sequence *q)
{
	pass_windows_to(s, q, window_frontier(q->client->model, q->committed));
}

/* Indexes b; with the fd store, also in its tenant's directory, its key
 * means copied into the arena so that a restarted daemon finds them. */
static void index_block(struct server *s, struct cblock *b, XXH128_hash_t hash)
{
	struct tenant *t = tenant_of_usage(b->usage);
	struct dir_entry e;

	if (!cache_index(s->cache, b, hash) || !t->dir)
		return;
	if (b->means) {
		if (alloc_evicting(s, t, b->means_bytes, &b->means_arena_offset) < 0)
			return;
		b->means_arena_bytes = b->means_bytes;
		memcpy(arena_ptr(t->arena, b->means_arena_offset), b->means, b->means_bytes);
	}
	e = directory_entry(b);
	b->dir_slot = directory_put(t->dir, &e);
}

/* Room for one more block in q->blocks. */
static int reserve_block(struct sequence *q)
{
	uint64_t cap = q->blocks_cap ? q->blocks_cap * 2 : 16;
	struct cblock **p;

	if (q->n_blocks < q->blocks_cap)
		return 0;
	p = realloc(q->blocks, cap * sizeof(*p));
	if (!p)
		return -ENOMEM;
	q->blocks = p;
	q->blocks_cap = cap;
	return 0;
}

/* Indexes the published blocks whose token ids are known, in order: a
 * block's hash chains from its parent's. */
static void hash_blocks(struct server *s, struct sequence *q)
{
	uint32_t B = q->client->model->block_tokens;

	while (!q->private && q->n_hashed < q->n_blocks && (q->n_hashed + 1) * B <= q->n_ids) {
		struct cblock *b = q->blocks[q->n_hashed];
		XXH128_hash_t parent = q->n_hashed ? q->blocks[q->n_hashed - 1]->hash : q->client->prefix_root;

		if (!b->hashed)
			index_block(s, b, prefix_next(parent, q->ids + q->n_hashed * B, B));
		q->n_hashed++;
	}
}

/* Appends token ids; ones already known must match.  -ENOSPC when the
 * ids of all sequences would take more heap than memory_budget: they are
 * not in the arena, but must not grow without bound either. */
static int add_ids(struct sequence *q, uint64_t first, const uint32_t *ids, uint64_t n)
{
	struct server *s = q->client->server;
	uint64_t end = first + n;

	if (first > q->n_ids)
		return -EINVAL;
	for (uint64_t i = first; i < q->n_ids && i < end; i++)
		if (q->ids[i] != ids[i - first])
			return -EINVAL;
	if (end <= q->n_ids)
		return 0;
	if (end > q->ids_cap) {
		uint64_t cap = q->ids_cap ? q->ids_cap : 1024;
		uint32_t *p;

		while (cap < end)
			cap *= 2;
		if (s->ids_bytes + (cap - q->ids_cap) * sizeof(*p) > s->cfg->memory_budget)
			return -ENOSPC;
		p = realloc(q->ids, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		s->ids_bytes += (cap - q->ids_cap) * sizeof(*p);
		q->ids = p;
		q->ids_cap = cap;
	}
	memcpy(q->ids + q->n_ids, ids + (q->n_ids - first), (end - q->n_ids) * sizeof(*ids));
	q->n_ids = end;
	return 0;
}

/* The message of a failed add_ids() that is not a mismatch. */
static const char *ids_error(int r)
{
	return r == -ENOSPC ? "the token ids of all sequences would take more than memory_budget" : "out of memory";
}

static void client_unref(struct client *c);

/* Sequences may wait for memory (schedule() found the budget exhausted):
 * whenever memory comes back, give every one of them another try. */
static void retry_stalled(struct server *s)
{
	for (struct client *c = s->clients; c; c = c->next)
		for (struct sequence *q = c->seqs; q; q = q->next)
			schedule(q);
}

/* Frees a closed sequence once no job uses it. */
static void seq_finalize(struct sequence *q)
{
	struct client *c = q->client;
	struct server *s = c->server;
	struct sequence **pp;

	if (q->job_in_flight)
		return;
	drop_blocks(s, q, 0);
	tenant_release(s, c->tenant, q->table_offset, q->table_bytes);
	tenant_release(s, c->tenant, q->desc_offset, sizeof(struct tqkv_seq_desc));
	if (q->means_bytes)
		tenant_release(s, c->tenant, q->means_offset, q->means_bytes);
	for (pp = &c->seqs; *pp != q; pp = &(*pp)->next)
		;
	*pp = q->next;
	if (c->slots[q->slot] == q)
		c->slots[q->slot] = NULL;
	while (q->waiters) {
		struct waiter *w = q->waiters;

		q->waiters = w->next;
		reply_error(c, TQKV_OP_SEQ_WAIT, w->serial, ECANCELED, "sequence %u closed", q->id);
		free(w);
	}
	free(q->blocks);
	free(q->ids);
	s->ids_bytes -= q->ids_cap * sizeof(*q->ids);
	free(q);
	retry_stalled(s);
}

static void seq_close(struct sequence *q)
{
	struct client *c = q->client;

	if (q->closed)
		return;
	q->closed = true;
	/* Its slot stays taken while a job reads it (seq_finalize()). */
	c->n_seqs--;
	seq_finalize(q);
}

static void answer_waiters(struct sequence *q)
{
	struct waiter **pp = &q->waiters;
	uint64_t published = published_tokens(q);
	uint64_t reachable = q->committed / q->client->model->block_tokens * q->client->model->block_tokens;

	while (*pp) {
		struct waiter *w = *pp;

		if (q->broken) {
			*pp = w->next;
			q->n_waiters--;
			reply_error(q->client, TQKV_OP_SEQ_WAIT, w->serial, EIO, "sequence %u: a block failed to compress",
				    q->id);
			free(w);
		} else if (published >= w->n_tokens || published >= reachable) {
			struct tqkv_seq_tokens_reply rep = { q->committed, published };

			*pp = w->next;
			q->n_waiters--;
			reply(q->client, TQKV_OP_SEQ_WAIT, w->serial, &rep, sizeof(rep));
			free(w);
		} else {
			pp = &w->next;
		}
	}
}

static void on_job_done(struct job *j, void *userdata)
{
	struct server *s = userdata;
	struct sequence *q = j->owner;
	struct client *c = q->client;
	/* j is q->job: schedule() hands it to a worker again, and
	 * seq_finalize() frees it with q. */
	int result = j->result;

	q->job_in_flight = false;
	if (result == 0 && !q->slot_lost) {
		struct cblock *b = q->job_block;

		if (j->block == 0 && q->means_bytes) {
			/* Sequences that attach this block need its means. */
			b->means = malloc(q->means_bytes);
			if (b->means) {
				memcpy(b->means, arena_ptr(c->tenant->arena, q->means_offset), q->means_bytes);
				b->means_bytes = q->means_bytes;
			} else {
				q->private = true;  /* cannot be shared without them */
			}
		}
		q->blocks[q->n_blocks++] = b;
		s->stats.blocks_compressed++;
		s->stats.encode_nsec += j->encode_nsec;
		hash_blocks(s, q);
		pass_windows(s, q);
	} else {
		/* Failed, or compressed from a reused slot: it may hold
		 * another sequence's rows, never index it under q's ids. */
		tenant_release(s, c->tenant, q->job_block->offset, q->job_block->bytes);
		cache_block_free(s->cache, q->job_block);
	}
	if (result != 0) {
		q->broken = true;  /* retrying would fail the same way, forever */
		s->stats.compress_failures++;
		if (ratelimit_below(&s->rl))
			log_error_errno(result, "client %u: failed to compress block %llu of sequence %u", c->id,
					(unsigned long long)j->block, q->id);
	}
	if (q->closed) {
		seq_finalize(q);
	} else {
		schedule(q);
		answer_waiters(q);
	}
	if (result != 0)
		retry_stalled(s);
	client_unref(c);
}

/* Starts compressing the next full block of q, if any. */
static void schedule(struct sequence *q)
{
	struct client *c = q->client;
	struct server *s = c->server;
	const struct model *m = c->model;
	uint64_t off;
	struct job *j = &q->job;

	if (q->job_in_flight || q->closed || q->broken || c->dead || (q->n_blocks + 1) * m->block_tokens > q->committed)
		return;
	if (reserve_block(q) < 0 || alloc_evicting(s, c->tenant, m->block_bytes, &off) < 0) {
		if (ratelimit_below(&s->rl))
			log_warning("client %u: memory budget exhausted, block %llu of sequence %u waits", c->id,
				    (unsigned long long)q->n_blocks, q->id);
		/* Nothing tells the loop when the snapshot writes more. */
		if (s->saving && !uv_is_active((uv_handle_t *)&s->save_retry))
			uv_timer_start(&s->save_retry, on_save_retry, SAVE_RETRY_MSEC, 0);
		return;
	}
	q->job_block = cache_block_new(s->cache, &c->tenant->usage, off, m->block_bytes,
				       (uint64_t)m->block_tokens * m->token_bytes, model_window_bytes(m));
	if (!q->job_block) {
		tenant_release(s, c->tenant, off, m->block_bytes);
		return;
	}
	*j = (struct job){
		.owner = q,
		.model = m,
		.staging_slot = c->staging + (uint64_t)q->slot * m->slot_bytes,
		.staging_tokens = m->reg.staging_tokens,
		.block = q->n_blocks,
		.record = arena_ptr(c->tenant->arena, off),
		.record_offset = off,
		.desc = q->desc,
		.table = q->table,
		.seq_id = q->id,
		.key_means = q->means_bytes ? arena_ptr(c->tenant->arena, q->means_offset) : NULL,
	};
	q->job_in_flight = true;
	c->refs++;
	worker_submit(s->pool, j);
}

/* ---- requests ------------------------------------------------------- */

/* What HELLO announces; REGISTER_MODEL checks models against the same. */
static void hello_reply(const struct tqkvd_config *cfg, struct tqkv_hello_reply *ret)
{
	*ret = (struct tqkv_hello_reply){
		.version = TQKV_PROTOCOL_VERSION,
		.block_tokens = cfg->block_tokens,
		.max_message_bytes = cfg->limits.max_message_bytes,
		.max_fds_per_message = cfg->limits.max_fds_per_message,
		.max_layers = cfg->limits.max_layers,
		.max_kv_heads = cfg->limits.max_kv_heads,
		.max_head_dim = cfg->limits.max_head_dim,
		.max_sequences = cfg->limits.max_sequences_per_client,
		.max_tokens_per_sequence = cfg->limits.max_tokens_per_sequence,
	};
}

static int do_hello(struct client *c, const struct tqkv_msg_header *h, struct msg_reader *rd)
{
	struct tqkv_hello req;
	struct tqkv_hello_reply rep;

	hello_reply(c->server->cfg, &rep);
	msg_read(rd, &req, sizeof(req));
	if (req.version_min > TQKV_PROTOCOL_VERSION || req.version_max < TQKV_PROTOCOL_VERSION_MIN ||
	    req.version_min > req.version_max) {
		violation(c, h->opcode, h->serial, EPROTONOSUPPORT, "no common protocol version");
		return -EPROTONOSUPPORT;
	}
	c->hello = true;
	return reply(c, h->opcode, h->serial, &rep, sizeof(rep));
}

static int create_staging(struct client *c)
{
	const struct model *m = c->model;
	uint64_t bytes;
	int fd, r;

	/* Limits allow slot_bytes near 2^61 and 2^20 slots: a product that
	 * wraps would map a small memfd the slots point past. */
	if (__builtin_mul_overflow(m->slot_bytes, (uint64_t)m->reg.max_sequences, &bytes) ||
	    bytes > c->server->cfg->memory_budget)
		return -E2BIG;
	fd = memfd_create("tqkv-staging", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)bytes) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	/* Read-only here: the daemon never writes a client's staging. */
	c->staging = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
	if (c->staging == MAP_FAILED) {
		c->staging = NULL;
		r = -errno;
		close(fd);
		return r;
	}
	c->staging_fd = fd;
	c->staging_bytes = bytes;
	c->server->staging_bytes += bytes;
	return 0;
}

/* What makes blocks of two clients interchangeable: the tenant, the model
 * and every layer's codec policy, and the block size. */
static XXH128_hash_t model_prefix_root(const struct client *c)
{
	const struct model *m = c->model;
	struct tqkv_layer_desc *key = calloc(m->reg.n_layers + 3, sizeof(*key));
	XXH128_hash_t h;

	if (!key)
		return (XXH128_hash_t){ 0, 0 };
	memcpy(key, c->tenant->name, sizeof(c->tenant->name));
	memcpy(key + 2, &m->reg.fingerprint, sizeof(m->reg.fingerprint));
	memcpy((uint8_t *)(key + 2) + 8, &m->block_tokens, sizeof(m->block_tokens));
	memcpy((uint8_t *)(key + 2) + 12, &m->reg.n_layers, sizeof(m->reg.n_layers));
	for (uint32_t l = 0; l < m->reg.n_layers; l++)
		key[l + 3] = m->layers[l].desc;
	h = prefix_root(key, (m->reg.n_layers + 3) * sizeof(*key));
	free(key);
	return h;
}

/* Gives TQKV_LAYER_DAEMON_POLICY layers the configured preset's kinds and
 * centering (FP16 in its boundary layers).  -ENOENT without a preset. */
static int apply_daemon_policy(const struct tqkvd_config *cfg, struct tqkv_layer_desc *layers, uint32_t n,
			       uint32_t *ret_layer)
{
	const struct tqkv_preset *p = cfg->preset ? tqkv_preset_find(cfg->preset) : NULL;

	for (uint32_t l = 0; l < n; l++) {
		bool edge;

		if (!(layers[l].flags & TQKV_LAYER_DAEMON_POLICY))
			continue;
		if (!p) {
			*ret_layer = l;
			return -ENOENT;
		}
		edge = l < p->boundary_layers || l + p->boundary_layers >= n;
		layers[l].k_kind = (uint8_t)(edge ? TQKV_KIND_FP16 : p->k_kind);
		layers[l].v_kind = (uint8_t)(edge ? TQKV_KIND_FP16 : p->v_kind);
		layers[l].flags = (uint8_t)(edge ? 0 : p->layer_flags);
	}
	return 0;
}

static int do_register(struct client *c, const struct tqkv_msg_header *h, struct msg_reader *rd)
{
	struct tqkv_hello_reply announced;
	struct model_limits lim;
	struct tqkv_register_model reg;
	struct tqkv_layer_desc *layers;
	char err[256];
	int r;

	if (c->model)
		return reply_error(c, h->opcode, h->serial, EALREADY, "a model is already registered");
	hello_reply(c->server->cfg, &announced);
	model_limits_from_hello(&announced, &lim);
	msg_read(rd, &reg, sizeof(reg));
	if (reg.n_layers == 0 || reg.n_layers > lim.max_layers ||
	    msg_remaining(rd) != (size_t)reg.n_layers * sizeof(*layers)) {
		violation(c, h->opcode, h->serial, EBADMSG, "REGISTER_MODEL size does not match n_layers");
		return -EBADMSG;
	}
	layers = malloc((size_t)reg.n_layers * sizeof(*layers));
	if (!layers)
		return reply_error(c, h->opcode, h->serial, ENOMEM, "out of memory");
	msg_read(rd, layers, (size_t)reg.n_layers * sizeof(*layers));
	{
		uint32_t bad = 0;

		if (apply_daemon_policy(c->server->cfg, layers, reg.n_layers, &bad) < 0) {
			free(layers);
			return reply_error(c, h->opcode, h->serial, EINVAL,
					   "layer %u asks for the daemon's policy, but tqkvd.conf sets no preset", bad);
		}
	}
	r = model_new(&reg, layers, &lim, &c->model, err, sizeof(err));
	if (r < 0)
		free(layers);
	if (r == -EINVAL)
		return reply_error(c, h->opcode, h->serial, EINVAL, "invalid model: %s", err);
	if (r < 0)
		return reply_error(c, h->opcode, h->serial, -r, "cannot register model: %s", strerror(-r));
	r = register_finish(c, h, &reg, layers);
	free(layers);
	return r;
}

/* The arena, the staging memfd and the reply of a valid REGISTER_MODEL. */
static int register_finish(struct client *c, const struct tqkv_msg_header *h, const struct tqkv_register_model *reg,
			   const struct tqkv_layer_desc *layers)
{
	size_t layers_bytes = (size_t)reg->n_layers * sizeof(*layers);
	uint8_t *payload;
	int fds[2], r;

	if (!c->tenant->arena) {
		/* Sparse: it takes memory only where blocks are written. */
		r = tenant_create_arena(c->server, c->tenant);
		if (r < 0) {
			model_free(c->model);
			c->model = NULL;
			log_error_errno(r, "Failed to create the arena of tenant %s", c->tenant->name);
			return reply_error(c, h->opcode, h->serial, -r, "cannot create the tenant's arena: %s", strerror(-r));
		}
	}
	c->prefix_root = model_prefix_root(c);
	c->slots = calloc(reg->max_sequences, sizeof(*c->slots));
	r = c->slots ? create_staging(c) : -ENOMEM;
	if (r < 0) {
		model_free(c->model);
		c->model = NULL;
		free(c->slots);
		c->slots = NULL;
		return reply_error(c, h->opcode, h->serial, -r, "cannot create staging for %u sequences: %s",
				   reg->max_sequences, r == -E2BIG ? "larger than memory_budget" : strerror(-r));
	}
	payload = malloc(sizeof(struct tqkv_register_reply) + layers_bytes);
	if (!payload)
		return reply_error(c, h->opcode, h->serial, ENOMEM, "out of memory");
	{
		struct tqkv_register_reply rep = {
			.arena_bytes = arena_size(c->tenant->arena),
			.staging_bytes = c->staging_bytes,
			.staging_slot_bytes = c->model->slot_bytes,
			.token_bytes = c->model->token_bytes,
			.block_tokens = c->model->block_tokens,
		};

		fds[0] = arena_fd(c->tenant->arena);
		fds[1] = c->staging_fd;
		if (ratelimit_below(&c->server->rl))  /* clients can register at any rate */
			log_info("client %u (pid %d): registered model %016llx, %u layers, %u bytes per token", c->id,
				 (int)c->pid, (unsigned long long)reg->fingerprint, reg->n_layers, c->model->token_bytes);
		memcpy(payload, &rep, sizeof(rep));
		memcpy(payload + sizeof(rep), layers, layers_bytes);
		r = send_msg(c, h->opcode, TQKV_MSG_REPLY, h->serial, payload, sizeof(rep) + layers_bytes, fds, 2);
		free(payload);
		return r;
	}
}

/* A new empty sequence in a free slot: its descriptor, block table and
 * key means in the arena. */
static int seq_create(struct client *c, struct sequence **ret)
{
	struct server *s = c->server;
	const struct model *m = c->model;
	uint32_t max_blocks = s->cfg->limits.max_tokens_per_sequence / m->block_tokens;
	struct sequence *q;
	uint32_t slot;

	for (slot = 0; slot < m->reg.max_sequences && c->slots[slot]; slot++)
		;
	/* A closed sequence keeps its slot while its job reads it; when no
	 * slot is free, take one and drop what that job makes instead, so
	 * that closing then opening never fails. */
	for (uint32_t i = 0; slot == m->reg.max_sequences && i < m->reg.max_sequences; i++)
		if (c->slots[i]->closed)
			slot = i;
	if (slot == m->reg.max_sequences)
		return -EMFILE;
	q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->table_bytes = (uint64_t)max_blocks * sizeof(uint64_t);
	q->means_bytes = (uint64_t)m->mean_floats * sizeof(float);
	if (alloc_evicting(s, c->tenant, sizeof(struct tqkv_seq_desc), &q->desc_offset) < 0) {
		free(q);
		return -ENOSPC;
	}
	if (alloc_evicting(s, c->tenant, q->table_bytes, &q->table_offset) < 0 ||
	    (q->means_bytes && alloc_evicting(s, c->tenant, q->means_bytes, &q->means_offset) < 0)) {
		if (q->table_offset)
			tenant_release(s, c->tenant, q->table_offset, q->table_bytes);
		tenant_release(s, c->tenant, q->desc_offset, sizeof(struct tqkv_seq_desc));
		free(q);
		return -ENOSPC;
	}
	q->client = c;
	q->id = ++s->next_seq_id;
	q->slot = slot;
	q->desc = arena_ptr(c->tenant->arena, q->desc_offset);
	q->table = arena_ptr(c->tenant->arena, q->table_offset);
	*q->desc = (struct tqkv_seq_desc){
		.block_table_offset = q->table_offset,
		.max_blocks = max_blocks,
		.block_tokens = m->block_tokens,
		.seq_id = q->id,
		.key_mean_offset = q->means_bytes ? q->means_offset : 0,
	};
	q->next = c->seqs;
	c->seqs = q;
	if (c->slots[slot])
		c->slots[slot]->slot_lost = true;
	c->slots[slot] = q;
	c->n_seqs++;
	c->tenant->sequences++;
	s->stats.sequences_total++;
	*ret = q;
	return 0;
}

static const char *seq_create_error(int r)
{
	return r == -EMFILE ? "all sequence slots are open" : r == -ENOSPC ? "memory budget exhausted" : strerror(-r);
}

/* Appends blocks (published: attached or shared) to q, which has nothing
 * of its own yet, and publishes them to the client.  means: the key means
 * of the chain, needed when it starts at block 0. */
static void seq_adopt(struct sequence *q, struct cblock *const *blocks, uint64_t n, const float *means)
{
	struct server *s = q->client->server;
	const struct model *m = q->client->model;

	for (uint64_t i = 0; i < n; i++) {
		cache_ref(s->cache, blocks[i]);
		if (m->window && has_window_pages(m, blocks[i]))
			cache_window_learn(blocks[i], model_window_bytes(m));
		q->blocks[q->n_blocks] = blocks[i];
		q->table[q->n_blocks++] = blocks[i]->offset;
	}
	if (n && q->n_blocks == n && q->means_bytes)
		memcpy(arena_ptr(q->client->tenant->arena, q->means_offset), means, q->means_bytes);
	q->n_hashed = q->n_blocks;
	q->committed = q->n_blocks * q->client->model->block_tokens;
	atomic_store_explicit((_Atomic uint64_t *)&q->desc->n_blocks, q->n_blocks, memory_order_release);
}

/* Whether a sequence holding q's first n blocks would lack window pages
 * it needs: those of blocks inside the window of token n * B. */
static bool window_gap(const struct sequence *q, uint64_t n)
{
	const struct model *m = q->client->model;

	for (uint64_t i = window_frontier(m, n * m->block_tokens); m->window && i < n; i++)
		if (!has_window_pages(m, q->blocks[i]))
			return true;
	return false;
}

/* Extends q with the longest chain of indexed blocks that continues its
 * blocks along its token ids, up to the block before the one holding the
 * last id, and ending where the window pages it needs still exist.  Only
 * while everything q has is attached: a prompt too long for one message
 * arrives in SEQ_TOKENS after SEQ_OPEN. */
static void attach_prefix(struct sequence *q)
{
	struct client *c = q->client;
	struct server *s = c->server;
	const struct model *m = c->model;
	uint32_t B = m->block_tokens;
	uint64_t first = q->n_blocks, max = q->n_ids ? (q->n_ids - 1) / B : 0, n;
	XXH128_hash_t h;

	if (!q->attaching || q->committed != first * B || q->n_hashed != first)
		return;
	if (max > q->desc->max_blocks)
		max = q->desc->max_blocks;
	h = first ? q->blocks[first - 1]->hash : c->prefix_root;
	for (n = first; n < max; n++) {
		struct cblock *b;

		h = prefix_next(h, q->ids + n * B, B);
		b = cache_lookup(s->cache, h);
		if (!b || (b->bytes != m->block_bytes && b->bytes != m->keep_bytes) ||
		    (q->means_bytes && n == 0 && !b->means))
			break;
		if (reserve_block(q) < 0)
			break;
		seq_adopt(q, &b, 1, b->means);
	}
	/* Nothing is told to the client yet: stepping back is free. */
	while (n > first && window_gap(q, n))
		n--;
	if (n < q->n_blocks) {
		seq_truncate(s, q, n);
		q->committed = n * B;
	}
	pass_windows(s, q);
	c->tenant->prefix_hit_tokens += (n - first) * B;
	s->stats.prefix_hit_tokens += (n - first) * B;
}

/* Prompt ids arrived (n_new of them): count them and attach what they
 * find, while the sequence has not committed anything of its own. */
static void lookup_prefix(struct sequence *q, uint64_t n_new)
{
	struct client *c = q->client;

	if (!q->attaching)
		return;
	c->tenant->prefix_query_tokens += n_new;
	c->server->stats.prefix_query_tokens += n_new;
	attach_prefix(q);
}

static int reply_opened(struct client *c, const struct tqkv_msg_header *h, const struct sequence *q)
{
	struct tqkv_seq_open_reply rep = {
		.seq_id = q->id,
		.slot = q->slot,
		.desc_offset = q->desc_offset,
		.cached_tokens = q->committed,
	};

	return reply(c, h->opcode, h->serial, &rep, sizeof(rep));
}

static int do_seq_open(struct client *c, const struct tqkv_msg_header *h, struct msg_reader *rd)
{
	struct server *s;
	struct tqkv_seq_open req = { 0 };
	struct sequence *q;
	uint32_t *ids = NULL;
	int r;

	if (msg_remaining(rd)) {
		msg_read(rd, &req, sizeof(req));
		if (req.flags & ~(uint32_t)TQKV_SEQ_PRIVATE || msg_remaining(rd) != (size_t)req.n_tokens * sizeof(*ids)) {
			violation(c, h->opcode, h->serial, EBADMSG, "SEQ_OPEN size does not match n_tokens");
			return -EBADMSG;
		}
		if (req.n_tokens > c->server->cfg->limits.max_tokens_per_sequence)
			return reply_error(c, h->opcode, h->serial, EFBIG, "sequence limit is %u tokens",
					   c->server->cfg->limits.max_tokens_per_sequence);
	}
	r = seq_create(c, &q);
	if (r < 0)
		return reply_error(c, h->opcode, h->serial, -r, "cannot open a sequence: %s", seq_create_error(r));
	s = c->server;
	q->private = req.flags & TQKV_SEQ_PRIVATE;
	if (req.n_tokens) {
		ids = malloc((size_t)req.n_tokens * sizeof(*ids));
		r = ids ? 0 : -ENOMEM;
		if (r == 0) {
			msg_read(rd, ids, (size_t)req.n_tokens * sizeof(*ids));
			r = add_ids(q, 0, ids, req.n_tokens);
		}
		free(ids);
		if (r < 0) {
			seq_close(q);
			return reply_error(c, h->opcode, h->serial, -r, "%s", ids_error(r));
		}
		q->attaching = !q->private;
		if (q->attaching) {
			c->tenant->prefix_lookups++;
			s->stats.prefix_lookups++;
		}
		lookup_prefix(q, q->n_ids);
	}
	return reply_opened(c, h, q);
}

/* Reads a request that starts with a sequence id (the size was checked
 * against the opcode's spec) and finds the sequence; replies ENOENT if
 * there is none. */
static int read_seq_request(struct client *c, const struct tqkv_msg_header *h, struct msg_reader *rd, void *req,
			    size_t size, struct sequence **ret)
{
	uint32_t id;

	msg_read(rd, req, size);
	memcpy(&id, req, sizeof(id));
	*ret = find_seq(c, id);
	if (!*ret)
		return reply_error(c, h->opcode, h->serial, ENOENT, "no open sequence %u", id);
	return 1;
}

static int do_seq_tokens(struct client *c, const struct tqkv_msg_header *h, struct msg_reader *rd)
{
	const struct model *m = c->model;
	struct tqkv_seq_tokens req;
	struct tqkv_seq_tokens_reply rep;
	struct sequence *q;
	int r = read_seq_request(c, h, rd, &req, sizeof(req), &q);

	if (r <= 0 || !q)
		return r;
	if (h->opcode == TQKV_OP_SEQ_COMMIT) {
		if (req.n_tokens < q->committed)
			return reply_error(c, h->opcode, h->serial, EINVAL, "commit of %u tokens is below %llu already committed",
					   req.n_tokens, (unsigned long long)q->committed);
		if (req.n_tokens > c->server->cfg->limits.max_tokens_per_sequence)
			return reply_error(c, h->opcode, h->serial, EFBIG, "sequence limit is %u tokens",
					   c->server->cfg->limits.max_tokens_per_sequence);
		if (req.n_tokens - published_tokens(q) > m->reg.staging_tokens)
			return reply_error(c, h->opcode, h->serial, EAGAIN,
					   "staging holds %u tokens; %llu are published, wait before committing %u",
					   m->reg.staging_tokens, (unsigned long long)published_tokens(q), req.n_tokens);
		q->committed = req.n_tokens;
		q->attaching = false;
		schedule(q);
		pass_windows(c->server, q);
	} else {
		struct waiter *w;

		if (q->n_waiters >= WAITERS_MAX)
			return reply_error(c, h->opcode, h->serial, EBUSY, "%u SEQ_WAIT requests already pending",
					   WAITERS_MAX);
		w = calloc(1, sizeof(*w));
		if (!w)
			return reply_error(c, h->opcode, h->serial, ENOMEM, "out of memory");
		w->serial = h->serial;
		w->n_tokens = req.n_tokens;
		w->next = q->waiters;
		q->waiters = w;
		q->n_waiters++;
		answer_waiters(q);
		return 0;
	}
	rep = (struct tqkv_seq_tokens_reply){ q->committed, published_tokens(q) };
	return reply(c, h->opcode, h->serial, &rep, sizeof(rep));
}

static int do_seq_close(struct client *c, const struct tqkv_msg_header *h, struct msg_reader *rd)
{
	struct tqkv_seq_close req;
	struct sequence *q;
	int r = read_seq_request(c, h, rd, &req, sizeof(req), &q);

	if (r <= 0 || !q)
		return r;
	seq_close(q);
	return reply(c, h->opcode, h->serial, NULL, 0);
}

static int do_seq_token_ids(struct client *c, const struct tqkv_msg_header *h, struct msg_reader *rd)
{
	struct tqkv_seq_token_ids req;
	struct sequence *q;
	struct tqkv_seq_tokens_reply rep;
	uint32_t *ids;
	uint64_t before;
	int r = read_seq_request(c, h, rd, &req, sizeof(req), &q);

	if (r <= 0 || !q)
		return r;
	before = q->n_ids;
	if (req.reserved || msg_remaining(rd) != (size_t)req.n * sizeof(*ids)) {
		violation(c, h->opcode, h->serial, EBADMSG, "SEQ_TOKENS size does not match n");
		return -EBADMSG;
	}
	if ((uint64_t)req.first + req.n > c->server->cfg->limits.max_tokens_per_sequence)
		return reply_error(c, h->opcode, h->serial, EFBIG, "sequence limit is %u tokens",
				   c->server->cfg->limits.max_tokens_per_sequence);
	ids = malloc((size_t)req.n * sizeof(*ids) + 1);
	if (!ids)
		return reply_error(c, h->opcode, h->serial, ENOMEM, "out of memory");
	msg_read(rd, ids, (size_t)req.n * sizeof(*ids));
	r = add_ids(q, req.first, ids, req.n);
	free(ids);
	if (r == 0)
		lookup_prefix(q, q->n_ids - before);
	if (r == -EINVAL)
		return reply_error(c, h->opcode, h->serial, EINVAL,
				   "token ids from %u do not follow the %llu known ones, or differ from them", req.first,
				   (unsigned long long)q->n_ids);
	if (r < 0)
		return reply_error(c, h->opcode, h->serial, -r, "%s", ids_error(r));
	hash_blocks(c->server, q);
	rep = (struct tqkv_seq_tokens_reply){ q->committed, published_tokens(q) };
	return reply(c, h->opcode, h->serial, &rep, sizeof(rep));
}

static int do_seq_fork(struct client *c, const struct tqkv_msg_header *h, struct msg_reader *rd)
{
	struct tqkv_seq_close req;
	struct sequence *src, *q;
	int r = read_seq_request(c, h, rd, &req, sizeof(req), &src);

	if (r <= 0 || !src)
		return r;
	r = seq_create(c, &q);
	if (r < 0)
		return reply_error(c, h->opcode, h->serial, -r, "cannot fork sequence %u: %s", src->id,
				   seq_create_error(r));
	q->private = src->private;
	q->blocks = malloc((src->n_blocks ? src->n_blocks : 1) * sizeof(*q->blocks));
	r = q->blocks ? add_ids(q, 0, src->ids, src->n_ids) : -ENOMEM;
	if (r < 0) {
		seq_close(q);
		return reply_error(c, h->opcode, h->serial, -r, "%s", ids_error(r));
	}
	q->blocks_cap = src->n_blocks ? src->n_blocks : 1;
	seq_adopt(q, src->blocks, src->n_blocks, q->means_bytes ? arena_ptr(c->tenant->arena, src->means_offset) : NULL);
	q->n_hashed = src->n_hashed;
	/* It continues from where src is: what src passed, it has passed. */
	pass_windows_to(c->server, q, src->window_passed);
	return reply_opened(c, h, q);
}

/* Going back to keep tokens, q needs again the window pages of the blocks
 * it had passed since: false if some are freed already. */
static bool windows_regained(const struct sequence *q, uint64_t keep)
{
	const struct model *m = q->client->model;
	uint64_t end = keep / m->block_tokens < q->window_passed ? keep / m->block_tokens : q->window_passed;

	for (uint64_t i = window_frontier(m, keep); i < end; i++)
		if (!has_window_pages(m, q->blocks[i]))
			return false;
	return true;
}

static int do_seq_trim(struct client *c, const struct tqkv_msg_header *h, struct msg_reader *rd)
{
	uint32_t B = c->model ? c->model->block_tokens : 1;
	struct tqkv_seq_tokens req;
	struct tqkv_seq_tokens_reply rep;
	struct sequence *q;
	uint64_t keep;
	int r = read_seq_request(c, h, rd, &req, sizeof(req), &q);

	if (r <= 0 || !q)
		return r;
	if (q->job_in_flight)
		return reply_error(c, h->opcode, h->serial, EBUSY,
				   "sequence %u: a block is being compressed; wait for it before trimming", q->id);
	keep = req.n_tokens < q->committed ? req.n_tokens : q->committed;
	if (keep < q->n_blocks * B)
		keep = keep / B * B;
	if (!windows_regained(q, keep))
		return reply_error(c, h->opcode, h->serial, ENODATA,
				   "sequence %u: pages of its sliding-window layers that token %llu needs are freed; "
				   "trim to a later token", q->id, (unsigned long long)keep);
	q->committed = keep;
	q->attaching = false;
	if (q->n_ids > keep)
		q->n_ids = keep;
	if (keep < q->n_blocks * B) {
		seq_truncate(c->server, q, keep / B);
		retry_stalled(c->server);
	}
	while (q->window_passed > window_frontier(c->model, keep))
		cache_window_unpass(c->server->cache, q->blocks[--q->window_passed]);
	/* Fewer full blocks may be left to publish: a wait for a block that
	 * waited for memory is answered now, not once memory frees. */
	answer_waiters(q);
	rep = (struct tqkv_seq_tokens_reply){ q->committed, published_tokens(q) };
	return reply(c, h->opcode, h->serial, &rep, sizeof(rep));
}

/* Root and the daemon's own user see and manage every tenant. */
static bool sees_all_tenants(const struct client *c)
{
	return c->uid == 0 || c->uid == getuid();
}

/* Sends what was written to an open_memstream() as the reply. */
static int reply_memstream(struct client *c, const struct tqkv_msg_header *h, FILE *f, char **buf, size_t *len)
{
	int r;

	if (fclose(f) != 0 || !*buf) {
		free(*buf);
		return reply_error(c, h->opcode, h->serial, ENOMEM, "out of memory");
	}
	r = reply(c, h->opcode, h->serial, *buf, *len);
	free(*buf);
	return r;
}

/* Drops the cached blocks no sequence holds: the caller's tenant's, or
 * every tenant's when the caller is root or the daemon's own user. */
static int do_flush(struct client *c, const struct tqkv_msg_header *h)
{
	struct server *s = c->server;
	bool all = sees_all_tenants(c);
	struct tqkv_flush_reply rep = { 0 };
	struct cblock *b;

	save_let_go_written(s);
	while ((b = cache_evict(s->cache, all ? NULL : &c->tenant->usage))) {
		rep.blocks += !b->refs;
		rep.bytes += evict(s, b);
	}
	log_info("client %u (pid %d, uid %u): flushed %llu cached blocks (%llu bytes)%s", c->id, (int)c->pid,
		 (unsigned)c->uid, (unsigned long long)rep.blocks, (unsigned long long)rep.bytes,
		 all ? "" : " of its tenant");
	retry_stalled(s);
	return reply(c, h->opcode, h->serial, &rep, sizeof(rep));
}

static double ratio(uint64_t num, uint64_t den)
{
	return den ? (double)num / (double)den : 0.0;
}

static void print_usage(FILE *f, const struct cache_usage *u)
{
	fprintf(f,
		"blocks:%llu\nblocks_indexed:%llu\nblocks_cached:%llu\n"
		"bytes_pinned:%llu\nbytes_cached:%llu\nbytes_fp16_equivalent:%llu\ncompression_ratio:%.3f\n",
		(unsigned long long)u->blocks, (unsigned long long)u->indexed, (unsigned long long)u->lru_blocks,
		(unsigned long long)(u->bytes - u->lru_bytes), (unsigned long long)u->lru_bytes,
		(unsigned long long)u->fp16_bytes, ratio(u->fp16_bytes, u->bytes));
}

/* INFO-style text: "# Section" headers and key:value lines; one "# Tenant
 * NAME" section per tenant (only the caller's own unless it is root or
 * the daemon's user). */
static int do_stats(struct client *c, const struct tqkv_msg_header *h)
{
	struct server *s = c->server;
	const struct cache_usage *u = cache_usage(s->cache);
	bool all = sees_all_tenants(c);
	uint64_t sequences = 0, tail = 0, resident = 0;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return reply_error(c, h->opcode, h->serial, ENOMEM, "out of memory");
	for (struct tenant *t = s->tenants; t; t = t->next)
		resident += t->arena ? arena_bytes_resident(t->arena) : 0;
	for (struct client *k = s->clients; k; k = k->next)
		for (struct sequence *q = k->seqs; q; q = q->next) {
			if (q->closed)
				continue;
			sequences++;
			tail += q->committed - published_tokens(q);
		}
	fprintf(f,
		"# Server\n"
		"version:%s\nprotocol_version:%u\npid:%d\nuptime_sec:%llu\nblock_tokens:%u\n"
		"# Clients\n"
		"clients:%u\nclients_total:%llu\n"
		"# Memory\n"
		"memory_budget_bytes:%llu\narena_bytes_used:%llu\narena_bytes_resident:%llu\nstaging_bytes:%llu\n"
		"# Sequences\n"
		"sequences:%llu\nsequences_total:%llu\ntail_tokens:%llu\n"
		"# Blocks\n"
		"blocks_compressed:%llu\nblocks_live:%llu\nblocks_freed:%llu\n"
		"bytes_compressed:%llu\nbytes_fp16_equivalent:%llu\ncompression_ratio:%.3f\n"
		"# Cache\n"
		"prefix_lookups:%llu\nprefix_query_tokens:%llu\nprefix_hit_tokens:%llu\nprefix_hit_rate:%.4f\n"
		"blocks_indexed:%llu\nblocks_cached:%llu\nbytes_pinned:%llu\nbytes_cached:%llu\n"
		"evicted_blocks:%llu\nevicted_bytes:%llu\nwindow_freed_blocks:%llu\nwindow_freed_bytes:%llu\n"
		"snapshot_loaded_blocks:%llu\nfdstore_adopted_blocks:%llu\n"
		"# Worker\n"
		"worker_threads:%u\nworker_queue_depth:%u\ncompress_usec_total:%llu\ncompress_failures:%llu\n"
		"# Requests\n"
		"requests_total:%llu\nerrors_total:%llu\nprotocol_violations_total:%llu\n",
		TQKV_VERSION, TQKV_PROTOCOL_VERSION, (int)getpid(),
		(unsigned long long)((now_usec() - s->start_usec) / 1000000u), s->cfg->block_tokens,
		s->n_clients, (unsigned long long)s->stats.clients_total,
		(unsigned long long)s->cfg->memory_budget, (unsigned long long)s->arena_used,
		(unsigned long long)resident, (unsigned long long)s->staging_bytes,
		(unsigned long long)sequences, (unsigned long long)s->stats.sequences_total, (unsigned long long)tail,
		(unsigned long long)s->stats.blocks_compressed, (unsigned long long)u->blocks,
		(unsigned long long)s->stats.blocks_freed, (unsigned long long)u->bytes,
		(unsigned long long)u->fp16_bytes, ratio(u->fp16_bytes, u->bytes),
		(unsigned long long)s->stats.prefix_lookups, (unsigned long long)s->stats.prefix_query_tokens,
		(unsigned long long)s->stats.prefix_hit_tokens,
		ratio(s->stats.prefix_hit_tokens, s->stats.prefix_query_tokens),
		(unsigned long long)u->indexed, (unsigned long long)u->lru_blocks,
		(unsigned long long)(u->bytes - u->lru_bytes), (unsigned long long)u->lru_bytes,
		(unsigned long long)s->stats.evicted_blocks, (unsigned long long)s->stats.evicted_bytes,
		(unsigned long long)s->stats.window_freed_blocks, (unsigned long long)s->stats.window_freed_bytes,
		(unsigned long long)s->stats.snapshot_loaded_blocks, (unsigned long long)s->stats.fdstore_adopted_blocks,
		s->cfg->worker_threads, worker_queue_depth(s->pool),
		(unsigned long long)(s->stats.encode_nsec / 1000u), (unsigned long long)s->stats.compress_failures,
		(unsigned long long)s->stats.requests, (unsigned long long)s->stats.errors,
		(unsigned long long)s->stats.violations);
	for (struct tenant *t = s->tenants; t; t = t->next) {
		if (!all && t != c->tenant)
			continue;
		fprintf(f, "# Tenant %s\nclients:%u\nsequences_total:%llu\narena_bytes_used:%llu\narena_bytes_resident:%llu\n",
			t->name, t->clients, (unsigned long long)t->sequences, (unsigned long long)t->arena_used,
			(unsigned long long)(t->arena ? arena_bytes_resident(t->arena) : 0));
		fprintf(f, "prefix_lookups:%llu\nprefix_query_tokens:%llu\nprefix_hit_tokens:%llu\nprefix_hit_rate:%.4f\n",
			(unsigned long long)t->prefix_lookups, (unsigned long long)t->prefix_query_tokens,
			(unsigned long long)t->prefix_hit_tokens, ratio(t->prefix_hit_tokens, t->prefix_query_tokens));
		print_usage(f, &t->usage);
	}
	return reply_memstream(c, h, f, &buf, &len);
}

static int do_list(struct client *c, const struct tqkv_msg_header *h)
{
	bool all = sees_all_tenants(c);
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return reply_error(c, h->opcode, h->serial, ENOMEM, "out of memory");
	for (struct client *k = c->server->clients; k; k = k->next) {
		if (!all && k->tenant != c->tenant)
			continue;
		for (struct sequence *q = k->seqs; q; q = q->next) {
			uint64_t shared = 0;

			if (q->closed)
				continue;
			for (uint64_t b = 0; b < q->n_blocks; b++)
				shared += q->blocks[b]->refs > 1;
			fprintf(f,
				"# Sequence %u\ntenant:%s\nclient:%u\npid:%d\ntokens:%llu\npublished_tokens:%llu\n"
				"blocks:%llu\nblocks_shared:%llu\nbytes:%llu\nprivate:%d\n",
				q->id, k->tenant->name, k->id, (int)k->pid, (unsigned long long)q->committed,
				(unsigned long long)published_tokens(q), (unsigned long long)q->n_blocks,
				(unsigned long long)shared, (unsigned long long)(q->n_blocks * k->model->block_bytes),
				q->private);
		}
	}
	return reply_memstream(c, h, f, &buf, &len);
}

/* Validation in STYLE.md's order, then dispatch.  Returns < 0 when the
 * client is gone. */
static int dispatch(struct client *c, const struct tqkv_msg_header *h, const uint8_t *payload)
{
	struct msg_reader rd = { payload, h->size - sizeof(*h), 0 };
	const struct msg_spec *spec;
	int r;

	c->server->stats.requests++;
	/* The client may have seen blocks published that the loop has not
	 * heard of yet: requests see at least what their sender saw. */
	worker_collect(c->server->pool);
	r = msg_check_request(h, c->server->cfg->limits.max_message_bytes);
	if (r < 0) {
		violation(c, h->opcode, h->serial, -r,
			  r == -EOPNOTSUPP ? "unknown opcode" : r == -EPROTO ? "unexpected file descriptors"
											     : "malformed message");
		return r;
	}
	spec = msg_spec_of(h->opcode);
	if (!c->hello && h->opcode != TQKV_OP_HELLO) {
		violation(c, h->opcode, h->serial, EPROTO, "HELLO must come first");
		return -EPROTO;
	}
	if (c->hello && h->opcode == TQKV_OP_HELLO) {
		violation(c, h->opcode, h->serial, EPROTO, "second HELLO");
		return -EPROTO;
	}
	if (spec->needs_model && !c->model)
		return reply_error(c, h->opcode, h->serial, ENOENT, "%s needs a registered model", spec->name);

	switch (h->opcode) {
	case TQKV_OP_HELLO:
		return do_hello(c, h, &rd);
	case TQKV_OP_REGISTER_MODEL:
		return do_register(c, h, &rd);
	case TQKV_OP_SEQ_OPEN:
		return do_seq_open(c, h, &rd);
	case TQKV_OP_SEQ_TOKENS:
		return do_seq_token_ids(c, h, &rd);
	case TQKV_OP_SEQ_FORK:
		return do_seq_fork(c, h, &rd);
	case TQKV_OP_SEQ_TRIM:
		return do_seq_trim(c, h, &rd);
	case TQKV_OP_FLUSH:
		return do_flush(c, h);
	case TQKV_OP_LIST:
		return do_list(c, h);
	case TQKV_OP_SEQ_COMMIT:
	case TQKV_OP_SEQ_WAIT:
		return do_seq_tokens(c, h, &rd);
	case TQKV_OP_SEQ_CLOSE:
		return do_seq_close(c, h, &rd);
	case TQKV_OP_STATS:
		return do_stats(c, h);
	default:
		return reply(c, h->opcode, h->serial, NULL, 0);  /* PING */
	}
}

/* ---- connections ---------------------------------------------------- */

static void close_fds(const struct msghdr *mh)
{
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR((struct msghdr *)mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			int fds[FDS_MAX];

			memcpy(fds, CMSG_DATA(cm), n * sizeof(int));
			for (size_t i = 0; i < n && i < FDS_MAX; i++)
				close(fds[i]);
		}
}

static void on_idle(uv_idle_t *idle);

/* Handles the complete requests in c->in, at most *budget of them, and
 * keeps the rest of the bytes; complete requests left over are c's
 * backlog, for on_idle(): the socket may have nothing more to wake us. */
static void handle_input(struct client *c, unsigned *budget)
{
	size_t cap = c->server->cfg->limits.max_message_bytes, off = 0;

	c->backlog = false;
	while (c->in_len - off >= sizeof(struct tqkv_msg_header)) {
		struct tqkv_msg_header h;

		memcpy(&h, c->in + off, sizeof(h));
		if (h.size < sizeof(h) || h.size > cap) {
			violation(c, h.opcode, h.serial, h.size > cap ? EMSGSIZE : EBADMSG,
				  h.size > cap ? "message larger than max_message_bytes" : "message size below header");
			return;
		}
		if (c->in_len - off < h.size)
			break;
		if (*budget == 0) {
			c->backlog = true;
			uv_idle_start(&c->server->idle, on_idle);
			break;
		}
		(*budget)--;
		/* Handlers return what sending their reply returned: a client
		 * that does not read its replies (output over the cap, or fds
		 * that cannot go out) is disconnected rather than left without
		 * answers. */
		if (dispatch(c, &h, c->in + off + sizeof(h)) < 0 && !c->dead) {
			if (ratelimit_below(&c->rl))
				log_warning("client %u (pid %d): replies cannot be delivered, disconnecting", c->id,
					    (int)c->pid);
			client_disconnect(c);
		}
		if (c->dead)
			return;
		off += h.size;
	}
	/* Once per call: moving the rest after every request is quadratic. */
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
}

/* Another share of every backlog, once per loop iteration; polling does
 * not wait meanwhile. */
static void on_idle(uv_idle_t *idle)
{
	struct server *s = idle->data;
	bool more = false;

	for (struct client *c = s->clients, *next; c; c = next) {
		unsigned budget = REQUESTS_PER_WAKEUP;

		next = c->next;  /* handling may disconnect c */
		if (!c->backlog)
			continue;
		handle_input(c, &budget);
		more = more || (c->backlog && !c->dead);
	}
	if (!more)
		uv_idle_stop(idle);
}

/* The poll is level-triggered: bytes left in the socket wake us again on
 * the next iteration. */
static void on_client_event(uv_poll_t *p, int status, int events)
{
	struct client *c = p->data;
	size_t cap = c->server->cfg->limits.max_message_bytes;
	unsigned budget = REQUESTS_PER_WAKEUP;

	if (status < 0) {
		client_disconnect(c);
		return;
	}
	if (events & UV_WRITABLE) {
		if (flush_out(c) < 0) {
			client_disconnect(c);
			return;
		}
	}
	/* With a backlog, `in` may be full: on_idle() reads on. */
	if (!(events & UV_READABLE) || c->backlog)
		return;
	for (unsigned i = 0; i < READS_PER_WAKEUP && budget; i++) {
		union {
			char buf[CMSG_SPACE(sizeof(int) * FDS_MAX)];
			struct cmsghdr align;
		} ctl;
		struct iovec iov = { c->in + c->in_len, cap - c->in_len };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
				     .msg_controllen = sizeof(ctl.buf) };
		ssize_t n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			client_disconnect(c);
			return;
		}
		if (mh.msg_controllen || (mh.msg_flags & MSG_CTRUNC)) {
			/* Requests never carry fds: close whatever came. */
			close_fds(&mh);
			violation(c, 0, 0, EPROTO, "unexpected file descriptors");
			return;
		}
		c->in_len += (size_t)n;
		handle_input(c, &budget);
		if (c->dead || c->backlog)
			return;
	}
}

static void client_free(struct client *c)
{
	if (c->staging)
		munmap(c->staging, c->staging_bytes);
	if (c->staging_fd >= 0)
		close(c->staging_fd);
	c->server->staging_bytes -= c->staging_bytes;
	model_free(c->model);
	free(c->slots);
	free(c->in);
	free(c->out);
	free(c);
}

static void on_client_closed(uv_handle_t *h)
{
	client_unref(h->data);
}

static void client_unref(struct client *c)
{
	if (--c->refs == 0)
		client_free(c);
}

static void client_disconnect(struct client *c)
{
	struct server *s = c->server;
	struct client **pp;

	if (c->dead)
		return;
	c->dead = true;
	for (struct sequence *q = c->seqs, *next; q; q = next) {
		next = q->next;  /* seq_close() may free q */
		seq_close(q);
	}
	for (pp = &s->clients; *pp != c; pp = &(*pp)->next)
		;
	*pp = c->next;
	s->n_clients--;
	c->tenant->clients--;
	log_debug("client %u (pid %d): disconnected", c->id, (int)c->pid);
	uv_poll_stop(&c->poll);
	close(c->fd);
	c->fd = -1;
	/* The poll handle's close callback drops the client's own ref. */
	uv_close((uv_handle_t *)&c->poll, on_client_closed);
}

/* The tenant of a uid or gid, created on first use; NULL without memory. */
static struct tenant *tenant_of(struct server *s, uint32_t id)
{
	struct tenant *t;

	for (t = s->tenants; t; t = t->next)
		if (t->id == id)
			return t;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->id = (uint32_t)id;
	snprintf(t->name, sizeof(t->name), "%s:%u", s->cfg->tenancy == TENANCY_GID ? "gid" : "uid", (unsigned)id);
	t->next = s->tenants;
	s->tenants = t;
	return t;
}

static void on_listen_event(uv_poll_t *p, int status, int events)
{
	struct server *s = p->data;

	if (status < 0)
		return;
	for (;;) {
		struct ucred cred;
		socklen_t len = sizeof(cred);
		struct client *c;
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0) {
			if (errno != EAGAIN && errno != ECONNABORTED && ratelimit_below(&s->rl))
				log_warning_errno(errno, "Failed to accept connection");
			return;
		}
		if (s->n_clients >= s->cfg->limits.max_clients) {
			if (ratelimit_below(&s->rl))
				log_warning("refusing connection: max_clients (%u) reached", s->cfg->limits.max_clients);
			close(fd);
			continue;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
			if (ratelimit_below(&s->rl))
				log_warning_errno(errno, "refusing connection: no peer credentials");
			close(fd);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (c) {
			c->in = malloc(s->cfg->limits.max_message_bytes);
			c->tenant = tenant_of(s, s->cfg->tenancy == TENANCY_GID ? cred.gid : cred.uid);
		}
		if (!c || !c->in || !c->tenant || uv_poll_init(s->loop, &c->poll, fd) < 0) {
			if (c)
				free(c->in);
			free(c);
			close(fd);
			continue;
		}
		c->server = s;
		c->fd = fd;
		c->staging_fd = -1;
		c->refs = 1;
		c->id = ++s->next_client_id;
		c->rl = RATELIMIT_INIT(10u * 1000000u, 10);
		c->poll.data = c;
		c->pid = cred.pid;
		c->uid = cred.uid;
		c->tenant->clients++;
		c->next = s->clients;
		s->clients = c;
		s->n_clients++;
		s->stats.clients_total++;
		uv_poll_start(&c->poll, UV_READABLE, on_client_event);
		log_debug("client %u (pid %d, uid %u): connected", c->id, (int)c->pid, (unsigned)c->uid);
	}
}

/* ---- persistence ---------------------------------------------------- */

/* What a snapshot writes.  The blocks stay referenced (pinned) until
 * their records are written, so a background write reads only immutable
 * bytes; the writer sets written[i] then, and the loop lets go of them
 * when it needs room (save_let_go_written()). */
struct save_job {
	struct server *server;
	struct snapshot_block *blocks;
	struct cblock **held;      /* NULL once let go of */
	atomic_bool *written;      /* set by the writer */
	size_t n, cap;
	size_t top;                /* held[i] is NULL for every i >= top */
	bool failed;
	int result;
	struct snapshot_result res;
	char err[256];
};

static void save_one(void *userdata, struct cblock *b)
{
	struct save_job *j = userdata;
	struct tenant *t = tenant_of_usage(b->usage);

	if (j->failed)
		return;
	if (j->n == j->cap) {
		size_t cap = j->cap ? 2 * j->cap : 1024;
		struct snapshot_block *p = realloc(j->blocks, cap * sizeof(*p));
		struct cblock **h = p ? realloc(j->held, cap * sizeof(*h)) : NULL;

		if (p)
			j->blocks = p;
		if (!h) {
			j->failed = true;
			return;
		}
		j->held = h;
		j->cap = cap;
	}
	j->blocks[j->n] = (struct snapshot_block){
		.hash = b->hash,
		.record = arena_ptr(t->arena, b->offset),
		.record_bytes = b->bytes,
		.fp16_bytes = b->fp16_bytes,
		.means = b->means,
		.means_bytes = b->means ? (uint32_t)b->means_bytes : 0,
	};
	memcpy(j->blocks[j->n].tenant, t->name, sizeof(t->name));
	j->held[j->n++] = b;
}

/* Lists every indexed block, most recently used first, and holds them. */
static struct save_job *save_job_new(struct server *s)
{
	struct save_job *j = calloc(1, sizeof(*j));

	if (!j)
		return NULL;
	j->server = s;
	cache_for_each_indexed(s->cache, save_one, j);
	j->written = j->failed ? NULL : calloc(j->n ? j->n : 1, sizeof(*j->written));
	if (!j->written) {
		free(j->blocks);
		free(j->held);
		free(j);
		return NULL;
	}
	for (size_t i = 0; i < j->n; i++) {
		atomic_init(&j->written[i], false);
		j->blocks[i].written = &j->written[i];
		cache_ref(s->cache, j->held[i]);
	}
	j->top = j->n;
	return j;
}

/* Lets go of block i: unheld, it goes back to the LRU list after the ones
 * let go of before (listed after it: older) and before every block unheld
 * since the save began (newer). */
static void save_let_go(struct save_job *j, size_t i)
{
	struct server *s = j->server;
	struct cblock *b = j->held[i];

	j->held[i] = NULL;
	if (cache_unref_saved(s->cache, b) == CACHE_FREE_BLOCK)
		free_block(s, b);  /* only indexed blocks are held: never a window alone */
}

/* Lets go of the blocks the background snapshot has written, least
 * recently used first; returns how many. */
static size_t save_let_go_written(struct server *s)
{
	struct save_job *j = s->saving;
	size_t n = 0;

	if (!j)
		return 0;
	for (size_t i = j->top; i-- > 0;)
		if (j->held[i] && atomic_load_explicit(&j->written[i], memory_order_acquire)) {
			save_let_go(j, i);
			n++;
		}
	while (j->top && !j->held[j->top - 1])
		j->top--;
	return n;
}

/* Lets go of the blocks still held, in the order of the list (most recent
 * first) reversed, which keeps it. */
static void save_job_free(struct save_job *j)
{
	for (size_t i = j->top; i-- > 0;)
		if (j->held[i])
			save_let_go(j, i);
	free(j->blocks);
	free(j->held);
	free(j->written);
	free(j);
}

static void save_job_run(struct save_job *j)
{
	const struct tqkvd_config *cfg = j->server->cfg;

	j->result = snapshot_write(cfg->state_dir, cfg->block_tokens, j->blocks, j->n, &j->res, j->err, sizeof(j->err));
}

static void save_job_log(const struct save_job *j, const char *when)
{
	if (j->result < 0) {
		log_error_errno(j->result, "Failed to save the cache: %s", j->err);
		return;
	}
	log_info("Saved %llu cached blocks (%.1f MiB) to %s/%s %sin %.3f s (%.2f GB/s)",
		 (unsigned long long)j->res.blocks, (double)j->res.bytes / 1048576.0, j->server->cfg->state_dir,
		 SNAPSHOT_FILE, when, j->res.seconds, j->res.seconds > 0 ? (double)j->res.bytes / j->res.seconds / 1e9 : 0.0);
	if (j->res.skipped)
		log_warning("The saved cache lacks some blocks: %s", j->res.problem);
}

int server_save(struct server *s)
{
	struct save_job *j;
	int r;

	if (!s->cfg->state_dir)
		return 0;
	if (s->saving) {
		/* The background snapshot finishes first, then this one. */
		s->save_when_done = true;
		return 0;
	}
	j = save_job_new(s);
	if (!j)
		return log_error_errno(ENOMEM, "Failed to save the cache: out of memory");
	save_job_run(j);
	save_job_log(j, "");
	r = j->result;
	save_job_free(j);
	return r;
}

static void on_snapshot_work(uv_work_t *w)
{
	save_job_run(w->data);
}

static void on_snapshot_done(uv_work_t *w, int status)
{
	struct save_job *j = w->data;
	struct server *s = j->server;

	if (status == 0 && j->result < 0)
		save_job_log(j, "in the background ");
	else if (status == 0)
		log_debug("Saved %llu cached blocks in the background in %.3f s", (unsigned long long)j->res.blocks,
			  j->res.seconds);
	s->saving = NULL;
	save_job_free(j);
	/* Sequences may have waited for blocks it held. */
	retry_stalled(s);
	if (s->save_when_done) {
		s->save_when_done = false;
		server_save(s);
	}
}

/* Sequences waited for memory during a background snapshot: once it has
 * written more blocks, lets go of them and tries again; until it is done
 * (on_snapshot_done() tries again too). */
static void on_save_retry(uv_timer_t *t)
{
	struct server *s = t->data;

	if (!s->saving)
		return;
	if (save_let_go_written(s))
		retry_stalled(s);
	else
		uv_timer_start(t, on_save_retry, SAVE_RETRY_MSEC, 0);
}

static void on_snapshot_timer(uv_timer_t *t)
{
	struct server *s = t->data;
	struct save_job *j;

	if (s->saving)
		return;
	j = save_job_new(s);
	if (!j)
		return;
	s->saving = j;
	s->snapshot_work.data = j;
	if (uv_queue_work(s->loop, &s->snapshot_work, on_snapshot_work, on_snapshot_done) < 0) {
		s->saving = NULL;
		save_job_free(j);
	}
}

/* A tenant named in a snapshot, if the tenancy still names it so. */
static struct tenant *tenant_by_name(struct server *s, const char *name)
{
	const char *kind = s->cfg->tenancy == TENANCY_GID ? "gid:" : "uid:";
	char *end;
	unsigned long id;

	if (strncmp(name, kind, 4) != 0)
		return NULL;
	errno = 0;
	id = strtoul(name + 4, &end, 10);
	if (errno || *end || end == name + 4 || id > UINT32_MAX)
		return NULL;
	return tenant_of(s, (uint32_t)id);
}

/* Gives the tenant its arena; with the fd store, parks the arena and a
 * new directory there. */
static int tenant_create_arena(struct server *s, struct tenant *t)
{
	int r = arena_new(s->cfg->memory_budget, &t->arena);

	if (r < 0)
		return r;
	if (!s->fdstore)
		return 0;
	r = directory_new(arena_size(t->arena), &t->dir);
	for (unsigned i = 0; r >= 0 && i < 2; i++) {
		char msg[96];
		int fd = i ? directory_fd(t->dir) : arena_fd(t->arena);
		char *p;

		/* FDNAME= may not hold ':'; the start time keeps names unique
		 * across restarts. */
		snprintf(t->fd_names[i], sizeof(t->fd_names[i]), "%s-%s-%llu", i ? "dir" : "arena", t->name,
			 (unsigned long long)s->start_usec);
		for (p = t->fd_names[i]; *p; p++)
			if (*p == ':')
				*p = '_';
		snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", t->fd_names[i]);
		r = sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
		if (r == 0)
			r = -ENOTCONN;
	}
	if (r < 0) {
		log_warning_errno(r, "Failed to park the memory of tenant %s in the fd store; a crash loses its cache",
				  t->name);
		directory_free(t->dir);
		t->dir = NULL;
	}
	return 0;
}

/* A block from a snapshot or from a crashed daemon's arena, copied into
 * the tenant's arena as a cached, unheld block older than those before. */
static int restore_block(struct server *s, struct tenant *t, XXH128_hash_t hash, const void *record, uint64_t bytes,
			 uint64_t fp16_bytes, const void *means, uint32_t means_bytes)
{
	struct cblock *blk;
	uint64_t off;

	if (cache_lookup(s->cache, hash))
		return -EEXIST;
	if (!t->arena && tenant_create_arena(s, t) < 0)
		return -ENOMEM;
	/* Those restored first are the most recently used: never evict them
	 * for the ones after, past the budget or past the tenant's quota. */
	if (s->arena_used + bytes > s->cfg->memory_budget ||
	    (s->cfg->tenant_quota && t->arena_used + bytes > s->cfg->tenant_quota) ||
	    alloc_evicting(s, t, bytes, &off) < 0)
		return -ENOMEM;
	blk = cache_block_new(s->cache, &t->usage, off, bytes, fp16_bytes, 0);
	if (blk && means_bytes) {
		blk->means = malloc(means_bytes);
		if (blk->means) {
			memcpy(blk->means, means, means_bytes);
			blk->means_bytes = means_bytes;
		}
	}
	if (!blk || (means_bytes && !blk->means)) {
		if (blk)
			cache_block_free(s->cache, blk);
		tenant_release(s, t, off, bytes);
		return -ENOMEM;
	}
	memcpy(arena_ptr(t->arena, off), record, bytes);
	index_block(s, blk, hash);
	cache_unref_oldest(s->cache, blk);
	return 0;
}

static int load_one(void *userdata, const struct snapshot_block *b)
{
	struct server *s = userdata;
	struct tenant *t = tenant_by_name(s, b->tenant);

	if (!t)
		return -EINVAL;
	return restore_block(s, t, b->hash, b->record, b->record_bytes, b->fp16_bytes, b->means, b->means_bytes);
}

void server_set_fdstore(struct server *s, bool on)
{
	s->fdstore = on;
}

struct adoption {
	struct server *s;
	struct tenant *t;
	const uint8_t *old;
	uint64_t old_size, blocks, bytes, skipped;
};

static bool in_range(uint64_t offset, uint64_t bytes, uint64_t size)
{
	return offset <= size && bytes <= size - offset;
}

static void adopt_entry(void *userdata, const struct dir_entry *e)
{
	struct adoption *a = userdata;
	const struct tqkv_block_header *h = (const void *)(a->old + e->offset);

	if (e->bytes < sizeof(*h) || e->offset % 8 || !in_range(e->offset, e->bytes, a->old_size) ||
	    (e->means_bytes && (e->means_bytes % sizeof(float) || !in_range(e->means_offset, e->means_bytes, a->old_size))) ||
	    h->magic != TQKV_BLOCK_MAGIC || h->record_bytes != e->bytes ||
	    restore_block(a->s, a->t, e->hash, h, e->bytes, e->fp16_bytes, a->old + e->means_offset, e->means_bytes) < 0) {
		a->skipped++;
		return;
	}
	a->blocks++;
	a->bytes += e->bytes;
}

static void fdstore_remove(const char *name)
{
	sd_notifyf(0, "FDSTOREREMOVE=1\nFDNAME=%s", name);
}

/* The tenant of an fd store name "arena-uid_1000-GEN" / "dir-...": its
 * name with ':' back, and GEN. */
static struct tenant *tenant_of_fd_name(struct server *s, const char *name, const char **ret_gen)
{
	const char *p = strchr(name, '-'), *gen = p ? strrchr(p + 1, '-') : NULL;
	char tenant[SNAPSHOT_TENANT_MAX];
	size_t n;

	if (!p || !gen || (n = (size_t)(gen - p - 1)) >= sizeof(tenant))
		return NULL;
	memcpy(tenant, p + 1, n);
	tenant[n] = 0;
	if (n > 3 && tenant[3] == '_')
		tenant[3] = ':';
	*ret_gen = gen + 1;
	return tenant_by_name(s, tenant);
}

/* One crashed daemon's tenant: every intact directory entry whose record
 * checks out is copied into the new arena, then the old memfds go. */
static void adopt_pair(struct server *s, int arena_fd, const char *arena_name, int dir_fd, const char *dir_name)
{
	struct adoption a = { .s = s };
	struct directory *d = NULL;
	struct stat st;
	const char *gen;
	void *map = MAP_FAILED;
	uint64_t torn = 0;

	a.t = tenant_of_fd_name(s, arena_name, &gen);
	if (a.t && fstat(arena_fd, &st) == 0 && st.st_size > 0 && directory_adopt(dir_fd, &d) == 0) {
		dir_fd = -1;  /* the directory owns it now */
		a.old_size = (uint64_t)st.st_size;
		map = mmap(NULL, a.old_size, PROT_READ, MAP_SHARED, arena_fd, 0);
	}
	if (map != MAP_FAILED) {
		a.old = map;
		torn = directory_for_each(d, adopt_entry, &a);
		munmap(map, a.old_size);
		log_info("Recovered %llu blocks (%.1f MiB) of tenant %s from the fd store; %llu skipped, %llu torn entries",
			 (unsigned long long)a.blocks, (double)a.bytes / 1048576.0, a.t->name, (unsigned long long)a.skipped,
			 (unsigned long long)torn);
		s->stats.fdstore_adopted_blocks += a.blocks;
	} else {
		log_warning("Dropping %s and %s from the fd store: not a tenant arena and directory of this daemon",
			    arena_name, dir_name);
	}
	directory_free(d);
	close(arena_fd);
	if (dir_fd >= 0)
		close(dir_fd);
	fdstore_remove(arena_name);
	fdstore_remove(dir_name);
}

void server_adopt_fds(struct server *s, const int *fds, char *const *names, size_t n)
{
	bool *used = calloc(n ? n : 1, sizeof(*used));

	if (!used)
		return;
	for (size_t i = 0; i < n; i++) {
		if (strncmp(names[i], "arena-", 6) != 0)
			continue;
		for (size_t j = 0; j < n; j++)
			if (!used[j] && j != i && strncmp(names[j], "dir-", 4) == 0 && !strcmp(names[j] + 4, names[i] + 6)) {
				adopt_pair(s, fds[i], names[i], fds[j], names[j]);
				used[i] = used[j] = true;
				break;
			}
	}
	for (size_t i = 0; i < n; i++)
		if (!used[i]) {
			log_warning("Dropping %s from the fd store: unknown or unpaired", names[i]);
			close(fds[i]);
			fdstore_remove(names[i]);
		}
	free(used);
}

int server_load(struct server *s)
{
	struct snapshot_result res;
	char err[256];
	int r;

	if (!s->cfg->state_dir)
		return 0;
	r = snapshot_read(s->cfg->state_dir, s->cfg->block_tokens, load_one, s, &res, err, sizeof(err));
	if (r == -ENOENT)
		return 0;
	if (r < 0) {
		log_warning("Ignoring the saved cache: %s", err);
		return 0;
	}
	if (res.problem[0])
		log_warning("Loaded %llu cached blocks (%.1f MiB) from %s/%s, not all of it: %s; %llu skipped",
			    (unsigned long long)res.blocks, (double)res.bytes / 1048576.0, s->cfg->state_dir, SNAPSHOT_FILE,
			    res.problem, (unsigned long long)res.skipped);
	else
		log_info("Loaded %llu cached blocks (%.1f MiB) from %s/%s in %.3f s (%.2f GB/s), %llu skipped",
			 (unsigned long long)res.blocks, (double)res.bytes / 1048576.0, s->cfg->state_dir, SNAPSHOT_FILE,
			 res.seconds, res.seconds > 0 ? (double)res.bytes / res.seconds / 1e9 : 0.0,
			 (unsigned long long)res.skipped);
	s->stats.snapshot_loaded_blocks = res.blocks;
	return 0;
}

int server_new(uv_loop_t *loop, const struct tqkvd_config *cfg, int listen_fd, struct server **ret)
{
	struct server *s = calloc(1, sizeof(*s));
	int r;

	if (!s) {
		close(listen_fd);
		return -ENOMEM;
	}
	s->loop = loop;
	s->cfg = cfg;
	s->listen_fd = listen_fd;
	s->start_usec = now_usec();
	s->rl = RATELIMIT_INIT(10u * 1000000u, 20);
	fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
	r = cache_new(&s->cache);
	if (r < 0)
		goto fail;
	r = worker_pool_new(loop, cfg->worker_threads, on_job_done, s, &s->pool);
	if (r < 0) {
		log_error_errno(r, "Failed to start %u worker threads", cfg->worker_threads);
		goto fail;
	}
	r = uv_poll_init(loop, &s->listen_poll, listen_fd);
	if (r < 0)
		goto fail;
	s->listen_poll.data = s;
	uv_poll_start(&s->listen_poll, UV_READABLE, on_listen_event);
	uv_idle_init(loop, &s->idle);
	s->idle.data = s;
	uv_timer_init(loop, &s->snapshot_timer);
	s->snapshot_timer.data = s;
	uv_timer_init(loop, &s->save_retry);
	s->save_retry.data = s;
	if (cfg->state_dir && cfg->snapshot_interval)
		uv_timer_start(&s->snapshot_timer, on_snapshot_timer, (uint64_t)cfg->snapshot_interval * 1000u,
			       (uint64_t)cfg->snapshot_interval * 1000u);
	*ret = s;
	return 0;
fail:
	cache_free(s->cache);
	close(listen_fd);
	free(s);
	return r;
}

void server_stop(struct server *s)
{
	while (s->clients)
		client_disconnect(s->clients);
	worker_pool_free(s->pool);  /* finishes the jobs in flight */
	s->pool = NULL;
	uv_poll_stop(&s->listen_poll);
	uv_close((uv_handle_t *)&s->listen_poll, NULL);
	uv_idle_stop(&s->idle);
	uv_close((uv_handle_t *)&s->idle, NULL);
	/* A clean stop saves a snapshot: the fd store is for crashes. */
	for (struct tenant *t = s->tenants; t; t = t->next)
		if (t->dir) {
			fdstore_remove(t->fd_names[0]);
			fdstore_remove(t->fd_names[1]);
		}
	uv_timer_stop(&s->snapshot_timer);
	uv_close((uv_handle_t *)&s->snapshot_timer, NULL);
	uv_timer_stop(&s->save_retry);
	uv_close((uv_handle_t *)&s->save_retry, NULL);
}

void server_free(struct server *s)
{
	if (!s)
		return;
	close(s->listen_fd);
	cache_free(s->cache);
	while (s->tenants) {
		struct tenant *t = s->tenants;

		s->tenants = t->next;
		directory_free(t->dir);
		arena_free(t->arena);
		free(t);
	}
	free(s);
}
