/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the daemon's message decoder: one tqkvd server in
 * this process (its libuv loop, worker thread and arenas, no state
 * directory); each input is one client connection: its first byte says
 * how many fds (0-3: a memfd, a pipe, a socket) travel with the first
 * bytes (the fd-receiving path: requests never carry fds), the rest is the
 * byte stream the client sends (framing, HELLO, REGISTER_MODEL with its
 * layer validation, sequence requests with token ids, fork, trim, stats,
 * flush ...), after which it hangs up.  The server must neither crash nor leak; replies and
 * the fds they carry are read and closed.  Build and run (clang):
 *
 *   CC=clang meson setup build-clang && ninja -C build-clang   # the codec, SIMD flags and all
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Idaemon -Iproto -Iinclude -Iclient \
 *     tests/fuzz/fuzz-server.c daemon/{arena,cache,config,directory,log,server,snapshot,worker}.c \
 *     client/presets.c build-clang/proto/libtqkv-proto.a -DTQKV_VERSION='"fuzz"' \
 *     -luv -luring -lxxhash -lsystemd -lm -lpthread -o fuzz-server
 *   ./fuzz-server -max_total_time=600 tests/fuzz/corpus/server
 *
 * tests/fuzz/replay.c runs the corpus as an ordinary test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "log.h"
#include "server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uv_loop_t loop;
static struct tqkvd_config cfg;
static struct server *server;
static char socket_path[108];

static void cleanup(void)
{
	server_stop(server);
	uv_run(&loop, UV_RUN_DEFAULT);
	server_free(server);
	uv_loop_close(&loop);
	unlink(socket_path);
	config_free(&cfg);
}

static int start(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	config_init_defaults(&cfg);
	free(cfg.state_dir);
	cfg.state_dir = NULL;
	cfg.memory_budget = 64u << 20;
	cfg.log_level = LOG_CRIT;  /* violations are the point: stay quiet */
	log_set_max_level(cfg.log_level);
	snprintf(socket_path, sizeof(socket_path), "/tmp/tqkv-fuzz-server-%d.sock", (int)getpid());
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", socket_path);
	unlink(socket_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0)
		return -1;
	uv_loop_init(&loop);
	if (server_new(&loop, &cfg, fd, &server) < 0)
		return -1;
	atexit(cleanup);
	return 0;
}

/* Reads what the server sent, closing any fds; false once it hung up. */
static int drain(int fd)
{
	for (;;) {
		char buf[65536];
		union {
			char c[CMSG_SPACE(sizeof(int) * 16)];
			struct cmsghdr align;
		} ctl;
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.c, .msg_controllen = sizeof(ctl) };
		ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

		if (n == 0)
			return 0;
		if (n < 0)
			return errno == EAGAIN ? 1 : 0;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
				int fds[16];
				size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

				memcpy(fds, CMSG_DATA(cm), k * sizeof(int));
				for (size_t i = 0; i < k; i++)
					close(fds[i]);
			}
	}
}

/* The first bytes (up to 64) with n fds attached; returns bytes sent. */
static size_t send_with_fds(int fd, const uint8_t *data, size_t size, unsigned n)
{
	int fds[3], pipefd[2] = { -1, -1 }, pair[2] = { -1, -1 };
	union {
		char c[CMSG_SPACE(sizeof(int) * 3)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { (void *)data, size < 64 ? size : 64 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.c, .msg_controllen = CMSG_SPACE(sizeof(int) * n) };
	struct cmsghdr *cm;
	ssize_t r;

	memset(&ctl, 0, sizeof(ctl));
	fds[0] = memfd_create("fuzz", MFD_CLOEXEC);
	if (pipe2(pipefd, O_CLOEXEC) < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0 || fds[0] < 0)
		n = 0;
	fds[1] = pipefd[0];
	fds[2] = pair[0];
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int) * n);
	memcpy(CMSG_DATA(cm), fds, sizeof(int) * n);
	r = n ? sendmsg(fd, &mh, MSG_NOSIGNAL) : 0;
	for (unsigned i = 0; i < 2; i++) {
		if (pipefd[i] >= 0)
			close(pipefd[i]);
		if (pair[i] >= 0)
			close(pair[i]);
	}
	if (fds[0] >= 0)
		close(fds[0]);
	return r > 0 ? (size_t)r : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t sent = 0;
	int fd, open = 1, idle = 0;
	unsigned n_fds;

	if (!server && start() < 0)
		abort();
	if (size == 0)
		return 0;
	n_fds = data[0] & 3;
	data++;
	size--;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", socket_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	if (n_fds && size) {
		sent = send_with_fds(fd, data, size, n_fds);
		if (sent == 0) {
			close(fd);
			return 0;
		}
	}
	/* Feed the stream while the server reads it, then hang up and let it
	 * finish whatever the stream started (waits, compressions). */
	for (int round = 0; round < 10000 && open && idle < 20; round++) {
		if (sent < size) {
			ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);

			if (n > 0)
				sent += (size_t)n;
			else if (n < 0 && errno != EAGAIN)
				break;
		}
		uv_run(&loop, UV_RUN_NOWAIT);
		open = drain(fd);
		idle += sent == size;
	}
	close(fd);
	/* The server notices the hang-up and releases the client. */
	for (int round = 0; round < 100; round++) {
		struct pollfd p = { .fd = -1 };

		uv_run(&loop, UV_RUN_NOWAIT);
		poll(&p, 0, 0);
	}
	return 0;
}
