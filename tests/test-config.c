/* SPDX-License-Identifier: MIT */
/* tqkvd configuration: defaults, the file format, command-line overrides
 * and cross-field validation.  Bad input is a data table; every entry must
 * fail with a message that names the key (and file and line). */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include "arena.h"
#include "config.h"

#define LONG_PATH "/run/tqkv/0123456789012345678901234567890123456789012345678901234567890123456789" \
		  "01234567890123456789012345678901234567890123456789/tqkvd.sock"

/* Writes len bytes of text to a fresh file under /tmp; returns its path
 * (caller frees and unlinks). */
static char *write_temp(const char *text, size_t len)
{
	char *path = strdup("/tmp/test-config-XXXXXX");
	int fd;

	cr_assert_not_null(path);
	fd = mkstemp(path);
	cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
	cr_assert_eq(write(fd, text, len), (ssize_t) len);
	cr_assert_eq(close(fd), 0);
	return path;
}

static int load_text(struct tqkvd_config *c, const char *text, char *err, size_t errlen, char **ret_path)
{
	char *path = write_temp(text, strlen(text));
	int r;

	r = config_load_file(c, path, true, err, errlen);
	unlink(path);
	if (ret_path)
		*ret_path = path;
	else
		free(path);
	return r;
}

Test(config, defaults_are_documented_values)
{
	struct tqkvd_config c;
	char err[256] = "";

	unsetenv("STATE_DIRECTORY");
	config_init_defaults(&c);
	cr_assert_null(c.socket_path);
	if (geteuid() == 0)
		cr_assert_str_eq(c.state_dir, "/var/lib/tqkv");
	else
		cr_assert_null(c.state_dir);
	cr_assert_eq(c.memory_budget, UINT64_C(1) << 30);
	cr_assert_eq(c.block_tokens, 64);
	cr_assert_eq(c.worker_threads, 1);
	cr_assert_eq(c.log_level, LOG_INFO);
	cr_assert_eq(c.limits.max_message_bytes, 65536);
	cr_assert_eq(c.limits.max_fds_per_message, 8);
	cr_assert_eq(c.limits.max_layers, 256);
	cr_assert_eq(c.limits.max_kv_heads, 128);
	cr_assert_eq(c.limits.max_head_dim, 512);
	cr_assert_eq(c.limits.max_clients, 256);
	cr_assert_eq(c.limits.max_sequences_per_client, 1024);
	cr_assert_eq(c.limits.max_tokens_per_sequence, 1048576);
	cr_assert_eq(config_validate(&c, err, sizeof(err)), 0, "%s", err);
	config_free(&c);
}

/* tqkvd.service runs as user tqkv; systemd passes StateDirectory= (one or
 * more absolute paths separated by ':') in $STATE_DIRECTORY. */
Test(config, state_directory_defaults_to_systemds)
{
	struct tqkvd_config c;

	setenv("STATE_DIRECTORY", "/var/lib/tqkv:/var/lib/other", 1);
	config_init_defaults(&c);
	cr_assert_str_eq(c.state_dir, "/var/lib/tqkv");
	config_free(&c);

	setenv("STATE_DIRECTORY", "relative", 1);
	config_init_defaults(&c);
	if (geteuid() == 0)
		cr_assert_str_eq(c.state_dir, "/var/lib/tqkv");
	else
		cr_assert_null(c.state_dir);
	config_free(&c);
	unsetenv("STATE_DIRECTORY");
}

Test(config, free_accepts_zeroed_and_freed_struct)
{
	struct tqkvd_config c = { 0 };

	config_free(&c);
	config_init_defaults(&c);
	config_free(&c);
	config_free(&c);
	config_free(NULL);
	cr_assert_null(c.socket_path);
	cr_assert_null(c.state_dir);
}

