/* SPDX-License-Identifier: MIT */
/*
 * libtqkv's failures: the message of the failure that counts survives the
 * clean-up, a HELLO reply with unusable limits fails the connect, and a
 * reply that cannot be framed closes the connection instead of leaving
 * later requests to read its leftovers.  A fake daemon (a child process
 * answering from a script) lies where a real one would not.
 */
#define _GNU_SOURCE
#include "daemon-harness.h"

static const struct tqkv_layer_desc test_layers[] = {
	{ .n_kv_heads = 2, .head_dim = 64, .kv_source = -1, .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ3 },
};

static const struct tqkv_model test_model = {
	.fingerprint = 0x7e57e770,
	.n_layers = 1,
	.layers = test_layers,
	.staging_tokens = 128,
	.max_sequences = 4,
};

/* One scripted reply: the request's opcode and serial + serial_delta, the
 * size 16 + len unless size is set. */
struct fake_reply {
	uint32_t size;
	uint16_t flags;
	uint32_t serial_delta;
	const void *payload;
	uint32_t len;
};

struct fake {
	pid_t pid;
	char dir[64];
	char socket[108];
};

/* What tqkvd announces by default. */
static struct tqkv_hello_reply good_hello(void)
{
	return (struct tqkv_hello_reply){
		.version = TQKV_PROTOCOL_VERSION,
		.block_tokens = 64,
		.max_message_bytes = 65536,
		.max_fds_per_message = 8,
		.max_layers = 256,
		.max_kv_heads = 128,
		.max_head_dim = 512,
		.max_sequences = 1024,
		.max_tokens_per_sequence = 1048576,
	};
}

/* The fake's side of one connection: answers request i with replies[i]
 * (later ones with an empty reply) and exits with the number of requests
 * read once the client hangs up. */
static void fake_serve(int listen_fd, const struct fake_reply *replies, unsigned n)
{
	int fd = accept(listen_fd, NULL, NULL);
	static uint8_t body[1 << 16];

	if (fd < 0)
		_exit(255);
	for (unsigned i = 0;; i++) {
		struct tqkv_msg_header h;
		struct fake_reply r = { .flags = TQKV_MSG_REPLY };
		size_t len;

		if (recv(fd, &h, sizeof(h), MSG_WAITALL) != (ssize_t)sizeof(h))
			_exit((int)i);
		len = h.size - sizeof(h);
		if (len > sizeof(body) || (len && recv(fd, body, len, MSG_WAITALL) != (ssize_t)len))
			_exit(254);
		if (i < n)
			r = replies[i];
		h.serial += r.serial_delta;
		h.size = r.size ? r.size : (uint32_t)sizeof(h) + r.len;
		h.flags = r.flags;
		/* The client may hang up on a bad header before its payload:
		 * the next recv() sees that. */
		if (send(fd, &h, sizeof(h), MSG_NOSIGNAL) == (ssize_t)sizeof(h) && r.len)
			send(fd, r.payload, r.len, MSG_NOSIGNAL);
	}
}

/* Listens on a private socket, then serves one connection in a child. */
static void fake_start(struct fake *f, const struct fake_reply *replies, unsigned n)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	snprintf(f->dir, sizeof(f->dir), "/tmp/tqkv-fake-XXXXXX");
	cr_assert_not_null(mkdtemp(f->dir));
	snprintf(f->socket, sizeof(f->socket), "%s/fake.sock", f->dir);
	strcpy(sa.sun_path, f->socket);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(fd, 1), 0);
	f->pid = fork();
	cr_assert_geq(f->pid, 0);
	if (f->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		fake_serve(fd, replies, n);
	}
	close(fd);
}

/* Waits for the fake; returns how many requests it read. */
static int fake_stop(struct fake *f)
{
	int status;

	cr_assert_eq(waitpid(f->pid, &status, 0), f->pid);
	unlink(f->socket);
	rmdir(f->dir);
	cr_assert(WIFEXITED(status), "fake daemon status %#x", status);
	return WEXITSTATUS(status);
}

/* A HELLO reply tqkvd would never send fails the connect with -EPROTO and
 * a message, before anything divides by block_tokens or sizes token-id
 * chunks from max_message_bytes. */
