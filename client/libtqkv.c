/* SPDX-License-Identifier: MIT */
/* libtqkv: connection, registration, sequences and views (include/tqkv/client.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <tqkv/client.h>

#include "model.h"
#include "view-page.h"

#define REPLY_FDS_MAX 4

/* The smallest max_message_bytes this library works with: a one-layer
 * REGISTER_MODEL, which leaves SEQ_OPEN and SEQ_TOKENS room for a token id. */
#define MESSAGE_BYTES_MIN                                                                                     \
	(sizeof(struct tqkv_msg_header) + sizeof(struct tqkv_register_model) + sizeof(struct tqkv_layer_desc))
_Static_assert(MESSAGE_BYTES_MIN >= sizeof(struct tqkv_msg_header) + sizeof(struct tqkv_seq_token_ids) + 4 &&
		       MESSAGE_BYTES_MIN >= sizeof(struct tqkv_msg_header) + sizeof(struct tqkv_seq_open) + 4,
	       "every request fits a token id");
/* Pages hold at most 65535 tokens (tqkv_page_encode_f32()) and blocks are
 * whole 16-token groups. */
#define BLOCK_TOKENS_MAX 65520u

struct tqkv_client {
	int fd;                 /* -1 once lost: see lose_connection() */
	uint32_t serial;
	struct tqkv_hello_reply hello;
	char error[256];
	char lost[256];         /* why the connection was closed, if it was */
	struct model *model;
	struct tqkv_layer_desc *layers;  /* as registered: the daemon's policy applied */
	const uint8_t *arena;
	uint64_t arena_bytes;
	uint8_t *staging;
	uint64_t staging_bytes;
};

struct tqkv_seq {
	struct tqkv_client *client;
	uint32_t id, slot;
	const struct tqkv_seq_desc *desc;  /* shared: only n_blocks is read again */
	uint32_t max_blocks;               /* entries of table, as checked at open */
	const uint64_t *table;
	const float *key_means;   /* NULL if no layer is centered */
	uint8_t *ring;
	uint64_t committed;
	uint64_t written;          /* one past the highest token written (any layer) */
};

static int set_error(struct tqkv_client *c, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int set_error(struct tqkv_client *c, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->error, sizeof(c->error), fmt, ap);
	va_end(ap);
	return r;
}

static int send_all(int fd, const void *p, size_t n)
{
	while (n) {
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);

		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p = (const uint8_t *)p + k;
		n -= (size_t)k;
	}
	return 0;
}

/* tqkv_client_error(NULL): why this thread's last tqkv_client_connect()
 * failed, when it got as far as the HELLO exchange. */
static _Thread_local char connect_error[256];

/*
 * After a failure in the middle of an exchange (short send or read, a reply
 * whose framing we cannot trust, its body left unread) the byte stream can
 * no longer be split into messages: close it, so that later requests fail
 * instead of reading leftovers as headers.
 */
static void lose_connection(struct tqkv_client *c)
{
	memcpy(c->lost, c->error, sizeof(c->lost));
	close(c->fd);
	c->fd = -1;
}

/* Reads exactly n bytes; the first recvmsg collects any fds. */
static int recv_all(int fd, void *p, size_t n, int *fds, unsigned *n_fds)
{
	while (n) {
		union {
			char buf[CMSG_SPACE(sizeof(int) * REPLY_FDS_MAX)];
			struct cmsghdr align;
		} ctl;
		struct iovec iov = { p, n };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
				     .msg_controllen = sizeof(ctl.buf) };
		ssize_t k = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);

		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (k == 0)
			return -ECONNRESET;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			size_t m = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			int got[REPLY_FDS_MAX];

			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			memcpy(got, CMSG_DATA(cm), m * sizeof(int));
			for (size_t i = 0; i < m; i++) {
				if (fds && *n_fds < REPLY_FDS_MAX)
					fds[(*n_fds)++] = got[i];
				else
					close(got[i]);
			}
		}
		p = (uint8_t *)p + k;
		n -= (size_t)k;
	}
	return 0;
}

/*
 * One request and its reply.  The reply payload is copied into out (exactly
 * out_size bytes expected, or up to out_size with ret_len); fds, if any,
 * are returned in fds (the caller closes them).
 */
