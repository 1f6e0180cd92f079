/* SPDX-License-Identifier: MIT */
/*
 * Hostile and broken clients, as a data table: each message gets an error
 * reply, a disconnect, or both, and the daemon stays up, serves the next
 * client and keeps no fd of the bad one.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>

#include "daemon-harness.h"

enum expect {
	EXPECT_ERROR,             /* error reply, connection stays usable */
	EXPECT_ERROR_DISCONNECT,  /* error reply, then the daemon closes */
	EXPECT_DISCONNECT,        /* no reply, the daemon closes */
};

struct bad_case {
	const char *name;
	bool hello_first;
	struct tqkv_msg_header h;
	uint8_t payload[256];
	size_t payload_len;   /* bytes actually sent after the header */
	size_t header_len;    /* bytes of the header sent (16 unless truncated) */
	bool attach_fd;
	enum expect expect;
	int code;             /* expected error code, 0 = any */
};

#define HDR(sz, op) { .size = (uint32_t)(sz), .opcode = (op), .serial = 7 }
#define REG_SIZE (sizeof(struct tqkv_msg_header) + sizeof(struct tqkv_register_model) + sizeof(struct tqkv_layer_desc))

/* A REGISTER_MODEL payload with one layer of the given head_dim. */
#define REG_PAYLOAD(n_layers, head_dim)                                                                           \
	{ 1, 0, 0, 0, 0, 0, 0, 0, (n_layers) & 0xff, ((n_layers) >> 8) & 0xff, ((n_layers) >> 16) & 0xff,          \
	  ((uint32_t)(n_layers) >> 24) & 0xff, 0, 1, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 2, 0, (head_dim) & 0xff,          \
	  ((head_dim) >> 8) & 0xff, 0, 0, 0, 0, 0xff, 0xff, 7, 7, 0, 0, 0, 0 }

static const struct bad_case cases[] = {
	{ "truncated header", false, HDR(16, TQKV_OP_HELLO), { 0 }, 0, 8, false, EXPECT_DISCONNECT, 0 },
	{ "wrong version", false, HDR(24, TQKV_OP_HELLO), { 5, 0, 0, 0, 9, 0, 0, 0 }, 8, 16, false,
	  EXPECT_ERROR_DISCONNECT, EPROTONOSUPPORT },
	{ "oversize length", true, HDR(1u << 30, TQKV_OP_PING), { 0 }, 0, 16, false, EXPECT_ERROR_DISCONNECT, EMSGSIZE },
	{ "size below header", true, HDR(4, TQKV_OP_PING), { 0 }, 0, 16, false, EXPECT_ERROR_DISCONNECT, EBADMSG },
	{ "unknown opcode", true, HDR(16, 99), { 0 }, 0, 16, false, EXPECT_ERROR_DISCONNECT, EOPNOTSUPP },
	{ "request before HELLO", false, HDR(16, TQKV_OP_PING), { 0 }, 0, 16, false, EXPECT_ERROR_DISCONNECT, EPROTO },
	{ "second HELLO", true, HDR(24, TQKV_OP_HELLO), { 1, 0, 0, 0, 1, 0, 0, 0 }, 8, 16, false,
	  EXPECT_ERROR_DISCONNECT, EPROTO },
	{ "HELLO payload too short", false, HDR(20, TQKV_OP_HELLO), { 1, 0, 0, 0 }, 4, 16, false,
	  EXPECT_ERROR_DISCONNECT, EBADMSG },
	{ "extra fd", true, HDR(16, TQKV_OP_PING), { 0 }, 0, 16, true, EXPECT_ERROR_DISCONNECT, EPROTO },
	{ "declared fds missing", true, { .size = 16, .opcode = TQKV_OP_PING, .serial = 7, .n_fds = 1 }, { 0 }, 0, 16,
	  false, EXPECT_ERROR_DISCONNECT, EPROTO },
	{ "reserved flags", true, { .size = 16, .opcode = TQKV_OP_PING, .flags = 4, .serial = 7 }, { 0 }, 0, 16, false,
	  EXPECT_ERROR_DISCONNECT, EBADMSG },
	{ "head_dim 0", true, HDR(REG_SIZE, TQKV_OP_REGISTER_MODEL), REG_PAYLOAD(1, 0), REG_SIZE - 16, 16, false,
	  EXPECT_ERROR, EINVAL },
	{ "head_dim 65535", true, HDR(REG_SIZE, TQKV_OP_REGISTER_MODEL), REG_PAYLOAD(1, 65535), REG_SIZE - 16, 16,
	  false, EXPECT_ERROR, EINVAL },
	{ "0 layers", true, HDR(REG_SIZE - 16, TQKV_OP_REGISTER_MODEL), REG_PAYLOAD(0, 64), REG_SIZE - 32, 16, false,
	  EXPECT_ERROR_DISCONNECT, EBADMSG },
	{ "2^31 layers", true, HDR(REG_SIZE, TQKV_OP_REGISTER_MODEL), REG_PAYLOAD(0x80000000u, 64), REG_SIZE - 16, 16,
	  false, EXPECT_ERROR_DISCONNECT, EBADMSG },
	{ "commit before register", true, HDR(24, TQKV_OP_SEQ_COMMIT), { 1, 0, 0, 0, 1, 0, 0, 0 }, 8, 16, false,
	  EXPECT_ERROR, ENOENT },
	{ "stats with payload", true, HDR(20, TQKV_OP_STATS), { 1, 2, 3, 4 }, 4, 16, false, EXPECT_ERROR_DISCONNECT,
	  EBADMSG },
};

