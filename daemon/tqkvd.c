/* SPDX-License-Identifier: MIT */
/*
 * tqkvd: the tqkv daemon.  Parses its configuration, takes or creates its
 * listening socket, and runs the libuv loop until SIGTERM/SIGINT, talking
 * to systemd through sd_notify (works the same without systemd).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <uv.h>

#include "arena.h"
#include "config.h"
#include "log.h"
#include "server.h"
#include "snapshot.h"

#define DEFAULT_CONFIG "/etc/tqkv/tqkvd.conf"
/* The unit's FileDescriptorStoreMax= and the socket. */
#define SD_FDS_MAX 4097

struct daemon_state {
	uv_loop_t loop;
	uv_signal_t sigterm, sigint;
	uv_timer_t watchdog;
	struct server *server;
	char *socket_path;   /* the path we created and must unlink, or NULL */
};

static void help(FILE *f)
{
	fprintf(f,
		"Usage: tqkvd [OPTIONS]\n"
		"\n"
		"The tqkv daemon: holds the attention KV cache of inference engines in shared memory,\n"
		"compressed with TurboQuant, and serves it to clients over a Unix socket.\n"
		"Runs in the foreground; under systemd it uses Type=notify, the watchdog and socket\n"
		"activation.\n"
		"\n"
		"Options (each overrides the configuration file):\n"
		"  -c, --config=PATH          configuration file (default " DEFAULT_CONFIG "; a missing\n"
		"                             default file is fine, a missing explicit one is an error)\n"
		"  -s, --socket=PATH          listening socket (default: $RUNTIME_DIRECTORY/tqkvd.sock,\n"
		"                             /run/tqkv/tqkvd.sock as root, else\n"
		"                             $XDG_RUNTIME_DIR/tqkv/tqkvd.sock); ignored under socket\n"
		"                             activation\n"
		"  -m, --memory-budget=SIZE   bytes of compressed cache (e.g. 512M, 4G; default 1G)\n"
		"  -b, --block-tokens=N       tokens per block, a multiple of 16 (default 64)\n"
		"  -w, --worker-threads=N     compression threads (default 1)\n"
		"  -d, --state-directory=DIR  where the cache is saved on stop and loaded on start\n"
		"                             (\"none\": not persisted)\n"
		"  -l, --log-level=LEVEL      err, warning, notice, info or debug (default info)\n"
		"  -o, --set=KEY=VALUE        any configuration key (see tqkvd.conf(5))\n"
		"  -h, --help                 show this help\n"
		"      --version              show the version\n"
		"\n"
		"Exit status: 0 after a clean stop, 1 on a runtime failure, 2 on invalid configuration\n"
		"or usage.\n");
}

/* Default socket path per the documented rules; allocates. */
static int default_socket_path(char **ret)
{
	const char *dir = getenv("RUNTIME_DIRECTORY"), *xdg = getenv("XDG_RUNTIME_DIR");
	char *p = NULL;

	if (dir && *dir) {
		/* systemd may list several directories separated by ':'. */
		size_t n = strcspn(dir, ":");

		if (asprintf(&p, "%.*s/tqkvd.sock", (int)n, dir) < 0)
			return -ENOMEM;
	} else if (geteuid() == 0) {
		p = strdup("/run/tqkv/tqkvd.sock");
	} else if (xdg && *xdg) {
		if (asprintf(&p, "%s/tqkv/tqkvd.sock", xdg) < 0)
			return -ENOMEM;
	} else {
		log_error("No socket path: set --socket, $RUNTIME_DIRECTORY or $XDG_RUNTIME_DIR");
		return -EINVAL;
	}
	if (!p)
		return -ENOMEM;
	*ret = p;
	return 0;
}

static int listen_on(const char *path, int *ret_fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[sizeof(sa.sun_path)];
	char *slash;
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return log_error_errno(ENAMETOOLONG, "Socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	strcpy(dir, path);
	slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = 0;
		if (mkdir(dir, 0755) < 0 && errno != EEXIST)
			return log_error_errno(errno, "Failed to create %s", dir);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return log_error_errno(errno, "Failed to create socket");
	/* A stale socket from a crashed daemon: replace it, but never steal
	 * one that a live daemon answers on. */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		close(fd);
		return log_error_errno(EADDRINUSE, "Another daemon is listening on %s", path);
	}
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, SOMAXCONN) < 0) {
		r = -errno;
		close(fd);
		return log_error_errno(r, "Failed to listen on %s", path);
	}
	*ret_fd = fd;
	return 0;
}