static int call(struct tqkv_client *c, uint16_t opcode, const void *payload, size_t len, void *out,
		size_t out_size, size_t *ret_len, int *fds, unsigned *n_fds)
{
	struct tqkv_msg_header h = {
		.size = (uint32_t)(sizeof(h) + len),
		.opcode = opcode,
		.serial = ++c->serial,
	};
	unsigned got_fds = 0;
	int got[REPLY_FDS_MAX];
	uint32_t body;
	uint8_t *buf = NULL;
	int r;

	if (c->fd < 0)
		return c->lost[0] ? set_error(c, -EPIPE, "connection to tqkvd closed after an earlier failure (%s)", c->lost)
				  : set_error(c, -ENOTCONN, "not connected");
	r = send_all(c->fd, &h, sizeof(h));
	if (r >= 0 && len)
		r = send_all(c->fd, payload, len);
	if (r >= 0)
		r = recv_all(c->fd, &h, sizeof(h), got, &got_fds);
	if (r < 0) {
		set_error(c, r, "connection to tqkvd lost: %s", strerror(-r));
		lose_connection(c);
		goto out;
	}
	body = h.size >= sizeof(h) ? h.size - (uint32_t)sizeof(h) : 0;
	if (h.size < sizeof(h) || body > (1u << 24) || !(h.flags & TQKV_MSG_REPLY) || h.serial != c->serial ||
	    h.opcode != opcode) {
		r = set_error(c, -EBADMSG, "malformed reply from tqkvd (lost sync)");
		lose_connection(c);
		goto out;
	}
	buf = malloc(body + 1);
	if (!buf) {
		r = set_error(c, -ENOMEM, "out of memory for a reply of %u bytes", body);
		lose_connection(c);
		goto out;
	}
	r = recv_all(c->fd, buf, body, got, &got_fds);
	if (r < 0) {
		set_error(c, r, "connection to tqkvd lost: %s", strerror(-r));
		lose_connection(c);
		goto out;
	}
	if (h.flags & TQKV_MSG_ERROR) {
		struct tqkv_error e = { EPROTO, 0 };

		if (body >= sizeof(e))
			memcpy(&e, buf, sizeof(e));
		if (e.code <= 0)
			e.code = EPROTO;
		if (e.length > body - sizeof(e))
			e.length = (uint32_t)(body - sizeof(e));
		r = set_error(c, -e.code, "%.*s", (int)e.length, (const char *)buf + sizeof(e));
		goto out;
	}
	if (ret_len ? body > out_size : body != out_size) {
		/* Read whole, but the daemon speaks another protocol than ours. */
		r = set_error(c, -EBADMSG, "reply of unexpected size %u from tqkvd", body);
		lose_connection(c);
		goto out;
	}
	if (body)
		memcpy(out, buf, body);
	if (ret_len)
		*ret_len = body;
	if (fds) {
		memcpy(fds, got, got_fds * sizeof(int));
		*n_fds = got_fds;
		got_fds = 0;
	}
	c->error[0] = 0;
	r = 0;
out:
	for (unsigned i = 0; i < got_fds; i++)
		close(got[i]);
	free(buf);
	return r;
}

