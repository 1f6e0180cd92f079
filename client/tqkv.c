/* SPDX-License-Identifier: MIT */
/* tqkv: the command-line tool to inspect and manage a running tqkvd. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tqkv/client.h>

#include "stats-format.h"

enum format { FORMAT_INFO, FORMAT_JSON, FORMAT_PROMETHEUS };

struct options {
	const char *socket;
	enum format format;
	bool batch;
	unsigned iterations;   /* top: 0 = until interrupted */
	double delay;          /* top: seconds between updates */
};

static void help(FILE *f)
{
	fprintf(f,
		"Usage: tqkv [OPTIONS] COMMAND [COMMAND OPTIONS]\n"
		"\n"
		"Inspects and manages a running tqkv daemon (tqkvd).\n"
		"\n"
		"Commands:\n"
		"  ping     check that the daemon answers (prints \"pong\")\n"
		"  stats    print the daemon's counters: INFO-style \"# Section\" and \"key:value\"\n"
		"           lines (default), one JSON object (--json; per-tenant counters under\n"
		"           \"tenants\"), or the Prometheus text format (--format=prometheus)\n"
		"  ls       list the tenants and the open sequences (tokens, published tokens, blocks\n"
		"           and how many of them are shared with other sequences)\n"
		"  top      a live view of the daemon: memory, compression, prefix hit rate, request\n"
		"           and compression rates, per-tenant usage; refreshed every --delay seconds\n"
		"           (batch mode when standard output is not a terminal, or with --batch)\n"
		"  flush    drop the cached blocks no open sequence holds (this user's tenant, or every\n"
		"           tenant when run as root or as the daemon's user); prints what was dropped\n"
		"\n"
		"Options:\n"
		"  -s, --socket=PATH     daemon socket (default: $TQKV_SOCKET, else\n"
		"                        $XDG_RUNTIME_DIR/tqkv/tqkvd.sock, /run/tqkv/tqkvd.sock as root)\n"
		"  -j, --json            stats, ls, flush: machine-readable output (--format=json)\n"
		"  -f, --format=FORMAT   stats: info, json or prometheus\n"
		"  -b, --batch           top: plain output, one report per update, no screen control\n"
		"  -n, --iterations=N    top: stop after N updates (default: until interrupted; 1 in\n"
		"                        batch mode)\n"
		"  -d, --delay=SECONDS   top: time between updates (default 1)\n"
		"  -h, --help            show this help\n"
		"\n"
		"Exit status: 0 on success, 1 if the daemon cannot be reached or fails the request\n"
		"or the output cannot be written, 2 on bad usage.\n"
		"\n"
		"See tqkv(1), tqkvd(8).\n");
}

static int output_errno;  /* why a flush of standard output failed */

/* fflush(stdout), keeping the reason of a failure for output_failed(). */
static int flush_output(void)
{
	if (fflush(stdout) == 0)
		return 0;
	output_errno = errno;
	return EOF;
}

/* Output that did not reach its file (a full disk, a closed pipe) is a
 * failure: says so and returns true. */
static bool output_failed(void)
{
	if (flush_output() == 0 && !ferror(stdout))
		return false;
	fprintf(stderr, "tqkv: cannot write output: %s\n", output_errno ? strerror(output_errno) : "write error");
	return true;
}

static int bad_usage(const char *what, const char *arg)
{
	fprintf(stderr, "tqkv: %s%s%s. Try 'tqkv --help'.\n", what, arg ? ": " : "", arg ? arg : "");
	return 2;
}