static void send_with_fd(int sock, const void *data, size_t len)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { (void *)data, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

	memset(&ctl, 0, sizeof(ctl));
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	cr_assert_eq(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)len);
	close(fd);
}

static void run_case(const struct test_daemon *d, const struct bad_case *bc)
{
	struct tqkv_msg_header h;
	uint8_t buf[512];
	int sock = raw_connect(d), n;

	if (bc->hello_first)
		raw_hello(sock);
	if (bc->attach_fd) {
		send_with_fd(sock, &bc->h, bc->header_len);
	} else {
		cr_assert_eq(send(sock, &bc->h, bc->header_len, MSG_NOSIGNAL), (ssize_t)bc->header_len);
	}
	if (bc->payload_len)
		cr_assert_eq(send(sock, bc->payload, bc->payload_len, MSG_NOSIGNAL), (ssize_t)bc->payload_len);
	if (bc->header_len < sizeof(h))
		shutdown(sock, SHUT_WR);

	n = raw_recv(sock, &h, buf, sizeof(buf), NULL, NULL);
	if (bc->expect == EXPECT_DISCONNECT) {
		cr_assert_eq(n, -1, "%s: expected a disconnect without reply", bc->name);
	} else {
		struct tqkv_error e;

		cr_assert_geq(n, (int)sizeof(e), "%s: expected an error reply", bc->name);
		cr_assert(h.flags & TQKV_MSG_ERROR, "%s: reply is not an error", bc->name);
		memcpy(&e, buf, sizeof(e));
		cr_assert(bc->code == 0 || e.code == bc->code, "%s: error %d (%.*s), expected %d", bc->name, e.code,
			  (int)e.length, buf + sizeof(e), bc->code);
		cr_assert_gt(e.length, 0, "%s: error without message", bc->name);
		if (bc->expect == EXPECT_ERROR_DISCONNECT) {
			cr_assert_eq(raw_recv(sock, &h, buf, sizeof(buf), NULL, NULL), -1, "%s: still connected",
				     bc->name);
		} else {
			/* The same connection still works. */
			struct tqkv_msg_header ping = { 16, TQKV_OP_PING, 0, 8, 0, 0 };

			raw_send(sock, &ping, NULL, 0);
			cr_assert_eq(raw_recv(sock, &h, buf, sizeof(buf), NULL, NULL), 0, "%s: no pong", bc->name);
			cr_assert_eq(h.flags, TQKV_MSG_REPLY);
		}
	}
	close(sock);
}

