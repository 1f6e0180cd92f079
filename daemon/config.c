/* SPDX-License-Identifier: MIT */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include <tqkv/client.h>
#include <tqkv/protocol.h>

#define KIB (UINT64_C(1) << 10)
#define MIB (UINT64_C(1) << 20)
#define GIB (UINT64_C(1) << 30)

/* Longer lines are certainly mistakes (a binary file, a missing newline in
 * a generated file); reject them instead of reading without bound. */
#define CONFIG_LINE_MAX 4096

/* sun_path must hold the path and its NUL. */
#define SOCKET_PATH_MAX (sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1)

enum config_type {
	CONFIG_PATH,      /* char *, max = longest accepted length */
	CONFIG_SIZE,      /* uint64_t bytes, K/M/G/T suffixes */
	CONFIG_SIZE32,    /* uint32_t bytes, K/M/G/T suffixes */
	CONFIG_U32,       /* uint32_t plain decimal */
	CONFIG_LOG_LEVEL, /* int, syslog level by name or number */
	CONFIG_TENANCY,   /* uint32_t, enum tqkvd_tenancy by name */
	CONFIG_PRESET,    /* char *, a preset name or "none" */
};

struct config_key {
	const char *name;
	enum config_type type;
	size_t offset;
	uint64_t min;
	uint64_t max;
	uint32_t multiple; /* nonzero: the value must be a multiple of it */
	bool absolute;     /* paths: must start with '/' */
};

#define FIELD(f) offsetof(struct tqkvd_config, f)

static const struct config_key config_keys[] = {
	{ "socket", CONFIG_PATH, FIELD(socket_path), 1, SOCKET_PATH_MAX, 0, false },
	{ "state_directory", CONFIG_PATH, FIELD(state_dir), 1, PATH_MAX - 1, 0, true },
	/* An arena of the budget must fit in a process's address space. */
	{ "memory_budget", CONFIG_SIZE, FIELD(memory_budget), MIB, TQKVD_MEMORY_BUDGET_MAX, 0, false },
	/* The codec and the page format work on 16-token groups. */
	{ "block_tokens", CONFIG_U32, FIELD(block_tokens), 16, 4096, 16, false },
	{ "worker_threads", CONFIG_U32, FIELD(worker_threads), 1, 64, 0, false },
	{ "log_level", CONFIG_LOG_LEVEL, FIELD(log_level), LOG_ERR, LOG_DEBUG, 0, false },
	{ "tenants", CONFIG_TENANCY, FIELD(tenancy), TENANCY_UID, TENANCY_GID, 0, false },
	/* 0: no quota; the budget bounds every tenant anyway. */
	{ "tenant_quota", CONFIG_SIZE, FIELD(tenant_quota), 0, TQKVD_MEMORY_BUDGET_MAX, 0, false },
	/* Seconds; 0: only on stop.  At most a week. */
	{ "preset", CONFIG_PRESET, FIELD(preset), 0, 0, 0, false },
	{ "snapshot_interval", CONFIG_U32, FIELD(snapshot_interval), 0, 7 * 86400, 0, false },
	/* Room for a header plus a useful payload, and not so large that one
	 * client can make the daemon buffer a lot of memory. */
	{ "max_message_bytes", CONFIG_SIZE32, FIELD(limits.max_message_bytes), KIB, 16 * MIB, 0, false },
	/* REGISTER_MODEL replies carry two fds; SCM_MAX_FD is 253. */
	{ "max_fds_per_message", CONFIG_U32, FIELD(limits.max_fds_per_message), 2, 253, 0, false },
	/* tqkv_layer_desc.kv_source is an int16_t layer index. */
	{ "max_layers", CONFIG_U32, FIELD(limits.max_layers), 1, INT16_MAX, 0, false },
	/* tqkv_layer_desc.n_kv_heads is a uint16_t. */
	{ "max_kv_heads", CONFIG_U32, FIELD(limits.max_kv_heads), 1, UINT16_MAX, 0, false },
	/* The codec's rotation and codebooks stop at 512. */
	{ "max_head_dim", CONFIG_U32, FIELD(limits.max_head_dim), 1, 512, 0, false },
	{ "max_clients", CONFIG_U32, FIELD(limits.max_clients), 1, 65536, 0, false },
	{ "max_sequences_per_client", CONFIG_U32, FIELD(limits.max_sequences_per_client), 1, 1u << 20, 0, false },
	/* Token counts travel as uint32_t; keep clear of the sign bit for
	 * callers that do signed arithmetic on them. */
	{ "max_tokens_per_sequence", CONFIG_U32, FIELD(limits.max_tokens_per_sequence), 1, INT32_MAX, 0, false },
};

