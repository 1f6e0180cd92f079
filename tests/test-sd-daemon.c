/* SPDX-License-Identifier: MIT */
/*
 * tqkvd and systemd: the notify protocol (READY, STATUS, WATCHDOG, STOPPING)
 * on a NOTIFY_SOCKET this test listens on, and socket activation through
 * systemd-socket-activate.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <stdbool.h>

#include "daemon-harness.h"

/* Collects notify datagrams until want appears or timeout_ms passes. */
static bool wait_notify(int sock, const char *want, int timeout_ms, char *seen, size_t seen_size)
{
	for (int waited = 0; waited < timeout_ms; waited += 10) {
		struct pollfd p = { sock, POLLIN, 0 };
		char buf[512];
		ssize_t n;

		if (poll(&p, 1, 10) <= 0)
			continue;
		n = recv(sock, buf, sizeof(buf) - 1, 0);
		if (n <= 0)
			continue;
		buf[n] = 0;
		strncat(seen, buf, seen_size - strlen(seen) - 2);
		strcat(seen, "|");
		if (strstr(buf, want))
			return true;
	}
	return false;
}

Test(sd_daemon, notify_ready_watchdog_stopping, .timeout = 60)
{
	struct test_daemon d;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char notify_env[160], seen[4096] = "";
	const char *env[] = { notify_env, "WATCHDOG_USEC=200000", NULL };
	int sock, status;

	daemon_make_dir(&d);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", d.dir);
	sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(bind(sock, (struct sockaddr *)&sa, sizeof(sa)), 0);
	snprintf(notify_env, sizeof(notify_env), "NOTIFY_SOCKET=%s", sa.sun_path);
	{
		const char *argv[] = { getenv("TQKVD"), DAEMON_ARGS(&d), NULL };

		daemon_spawn(&d, argv, env);
	}
	cr_assert(wait_notify(sock, "READY=1", 5000, seen, sizeof(seen)), "no READY=1: %s", seen);
	cr_assert(strstr(seen, "STATUS="), "no STATUS=: %s", seen);
	/* Half of WATCHDOG_USEC: pings every 100 ms. */
	cr_assert(wait_notify(sock, "WATCHDOG=1", 2000, seen, sizeof(seen)), "no WATCHDOG=1: %s", seen);
	kill(d.pid, SIGTERM);
	cr_assert(wait_notify(sock, "STOPPING=1", 5000, seen, sizeof(seen)), "no STOPPING=1: %s", seen);
	cr_assert_eq(waitpid(d.pid, &status, 0), d.pid);
	harness_daemon_pid = 0;
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %#x", status);
	close(sock);
	unlink(sa.sun_path);
	daemon_remove_dir(&d);
}

/* systemd-socket-activate listens, and execs tqkvd with the socket on the
 * first connection (LISTEN_FDS=1). */
Test(sd_daemon, socket_activation, .timeout = 60)
{
	const char *activate = "/usr/bin/systemd-socket-activate";
	struct test_daemon d;
	struct tqkv_client *c;
	char *text;

	if (access(activate, X_OK) != 0)
		cr_skip_test("no systemd-socket-activate");
	daemon_make_dir(&d);
	{
		/* --socket points elsewhere: an activated daemon must ignore it. */
		const char *argv[] = { activate, "-l", d.socket, getenv("TQKVD"), "--socket", "/nonexistent/x.sock",
				       "--memory-budget", "64M", "--config", "/dev/null", "--state-directory", "none", NULL };

		daemon_spawn(&d, argv, NULL);
	}
	cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
	cr_assert_eq(tqkv_client_stats(c, &text), 0);
	cr_assert_eq(stats_value(text, "pid"), d.pid, "the activated daemon replaced the activator");
	free(text);
	tqkv_client_free(c);
	daemon_stop(&d);
}