/* Options may come before or after the command. */
static int parse_options(int argc, char **argv, struct options *o, const char **ret_cmd)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },   { "json", no_argument, NULL, 'j' },
		{ "format", required_argument, NULL, 'f' },   { "batch", no_argument, NULL, 'b' },
		{ "iterations", required_argument, NULL, 'n' }, { "delay", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },           { 0 },
	};
	const char *cmd;
	char *end;
	unsigned long n;
	int c;

	/* getopt_long() moves the non-options (the command) to the end. */
	while ((c = getopt_long(argc, argv, "s:jf:bn:d:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			o->socket = optarg;
			break;
		case 'j':
			o->format = FORMAT_JSON;
			break;
		case 'f':
			if (!strcmp(optarg, "info"))
				o->format = FORMAT_INFO;
			else if (!strcmp(optarg, "json"))
				o->format = FORMAT_JSON;
			else if (!strcmp(optarg, "prometheus"))
				o->format = FORMAT_PROMETHEUS;
			else
				return bad_usage("unknown format (info, json, prometheus)", optarg);
			break;
		case 'b':
			o->batch = true;
			break;
		case 'n':
			/* Range-checked before narrowing: 2^32 + 1 is not 1. */
			errno = 0;
			n = strtoul(optarg, &end, 10);
			if (errno || *end || end == optarg || n == 0 || n > 1000000)
				return bad_usage("--iterations must be 1..1000000", optarg);
			o->iterations = (unsigned)n;
			break;
		case 'd':
			o->delay = strtod(optarg, &end);
			if (*end || end == optarg || !(o->delay >= 0.05 && o->delay <= 3600))
				return bad_usage("--delay must be 0.05..3600 seconds", optarg);
			break;
		case 'h':
			help(stdout);
			exit(output_failed() ? 1 : 0);
		default:
			return 2;
		}
	}
	if (optind >= argc)
		return bad_usage("missing command", NULL);
	cmd = argv[optind++];
	if (optind < argc)
		return bad_usage("extra argument", argv[optind]);
	*ret_cmd = cmd;
	return 0;
}

static int cmd_stats(struct tqkv_client *c, const struct options *o)
{
	char *text;
	int r = tqkv_client_stats(c, &text);

	if (r < 0)
		return r;
	if (o->format == FORMAT_JSON)
		stats_print_json(text, stdout);
	else if (o->format == FORMAT_PROMETHEUS)
		stats_print_prometheus(text, stdout);
	else
		fputs(text, stdout);
	free(text);
	return 0;
}

/* The value of key in the "# Sequence" section that starts at p. */
static const char *section_value(const char *p, const char *key, char *buf, size_t size)
{
	size_t n = strlen(key);

	buf[0] = 0;
	for (p = strchr(p, '\n'); p && p[1] && p[1] != '#'; p = strchr(p + 1, '\n'))
		if (!strncmp(p + 1, key, n) && p[1 + n] == ':') {
			snprintf(buf, size, "%.*s", (int)strcspn(p + 2 + n, "\n"), p + 2 + n);
			break;
		}
	return buf;
}