#define N_CONFIG_KEYS (sizeof(config_keys) / sizeof(config_keys[0]))

static const char *const log_level_names[] = {
	[LOG_ERR] = "err",
	[LOG_WARNING] = "warning",
	[LOG_NOTICE] = "notice",
	[LOG_INFO] = "info",
	[LOG_DEBUG] = "debug",
};

const char *config_log_level_to_string(int level)
{
	if (level < LOG_ERR || level > LOG_DEBUG)
		return NULL;
	return log_level_names[level];
}

__attribute__((format(printf, 4, 5)))
static int config_error(char *err, size_t errlen, int r, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return r;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return r;
}

void config_init_defaults(struct tqkvd_config *c)
{
	const char *state_directory;

	*c = (struct tqkvd_config) {
		.memory_budget = GIB,
		.block_tokens = 64,
		.worker_threads = 1,
		.log_level = LOG_INFO,
		.snapshot_interval = 300,
		.limits = {
			.max_message_bytes = 65536,
			.max_fds_per_message = 8,
			.max_layers = 256,
			.max_kv_heads = 128,
			.max_head_dim = 512,
			.max_clients = 256,
			.max_sequences_per_client = 1024,
			.max_tokens_per_sequence = 1048576,
		},
	};

	/* Under tqkvd.service the daemon runs as user tqkv, and systemd hands
	 * it the StateDirectory= it created.  Otherwise only root can be
	 * expected to own /var/lib/tqkv; an unprivileged daemon persists
	 * nothing unless told where.  If strdup() fails the result is the
	 * same: no persistence. */
	state_directory = getenv("STATE_DIRECTORY");
	if (state_directory && state_directory[0] == '/')
		c->state_dir = strndup(state_directory, strcspn(state_directory, ":"));
	else if (geteuid() == 0)
		c->state_dir = strdup(TQKVD_STATE_DIR);
}

void config_free(struct tqkvd_config *c)
{
	if (!c)
		return;
	free(c->socket_path);
	c->socket_path = NULL;
	free(c->state_dir);
	c->state_dir = NULL;
	free(c->preset);
	c->preset = NULL;
}

static const struct config_key *config_key_find(const char *name)
{
	for (size_t i = 0; i < N_CONFIG_KEYS; i++)
		if (strcmp(config_keys[i].name, name) == 0)
			return &config_keys[i];
	return NULL;
}

/* Strict decimal: at least one digit, no sign, no spaces; stops at the
 * first non-digit and reports where. */
static int parse_u64_prefix(const char *s, uint64_t *ret, const char **ret_end)
{
	uint64_t v = 0;
	const char *p = s;

	if (*p < '0' || *p > '9')
		return -EINVAL;

	for (; *p >= '0' && *p <= '9'; p++) {
		unsigned d = (unsigned) (*p - '0');

		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}

	*ret = v;
	*ret_end = p;
	return 0;
}

static int parse_u64(const char *s, uint64_t *ret)
{
	const char *end;
	uint64_t v;
	int r;

	r = parse_u64_prefix(s, &v, &end);
	if (r < 0)
		return r;
	if (*end != '\0')
		return -EINVAL;

	*ret = v;
	return 0;
}

/* "4096", "4096B", "64K", "64KB", "64KiB", "1G", ... in powers of 1024. */
static int parse_size(const char *s, uint64_t *ret)
{
	const char *end;
	unsigned shift = 0;
	uint64_t v;
	int r;

	r = parse_u64_prefix(s, &v, &end);
	if (r < 0)
		return r;

	switch (*end) {
	case 'K': case 'k':
		shift = 10;
		break;
	case 'M': case 'm':
		shift = 20;
		break;
	case 'G': case 'g':
		shift = 30;
		break;
	case 'T': case 't':
		shift = 40;
		break;
	}

	if (shift > 0) {
		end++;
		if (strcmp(end, "") != 0 && strcmp(end, "B") != 0 && strcmp(end, "iB") != 0)
			return -EINVAL;
	} else if (strcmp(end, "") != 0 && strcmp(end, "B") != 0)
		return -EINVAL;

	if (v > (UINT64_MAX >> shift))
		return -ERANGE;

	*ret = v << shift;
	return 0;
}