static void on_signal(uv_signal_t *h, int signum)
{
	struct daemon_state *d = h->data;

	log_info("Received %s, stopping", strsignal(signum));
	sd_notify(0, "STOPPING=1\nSTATUS=Stopping");
	server_stop(d->server);
	server_save(d->server);
	uv_signal_stop(&d->sigterm);
	uv_signal_stop(&d->sigint);
	uv_close((uv_handle_t *)&d->sigterm, NULL);
	uv_close((uv_handle_t *)&d->sigint, NULL);
	uv_close((uv_handle_t *)&d->watchdog, NULL);
}

/* Copying what the fd store and the snapshot hold runs before READY=1:
 * asks systemd for the time it may take at a pessimistic 64 MiB/s, plus
 * 30 s, so that a large cache does not run into TimeoutStartSec=. */
static void extend_start_timeout(const struct tqkvd_config *cfg, const int *fds, size_t n_fds)
{
	uint64_t adopt = 0, bytes;
	char path[PATH_MAX];
	struct stat st;

	for (size_t i = 0; i < n_fds; i++)
		if (fstat(fds[i], &st) == 0)
			adopt += (uint64_t)st.st_size;
	/* Arenas are the budget's size each; what they hold is within it. */
	bytes = adopt < cfg->memory_budget ? adopt : cfg->memory_budget;
	if (cfg->state_dir) {
		snprintf(path, sizeof(path), "%s/%s", cfg->state_dir, SNAPSHOT_FILE);
		if (stat(path, &st) == 0)
			bytes += (uint64_t)st.st_size;
	}
	if (bytes)
		sd_notifyf(0, "EXTEND_TIMEOUT_USEC=%llu", (30ull + (unsigned long long)(bytes >> 26)) * 1000000ull);
}

/* Pinged from the loop itself, so a stuck loop stops the pings. */
static void on_watchdog(uv_timer_t *t)
{
	sd_notify(0, "WATCHDOG=1");
}