static int cmd_ls(struct tqkv_client *c, const struct options *o)
{
	static const char *const cols[] = { "tenant", "client", "pid", "tokens", "published_tokens", "blocks",
					    "blocks_shared", "bytes" };
	char *stats, *list;
	int r = tqkv_client_stats(c, &stats);

	if (r < 0)
		return r;
	r = tqkv_client_list(c, &list);
	if (r < 0) {
		free(stats);
		return r;
	}
	if (o->format == FORMAT_JSON) {
		/* The tenants of stats and the sequences of the list. */
		char *both = malloc(strlen(stats) + strlen(list) + 1);

		if (!both) {
			r = -ENOMEM;
		} else {
			stpcpy(stpcpy(both, strstr(stats, "# Tenant ") ? strstr(stats, "# Tenant ") : ""), list);
			stats_print_json(both, stdout);
			free(both);
		}
	} else {
		printf("%-16s %8s %10s %10s %8s %14s %8s\n", "TENANT", "CLIENTS", "BLOCKS", "PINNED", "CACHED",
		       "HIT TOKENS", "HIT RATE");
		for (const char *p = strstr(stats, "# Tenant "); p; p = strstr(p + 1, "# Tenant ")) {
			char name[64], v[6][32];

			snprintf(name, sizeof(name), "%.*s", (int)strcspn(p + 9, "\n"), p + 9);
			printf("%-16s %8s %10s %10s %8s %14s %8s\n", name, section_value(p, "clients", v[0], 32),
			       section_value(p, "blocks", v[1], 32), section_value(p, "bytes_pinned", v[2], 32),
			       section_value(p, "bytes_cached", v[3], 32), section_value(p, "prefix_hit_tokens", v[4], 32),
			       section_value(p, "prefix_hit_rate", v[5], 32));
		}
		printf("\n%-8s %-16s %7s %8s %10s %10s %8s %8s %12s\n", "SEQ", "TENANT", "CLIENT", "PID", "TOKENS",
		       "PUBLISHED", "BLOCKS", "SHARED", "BYTES");
		for (const char *p = strstr(list, "# Sequence "); p; p = strstr(p + 1, "# Sequence ")) {
			char v[8][64];

			for (size_t i = 0; i < 8; i++)
				section_value(p, cols[i], v[i], sizeof(v[i]));
			printf("%-8.*s %-16s %7s %8s %10s %10s %8s %8s %12s\n", (int)strcspn(p + 11, "\n"), p + 11, v[0],
			       v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
		}
	}
	free(stats);
	free(list);
	return r;
}

static int cmd_flush(struct tqkv_client *c, const struct options *o)
{
	uint64_t blocks, bytes;
	int r = tqkv_client_flush(c, &blocks, &bytes);

	if (r < 0)
		return r;
	if (o->format == FORMAT_JSON)
		printf("{\"blocks\":%llu,\"bytes\":%llu}\n", (unsigned long long)blocks, (unsigned long long)bytes);
	else
		printf("flushed %llu blocks (%.1f MiB)\n", (unsigned long long)blocks, (double)bytes / 1048576.0);
	return 0;
}

static volatile sig_atomic_t stop_top;

static void on_signal(int sig)
{
	(void)sig;
	stop_top = 1;
}

static double monotonic_sec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double mib(const char *text, const char *section, const char *key)
{
	return stats_number(text, section, key, 0) / 1048576.0;
}

/* One report: totals, rates since the previous one, tenants. */
static void top_report(const char *text, const char *prev, double dt, FILE *out)
{
	double req = stats_number(text, NULL, "requests_total", 0), blk = stats_number(text, NULL, "blocks_compressed", 0);
	double preq = prev ? stats_number(prev, NULL, "requests_total", 0) : req;
	double pblk = prev ? stats_number(prev, NULL, "blocks_compressed", 0) : blk;
	time_t now = time(NULL);
	char when[32];

	strftime(when, sizeof(when), "%H:%M:%S", localtime(&now));
	fprintf(out, "tqkvd pid %.0f, up %.0f s, %s\n", stats_number(text, NULL, "pid", 0),
		stats_number(text, NULL, "uptime_sec", 0), when);
	fprintf(out, "clients %.0f  sequences %.0f  tail tokens %.0f  worker queue %.0f\n",
		stats_number(text, NULL, "clients", 0), stats_number(text, NULL, "sequences", 0),
		stats_number(text, NULL, "tail_tokens", 0), stats_number(text, NULL, "worker_queue_depth", 0));
	fprintf(out, "memory %.1f / %.1f MiB  pinned %.1f MiB  cached %.1f MiB  compression %.2fx\n",
		mib(text, "Memory", "arena_bytes_used"), mib(text, "Memory", "memory_budget_bytes"),
		mib(text, "Cache", "bytes_pinned"), mib(text, "Cache", "bytes_cached"),
		stats_number(text, "Blocks", "compression_ratio", 0));
	fprintf(out, "prefix lookups %.0f  hit tokens %.0f  hit rate %.1f%%  evicted blocks %.0f\n",
		stats_number(text, "Cache", "prefix_lookups", 0), stats_number(text, "Cache", "prefix_hit_tokens", 0),
		100 * stats_number(text, "Cache", "prefix_hit_rate", 0), stats_number(text, "Cache", "evicted_blocks", 0));
	fprintf(out, "requests %.0f/s  blocks compressed %.0f/s\n\n", dt > 0 ? (req - preq) / dt : 0,
		dt > 0 ? (blk - pblk) / dt : 0);
	fprintf(out, "%-16s %8s %10s %12s %12s %9s\n", "TENANT", "CLIENTS", "BLOCKS", "PINNED MiB", "CACHED MiB",
		"HIT RATE");
	for (const char *p = strstr(text, "# Tenant "); p; p = strstr(p + 1, "# Tenant ")) {
		char section[80];

		snprintf(section, sizeof(section), "%.*s", (int)strcspn(p + 2, "\n"), p + 2);
		fprintf(out, "%-16s %8.0f %10.0f %12.1f %12.1f %8.1f%%\n", section + 7,
			stats_number(text, section, "clients", 0), stats_number(text, section, "blocks", 0),
			mib(text, section, "bytes_pinned"), mib(text, section, "bytes_cached"),
			100 * stats_number(text, section, "prefix_hit_rate", 0));
	}
}

static int cmd_top(struct tqkv_client *c, const struct options *o)
{
	bool tty = !o->batch && isatty(STDOUT_FILENO);
	unsigned iterations = o->iterations ? o->iterations : tty ? 0 : 1;
	char *prev = NULL;
	double t_prev = 0;
	int r = 0;

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	for (unsigned i = 0; !stop_top && (!iterations || i < iterations); i++) {
		char *text;
		double t;

		if (i > 0) {
			struct timespec ts = { (time_t)o->delay, (long)(fmod(o->delay, 1.0) * 1e9) };

			nanosleep(&ts, NULL);
			if (stop_top)
				break;
		}
		r = tqkv_client_stats(c, &text);
		if (r < 0)
			break;
		t = monotonic_sec();
		if (tty)
			fputs("\033[H\033[2J", stdout);
		else if (i > 0)
			putchar('\n');
		top_report(text, prev, prev ? t - t_prev : 0, stdout);
		free(prev);
		prev = text;
		t_prev = t;
		/* main() reports the error; no point in polling on. */
		if (flush_output() == EOF)
			break;
	}
	free(prev);
	return r;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*run)(struct tqkv_client *c, const struct options *o);
	} cmds[] = { { "stats", cmd_stats }, { "ls", cmd_ls }, { "flush", cmd_flush }, { "top", cmd_top } };
	struct options o = { .delay = 1.0 };
	struct tqkv_client *c;
	const char *cmd = NULL;
	int (*run)(struct tqkv_client *, const struct options *) = NULL;
	int r;

	r = parse_options(argc, argv, &o, &cmd);
	if (r)
		return r;
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmd, cmds[i].name))
			run = cmds[i].run;
	if (!run && strcmp(cmd, "ping"))
		return bad_usage("unknown command", cmd);
	if (o.format == FORMAT_PROMETHEUS && run != cmd_stats)
		return bad_usage("--format=prometheus is for stats", NULL);

	r = tqkv_client_connect(o.socket, &c);
	if (r < 0) {
		/* tqkv_client_error(NULL): what went wrong in the HELLO exchange. */
		fprintf(stderr, "tqkv: cannot connect to tqkvd%s%s: %s%s%s%s\n", o.socket ? " at " : "",
			o.socket ? o.socket : "", strerror(-r), *tqkv_client_error(NULL) ? " (" : "",
			tqkv_client_error(NULL), *tqkv_client_error(NULL) ? ")" : "");
		return 1;
	}
	if (run) {
		r = run(c, &o);
	} else {
		r = tqkv_client_ping(c);
		if (r >= 0 && o.format != FORMAT_JSON)
			printf("pong\n");
	}
	if (r < 0)
		fprintf(stderr, "tqkv %s: %s (%s)\n", cmd, strerror(-r), tqkv_client_error(c));
	tqkv_client_free(c);
	return output_failed() || r < 0 ? 1 : 0;
}