static int socket_path_default(char *buf, size_t size)
{
	const char *env = getenv("TQKV_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");
	int n;

	if (env && *env)
		n = snprintf(buf, size, "%s", env);
	else if (geteuid() != 0 && xdg && *xdg)
		n = snprintf(buf, size, "%s/tqkv/tqkvd.sock", xdg);
	else
		n = snprintf(buf, size, "/run/tqkv/tqkvd.sock");
	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* The HELLO reply, checked before anything divides by or subtracts from
 * its limits. */
static int check_hello(struct tqkv_client *c)
{
	const struct tqkv_hello_reply *h = &c->hello;

	if (h->version < TQKV_PROTOCOL_VERSION_MIN || h->version > TQKV_PROTOCOL_VERSION)
		return set_error(c, -EPROTO, "tqkvd chose protocol version %u; this libtqkv speaks %u..%u", h->version,
				 TQKV_PROTOCOL_VERSION_MIN, TQKV_PROTOCOL_VERSION);
	if (h->block_tokens == 0 || h->block_tokens % 16 || h->block_tokens > BLOCK_TOKENS_MAX)
		return set_error(c, -EPROTO, "tqkvd announced block_tokens %u, not a multiple of 16 in 16..%u",
				 h->block_tokens, BLOCK_TOKENS_MAX);
	if (h->max_message_bytes < MESSAGE_BYTES_MIN)
		return set_error(c, -EPROTO, "tqkvd announced max_message_bytes %u, less than the %zu this libtqkv needs",
				 h->max_message_bytes, MESSAGE_BYTES_MIN);
	return 0;
}

TQKV_EXPORT int tqkv_client_connect(const char *socket_path, struct tqkv_client **ret)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct tqkv_hello hello = { TQKV_PROTOCOL_VERSION_MIN, TQKV_PROTOCOL_VERSION };
	struct tqkv_client *c;
	int r;

	if (!ret)
		return -EINVAL;
	*ret = NULL;
	connect_error[0] = 0;
	if (socket_path) {
		if (strlen(socket_path) >= sizeof(sa.sun_path))
			return -ENAMETOOLONG;
		strcpy(sa.sun_path, socket_path);
	} else {
		r = socket_path_default(sa.sun_path, sizeof(sa.sun_path));
		if (r < 0)
			return r;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		tqkv_client_free(c);
		return r;
	}
	r = call(c, TQKV_OP_HELLO, &hello, sizeof(hello), &c->hello, sizeof(c->hello), NULL, NULL, NULL);
	if (r >= 0)
		r = check_hello(c);
	if (r < 0) {
		memcpy(connect_error, c->error, sizeof(connect_error));
		tqkv_client_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

TQKV_EXPORT void tqkv_client_free(struct tqkv_client *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	if (c->arena)
		munmap((void *)c->arena, c->arena_bytes);
	if (c->staging)
		munmap(c->staging, c->staging_bytes);
	model_free(c->model);
	free(c->layers);
	free(c);
}

TQKV_EXPORT const char *tqkv_client_error(const struct tqkv_client *c)
{
	return c ? c->error : connect_error;
}

TQKV_EXPORT uint32_t tqkv_client_block_tokens(const struct tqkv_client *c)
{
	return c->hello.block_tokens;
}

TQKV_EXPORT int tqkv_client_ping(struct tqkv_client *c)
{
	return call(c, TQKV_OP_PING, NULL, 0, NULL, 0, NULL, NULL, NULL);
}

/* A request whose reply is text. */
static int call_text(struct tqkv_client *c, uint16_t opcode, char **ret_text)
{
	const size_t cap = 1u << 24;  /* the largest reply call() accepts */
	char *buf = malloc(cap + 1);
	size_t len;
	int r = buf ? call(c, opcode, NULL, 0, buf, cap, &len, NULL, NULL) : -ENOMEM;

	if (r < 0) {
		free(buf);
		return r;
	}
	buf[len] = 0;
	*ret_text = realloc(buf, len + 1);
	if (!*ret_text)
		*ret_text = buf;
	return 0;
}

TQKV_EXPORT int tqkv_client_stats(struct tqkv_client *c, char **ret_text)
{
	return c && ret_text ? call_text(c, TQKV_OP_STATS, ret_text) : -EINVAL;
}

TQKV_EXPORT int tqkv_client_list(struct tqkv_client *c, char **ret_text)
{
	return c && ret_text ? call_text(c, TQKV_OP_LIST, ret_text) : -EINVAL;
}

/* Maps a memfd after checking its seals and size. */
static int map_checked(int fd, uint64_t size, int required_seals, int prot, void **ret)
{
	struct stat st;
	int seals = fcntl(fd, F_GET_SEALS);
	void *p;

	if (seals < 0)
		return -errno;
	if ((seals & required_seals) != required_seals)
		return -EPERM;
	if (fstat(fd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size != size || size == 0)
		return -EBADMSG;
	p = mmap(NULL, size, prot, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	/* The daemon asks for huge pages in the arena; map them as such
	 * (fewer TLB misses while attending).  Best effort. */
	madvise(p, size, MADV_HUGEPAGE);
	*ret = p;
	return 0;
}

/* The daemon may choose kinds and centering only where we asked it to. */
static bool policy_respected(const struct tqkv_model *m, const struct tqkv_layer_desc *got)
{
	for (uint32_t l = 0; l < m->n_layers; l++) {
		struct tqkv_layer_desc want = m->layers[l], have = got[l];

		if (want.flags & TQKV_LAYER_DAEMON_POLICY) {
			if (have.flags & TQKV_LAYER_DAEMON_POLICY)
				return false;
			want.k_kind = have.k_kind;
			want.v_kind = have.v_kind;
			want.flags = have.flags;
		}
		if (memcmp(&want, &have, sizeof(want)) != 0)
			return false;
	}
	return true;
}

TQKV_EXPORT const struct tqkv_layer_desc *tqkv_client_layers(const struct tqkv_client *c, uint32_t *ret_n)
{
	if (!c || !c->model)
		return NULL;
	if (ret_n)
		*ret_n = c->model->reg.n_layers;
	return c->layers;
}

TQKV_EXPORT int tqkv_client_register_model(struct tqkv_client *c, const struct tqkv_model *m)
{
	struct tqkv_register_model reg;
	struct tqkv_register_reply rep;
	struct model_limits lim;
	size_t len, got = 0, layers_bytes;
	uint8_t *msg, *reply = NULL;
	struct tqkv_layer_desc *layers = NULL;
	int fds[REPLY_FDS_MAX];
	unsigned n_fds = 0;
	void *arena = NULL, *staging = NULL;
	int r;

	if (!c || !m || !m->layers || m->n_layers == 0 || m->n_layers > c->hello.max_layers)
		return -EINVAL;
	if (c->model)
		return set_error(c, -EALREADY, "a model is already registered");
	reg = (struct tqkv_register_model){
		.fingerprint = m->fingerprint,
		.n_layers = m->n_layers,
		.staging_tokens = m->staging_tokens ? m->staging_tokens : 4 * c->hello.block_tokens,
		.max_sequences = m->max_sequences ? m->max_sequences : 16,
	};
	layers_bytes = (size_t)m->n_layers * sizeof(*m->layers);
	len = sizeof(reg) + layers_bytes;
	msg = malloc(len);
	reply = malloc(sizeof(rep) + layers_bytes);
	if (!msg || !reply) {
		free(msg);
		free(reply);
		return -ENOMEM;
	}
	memcpy(msg, &reg, sizeof(reg));
	memcpy(msg + sizeof(reg), m->layers, layers_bytes);
	r = call(c, TQKV_OP_REGISTER_MODEL, msg, len, reply, sizeof(rep) + layers_bytes, &got, fds, &n_fds);
	free(msg);
	if (r < 0) {
		free(reply);
		return r;
	}
	memcpy(&rep, reply, got < sizeof(rep) ? got : sizeof(rep));
	layers = (struct tqkv_layer_desc *)reply;
	memmove(layers, reply + sizeof(rep), got > sizeof(rep) ? got - sizeof(rep) : 0);
	if (got != sizeof(rep) + layers_bytes || !policy_respected(m, layers)) {
		r = set_error(c, -EBADMSG, "tqkvd registered other layers than ours");
		goto out;
	}
	if (n_fds != 2) {
		r = set_error(c, -EBADMSG, "expected 2 file descriptors from tqkvd, got %u", n_fds);
		goto out;
	}
	/* The arena must be immutable for us: no writes, no size changes. */
	r = map_checked(fds[0], rep.arena_bytes, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL,
			PROT_READ, &arena);
	if (r < 0) {
		set_error(c, r, "arena memfd failed its checks: %s", strerror(-r));
		goto out;
	}
	r = map_checked(fds[1], rep.staging_bytes, F_SEAL_SHRINK | F_SEAL_GROW, PROT_READ | PROT_WRITE, &staging);
	if (r < 0) {
		set_error(c, r, "staging memfd failed its checks: %s", strerror(-r));
		goto out;
	}
	/* The same model arithmetic as the daemon's; refuse any disagreement. */
	model_limits_from_hello(&c->hello, &lim);
	r = model_new(&reg, layers, &lim, &c->model, c->error, sizeof(c->error));
	if (r < 0)
		goto out;
	if (c->model->token_bytes != rep.token_bytes || c->model->slot_bytes != rep.staging_slot_bytes ||
	    rep.staging_bytes != c->model->slot_bytes * reg.max_sequences || rep.block_tokens != lim.block_tokens) {
		r = set_error(c, -EBADMSG, "tqkvd's layout of the model differs from ours");
		model_free(c->model);
		c->model = NULL;
		goto out;
	}
	c->arena = arena;
	c->arena_bytes = rep.arena_bytes;
	c->staging = staging;
	c->staging_bytes = rep.staging_bytes;
	c->layers = layers;
	arena = staging = NULL;
	layers = NULL;
out:
	free(layers);
	if (arena)
		munmap(arena, rep.arena_bytes);
	if (staging)
		munmap(staging, rep.staging_bytes);
	for (unsigned i = 0; i < n_fds; i++)
		close(fds[i]);
	return r;
}

static bool in_arena(const struct tqkv_client *c, uint64_t offset, uint64_t size)
{
	return offset <= c->arena_bytes && size <= c->arena_bytes - offset;
}

/* The sequence a SEQ_OPEN or SEQ_FORK reply describes, checked. */
static int seq_from_reply(struct tqkv_client *c, const struct tqkv_seq_open_reply *rep, struct tqkv_seq **ret)
{
	struct tqkv_seq_desc copy, *d = &copy;
	struct tqkv_seq *s;

	if (!in_arena(c, rep->desc_offset, sizeof(*d)) || rep->slot >= c->model->reg.max_sequences)
		return set_error(c, -EBADMSG, "tqkvd sent a sequence outside the shared memory");
	/* Checked and used as one copy: the shared descriptor may change
	 * between two reads of it. */
	memcpy(&copy, c->arena + rep->desc_offset, sizeof(copy));
	if (!in_arena(c, d->block_table_offset, (uint64_t)d->max_blocks * 8) ||
	    d->block_tokens != c->model->block_tokens ||
	    rep->cached_tokens > (uint64_t)d->max_blocks * d->block_tokens || rep->cached_tokens % d->block_tokens ||
	    (c->model->mean_floats && (!d->key_mean_offset || d->key_mean_offset % sizeof(float) ||
				       !in_arena(c, d->key_mean_offset, (uint64_t)c->model->mean_floats * sizeof(float)))))
		return set_error(c, -EBADMSG, "tqkvd sent a malformed sequence descriptor");
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->client = c;
	s->id = rep->seq_id;
	s->slot = rep->slot;
	s->desc = (const void *)(c->arena + rep->desc_offset);
	s->max_blocks = d->max_blocks;
	s->table = (const uint64_t *)(c->arena + d->block_table_offset);
	s->key_means = c->model->mean_floats ? (const float *)(c->arena + d->key_mean_offset) : NULL;
	s->ring = c->staging + (uint64_t)rep->slot * c->model->slot_bytes;
	s->committed = rep->cached_tokens;
	s->written = rep->cached_tokens;
	*ret = s;
	return 0;
}

/* Closes sequence id of a request that failed after opening it, keeping
 * that failure's message (a successful close clears it). */
static void close_after_failure(struct tqkv_client *c, uint32_t id)
{
	struct tqkv_seq_close req = { .seq_id = id };
	char error[sizeof(c->error)];

	memcpy(error, c->error, sizeof(error));
	call(c, TQKV_OP_SEQ_CLOSE, &req, sizeof(req), NULL, 0, NULL, NULL, NULL);
	memcpy(c->error, error, sizeof(error));
}

/* Token ids that fit in one request after a header of hdr bytes
 * (check_hello() keeps it at least 1). */
static size_t ids_per_message(const struct tqkv_client *c, size_t hdr)
{
	return (c->hello.max_message_bytes - sizeof(struct tqkv_msg_header) - hdr) / sizeof(uint32_t);
}

/* Sends token ids [first, first + n) of s in as many SEQ_TOKENS requests
 * as they need; the daemon may attach more cached blocks meanwhile. */
static int send_token_ids(struct tqkv_seq *s, uint64_t first, const uint32_t *tokens, size_t n)
{
	struct tqkv_client *c = s->client;
	size_t chunk = ids_per_message(c, sizeof(struct tqkv_seq_token_ids));
	struct tqkv_seq_token_ids *req = malloc(sizeof(*req) + (n < chunk ? n : chunk) * sizeof(*tokens));
	int r = req ? 0 : -ENOMEM;

	for (size_t done = 0; r >= 0 && done < n; done += chunk) {
		size_t k = n - done < chunk ? n - done : chunk;
		struct tqkv_seq_tokens_reply rep;

		*req = (struct tqkv_seq_token_ids){ .seq_id = s->id, .first = (uint32_t)(first + done), .n = (uint32_t)k };
		memcpy(req + 1, tokens + done, k * sizeof(*tokens));
		r = call(c, TQKV_OP_SEQ_TOKENS, req, sizeof(*req) + k * sizeof(*tokens), &rep, sizeof(rep), NULL, NULL,
			 NULL);
		if (r >= 0 && rep.committed_tokens > s->committed) {
			if (rep.committed_tokens > (uint64_t)s->max_blocks * s->client->model->block_tokens)
				r = set_error(c, -EBADMSG, "tqkvd attached more than the sequence holds");
			else
				s->committed = s->written = rep.committed_tokens;
		}
	}
	free(req);
	return r;
}

TQKV_EXPORT int tqkv_seq_open_prompt(struct tqkv_client *c, const uint32_t *tokens, size_t n_tokens, uint32_t flags,
				     struct tqkv_seq **ret, uint64_t *ret_cached)
{
	struct tqkv_seq_open_reply rep;
	struct tqkv_seq_open *req;
	size_t first;
	int r;

	if (!c || !ret || (n_tokens && !tokens) || n_tokens > UINT32_MAX || flags & ~(uint32_t)TQKV_SEQ_PRIVATE)
		return -EINVAL;
	if (!c->model)
		return set_error(c, -ENOENT, "register a model first");
	first = ids_per_message(c, sizeof(*req));
	if (first > n_tokens)
		first = n_tokens;
	req = malloc(sizeof(*req) + first * sizeof(*tokens));
	if (!req)
		return -ENOMEM;
	*req = (struct tqkv_seq_open){ .n_tokens = (uint32_t)first, .flags = flags };
	if (first)
		memcpy(req + 1, tokens, first * sizeof(*tokens));
	r = call(c, TQKV_OP_SEQ_OPEN, req, n_tokens || flags ? sizeof(*req) + first * sizeof(*tokens) : 0, &rep,
		 sizeof(rep), NULL, NULL, NULL);
	free(req);
	if (r < 0)
		return r;
	r = seq_from_reply(c, &rep, ret);
	if (r < 0) {
		close_after_failure(c, rep.seq_id);
		return r;
	}
	if (first < n_tokens) {
		r = send_token_ids(*ret, first, tokens + first, n_tokens - first);
		if (r < 0) {
			close_after_failure(c, (*ret)->id);
			free(*ret);
			*ret = NULL;
		}
	}
	if (r >= 0 && ret_cached)
		*ret_cached = (*ret)->committed;
	return r;
}

TQKV_EXPORT int tqkv_seq_open(struct tqkv_client *c, struct tqkv_seq **ret)
{
	return tqkv_seq_open_prompt(c, NULL, 0, 0, ret, NULL);
}

TQKV_EXPORT int tqkv_seq_set_tokens(struct tqkv_seq *s, uint64_t first, const uint32_t *tokens, size_t n)
{
	if (!s || (n && !tokens) || first > UINT32_MAX || n > UINT32_MAX - first)
		return -EINVAL;
	return send_token_ids(s, first, tokens, n);
}

TQKV_EXPORT int tqkv_seq_fork(struct tqkv_seq *s, struct tqkv_seq **ret)
{
	struct tqkv_client *c;
	struct tqkv_seq_close req;
	struct tqkv_seq_open_reply rep;
	struct tqkv_seq *f;
	const struct model *m;
	int r;

	if (!s || !ret)
		return -EINVAL;
	c = s->client;
	m = c->model;
	req = (struct tqkv_seq_close){ .seq_id = s->id };
	r = call(c, TQKV_OP_SEQ_FORK, &req, sizeof(req), &rep, sizeof(rep), NULL, NULL, NULL);
	if (r < 0)
		return r;
	r = seq_from_reply(c, &rep, &f);
	if (r < 0) {
		close_after_failure(c, rep.seq_id);
		return r;
	}
	/* The fork holds the published blocks; the FP16 tail is ours to copy
	 * (same ring positions in the other slot). */
	for (uint64_t t = f->committed; t < s->committed; t++) {
		uint64_t at = (t % m->reg.staging_tokens) * m->token_bytes;

		memcpy(f->ring + at, s->ring + at, m->token_bytes);
	}
	f->written = s->committed > f->committed ? s->committed : f->committed;
	if (s->committed > f->committed)
		r = tqkv_seq_commit(f, s->committed);
	if (r < 0) {
		close_after_failure(c, f->id);
		free(f);
		return r;
	}
	*ret = f;
	return 0;
}

TQKV_EXPORT int tqkv_seq_trim(struct tqkv_seq *s, uint64_t n_tokens, uint64_t *ret_kept)
{
	struct tqkv_seq_tokens req;
	struct tqkv_seq_tokens_reply rep;
	uint32_t B;
	int r;

	if (!s || n_tokens > UINT32_MAX)
		return -EINVAL;
	B = s->client->model->block_tokens;
	req = (struct tqkv_seq_tokens){ .seq_id = s->id, .n_tokens = (uint32_t)n_tokens };
	/* The daemon refuses (-EBUSY) while a block is in compression.  Wait
	 * for that one block only, which a running job always finishes: a
	 * wait for every committed block would hang when the next one waits
	 * for memory that only this trim could free. */
	for (;;) {
		uint64_t published = tqkv_seq_published(s);

		r = call(s->client, TQKV_OP_SEQ_TRIM, &req, sizeof(req), &rep, sizeof(rep), NULL, NULL, NULL);
		if (r != -EBUSY)
			break;
		r = tqkv_seq_wait(s, published + B);
		if (r < 0 && r != -EIO)  /* -EIO: it failed, and is no longer in flight */
			return r;
	}
	if (r < 0)
		return r;
	s->committed = rep.committed_tokens;
	s->written = rep.committed_tokens;
	if (ret_kept)
		*ret_kept = rep.committed_tokens;
	return 0;
}

TQKV_EXPORT int tqkv_client_flush(struct tqkv_client *c, uint64_t *ret_blocks, uint64_t *ret_bytes)
{
	struct tqkv_flush_reply rep;
	int r;

	if (!c)
		return -EINVAL;
	r = call(c, TQKV_OP_FLUSH, NULL, 0, &rep, sizeof(rep), NULL, NULL, NULL);
	if (r < 0)
		return r;
	if (ret_blocks)
		*ret_blocks = rep.blocks;
	if (ret_bytes)
		*ret_bytes = rep.bytes;
	return 0;
}

TQKV_EXPORT int tqkv_seq_close(struct tqkv_seq *s)
{
	struct tqkv_seq_close req;
	int r;

	if (!s)
		return 0;
	req = (struct tqkv_seq_close){ .seq_id = s->id };
	r = call(s->client, TQKV_OP_SEQ_CLOSE, &req, sizeof(req), NULL, 0, NULL, NULL, NULL);
	free(s);
	return r;
}

TQKV_EXPORT uint32_t tqkv_seq_id(const struct tqkv_seq *s)
{
	return s->id;
}

static uint64_t published_blocks(const struct tqkv_seq *s)
{
	uint64_t n = atomic_load_explicit((_Atomic uint64_t *)&s->desc->n_blocks, memory_order_acquire);

	return n < s->max_blocks ? n : s->max_blocks;
}

TQKV_EXPORT uint64_t tqkv_seq_published(const struct tqkv_seq *s)
{
	return published_blocks(s) * s->client->model->block_tokens;
}

TQKV_EXPORT uint64_t tqkv_seq_committed(const struct tqkv_seq *s)
{
	return s->committed;
}

TQKV_EXPORT int tqkv_seq_write(struct tqkv_seq *s, uint64_t token, uint32_t layer, const uint16_t *k,
			       const uint16_t *v)
{
	const struct model *m;
	const struct model_layer *l;
	uint8_t *row;
	size_t bytes;

	if (!s || !k || !v)
		return -EINVAL;
	m = s->client->model;
	if (layer >= m->reg.n_layers || token < s->committed)
		return -EINVAL;
	l = &m->layers[layer];
	if (l->desc.kv_source >= 0)
		return -EINVAL;
	if (token >= tqkv_seq_published(s) + m->reg.staging_tokens)
		return -EAGAIN;
	row = s->ring + (token % m->reg.staging_tokens) * m->token_bytes;
	bytes = (size_t)l->desc.n_kv_heads * l->desc.head_dim * 2u;
	memcpy(row + model_row_offset(m, layer, 0, 0), k, bytes);
	memcpy(row + model_row_offset(m, layer, 0, 1), v, bytes);
	if (token + 1 > s->written)
		s->written = token + 1;
	return 0;
}

TQKV_EXPORT int tqkv_seq_write_layers(struct tqkv_seq *s, uint64_t token, const uint16_t *const *k,
				      const uint16_t *const *v)
{
	if (!s || !k || !v)
		return -EINVAL;
	for (uint32_t l = 0; l < s->client->model->reg.n_layers; l++) {
		int r;

		if (s->client->model->layers[l].desc.kv_source >= 0)
			continue;
		r = tqkv_seq_write(s, token, l, k[l], v[l]);
		if (r < 0)
			return r;
	}
	return 0;
}

TQKV_EXPORT int tqkv_seq_commit(struct tqkv_seq *s, uint64_t n_tokens)
{
	struct tqkv_seq_tokens req;
	struct tqkv_seq_tokens_reply rep;
	int r;

	if (!s || n_tokens > UINT32_MAX)
		return -EINVAL;
	req = (struct tqkv_seq_tokens){ .seq_id = s->id, .n_tokens = (uint32_t)n_tokens };
	r = call(s->client, TQKV_OP_SEQ_COMMIT, &req, sizeof(req), &rep, sizeof(rep), NULL, NULL, NULL);
	if (r < 0)
		return r;
	s->committed = rep.committed_tokens;
	return 0;
}

TQKV_EXPORT int tqkv_seq_wait(struct tqkv_seq *s, uint64_t n_tokens)
{
	struct tqkv_seq_tokens req;
	struct tqkv_seq_tokens_reply rep;

	if (!s || n_tokens > UINT32_MAX)
		return -EINVAL;
	if (tqkv_seq_published(s) >= n_tokens)
		return 0;
	req = (struct tqkv_seq_tokens){ .seq_id = s->id, .n_tokens = (uint32_t)n_tokens };
	return call(s->client, TQKV_OP_SEQ_WAIT, &req, sizeof(req), &rep, sizeof(rep), NULL, NULL, NULL);
}

TQKV_EXPORT int tqkv_seq_view(struct tqkv_seq *s, uint32_t layer, struct tqkv_layer_view *ret)
{
	const struct model *m;
	const struct model_layer *l;

	if (!s || !ret || layer >= s->client->model->reg.n_layers)
		return -EINVAL;
	m = s->client->model;
	if (m->layers[layer].desc.kv_source >= 0)
		layer = (uint32_t)m->layers[layer].desc.kv_source;
	l = &m->layers[layer];
	*ret = (struct tqkv_layer_view){
		.layer = layer,
		.n_kv_heads = l->desc.n_kv_heads,
		.head_dim = l->desc.head_dim,
		.block_tokens = m->block_tokens,
		.n_blocks = published_blocks(s),
		.arena = s->client->arena,
		.arena_bytes = s->client->arena_bytes,
		.block_table = s->table,
		.tail = s->ring,
		.token_bytes = m->token_bytes,
		.staging_tokens = m->reg.staging_tokens,
		.row_offset = { model_row_offset(m, layer, 0, 0), model_row_offset(m, layer, 0, 1) },
		.page_index = l->page_index,
		.codecs = (const struct tqkv_codec *const *)l->codecs,
		.key_mean = model_key_mean(m, s->key_means, layer, 0),
	};
	ret->n_tokens = s->committed > ret->n_blocks * m->block_tokens ? s->committed : ret->n_blocks * m->block_tokens;
	return 0;
}

TQKV_EXPORT int tqkv_seq_view_blocks(struct tqkv_seq *s, uint32_t layer, uint64_t n_tokens, uint64_t n_blocks,
				     struct tqkv_layer_view *ret)
{
	int r = tqkv_seq_view(s, layer, ret);
	uint64_t high;

	if (r < 0)
		return r;
	if (n_blocks > ret->n_blocks)
		return -EAGAIN;
	/* Past what is written, or tail rows the ring no longer holds. */
	high = s->written > s->committed ? s->written : s->committed;
	if (n_tokens < n_blocks * ret->block_tokens || n_tokens > high ||
	    high - n_blocks * ret->block_tokens > ret->staging_tokens)
		return -EINVAL;
	ret->n_blocks = n_blocks;
	ret->n_tokens = n_tokens;
	return 0;
}

TQKV_EXPORT int tqkv_seq_view_written(struct tqkv_seq *s, uint32_t layer, uint64_t n_tokens,
				      struct tqkv_layer_view *ret)
{
	int r = tqkv_seq_view(s, layer, ret);

	if (r < 0 || n_tokens <= ret->n_tokens)
		return r;
	/* Beyond what is written, or what the staging ring still holds. */
	if (n_tokens > s->written || n_tokens > ret->n_blocks * ret->block_tokens + ret->staging_tokens)
		return -EINVAL;
	ret->n_tokens = n_tokens;
	return 0;
}

TQKV_EXPORT const void *tqkv_view_page(const struct tqkv_layer_view *v, uint64_t block, uint32_t head,
				       unsigned stream, size_t *ret_size)
{
	size_t size;
	const void *p;

	if (head >= v->n_kv_heads || stream > 1)
		return NULL;
	size = tqkv_page_size(v->codecs[head * 2 + stream], v->block_tokens);
	p = view_page_sized(v, block, head, stream, size);
	if (p && ret_size)
		*ret_size = size;
	return p;
}

TQKV_EXPORT const uint16_t *tqkv_view_tail_row(const struct tqkv_layer_view *v, uint64_t token, uint32_t head,
					       unsigned stream)
{
	if (token < v->n_blocks * v->block_tokens || token >= v->n_tokens || head >= v->n_kv_heads || stream > 1)
		return NULL;
	return view_tail_slot_row(v, token % v->staging_tokens, head, stream);
}

TQKV_EXPORT int tqkv_view_read(const struct tqkv_layer_view *v, uint32_t head, unsigned stream, uint64_t first,
			       uint32_t n, float *out)
{
	int r;

	if (!v || !out || head >= v->n_kv_heads || stream > 1 || first > v->n_tokens || n > v->n_tokens - first)
		return -EINVAL;
	for (uint64_t t = first; t < first + n;) {
		float *o = out + (t - first) * v->head_dim;

		if (t < v->n_blocks * v->block_tokens) {
			uint64_t b = t / v->block_tokens, in = t % v->block_tokens;
			uint64_t cnt = v->block_tokens - in < first + n - t ? v->block_tokens - in : first + n - t;
			size_t size;
			const void *page = tqkv_view_page(v, b, head, stream, &size);
			const float *mean = stream == 0 && v->key_mean ? v->key_mean + (size_t)head * v->head_dim : NULL;

			if (!page)
				return -EBADMSG;
			r = tqkv_page_decode_f32(v->codecs[head * 2 + stream], page, size, (uint32_t)in, (uint32_t)cnt,
						 mean, o, v->head_dim);
			if (r < 0)
				return r;
			t += cnt;
		} else {
			const uint16_t *row = tqkv_view_tail_row(v, t, head, stream);

			for (uint32_t j = 0; j < v->head_dim; j++)
				o[j] = tqkv_f16_to_f32(row[j]);
			t++;
		}
	}
	return 0;
}

TQKV_EXPORT int tqkv_seq_read(struct tqkv_seq *s, uint32_t layer, uint32_t head, unsigned stream, uint64_t first,
			      uint32_t n, float *out)
{
	struct tqkv_layer_view v;
	int r = tqkv_seq_view(s, layer, &v);

	return r < 0 ? r : tqkv_view_read(&v, head, stream, first, n, out);
}

TQKV_EXPORT int tqkv_seq_read_f16(struct tqkv_seq *s, uint32_t layer, uint32_t head, unsigned stream, uint64_t first,
				  uint32_t n, uint16_t *out)
{
	struct tqkv_layer_view v;
	float *f;
	int r = tqkv_seq_view(s, layer, &v);

	if (r < 0)
		return r;
	f = malloc(sizeof(float) * v.head_dim * (size_t)n);
	if (!f)
		return -ENOMEM;
	r = tqkv_seq_read(s, layer, head, stream, first, n, f);
	for (size_t i = 0; r >= 0 && i < (size_t)v.head_dim * n; i++)
		out[i] = tqkv_f32_to_f16(f[i]);
	free(f);
	return r;
}