/* Prints a size as the largest exact unit, so range messages read "1M..256T". */
static const char *format_size(char *buf, size_t len, uint64_t v)
{
	static const char units[] = "KMGT";
	int i;

	for (i = 4; i > 0; i--)
		if (v != 0 && v % (UINT64_C(1) << (10 * i)) == 0)
			break;

	if (i == 0)
		snprintf(buf, len, "%" PRIu64, v);
	else
		snprintf(buf, len, "%" PRIu64 "%c", v >> (10 * i), units[i - 1]);
	return buf;
}

static int check_range(const struct config_key *k, uint64_t v, char *err, size_t errlen)
{
	char a[32], b[32], c[32];

	if (v < k->min || v > k->max) {
		if (k->type == CONFIG_SIZE || k->type == CONFIG_SIZE32)
			return config_error(err, errlen, -EINVAL, "%s: %s is out of range (%s..%s)%s", k->name,
					    format_size(a, sizeof(a), v),
					    format_size(b, sizeof(b), k->min),
					    format_size(c, sizeof(c), k->max),
					    v > k->max && k->offset == FIELD(memory_budget) ?
					    ": a tenant's arena is one mapping of the budget's size, in the daemon and its clients" :
					    "");
		return config_error(err, errlen, -EINVAL, "%s: %" PRIu64 " is out of range (%" PRIu64 "..%" PRIu64 ")",
				    k->name, v, k->min, k->max);
	}

	if (k->multiple != 0 && v % k->multiple != 0)
		return config_error(err, errlen, -EINVAL, "%s: %" PRIu64 " is not a multiple of %" PRIu32,
				    k->name, v, k->multiple);

	return 0;
}

static int check_path(const struct config_key *k, const char *path, char *err, size_t errlen)
{
	size_t len = strlen(path);

	if (len == 0)
		return config_error(err, errlen, -EINVAL, "%s: empty path", k->name);
	if (len > k->max)
		return config_error(err, errlen, -EINVAL, "%s: path too long (%zu bytes, at most %" PRIu64 ")",
				    k->name, len, k->max);
	if (k->absolute && path[0] != '/')
		return config_error(err, errlen, -EINVAL, "%s: '%.64s' is not an absolute path", k->name, path);
	for (const char *p = path; *p; p++)
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			return config_error(err, errlen, -EINVAL, "%s: path contains control characters", k->name);

	return 0;
}

static int parse_log_level(const char *s, uint64_t *ret)
{
	for (int i = LOG_ERR; i <= LOG_DEBUG; i++)
		if (strcmp(s, log_level_names[i]) == 0) {
			*ret = (uint64_t) i;
			return 0;
		}

	return parse_u64(s, ret);
}

static int config_apply(struct tqkvd_config *c, const struct config_key *k, const char *value,
			char *err, size_t errlen)
{
	void *field = (uint8_t *) c + k->offset;
	uint64_t v;
	int r;

	if (value[0] == '\0')
		return config_error(err, errlen, -EINVAL, "%s: missing value", k->name);

	switch (k->type) {
	case CONFIG_PATH: {
		char **s = field;
		char *copy;

		if (k->absolute && strcmp(value, "none") == 0) {
			/* An optional directory turned off. */
			free(*s);
			*s = NULL;
			return 0;
		}

		r = check_path(k, value, err, errlen);
		if (r < 0)
			return r;
		copy = strdup(value);
		if (!copy)
			return config_error(err, errlen, -ENOMEM, "%s: out of memory", k->name);
		free(*s);
		*s = copy;
		return 0;
	}

	case CONFIG_SIZE:
	case CONFIG_SIZE32:
		r = parse_size(value, &v);
		if (r == -ERANGE)
			return config_error(err, errlen, -EINVAL, "%s: '%.64s' is out of range", k->name, value);
		if (r < 0)
			return config_error(err, errlen, -EINVAL,
					    "%s: invalid size '%.64s' (expected e.g. 512M, 4G)", k->name, value);
		break;

	case CONFIG_U32:
		r = parse_u64(value, &v);
		if (r == -ERANGE)
			return config_error(err, errlen, -EINVAL, "%s: '%.64s' is out of range", k->name, value);
		if (r < 0)
			return config_error(err, errlen, -EINVAL,
					    "%s: invalid number '%.64s' (expected a decimal integer)", k->name, value);
		break;

	case CONFIG_PRESET: {
		char **s = field, *copy = NULL;

		if (strcmp(value, "none") != 0) {
			if (!tqkv_preset_find(value))
				return config_error(err, errlen, -EINVAL,
						    "%s: unknown preset '%.64s' (expected quality, balanced, compact or none)",
						    k->name, value);
			copy = strdup(value);
			if (!copy)
				return config_error(err, errlen, -ENOMEM, "%s: out of memory", k->name);
		}
		free(*s);
		*s = copy;
		return 0;
	}

	case CONFIG_TENANCY:
		if (strcmp(value, "uid") == 0)
			v = TENANCY_UID;
		else if (strcmp(value, "gid") == 0)
			v = TENANCY_GID;
		else
			return config_error(err, errlen, -EINVAL, "%s: invalid value '%.64s' (expected uid or gid)",
					    k->name, value);
		break;

	case CONFIG_LOG_LEVEL:
		r = parse_log_level(value, &v);
		if (r < 0)
			return config_error(err, errlen, -EINVAL,
					    "%s: invalid level '%.64s' (expected err, warning, notice, info, debug or 3..7)",
					    k->name, value);
		break;

	default:
		return config_error(err, errlen, -EINVAL, "%s: unsupported type", k->name);
	}

	r = check_range(k, v, err, errlen);
	if (r < 0)
		return r;

	switch (k->type) {
	case CONFIG_SIZE:
		*(uint64_t *) field = v;
		break;
	case CONFIG_LOG_LEVEL:
		*(int *) field = (int) v;
		break;
	default:
		*(uint32_t *) field = (uint32_t) v;
		break;
	}

	return 0;
}