static int parse_args(int argc, char **argv, struct tqkvd_config *cfg)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "socket", required_argument, NULL, 's' },
		{ "memory-budget", required_argument, NULL, 'm' },
		{ "block-tokens", required_argument, NULL, 'b' },
		{ "worker-threads", required_argument, NULL, 'w' },
		{ "state-directory", required_argument, NULL, 'd' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "set", required_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	static const struct {
		int opt;
		const char *key;
	} keys[] = {
		{ 's', "socket" }, { 'm', "memory_budget" }, { 'b', "block_tokens" }, { 'w', "worker_threads" },
		{ 'd', "state_directory" }, { 'l', "log_level" },
	};
	const char *config_path = NULL;
	char err[512];
	int c, r;

	/* First pass: the file, so that options override it. */
	while ((c = getopt_long(argc, argv, "c:s:m:b:w:d:l:o:h", opts, NULL)) != -1) {
		if (c == 'h') {
			help(stdout);
			return 1;
		}
		if (c == 'V') {
			printf("tqkvd %s (protocol %u)\n", TQKV_VERSION, 1u);
			return 1;
		}
		if (c == '?') {
			fprintf(stderr, "Try 'tqkvd --help'.\n");
			return -EINVAL;
		}
		if (c == 'c')
			config_path = optarg;
	}
	if (optind < argc) {
		fprintf(stderr, "tqkvd: unexpected argument '%s'. Try 'tqkvd --help'.\n", argv[optind]);
		return -EINVAL;
	}
	r = config_load_file(cfg, config_path ? config_path : DEFAULT_CONFIG, config_path != NULL, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "tqkvd: %s\n", err);
		return -EINVAL;
	}
	optind = 1;
	while ((c = getopt_long(argc, argv, "c:s:m:b:w:d:l:o:h", opts, NULL)) != -1) {
		const char *key = NULL, *value = optarg;
		char kv[256];

		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
			if (keys[i].opt == c)
				key = keys[i].key;
		if (c == 'o') {
			const char *eq = strchr(optarg, '=');

			if (!eq || (size_t)(eq - optarg) >= sizeof(kv)) {
				fprintf(stderr, "tqkvd: --set expects KEY=VALUE, got '%s'\n", optarg);
				return -EINVAL;
			}
			memcpy(kv, optarg, (size_t)(eq - optarg));
			kv[eq - optarg] = 0;
			key = kv;
			value = eq + 1;
		}
		if (!key)
			continue;
		r = config_set(cfg, key, value, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "tqkvd: %s\n", err);
			return -EINVAL;
		}
	}
	r = config_validate(cfg, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "tqkvd: %s\n", err);
		return -EINVAL;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct tqkvd_config cfg;
	struct daemon_state d = { 0 };
	struct arena *probe;
	uint64_t watchdog_usec = 0;
	int listen_fd = -1, n = 0, r;
	char **fd_names = NULL;
	int stored_fds[SD_FDS_MAX];
	char *stored_names[SD_FDS_MAX];
	size_t n_stored = 0;

	config_init_defaults(&cfg);
	r = parse_args(argc, argv, &cfg);
	if (r != 0) {
		config_free(&cfg);
		return r > 0 ? 0 : 2;
	}
	log_set_max_level(cfg.log_level);
	sd_notify(0, "STATUS=Starting");
	/* Every tenant's arena is one mapping of the budget's size: fail now,
	 * not at every REGISTER_MODEL, if this machine cannot map one (address
	 * space, RLIMIT_AS). */
	r = arena_new(cfg.memory_budget, &probe);
	if (r < 0) {
		log_error_errno(r, "Cannot map an arena of memory_budget = %llu bytes, lower memory_budget",
				(unsigned long long)cfg.memory_budget);
		config_free(&cfg);
		return 2;
	}
	arena_free(probe);

	/* From systemd: the listening socket (socket activation) and what a
	 * crashed predecessor parked in the fd store. */
	n = sd_listen_fds_with_names(1, &fd_names);
	if (n > SD_FDS_MAX) {
		log_error("systemd passed %d fds, more than the %d expected", n, SD_FDS_MAX);
		r = -EINVAL;
		goto out;
	}
	if (n < 0) {
		log_error_errno(n, "Failed to read LISTEN_FDS");
		r = -EINVAL;
		goto out;
	}
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;

		if (sd_is_socket(fd, AF_UNSPEC, 0, -1) <= 0) {
			stored_fds[n_stored++] = fd;
			stored_names[n_stored - 1] = fd_names[i];
			continue;
		}
		if (listen_fd >= 0 || sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
			log_error("The sockets passed by systemd are not one listening AF_UNIX stream socket");
			r = -EINVAL;
			goto out;
		}
		listen_fd = fd;
		log_info("Using the socket passed by systemd");
	}
	if (listen_fd < 0) {
		if (!cfg.socket_path) {
			r = default_socket_path(&cfg.socket_path);
			if (r < 0)
				goto out;
		}
		r = listen_on(cfg.socket_path, &listen_fd);
		if (r < 0)
			goto out;
		d.socket_path = cfg.socket_path;
	}

	uv_loop_init(&d.loop);
	r = server_new(&d.loop, &cfg, listen_fd, &d.server);
	if (r < 0)
		goto out_loop;
	/* Under systemd (or anything speaking its notify protocol) the
	 * tenants' memory is parked in the fd store. */
	server_set_fdstore(d.server, getenv("NOTIFY_SOCKET") != NULL);
	extend_start_timeout(&cfg, stored_fds, n_stored);
	server_adopt_fds(d.server, stored_fds, stored_names, n_stored);
	server_load(d.server);
	uv_signal_init(&d.loop, &d.sigterm);
	uv_signal_init(&d.loop, &d.sigint);
	d.sigterm.data = d.sigint.data = &d;
	uv_signal_start(&d.sigterm, on_signal, SIGTERM);
	uv_signal_start(&d.sigint, on_signal, SIGINT);
	signal(SIGPIPE, SIG_IGN);
	uv_timer_init(&d.loop, &d.watchdog);
	if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0)
		uv_timer_start(&d.watchdog, on_watchdog, 0, watchdog_usec / 2000 ? watchdog_usec / 2000 : 1);

	log_info("tqkvd %s ready: socket %s, budget %llu bytes, blocks of %u tokens, %u worker thread(s)",
		 TQKV_VERSION, d.socket_path ? d.socket_path : "(systemd)", (unsigned long long)cfg.memory_budget,
		 cfg.block_tokens, cfg.worker_threads);
	sd_notifyf(0, "READY=1\nSTATUS=Serving, budget %llu bytes", (unsigned long long)cfg.memory_budget);

	uv_run(&d.loop, UV_RUN_DEFAULT);
	server_free(d.server);
	r = 0;
out_loop:
	uv_loop_close(&d.loop);
out:
	if (d.socket_path)
		unlink(d.socket_path);
	for (int i = 0; fd_names && i < n; i++)
		free(fd_names[i]);
	free(fd_names);
	config_free(&cfg);
	return r < 0 ? (r == -EINVAL ? 2 : 1) : 0;
}