Test(config, full_file_parses_to_expected_values)
{
	static const char text[] =
		"# tqkvd test config\n"
		"; another comment style\n"
		"\n"
		"[tqkvd]\n"
		"socket = /run/tqkv/test.sock\n"
		"state_directory=/var/lib/tqkv-test\n"
		"\tmemory_budget   =   8G  \n"
		"block_tokens = 128\r\n"
		"worker_threads = 4\n"
		"log_level = debug\n"
		"max_message_bytes = 128K\n"
		"max_fds_per_message = 16\n"
		"max_layers = 80\n"
		"max_kv_heads = 64\n"
		"max_head_dim = 256\n"
		"max_clients = 32\n"
		"max_sequences_per_client = 4096\n"
		"max_tokens_per_sequence = 131072\n";
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	cr_assert_eq(load_text(&c, text, err, sizeof(err), NULL), 0, "%s", err);
	cr_assert_str_eq(c.socket_path, "/run/tqkv/test.sock");
	cr_assert_str_eq(c.state_dir, "/var/lib/tqkv-test");
	cr_assert_eq(c.memory_budget, UINT64_C(8) << 30);
	cr_assert_eq(c.block_tokens, 128);
	cr_assert_eq(c.worker_threads, 4);
	cr_assert_eq(c.log_level, LOG_DEBUG);
	cr_assert_eq(c.limits.max_message_bytes, 131072);
	cr_assert_eq(c.limits.max_fds_per_message, 16);
	cr_assert_eq(c.limits.max_layers, 80);
	cr_assert_eq(c.limits.max_kv_heads, 64);
	cr_assert_eq(c.limits.max_head_dim, 256);
	cr_assert_eq(c.limits.max_clients, 32);
	cr_assert_eq(c.limits.max_sequences_per_client, 4096);
	cr_assert_eq(c.limits.max_tokens_per_sequence, 131072);
	cr_assert_eq(config_validate(&c, err, sizeof(err)), 0, "%s", err);
	config_free(&c);
}

Test(config, comments_and_blank_lines_change_nothing)
{
	struct tqkvd_config c, d;
	char err[256] = "";

	config_init_defaults(&c);
	config_init_defaults(&d);
	cr_assert_eq(load_text(&c, "# only\n\n   ; comments\n\t\n", err, sizeof(err), NULL), 0, "%s", err);
	cr_assert_eq(load_text(&c, "", err, sizeof(err), NULL), 0, "%s", err);
	cr_assert_eq(c.memory_budget, d.memory_budget);
	cr_assert_eq(c.block_tokens, d.block_tokens);
	cr_assert_eq(memcmp(&c.limits, &d.limits, sizeof(c.limits)), 0);
	config_free(&c);
	config_free(&d);
}

Test(config, last_line_without_newline_is_read)
{
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	cr_assert_eq(load_text(&c, "worker_threads = 3", err, sizeof(err), NULL), 0, "%s", err);
	cr_assert_eq(c.worker_threads, 3);
	config_free(&c);
}

struct size_case {
	char text[32];
	uint64_t bytes;
};

