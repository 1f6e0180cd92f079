/* SPDX-License-Identifier: MIT */
/* tqkv: the command-line tool to inspect a running tqkvd. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tqkv/client.h>

static void help(FILE *f)
{
	fprintf(f,
		"Usage: tqkv [OPTIONS] COMMAND\n"
		"\n"
		"Inspects a running tqkv daemon.\n"
		"\n"
		"Commands:\n"
		"  ping              check that the daemon answers\n"
		"  stats [--json]    print the daemon's counters (INFO-style sections, or one JSON\n"
		"                    object with --json)\n"
		"\n"
		"Options:\n"
		"  -s, --socket=PATH  daemon socket (default: $TQKV_SOCKET, else\n"
		"                     $XDG_RUNTIME_DIR/tqkv/tqkvd.sock, /run/tqkv/tqkvd.sock as root)\n"
		"      --json         machine-readable output\n"
		"  -h, --help         show this help\n"
		"\n"
		"Exit status: 0 on success, 1 if the daemon cannot be reached or fails the request,\n"
		"2 on bad usage.\n");
}

static bool is_number(const char *s)
{
	char *end;

	if (!*s)
		return false;
	strtod(s, &end);
	return *end == 0 && !isspace((unsigned char)*s);
}

/* "# Section" lines are dropped; "key:value" lines become JSON members. */
static void print_json(const char *text)
{
	const char *p = text;
	bool first = true;

	putchar('{');
	while (*p) {
		const char *eol = strchr(p, '\n'), *colon;
		size_t len = eol ? (size_t)(eol - p) : strlen(p);
		char line[512];

		if (len >= sizeof(line))
			len = sizeof(line) - 1;
		memcpy(line, p, len);
		line[len] = 0;
		p += eol ? len + 1 : len;
		colon = strchr(line, ':');
		if (line[0] == '#' || !colon)
			continue;
		line[colon - line] = 0;
		printf("%s\"%s\":", first ? "" : ",", line);
		if (is_number(colon + 1)) {
			printf("%s", colon + 1);
		} else {
			putchar('"');
			for (const char *v = colon + 1; *v; v++)
				if (*v == '"' || *v == '\\')
					printf("\\%c", *v);
				else if ((unsigned char)*v >= 0x20)
					putchar(*v);
			putchar('"');
		}
		first = false;
	}
	printf("}\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *socket_path = NULL, *cmd;
	struct tqkv_client *c;
	bool json = false;
	int o, r;

	while ((o = getopt_long(argc, argv, "+s:h", opts, NULL)) != -1) {
		switch (o) {
		case 's':
			socket_path = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			help(stdout);
			return 0;
		default:
			fprintf(stderr, "Try 'tqkv --help'.\n");
			return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "tqkv: missing command. Try 'tqkv --help'.\n");
		return 2;
	}
	cmd = argv[optind++];
	/* Options may also follow the command ("tqkv stats --json"). */
	while ((o = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		if (o == 'j')
			json = true;
		else if (o == 's')
			socket_path = optarg;
		else if (o == 'h') {
			help(stdout);
			return 0;
		} else {
			fprintf(stderr, "Try 'tqkv --help'.\n");
			return 2;
		}
	}
	if (optind < argc || (strcmp(cmd, "ping") && strcmp(cmd, "stats"))) {
		fprintf(stderr, "tqkv: unknown command or extra argument. Try 'tqkv --help'.\n");
		return 2;
	}

	r = tqkv_client_connect(socket_path, &c);
	if (r < 0) {
		fprintf(stderr, "tqkv: cannot connect to tqkvd%s%s: %s\n", socket_path ? " at " : "",
			socket_path ? socket_path : "", strerror(-r));
		return 1;
	}
	if (strcmp(cmd, "ping") == 0) {
		r = tqkv_client_ping(c);
		if (r >= 0 && !json)
			printf("pong\n");
	} else {
		char *text = NULL;

		r = tqkv_client_stats(c, &text);
		if (r >= 0) {
			if (json)
				print_json(text);
			else
				fputs(text, stdout);
		}
		free(text);
	}
	if (r < 0)
		fprintf(stderr, "tqkv %s: %s (%s)\n", cmd, strerror(-r), tqkv_client_error(c));
	tqkv_client_free(c);
	return r < 0 ? 1 : 0;
}
