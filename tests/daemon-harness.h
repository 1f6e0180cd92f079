/* SPDX-License-Identifier: MIT */
/*
 * Starts a real tqkvd process for a test (path from $TQKVD, set by meson)
 * on a private socket, and stops it checking its exit status.
 */
#ifndef TQKV_TESTS_DAEMON_HARNESS_H
#define TQKV_TESTS_DAEMON_HARNESS_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tqkv/client.h>

struct test_daemon {
	pid_t pid;
	char socket[108];
	char dir[64];
};

static inline void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static pid_t harness_daemon_pid;

/* A failed assertion ends the test process: never leave a daemon behind. */
static void harness_kill_daemon(void)
{
	if (harness_daemon_pid > 0)
		kill(harness_daemon_pid, SIGKILL);
}

static inline void daemon_make_dir(struct test_daemon *d)
{
	snprintf(d->dir, sizeof(d->dir), "/tmp/tqkv-test-XXXXXX");
	cr_assert_not_null(mkdtemp(d->dir));
	snprintf(d->socket, sizeof(d->socket), "%s/tqkvd.sock", d->dir);
}

/* Runs argv with env (NAME=VALUE strings, NULL-terminated, may be NULL)
 * added to ours, after setup(arg) in the child if not NULL, and waits
 * until the daemon answers on d->socket. */
static inline void daemon_spawn_with(struct test_daemon *d, const char *const *argv, const char *const *env,
				     void (*setup)(void *arg), void *arg)
{
	d->pid = fork();
	cr_assert_geq(d->pid, 0);
	if (d->pid == 0) {
		/* A test killed by its timeout takes its daemon along. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (; env && *env; env++)
			putenv((char *)*env);
		if (setup)
			setup(arg);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	harness_daemon_pid = d->pid;
	atexit(harness_kill_daemon);
	for (int i = 0; i < 1000; i++) {
		struct tqkv_client *c;

		if (tqkv_client_connect(d->socket, &c) == 0) {
			tqkv_client_free(c);
			return;
		}
		sleep_ms(10);
	}
	cr_assert_fail("tqkvd did not start on %s", d->socket);
}

static inline void daemon_spawn(struct test_daemon *d, const char *const *argv, const char *const *env)
{
	daemon_spawn_with(d, argv, env, NULL, NULL);
}

/* The daemon binary's arguments for a test: private socket, small budget,
 * no system configuration. */
#define DAEMON_ARGS(d) "--socket", (d)->socket, "--memory-budget", "256M", "--config", "/dev/null", \
	"--state-directory", (d)->dir

/* Starts tqkvd again in the same directory (socket, saved cache), with
 * extra arguments (NULL-terminated, may be NULL). */
static inline void daemon_restart(struct test_daemon *d, const char *const *extra)
{
	const char *argv[32] = { getenv("TQKVD") };
	unsigned n = 1;

	cr_assert_not_null(argv[0], "$TQKVD must name the daemon binary");
	{
		const char *base[] = { DAEMON_ARGS(d) };

		for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++)
			argv[n++] = base[i];
	}
	for (; extra && *extra && n < 31; extra++)
		argv[n++] = *extra;
	argv[n] = NULL;
	daemon_spawn(d, argv, NULL);
}

/* Starts tqkvd in a new private directory (socket and state directory). */
static inline void daemon_start(struct test_daemon *d, const char *const *extra)
{
	daemon_make_dir(d);
	daemon_restart(d, extra);
}

/* SIGTERM, then the exit status must be 0; the directory stays. */
static inline void daemon_terminate(struct test_daemon *d)
{
	int status;

	kill(d->pid, SIGTERM);
	cr_assert_eq(waitpid(d->pid, &status, 0), d->pid);
	harness_daemon_pid = 0;
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "tqkvd exit status %#x", status);
}

/* Removes the daemon's directory and the saved cache in it. */
static inline void daemon_remove_dir(struct test_daemon *d)
{
	char path[128];

	snprintf(path, sizeof(path), "%s/cache.snapshot", d->dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/cache.snapshot.tmp", d->dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/cache.snapshot.rejected", d->dir);
	unlink(path);
	rmdir(d->dir);
}

/* SIGTERM, then the exit status must be 0; removes the directory. */
static inline void daemon_stop(struct test_daemon *d)
{
	daemon_terminate(d);
	daemon_remove_dir(d);
}

static inline int count_fds(pid_t pid)
{
	char path[64];
	DIR *dir;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	dir = opendir(path);
	if (!dir)
		return -1;
	while (readdir(dir))
		n++;
	closedir(dir);
	return n - 2;
}

/* The daemon's fd count once it has caught up with closed connections
 * (equal to want, or whatever it settles at after 2 s). */
static inline int settled_fds(pid_t pid, int want)
{
	int n = count_fds(pid);

	for (int i = 0; i < 200 && n != want; i++) {
		sleep_ms(10);
		n = count_fds(pid);
	}
	return n;
}