int config_set(struct tqkvd_config *c, const char *key, const char *value, char *err, size_t errlen)
{
	const struct config_key *k;

	k = config_key_find(key);
	if (!k)
		return config_error(err, errlen, -EINVAL, "%.64s: unknown setting", key);

	return config_apply(c, k, value, err, errlen);
}

static char *strip(char *s)
{
	char *end;

	while (*s == ' ' || *s == '\t')
		s++;

	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
		end--;
	*end = '\0';

	return s;
}

/* What one file's parse has seen so far. */
struct config_parser {
	const char *path;
	unsigned line;
	bool seen_section;
	bool seen_setting;
	unsigned key_line[N_CONFIG_KEYS]; /* 0: not set in this file */
};

static int config_parse_line(struct tqkvd_config *c, struct config_parser *p, char *raw,
			     char *err, size_t errlen)
{
	char msg[512];
	const struct config_key *k;
	char *s, *eq, *key, *value;
	int r;

	s = strip(raw);
	if (s[0] == '\0' || s[0] == '#' || s[0] == ';')
		return 0;

	if (s[0] == '[') {
		size_t len = strlen(s);

		if (s[len - 1] != ']')
			return config_error(err, errlen, -EINVAL, "%s:%u: malformed section header '%.64s'",
					    p->path, p->line, s);
		if (strcmp(s, "[tqkvd]") != 0)
			return config_error(err, errlen, -EINVAL, "%s:%u: unknown section '%.64s' (only [tqkvd] is allowed)",
					    p->path, p->line, s);
		if (p->seen_section)
			return config_error(err, errlen, -EINVAL, "%s:%u: duplicate section '[tqkvd]'",
					    p->path, p->line);
		if (p->seen_setting)
			return config_error(err, errlen, -EINVAL, "%s:%u: section '[tqkvd]' must come before the first setting",
					    p->path, p->line);
		p->seen_section = true;
		return 0;
	}

	eq = strchr(s, '=');
	if (!eq)
		return config_error(err, errlen, -EINVAL, "%s:%u: expected 'key = value', got '%.64s'",
				    p->path, p->line, s);

	*eq = '\0';
	key = strip(s);
	value = strip(eq + 1);

	if (key[0] == '\0')
		return config_error(err, errlen, -EINVAL, "%s:%u: missing key before '='", p->path, p->line);

	k = config_key_find(key);
	if (!k)
		return config_error(err, errlen, -EINVAL, "%s:%u: %.64s: unknown setting", p->path, p->line, key);

	/* A repeated key is almost always a merge accident; say which line
	 * would have won instead of letting one win silently. */
	if (p->key_line[k - config_keys] != 0)
		return config_error(err, errlen, -EINVAL, "%s:%u: %s: already set on line %u",
				    p->path, p->line, k->name, p->key_line[k - config_keys]);

	r = config_apply(c, k, value, msg, sizeof(msg));
	if (r < 0)
		return config_error(err, errlen, r, "%s:%u: %s", p->path, p->line, msg);

	p->key_line[k - config_keys] = p->line;
	p->seen_setting = true;
	return 0;
}