ParameterizedTestParameters(config, sizes_accept_suffixes)
{
	static struct size_case cases[] = {
		{ "1048576", UINT64_C(1) << 20 },
		{ "1048576B", UINT64_C(1) << 20 },
		{ "1024K", UINT64_C(1) << 20 },
		{ "1024k", UINT64_C(1) << 20 },
		{ "1024KB", UINT64_C(1) << 20 },
		{ "1024KiB", UINT64_C(1) << 20 },
		{ "1M", UINT64_C(1) << 20 },
		{ "3MiB", UINT64_C(3) << 20 },
		{ "512M", UINT64_C(512) << 20 },
		{ "2g", UINT64_C(2) << 30 },
		{ "4GB", UINT64_C(4) << 30 },
		{ "1T", UINT64_C(1) << 40 },
		{ "32TiB", UINT64_C(32) << 40 },
		{ "0001G", UINT64_C(1) << 30 },
	};

	return cr_make_param_array(struct size_case, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(struct size_case *t, config, sizes_accept_suffixes)
{
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	cr_assert_eq(config_set(&c, "memory_budget", t->text, err, sizeof(err)), 0, "%s: %s", t->text, err);
	cr_assert_eq(c.memory_budget, t->bytes, "%s: %" PRIu64, t->text, c.memory_budget);
	config_free(&c);
}

/* The largest budget accepted is one that can be mapped: an arena of it
 * (valgrind manages a smaller address space of its own). */
Test(config, largest_budget_can_be_mapped)
{
	const char *preload = getenv("LD_PRELOAD");
	struct tqkvd_config c;
	struct arena *a;
	char err[256] = "";
	int r;

	if (preload && strstr(preload, "vgpreload"))
		cr_skip_test("valgrind maps less than %" PRIu64 " bytes", TQKVD_MEMORY_BUDGET_MAX);
	config_init_defaults(&c);
	cr_assert_eq(config_set(&c, "memory_budget", "32T", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.memory_budget, TQKVD_MEMORY_BUDGET_MAX);
	r = arena_new(c.memory_budget, &a);
	cr_assert_eq(r, 0, "an arena of %" PRIu64 " bytes: %s", c.memory_budget, strerror(-r));
	cr_assert_eq(arena_size(a), c.memory_budget);
	arena_free(a);
	config_free(&c);
}

/* A budget this machine cannot map (here, under RLIMIT_AS) stops tqkvd at
 * start with a message and status 2, not at every REGISTER_MODEL. */
Test(config, unmappable_budget_fails_start_up, .timeout = 30)
{
	const char *tqkvd = getenv("TQKVD");
	char out[4096];
	size_t len = 0;
	ssize_t n;
	int pipefd[2], status;
	pid_t pid;

	if (!tqkvd)
		cr_skip_test("$TQKVD must name the daemon binary");
	cr_assert_eq(pipe(pipefd), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct rlimit rl = { 2ull << 30, 2ull << 30 };

		dup2(pipefd[1], 2);
		close(pipefd[0]);
		setrlimit(RLIMIT_AS, &rl);
		execl(tqkvd, tqkvd, "--config", "/dev/null", "--socket", "/tmp/tqkv-test-config-unused.sock",
		      "--state-directory", "none", "--memory-budget", "4G", (char *) NULL);
		_exit(127);
	}
	close(pipefd[1]);
	while (len < sizeof(out) - 1 && (n = read(pipefd[0], out + len, sizeof(out) - 1 - len)) > 0)
		len += (size_t) n;
	out[len] = 0;
	close(pipefd[0]);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	if (strstr(out, "Sanitizer"))
		cr_skip_test("a sanitized tqkvd needs more address space than the limit: %s", out);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 2, "exit status %#x: %s", status, out);
	cr_assert_not_null(strstr(out, "Cannot map an arena of memory_budget = 4294967296 bytes"), "%s", out);
}

Test(config, log_level_names_and_numbers)
{
	static const char *const names[] = { "err", "warning", "notice", "info", "debug" };
	struct tqkvd_config c;
	char err[256] = "", num[4];

	config_init_defaults(&c);
	for (int level = LOG_ERR; level <= LOG_DEBUG; level++) {
		cr_assert_eq(config_set(&c, "log_level", names[level - LOG_ERR], err, sizeof(err)), 0, "%s", err);
		cr_assert_eq(c.log_level, level);
		cr_assert_str_eq(config_log_level_to_string(level), names[level - LOG_ERR]);
		c.log_level = -1;
		snprintf(num, sizeof(num), "%d", level);
		cr_assert_eq(config_set(&c, "log_level", num, err, sizeof(err)), 0, "%s", err);
		cr_assert_eq(c.log_level, level);
	}
	config_free(&c);
}

Test(config, range_limits_are_inclusive)
{
	static const char *const good[][2] = {
		{ "block_tokens", "16" }, { "block_tokens", "4096" },
		{ "worker_threads", "1" }, { "worker_threads", "64" },
		{ "max_head_dim", "512" }, { "max_head_dim", "1" },
		{ "max_fds_per_message", "253" }, { "max_layers", "32767" },
		{ "max_kv_heads", "65535" }, { "max_message_bytes", "16M" },
		{ "memory_budget", "1M" }, { "memory_budget", "32T" }, { "tenant_quota", "32T" },
		{ "max_tokens_per_sequence", "2147483647" },
	};
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		cr_expect_eq(config_set(&c, good[i][0], good[i][1], err, sizeof(err)), 0,
			     "%s = %s: %s", good[i][0], good[i][1], err);
	config_free(&c);
}

Test(config, command_line_overrides_file)
{
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	cr_assert_eq(load_text(&c, "socket = /run/a.sock\nworker_threads = 2\n", err, sizeof(err), NULL), 0, "%s", err);
	cr_assert_eq(config_set(&c, "socket", "/tmp/b.sock", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(config_set(&c, "worker_threads", "8", err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(c.socket_path, "/tmp/b.sock");
	cr_assert_eq(c.worker_threads, 8);
	config_free(&c);
}

Test(config, rejected_value_leaves_setting_unchanged)
{
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	cr_assert_eq(config_set(&c, "block_tokens", "100", err, sizeof(err)), -EINVAL);
	cr_assert_eq(c.block_tokens, 64);
	cr_assert_eq(config_set(&c, "socket", LONG_PATH, err, sizeof(err)), -EINVAL);
	cr_assert_null(c.socket_path);
	config_free(&c);
}

Test(config, message_names_file_line_and_key)
{
	struct tqkvd_config c;
	char err[256] = "", want[512], *path;

	config_init_defaults(&c);
	cr_assert_eq(load_text(&c, "[tqkvd]\n# budget\n\nmemory_budget = lots\n", err, sizeof(err), &path), -EINVAL);
	snprintf(want, sizeof(want), "%s:4: memory_budget: invalid size 'lots' (expected e.g. 512M, 4G)", path);
	cr_assert_str_eq(err, want);
	free(path);
	config_free(&c);
}

Test(config, missing_file_is_fine_unless_required)
{
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	cr_assert_eq(config_load_file(&c, "/tmp/tqkv-test-config-does-not-exist.conf", false, err, sizeof(err)), 0);
	cr_assert_eq(err[0], '\0');
	cr_assert_eq(config_load_file(&c, "/tmp/tqkv-test-config-does-not-exist.conf", true, err, sizeof(err)), -ENOENT);
	cr_assert_not_null(strstr(err, "/tmp/tqkv-test-config-does-not-exist.conf"), "%s", err);
	config_free(&c);
}

Test(config, directory_is_not_a_config_file)
{
	struct tqkvd_config c;
	char err[256] = "";
	int r;

	config_init_defaults(&c);
	r = config_load_file(&c, "/tmp", true, err, sizeof(err));
	cr_assert_eq(r, -EISDIR, "%d: %s", r, err);
	cr_assert_not_null(strstr(err, "/tmp"), "%s", err);
	config_free(&c);
}

Test(config, overlong_line_is_rejected)
{
	struct tqkvd_config c;
	char err[256] = "", *text;
	int r;

	text = malloc(8192);
	cr_assert_not_null(text);
	memset(text, 'x', 8190);
	memcpy(text, "socket = /", 10);
	text[8190] = '\n';
	text[8191] = '\0';

	config_init_defaults(&c);
	r = load_text(&c, text, err, sizeof(err), NULL);
	cr_assert_eq(r, -EINVAL);
	cr_assert_not_null(strstr(err, ":1: line too long"), "%s", err);
	cr_assert_null(c.socket_path);
	free(text);
	config_free(&c);
}

Test(config, nul_byte_is_rejected)
{
	static const char text[] = "worker_threads = 2\nblock_tokens = 6\0" "4\n";
	struct tqkvd_config c;
	char err[256] = "", *path;
	int r;

	path = write_temp(text, sizeof(text) - 1);
	config_init_defaults(&c);
	r = config_load_file(&c, path, true, err, sizeof(err));
	unlink(path);
	free(path);
	cr_assert_eq(r, -EINVAL);
	cr_assert_not_null(strstr(err, ":2: line contains a NUL byte"), "%s", err);
	config_free(&c);
}

/* A file that must fail to load, and a substring its message must hold
 * (the key, or the offending text when there is no key). */
struct bad_case {
	char text[512];
	char want[64];
};

ParameterizedTestParameters(config, bad_file_is_rejected)
{
	static struct bad_case cases[] = {
		/* unknown keys */
		{ "frobnicate = 1\n", "frobnicate: unknown setting" },
		{ "memory_budgt = 1G\n", "memory_budgt: unknown setting" },
		{ "Memory_Budget = 1G\n", "Memory_Budget: unknown setting" },
		{ "memory budget = 1G\n", "memory budget: unknown setting" },
		/* malformed lines */
		{ "memory_budget 1G\n", "expected 'key = value', got 'memory_budget 1G'" },
		{ "worker_threads\n", "worker_threads" },
		{ "= 4\n", ":1: missing key before '='" },
		{ "worker_threads =\n", "worker_threads: missing value" },
		{ "worker_threads = 2 # two\n", "worker_threads: invalid number '2 # two'" },
		/* sections */
		{ "[server]\nworker_threads = 2\n", "unknown section '[server]'" },
		{ "[tqkvd]\n[tqkvd]\n", ":2: duplicate section '[tqkvd]'" },
		{ "worker_threads = 2\n[tqkvd]\n", ":2: section '[tqkvd]' must come before" },
		{ "[tqkvd\n", "malformed section header '[tqkvd'" },
		{ "[]\n", "unknown section '[]'" },
		/* duplicate keys */
		{ "worker_threads = 2\n\nworker_threads = 3\n", ":3: worker_threads: already set on line 1" },
		/* names */
		{ "preset = fast\n", "preset: unknown preset 'fast' (expected quality" },
		{ "preset = Balanced\n", "preset: unknown preset 'Balanced'" },
		{ "tenants = user\n", "tenants: invalid value 'user' (expected uid or gid)" },
		{ "state_directory = relative\n", "state_directory: 'relative' is not an absolute path" },
		{ "snapshot_interval = 604801\n", "snapshot_interval: 604801 is out of range" },
		{ "tenant_quota = 1Q\n", "tenant_quota: invalid size '1Q'" },
		/* sizes */
		{ "memory_budget = lots\n", "memory_budget: invalid size 'lots'" },
		{ "memory_budget = 1X\n", "memory_budget: invalid size '1X'" },
		{ "memory_budget = 1.5G\n", "memory_budget: invalid size '1.5G'" },
		{ "memory_budget = -1G\n", "memory_budget: invalid size '-1G'" },
		{ "memory_budget = +1G\n", "memory_budget: invalid size '+1G'" },
		{ "memory_budget = 1 G\n", "memory_budget: invalid size '1 G'" },
		{ "memory_budget = 1Gb\n", "memory_budget: invalid size '1Gb'" },
		{ "memory_budget = 1GiBB\n", "memory_budget: invalid size '1GiBB'" },
		{ "memory_budget = 1iB\n", "memory_budget: invalid size '1iB'" },
		{ "memory_budget = G\n", "memory_budget: invalid size 'G'" },
		{ "memory_budget = 512K\n", "memory_budget: 512K is out of range (1M..32T)" },
		{ "memory_budget = 0\n", "memory_budget: 0 is out of range" },
		{ "memory_budget = 33T\n", "memory_budget: 33T is out of range (1M..32T): a tenant's arena" },
		{ "memory_budget = 257T\n", "memory_budget: 257T is out of range" },
		{ "tenant_quota = 33T\n", "tenant_quota: 33T is out of range (0..32T)" },
		{ "memory_budget = 99999999999999999999\n", "memory_budget: '99999999999999999999' is out of range" },
		{ "memory_budget = 16777216T\n", "memory_budget: '16777216T' is out of range" },
		/* block_tokens */
		{ "block_tokens = 100\n", "block_tokens: 100 is not a multiple of 16" },
		{ "block_tokens = 0\n", "block_tokens: 0 is out of range (16..4096)" },
		{ "block_tokens = 8\n", "block_tokens: 8 is out of range" },
		{ "block_tokens = 8192\n", "block_tokens: 8192 is out of range" },
		{ "block_tokens = 64abc\n", "block_tokens: invalid number '64abc'" },
		{ "block_tokens = 0x40\n", "block_tokens: invalid number '0x40'" },
		{ "block_tokens = 64K\n", "block_tokens: invalid number '64K'" },
		/* worker_threads */
		{ "worker_threads = 0\n", "worker_threads: 0 is out of range (1..64)" },
		{ "worker_threads = 65\n", "worker_threads: 65 is out of range" },
		{ "worker_threads = -1\n", "worker_threads: invalid number '-1'" },
		{ "worker_threads = +1\n", "worker_threads: invalid number '+1'" },
		{ "worker_threads = 4294967297\n", "worker_threads: 4294967297 is out of range" },
		/* log_level */
		{ "log_level = loud\n", "log_level: invalid level 'loud'" },
		{ "log_level = INFO\n", "log_level: invalid level 'INFO'" },
		{ "log_level = 2\n", "log_level: 2 is out of range (3..7)" },
		{ "log_level = 8\n", "log_level: 8 is out of range" },
		/* limits */
		{ "max_head_dim = 513\n", "max_head_dim: 513 is out of range (1..512)" },
		{ "max_head_dim = 1024\n", "max_head_dim: 1024 is out of range" },
		{ "max_head_dim = 0\n", "max_head_dim: 0 is out of range" },
		{ "max_fds_per_message = 254\n", "max_fds_per_message: 254 is out of range" },
		{ "max_fds_per_message = 1\n", "max_fds_per_message: 1 is out of range" },
		{ "max_layers = 0\n", "max_layers: 0 is out of range" },
		{ "max_layers = 40000\n", "max_layers: 40000 is out of range" },
		{ "max_kv_heads = 70000\n", "max_kv_heads: 70000 is out of range" },
		{ "max_clients = 0\n", "max_clients: 0 is out of range" },
		{ "max_clients = 4294967296\n", "max_clients: 4294967296 is out of range" },
		{ "max_sequences_per_client = 0\n", "max_sequences_per_client: 0 is out of range" },
		{ "max_tokens_per_sequence = 0\n", "max_tokens_per_sequence: 0 is out of range" },
		{ "max_tokens_per_sequence = 18446744073709551616\n", "max_tokens_per_sequence: '18446744073709551616' is out of range" },
		{ "max_message_bytes = 100\n", "max_message_bytes: 100 is out of range (1K..16M)" },
		{ "max_message_bytes = 1G\n", "max_message_bytes: 1G is out of range" },
		{ "max_message_bytes = 4294967296\n", "max_message_bytes: 4G is out of range" },
		/* paths */
		{ "socket = " LONG_PATH "\n", "socket: path too long" },
		{ "socket = /run/tqkv/\x01.sock\n", "socket: path contains control characters" },
		{ "state_directory = var/lib/tqkv\n", "state_directory: 'var/lib/tqkv' is not an absolute path" },
		{ "state_directory =   \n", "state_directory: missing value" },
	};

	return cr_make_param_array(struct bad_case, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(struct bad_case *t, config, bad_file_is_rejected)
{
	struct tqkvd_config c;
	char err[512] = "", *path;
	int r;

	config_init_defaults(&c);
	r = load_text(&c, t->text, err, sizeof(err), &path);
	cr_assert_eq(r, -EINVAL, "input '%s': r=%d", t->text, r);
	cr_assert_not_null(strstr(err, t->want), "input '%s': message '%s' lacks '%s'", t->text, err, t->want);
	/* Every file message starts with "path:line: ". */
	cr_assert_eq(strncmp(err, path, strlen(path)), 0, "message '%s' lacks the path", err);
	cr_assert_eq(err[strlen(path)], ':', "message '%s' lacks the line", err);
	free(path);
	config_free(&c);
}

Test(config, set_rejects_unknown_key_and_bad_value)
{
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	cr_assert_eq(config_set(&c, "memory", "1G", err, sizeof(err)), -EINVAL);
	cr_assert_str_eq(err, "memory: unknown setting");
	cr_assert_eq(config_set(&c, "memory_budget", "lots", err, sizeof(err)), -EINVAL);
	cr_assert_str_eq(err, "memory_budget: invalid size 'lots' (expected e.g. 512M, 4G)");
	cr_assert_eq(config_set(&c, "worker_threads", "", err, sizeof(err)), -EINVAL);
	cr_assert_str_eq(err, "worker_threads: missing value");
	/* Callers may pass no buffer. */
	cr_assert_eq(config_set(&c, "worker_threads", "0", NULL, 0), -EINVAL);
	config_free(&c);
}

Test(config, error_message_is_truncated_not_overflowed)
{
	struct tqkvd_config c;
	char err[8];

	memset(err, 'z', sizeof(err));
	config_init_defaults(&c);
	cr_assert_eq(config_set(&c, "worker_threads", "0", err, sizeof(err)), -EINVAL);
	cr_assert_str_eq(err, "worker_");
	config_free(&c);
}

Test(config, validate_tokens_per_sequence_hold_a_block)
{
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	cr_assert_eq(config_set(&c, "block_tokens", "128", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(config_set(&c, "max_tokens_per_sequence", "64", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(config_validate(&c, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "max_tokens_per_sequence: 64 is less than one block"), "%s", err);
	config_free(&c);
}

Test(config, validate_message_holds_register_for_max_layers)
{
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	cr_assert_eq(config_set(&c, "max_layers", "32767", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(config_validate(&c, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "max_message_bytes: 65536 cannot hold a REGISTER_MODEL message"), "%s", err);
	cr_assert_eq(config_set(&c, "max_message_bytes", "1M", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(config_validate(&c, err, sizeof(err)), 0, "%s", err);
	config_free(&c);
}

Test(config, validate_catches_fields_set_directly)
{
	struct tqkvd_config c;
	char err[256] = "";

	config_init_defaults(&c);
	c.limits.max_head_dim = 1024;
	cr_assert_eq(config_validate(&c, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "max_head_dim: 1024 is out of range"), "%s", err);
	c.limits.max_head_dim = 128;
	c.log_level = -1;
	cr_assert_eq(config_validate(&c, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "log_level"), "%s", err);
	c.log_level = LOG_INFO;
	c.worker_threads = 0;
	cr_assert_eq(config_validate(&c, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "worker_threads: 0 is out of range"), "%s", err);
	config_free(&c);
}

/* The shipped example (systemd/tqkvd.conf) lists every key, commented out
 * at its default: uncommented, it must parse and change nothing.  Found
 * next to this source ($TQKV_SOURCE_ROOT overrides; meson runs tests from
 * the build directory, where __FILE__ is "../tests/test-config.c"). */
Test(config, example_config_lists_every_key_at_its_default)
{
	const char *root = getenv("TQKV_SOURCE_ROOT");
	const char *slash = strrchr(__FILE__, '/');
	char path[4096], *line = NULL, *text = NULL, *tmp;
	size_t size = 0, text_size = 0;
	struct tqkvd_config c, d;
	char err[512] = "";
	unsigned n_keys = 0;
	FILE *f, *out;

	if (root)
		snprintf(path, sizeof(path), "%s/systemd/tqkvd.conf", root);
	else
		snprintf(path, sizeof(path), "%.*s../systemd/tqkvd.conf",
			 slash ? (int) (slash - __FILE__ + 1) : 0, __FILE__);
	f = fopen(path, "re");
	if (!f)
		cr_skip_test("example config not found at %s (set TQKV_SOURCE_ROOT)", path);

	out = open_memstream(&text, &text_size);
	cr_assert_not_null(out);
	while (getline(&line, &size, f) >= 0) {
		/* "#key = value" is a setting; "# text" is prose. */
		if (line[0] == '#' && line[1] >= 'a' && line[1] <= 'z' && strstr(line, " = ")) {
			fputs(line + 1, out);
			n_keys++;
		} else
			fputs(line, out);
	}
	fclose(f);
	fclose(out);
	free(line);
	cr_assert_eq(n_keys, 18, "%s lists %u settings", path, n_keys);

	config_init_defaults(&c);
	config_init_defaults(&d);
	cr_assert_eq(load_text(&c, text, err, sizeof(err), &tmp), 0, "%s", err);
	free(tmp);
	cr_assert_eq(config_validate(&c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.memory_budget, d.memory_budget);
	cr_assert_eq(c.block_tokens, d.block_tokens);
	cr_assert_eq(c.worker_threads, d.worker_threads);
	cr_assert_eq(c.log_level, d.log_level);
	cr_assert_eq(memcmp(&c.limits, &d.limits, sizeof(c.limits)), 0);
	cr_assert_str_eq(c.state_dir, "/var/lib/tqkv");
	cr_assert_str_eq(c.socket_path, "/run/tqkv/tqkvd.sock");
	free(text);
	config_free(&c);
	config_free(&d);
}