Test(client_errors, bad_hello_refused, .timeout = 30)
{
	static const struct {
		const char *name;
		uint32_t version, block_tokens, max_message_bytes;
		const char *message;
	} cases[] = {
		{ "block_tokens 0", TQKV_PROTOCOL_VERSION, 0, 65536, "block_tokens 0" },
		{ "block_tokens 24", TQKV_PROTOCOL_VERSION, 24, 65536, "block_tokens 24" },
		{ "block_tokens 65536", TQKV_PROTOCOL_VERSION, 65536, 65536, "block_tokens 65536" },
		{ "max_message_bytes 33", TQKV_PROTOCOL_VERSION, 64, 33, "max_message_bytes 33" },
		{ "max_message_bytes 20", TQKV_PROTOCOL_VERSION, 64, 20, "max_message_bytes 20" },
		{ "max_message_bytes 0", TQKV_PROTOCOL_VERSION, 64, 0, "max_message_bytes 0" },
		{ "version 1", 1, 64, 65536, "protocol version 1" },
		{ "version 3", TQKV_PROTOCOL_VERSION + 1, 64, 65536, "protocol version" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tqkv_hello_reply hello = good_hello();
		struct fake_reply script[] = { { .flags = TQKV_MSG_REPLY, .payload = &hello, .len = sizeof(hello) } };
		struct tqkv_client *c = (struct tqkv_client *)&hello;  /* must become NULL */
		struct fake f;
		int r;

		hello.version = cases[i].version;
		hello.block_tokens = cases[i].block_tokens;
		hello.max_message_bytes = cases[i].max_message_bytes;
		fake_start(&f, script, 1);
		r = tqkv_client_connect(f.socket, &c);
		cr_assert_eq(r, -EPROTO, "%s: connect returned %d", cases[i].name, r);
		cr_assert_null(c, "%s", cases[i].name);
		cr_assert_not_null(strstr(tqkv_client_error(NULL), cases[i].message), "%s: message '%s'", cases[i].name,
				   tqkv_client_error(NULL));
		cr_assert_eq(fake_stop(&f), 1, "%s", cases[i].name);
	}
}

/* The fake itself: a good HELLO connects, a ping is answered. */
Test(client_errors, fake_daemon_good_hello, .timeout = 30)
{
	struct tqkv_hello_reply hello = good_hello();
	struct fake_reply script[] = { { .flags = TQKV_MSG_REPLY, .payload = &hello, .len = sizeof(hello) } };
	struct tqkv_client *c;
	struct fake f;

	fake_start(&f, script, 1);
	cr_assert_eq(tqkv_client_connect(f.socket, &c), 0, "%s", tqkv_client_error(NULL));
	cr_assert_str_empty(tqkv_client_error(NULL));
	cr_assert_eq(tqkv_client_block_tokens(c), 64);
	cr_assert_eq(tqkv_client_ping(c), 0, "%s", tqkv_client_error(c));
	tqkv_client_free(c);
	cr_assert_eq(fake_stop(&f), 2);
}

/* After a reply that cannot be trusted, the first request fails with
 * -EBADMSG and its reason, every later one with -EPIPE, and the daemon
 * sees the connection close: nothing reads the leftovers as a header. */
Test(client_errors, bad_reply_closes_connection, .timeout = 30)
{
	static const uint8_t junk[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	const struct {
		const char *name;
		struct fake_reply reply;
		const char *message;
	} cases[] = {
		{ "wrong serial", { .flags = TQKV_MSG_REPLY, .serial_delta = 5, .payload = junk, .len = 8 }, "malformed" },
		{ "not a reply", { .flags = 0, .payload = junk, .len = 8 }, "malformed" },
		{ "oversized", { .size = (1u << 25), .flags = TQKV_MSG_REPLY, .payload = junk, .len = 8 }, "malformed" },
		{ "size below a header", { .size = 8, .flags = TQKV_MSG_REPLY, .payload = junk, .len = 8 }, "malformed" },
		{ "unexpected size", { .flags = TQKV_MSG_REPLY, .payload = junk, .len = 8 }, "unexpected size 8" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tqkv_hello_reply hello = good_hello();
		struct fake_reply script[] = { { .flags = TQKV_MSG_REPLY, .payload = &hello, .len = sizeof(hello) },
					       cases[i].reply };
		struct tqkv_client *c;
		struct fake f;
		char *text;
		int r;

		fake_start(&f, script, 2);
		cr_assert_eq(tqkv_client_connect(f.socket, &c), 0, "%s", tqkv_client_error(NULL));
		r = tqkv_client_ping(c);
		cr_assert_eq(r, -EBADMSG, "%s: first ping returned %d", cases[i].name, r);
		cr_assert_not_null(strstr(tqkv_client_error(c), cases[i].message), "%s: message '%s'", cases[i].name,
				   tqkv_client_error(c));
		for (int k = 0; k < 2; k++) {
			r = k ? tqkv_client_stats(c, &text) : tqkv_client_ping(c);
			cr_assert_eq(r, -EPIPE, "%s: later request %d returned %d (%s)", cases[i].name, k, r,
				     tqkv_client_error(c));
			cr_assert_not_null(strstr(tqkv_client_error(c), cases[i].message), "%s: message '%s'",
					   cases[i].name, tqkv_client_error(c));
		}
		/* The fake read HELLO and the first ping, then the client hung up. */
		cr_assert_eq(fake_stop(&f), 2, "%s", cases[i].name);
		tqkv_client_free(c);
	}
}

/* An error reply is well framed: the connection stays usable. */
Test(client_errors, error_reply_keeps_connection, .timeout = 30)
{
	static const struct {
		struct tqkv_error e;
		char text[4];
	} err = { { EBUSY, 4 }, "busy" };
	struct tqkv_hello_reply hello = good_hello();
	struct fake_reply script[] = { { .flags = TQKV_MSG_REPLY, .payload = &hello, .len = sizeof(hello) },
				       { .flags = TQKV_MSG_REPLY | TQKV_MSG_ERROR, .payload = &err, .len = sizeof(err) } };
	struct tqkv_client *c;
	struct fake f;

	fake_start(&f, script, 2);
	cr_assert_eq(tqkv_client_connect(f.socket, &c), 0, "%s", tqkv_client_error(NULL));
	cr_assert_eq(tqkv_client_ping(c), -EBUSY);
	cr_assert_str_eq(tqkv_client_error(c), "busy");
	cr_assert_eq(tqkv_client_ping(c), 0, "%s", tqkv_client_error(c));
	cr_assert_str_empty(tqkv_client_error(c));
	tqkv_client_free(c);
	cr_assert_eq(fake_stop(&f), 3);
}

/* A prompt longer than one message and than the daemon's sequence limit:
 * the SEQ_TOKENS that crosses the limit fails with EFBIG, and closing the
 * half-opened sequence keeps that message. */
Test(client_errors, open_prompt_keeps_daemon_message, .timeout = 60)
{
	static const char *const extra[] = { "--set", "max_tokens_per_sequence=512", "--set", "max_message_bytes=1024",
					     "--set", "max_layers=32", NULL };
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s = (struct tqkv_seq *)&d;  /* must become NULL */
	uint32_t tokens[1000];
	char *text;
	int r;

	for (uint32_t i = 0; i < 1000; i++)
		tokens[i] = i * 7 + 1;
	daemon_start(&d, extra);
	cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
	cr_assert_eq(tqkv_client_register_model(c, &test_model), 0, "%s", tqkv_client_error(c));
	r = tqkv_seq_open_prompt(c, tokens, 1000, 0, &s, NULL);
	cr_assert_eq(r, -EFBIG, "open_prompt returned %d (%s)", r, tqkv_client_error(c));
	cr_assert_null(s);
	cr_assert_str_eq(tqkv_client_error(c), "sequence limit is 512 tokens");
	/* The half-opened sequence is closed; the connection still works. */
	cr_assert_eq(tqkv_client_stats(c, &text), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(stats_value(text, "sequences"), 0);
	free(text);
	cr_assert_eq(tqkv_seq_open_prompt(c, tokens, 500, 0, &s, NULL), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_seq_close(s), 0);
	tqkv_client_free(c);
	daemon_stop(&d);
}
