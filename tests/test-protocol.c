/* SPDX-License-Identifier: MIT */
/*
 * Hostile and broken clients, as a data table: each message gets an error
 * reply, a disconnect, or both, and the daemon stays up, serves the next
 * client and keeps no fd of the bad one.
 */
#define _GNU_SOURCE
#include <fcntl.h>
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