Test(protocol, bad_messages_table, .timeout = 120)
{
	struct test_daemon d;
	int fds_before;

	daemon_start(&d, NULL);
	sleep_ms(100);
	fds_before = count_fds(d.pid);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tqkv_client *c;

		run_case(&d, &cases[i]);
		cr_assert_eq(kill(d.pid, 0), 0, "%s: daemon died", cases[i].name);
		cr_assert_eq(tqkv_client_connect(d.socket, &c), 0, "%s: next client refused", cases[i].name);
		cr_assert_eq(tqkv_client_ping(c), 0);
		tqkv_client_free(c);
	}
	cr_assert_eq(settled_fds(d.pid, fds_before), fds_before, "the daemon kept fds of bad clients");
	cr_assert_eq(daemon_stat(&d, "protocol_violations_total"), 13);
	daemon_stop(&d);
}

/* Staging is max_sequences slots: at the limits a daemon can be given,
 * the size needs more than 64 bits.  9 heads of 512 dims (18432 bytes a
 * token), 974376768 staging tokens and 1027118 sequences make 2^64 +
 * 21757952 bytes, which wrapped to a 21 MiB memfd that later slots point
 * past; it must be refused as larger than the budget. */
Test(protocol, staging_size_overflow_is_refused, .timeout = 60)
{
	const char *extra[] = { "--set", "max_sequences_per_client=1048576", "--set",
				"max_tokens_per_sequence=2147483647", NULL };
	static const struct tqkv_layer_desc layer = { .n_kv_heads = 9, .head_dim = 512, .kv_source = -1,
						      .k_kind = TQKV_KIND_FP16, .v_kind = TQKV_KIND_FP16 };
	const struct tqkv_model m = { .fingerprint = 0x0bad5123, .n_layers = 1, .layers = &layer,
				      .staging_tokens = 974376768, .max_sequences = 1027118 };
	struct test_daemon d;
	struct tqkv_client *c;

	daemon_start(&d, extra);
	cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
	cr_assert_eq(tqkv_client_register_model(c, &m), -E2BIG, "%s", tqkv_client_error(c));
	cr_assert(strstr(tqkv_client_error(c), "larger than memory_budget"), "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_client_ping(c), 0);
	tqkv_client_free(c);
	cr_assert_eq(daemon_stat(&d, "staging_bytes"), 0);
	daemon_stop(&d);
}

static uint64_t now_msec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Sends PINGs for ms milliseconds as fast as the socket takes them,
 * reading the replies as they come (a client that reads nothing is
 * dropped, which would end the flood early). */
static void flood_pings(const struct test_daemon *d, unsigned ms)
{
	static struct tqkv_msg_header pings[4096];
	static uint8_t sink[1 << 20];
	uint64_t end = now_msec() + ms;
	size_t pos = 0;
	int sock = raw_connect(d);

	raw_hello(sock);
	for (size_t i = 0; i < sizeof(pings) / sizeof(pings[0]); i++)
		pings[i] = (struct tqkv_msg_header){ sizeof(pings[0]), TQKV_OP_PING, 0, 100, 0, 0 };
	fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK);
	while (now_msec() < end) {
		struct pollfd p = { sock, POLLIN | POLLOUT, 0 };
		ssize_t n;

		if (poll(&p, 1, 100) < 0)
			_exit(1);
		if (p.revents & (POLLERR | POLLHUP))
			_exit(1);
		if ((p.revents & POLLIN) && recv(sock, sink, sizeof(sink), MSG_DONTWAIT) <= 0 && errno != EAGAIN)
			_exit(1);
		if (!(p.revents & POLLOUT))
			continue;
		/* All the same 16 bytes: a partial send keeps the framing. */
		n = send(sock, (uint8_t *)pings + pos, sizeof(pings) - pos, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0)
			pos = (pos + (size_t)n) % sizeof(pings);
	}
	close(sock);
}