/* A raw connection for protocol tests. */
static inline int raw_connect(const struct test_daemon *d)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	strcpy(sa.sun_path, d->socket);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* Sends one message with an arbitrary header (protocol tests lie in it). */
static inline void raw_send(int fd, const struct tqkv_msg_header *h, const void *payload, size_t len)
{
	cr_assert_eq(send(fd, h, sizeof(*h), MSG_NOSIGNAL), (ssize_t)sizeof(*h));
	if (len)
		cr_assert_eq(send(fd, payload, len, MSG_NOSIGNAL), (ssize_t)len);
}

/* Reads one reply (5 s timeout).  Returns its payload size, or -1 when the
 * daemon closed the connection. */
static inline int raw_recv(int fd, struct tqkv_msg_header *h, void *buf, size_t cap, int *fds, unsigned *n_fds)
{
	struct timeval tv = { 5, 0 };
	union {
		char b[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { h, sizeof(*h) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b) };
	ssize_t n;
	size_t body;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	n = recvmsg(fd, &mh, MSG_WAITALL | MSG_CMSG_CLOEXEC);
	if (n <= 0)
		return -1;
	cr_assert_eq(n, (ssize_t)sizeof(*h));
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm && fds; cm = CMSG_NXTHDR(&mh, cm)) {
		*n_fds = (unsigned)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		memcpy(fds, CMSG_DATA(cm), *n_fds * sizeof(int));
	}
	body = h->size - sizeof(*h);
	cr_assert_leq(body, cap);
	if (body)
		cr_assert_eq(recv(fd, buf, body, MSG_WAITALL), (ssize_t)body);
	return (int)body;
}

static inline void raw_hello(int fd)
{
	struct tqkv_hello hello = { TQKV_PROTOCOL_VERSION, TQKV_PROTOCOL_VERSION };
	struct tqkv_msg_header h = { sizeof(h) + sizeof(hello), TQKV_OP_HELLO, 0, 1, 0, 0 };
	struct tqkv_hello_reply rep;

	raw_send(fd, &h, &hello, sizeof(hello));
	cr_assert_eq(raw_recv(fd, &h, &rep, sizeof(rep), NULL, NULL), (int)sizeof(rep));
	cr_assert_eq(h.flags, TQKV_MSG_REPLY);
}

static inline void raw_register(int fd, const struct tqkv_model *m, struct tqkv_register_reply *rep, int *fds,
				unsigned *n_fds)
{
	struct {
		struct tqkv_register_model reg;
		struct tqkv_layer_desc layers[16];
	} msg;
	size_t len = sizeof(msg.reg) + m->n_layers * sizeof(msg.layers[0]);
	struct tqkv_msg_header h = { (uint32_t)(sizeof(h) + len), TQKV_OP_REGISTER_MODEL, 0, 2, 0, 0 };
	struct {
		struct tqkv_register_reply rep;
		struct tqkv_layer_desc layers[16];
	} got;

	memset(&msg, 0, sizeof(msg));
	msg.reg = (struct tqkv_register_model){ m->fingerprint, m->n_layers, m->staging_tokens, m->max_sequences, 0 };
	memcpy(msg.layers, m->layers, m->n_layers * sizeof(msg.layers[0]));
	raw_send(fd, &h, &msg, len);
	/* The reply: the limits, then the layers as registered. */
	cr_assert_eq(raw_recv(fd, &h, &got, sizeof(got), fds, n_fds),
		     (int)(sizeof(got.rep) + m->n_layers * sizeof(got.layers[0])));
	cr_assert_eq(h.flags, TQKV_MSG_REPLY);
	*rep = got.rep;
}

/* The value of key in the daemon's INFO text, or -1. */
static inline long long stats_value(const char *text, const char *key)
{
	size_t n = strlen(key);

	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (strncmp(p, key, n) == 0 && p[n] == ':')
			return atoll(p + n + 1);
	return -1;
}

static inline long long daemon_stat(const struct test_daemon *d, const char *key);

/* The worker publishes a block before the loop hears of it, so counters
 * may trail what a client already sees by a moment: poll (2 s at most). */
static inline long long daemon_stat_eventually(const struct test_daemon *d, const char *key, long long want)
{
	long long v = daemon_stat(d, key);

	for (int i = 0; i < 200 && v != want; i++) {
		sleep_ms(10);
		v = daemon_stat(d, key);
	}
	return v;
}

static inline long long daemon_stat(const struct test_daemon *d, const char *key)
{
	struct tqkv_client *c;
	char *text;
	long long v;

	cr_assert_eq(tqkv_client_connect(d->socket, &c), 0);
	cr_assert_eq(tqkv_client_stats(c, &text), 0);
	v = stats_value(text, key);
	free(text);
	tqkv_client_free(c);
	return v;
}

#endif