static int config_parse_stream(struct tqkvd_config *c, FILE *f, const char *path, char *err, size_t errlen)
{
	struct config_parser p = { .path = path };
	char *line = NULL;
	size_t size = 0;
	ssize_t n;
	int r = 0;

	for (;;) {
		errno = 0;
		n = getline(&line, &size, f);
		if (n < 0)
			break;
		p.line++;

		if (n > CONFIG_LINE_MAX) {
			r = config_error(err, errlen, -EINVAL, "%s:%u: line too long (more than %d bytes)",
					 path, p.line, CONFIG_LINE_MAX);
			break;
		}
		if ((size_t) n != strlen(line)) {
			r = config_error(err, errlen, -EINVAL, "%s:%u: line contains a NUL byte", path, p.line);
			break;
		}

		r = config_parse_line(c, &p, line, err, errlen);
		if (r < 0)
			break;
	}

	/* getline() returns -1 both at the end and on errors (EISDIR, ENOMEM). */
	if (r >= 0 && !feof(f)) {
		r = errno > 0 ? -errno : -EIO;
		r = config_error(err, errlen, r, "%s: read failed: %s", path, strerror(-r));
	}

	free(line);
	return r;
}

int config_load_file(struct tqkvd_config *c, const char *path, bool must_exist, char *err, size_t errlen)
{
	FILE *f;
	int r;

	f = fopen(path, "re");
	if (!f) {
		r = -errno;
		if (r == -ENOENT && !must_exist)
			return 0;
		return config_error(err, errlen, r, "%s: cannot open: %s", path, strerror(-r));
	}

	r = config_parse_stream(c, f, path, err, errlen);
	fclose(f);
	return r;
}

static uint64_t config_get_number(const struct tqkvd_config *c, const struct config_key *k)
{
	const void *field = (const uint8_t *) c + k->offset;

	switch (k->type) {
	case CONFIG_SIZE:
		return *(const uint64_t *) field;
	case CONFIG_LOG_LEVEL:
		return (uint64_t) *(const int *) field; /* negative levels are refused before */
	default:
		return *(const uint32_t *) field;
	}
}

int config_validate(const struct tqkvd_config *c, char *err, size_t errlen)
{
	const struct tqkvd_limits *l = &c->limits;
	uint64_t register_bytes;
	int r;

	/* Fields may have been set directly, so every range is checked again. */
	for (size_t i = 0; i < N_CONFIG_KEYS; i++) {
		const struct config_key *k = &config_keys[i];

		if (k->type == CONFIG_LOG_LEVEL && c->log_level < 0)
			return config_error(err, errlen, -EINVAL, "%s: %d is out of range (%" PRIu64 "..%" PRIu64 ")",
					    k->name, c->log_level, k->min, k->max);

		if (k->type == CONFIG_PATH) {
			const char *s = *(char *const *) ((const uint8_t *) c + k->offset);

			r = s ? check_path(k, s, err, errlen) : 0;
		} else if (k->type == CONFIG_PRESET) {
			const char *s = *(char *const *) ((const uint8_t *) c + k->offset);

			r = s && !tqkv_preset_find(s) ? config_error(err, errlen, -EINVAL, "%s: unknown preset", k->name) : 0;
		} else
			r = check_range(k, config_get_number(c, k), err, errlen);
		if (r < 0)
			return r;
	}

	if (l->max_tokens_per_sequence < c->block_tokens)
		return config_error(err, errlen, -EINVAL,
				    "max_tokens_per_sequence: %" PRIu32 " is less than one block (block_tokens = %" PRIu32 ")",
				    l->max_tokens_per_sequence, c->block_tokens);

	/* A client with max_layers layers must be able to register its model
	 * in one message. */
	register_bytes = sizeof(struct tqkv_msg_header) + sizeof(struct tqkv_register_model) +
			 (uint64_t) l->max_layers * sizeof(struct tqkv_layer_desc);
	if (l->max_message_bytes < register_bytes)
		return config_error(err, errlen, -EINVAL,
				    "max_message_bytes: %" PRIu32 " cannot hold a REGISTER_MODEL message for max_layers = %" PRIu32
				    " (needs %" PRIu64 ")",
				    l->max_message_bytes, l->max_layers, register_bytes);

	return 0;
}