/* One client streaming requests gets a bounded share of each loop
 * iteration: another client's PING is answered at once, not when the
 * stream stops (the watchdog would not be either). */
Test(protocol, streaming_client_does_not_starve_others, .timeout = 60)
{
	struct test_daemon d;
	struct tqkv_client *c;
	uint64_t t0, waited;
	pid_t kid;
	int status;

	daemon_start(&d, NULL);
	cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
	kid = fork();
	cr_assert_geq(kid, 0);
	if (kid == 0) {
		flood_pings(&d, 4000);
		_exit(0);
	}
	sleep_ms(500);
	t0 = now_msec();
	cr_assert_eq(tqkv_client_ping(c), 0);
	waited = now_msec() - t0;
	cr_assert_eq(waitpid(kid, &status, 0), kid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the flooding client failed: %#x", status);
	cr_assert_lt(waited, 1000, "PING answered after %llu ms", (unsigned long long)waited);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* A raw request and its reply (the next message must be that reply). */
static void raw_call(int sock, uint16_t opcode, uint32_t serial, const void *req, size_t len, void *out,
		     size_t out_size)
{
	struct tqkv_msg_header h = { (uint32_t)(sizeof(h) + len), opcode, 0, serial, 0, 0 };
	uint8_t buf[512];

	raw_send(sock, &h, req, len);
	cr_assert_eq(raw_recv(sock, &h, buf, sizeof(buf), NULL, NULL), (int)out_size, "opcode %u", opcode);
	cr_assert_eq(h.serial, serial);
	cr_assert_eq(h.flags, TQKV_MSG_REPLY, "opcode %u failed", opcode);
	memcpy(out, buf, out_size);
}

/* A SEQ_WAIT for a block that waits for memory, then a SEQ_TRIM that
 * leaves no full block to publish: the wait is answered then, not once
 * memory frees. */
Test(protocol, trim_answers_pending_wait, .timeout = 60)
{
	const char *extra[] = { "--memory-budget", "1M", "--set", "max_tokens_per_sequence=4096", NULL };
	static const struct tqkv_layer_desc layer = { .n_kv_heads = 1, .head_dim = 64, .kv_source = -1,
						      .k_kind = TQKV_KIND_FP16, .v_kind = TQKV_KIND_FP16 };
	const struct tqkv_model m = { .fingerprint = 0x7817, .n_layers = 1, .layers = &layer, .staging_tokens = 128,
				      .max_sequences = 1 };
	struct tqkv_register_reply reg;
	struct tqkv_seq_open_reply opened;
	struct tqkv_seq_tokens req;
	struct tqkv_seq_tokens_reply rep;
	struct tqkv_msg_header h;
	struct test_daemon d;
	int sock, fds[4];
	unsigned n_fds = 0, k;
	bool stalled = false, got_wait = false, got_trim = false;

	daemon_start(&d, extra);
	sock = raw_connect(&d);
	raw_hello(sock);
	raw_register(sock, &m, &reg, fds, &n_fds);
	for (unsigned i = 0; i < n_fds; i++)
		close(fds[i]);
	raw_call(sock, TQKV_OP_SEQ_OPEN, 3, NULL, 0, &opened, sizeof(opened));
	/* Zero rows are fine rows: commit block after block until one finds
	 * no memory (nothing unheld to evict), its SEQ_WAIT left pending. */
	for (k = 1; k < 1000 && !stalled; k++) {
		struct tqkv_msg_header w = { sizeof(w) + sizeof(req), TQKV_OP_SEQ_WAIT, 0, 1000 + k, 0, 0 };
		struct pollfd p = { sock, POLLIN, 0 };

		req = (struct tqkv_seq_tokens){ opened.seq_id, k * 64 };
		raw_call(sock, TQKV_OP_SEQ_COMMIT, 4, &req, sizeof(req), &rep, sizeof(rep));
		raw_send(sock, &w, &req, sizeof(req));
		while (poll(&p, 1, 200) == 0) {
			/* No job queued or running, and still no reply: it waits
			 * for memory (STATS delivers finished jobs first). */
			if (daemon_stat(&d, "worker_queue_depth") == 0 && poll(&p, 1, 0) == 0) {
				stalled = true;
				break;
			}
		}
		if (!stalled) {
			cr_assert_eq(raw_recv(sock, &h, &rep, sizeof(rep), NULL, NULL), (int)sizeof(rep));
			cr_assert_eq(h.flags, TQKV_MSG_REPLY, "SEQ_WAIT %u failed", k * 64);
			cr_assert_eq(rep.published_tokens, k * 64);
		}
	}
	cr_assert(stalled, "a 1 MiB budget held %u blocks", k);
	k--;
	cr_assert_gt(k, 1);
	req = (struct tqkv_seq_tokens){ opened.seq_id, (k - 1) * 64 };
	h = (struct tqkv_msg_header){ sizeof(h) + sizeof(req), TQKV_OP_SEQ_TRIM, 0, 5, 0, 0 };
	raw_send(sock, &h, &req, sizeof(req));
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(raw_recv(sock, &h, &rep, sizeof(rep), NULL, NULL), (int)sizeof(rep),
			     "no reply to %s", got_trim ? "the SEQ_WAIT" : "SEQ_TRIM or SEQ_WAIT");
		cr_assert_eq(h.flags, TQKV_MSG_REPLY);
		got_wait |= h.opcode == TQKV_OP_SEQ_WAIT && h.serial == 1000 + k;
		got_trim |= h.opcode == TQKV_OP_SEQ_TRIM && h.serial == 5;
		cr_assert_eq(rep.committed_tokens, (k - 1) * 64);
		cr_assert_eq(rep.published_tokens, (k - 1) * 64);
	}
	cr_assert(got_wait && got_trim);
	close(sock);
	daemon_stop(&d);
}

/* Token ids live on the daemon's heap, not in the arena: all sequences'
 * together are bounded by memory_budget (1 MiB here: 262144 ids), and a
 * request past it is refused with ENOSPC, the daemon serving on. */
Test(protocol, token_ids_are_bounded, .timeout = 60)
{
	const char *extra[] = { "--memory-budget", "1M", NULL };
	static const struct tqkv_layer_desc layer = { .n_kv_heads = 1, .head_dim = 64, .kv_source = -1,
						      .k_kind = TQKV_KIND_FP16, .v_kind = TQKV_KIND_FP16 };
	const struct tqkv_model m = { .fingerprint = 0x1d5, .n_layers = 1, .layers = &layer, .staging_tokens = 128,
				      .max_sequences = 2 };
	static uint32_t ids[300000];
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s, *small;

	for (uint32_t i = 0; i < 300000; i++)
		ids[i] = i % 50000;
	daemon_start(&d, extra);
	cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
	cr_assert_eq(tqkv_client_register_model(c, &m), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_seq_open(c, &s), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_seq_set_tokens(s, 0, ids, 200000), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_seq_set_tokens(s, 200000, ids + 200000, 100000), -ENOSPC);
	cr_assert_not_null(strstr(tqkv_client_error(c), "memory_budget"), "%s", tqkv_client_error(c));
	/* Closing gives the room back. */
	cr_assert_eq(tqkv_seq_close(s), 0);
	cr_assert_eq(tqkv_seq_open(c, &small), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_seq_set_tokens(small, 0, ids, 250000), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_seq_close(small), 0);
	tqkv_client_free(c);
	daemon_stop(&d);
}
