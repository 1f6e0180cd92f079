/* SPDX-License-Identifier: MIT */
/*
 * Sharing through tqkvd: prefix lookups across client processes, fork and
 * trim, eviction under a memory budget, tenants, flush.  A real daemon,
 * real client processes.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdatomic.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <tqkv/attention.h>

#include "daemon-fixture.h"

#define B 64

static void prompt_ids(uint32_t salt, uint32_t *ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ids[i] = (uint32_t)(i * 2654435761u) ^ salt;
}

static struct tqkv_client *connect_model(const char *socket, const struct tqkv_model *m)
{
	struct tqkv_client *c;

	cr_assert_eq(tqkv_client_connect(socket, &c), 0);
	cr_assert_eq(tqkv_client_register_model(c, m), 0, "%s", tqkv_client_error(c));
	return c;
}

/* Opens a sequence for a prompt of n ids, writes the rows of the tokens
 * it does not have, and waits until every full block is published.
 * Returns the cached token count. */
static uint64_t run_prompt(struct tqkv_client *c, uint32_t salt, uint64_t seed, size_t n, uint32_t flags,
			   struct tqkv_seq **ret)
{
	uint32_t *ids = malloc(n * sizeof(*ids));
	uint64_t cached = ~0ull;

	prompt_ids(salt, ids, n);
	cr_assert_eq(tqkv_seq_open_prompt(c, ids, n, flags, ret, &cached), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(cached % B, 0);
	cr_assert_eq(tqkv_seq_committed(*ret), cached);
	cr_assert_eq(tqkv_seq_published(*ret), cached);
	append_tokens(*ret, seed, cached, n - cached);
	cr_assert_eq(tqkv_seq_wait(*ret, n / B * B), 0);
	free(ids);
	return cached;
}

/* The attention of a fixed query over the first n tokens, the blocks
 * before the last token's from pages, for every stored layer. */
static void attend_all(struct tqkv_seq *s, uint64_t n, float out[N_LAYERS][HEADS * HEAD_DIM])
{
	for (uint32_t l = 0; l < N_LAYERS; l++) {
		struct tqkv_layer_view v;
		struct tqkv_attn a = { .n_q_heads = HEADS, .scale = 0.125f, .position = n - 1 };
		float q[HEADS * HEAD_DIM];

		gaussian_fill(77 + l, q, HEADS * HEAD_DIM);
		cr_assert_eq(tqkv_seq_view_blocks(s, l, n, (n - 1) / B, &v), 0);
		cr_assert_eq(tqkv_attend(&v, q, &a, out[l]), 0);
	}
}

/* Both the first engine and the second must see the same numbers. */
struct shared_result {
	float out[N_LAYERS][HEADS * HEAD_DIM];
	uint64_t cached;
};

static void engine_process(const char *socket, void *arg, size_t n)
{
	struct shared_result *res = arg;
	struct tqkv_client *c = connect_model(socket, &test_model);
	struct tqkv_seq *s;

	res->cached = run_prompt(c, 1, 42, n, 0, &s);
	attend_all(s, n, res->out);
	check_tokens(s, 42, n);
	tqkv_client_free(c);  /* the sequence closes with the connection */
}

static void run_child(void (*fn)(const char *, void *, size_t), const char *socket, void *res, size_t n)
{
	pid_t pid = fork();
	int status;

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		fn(socket, res, n);
		_exit(0);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "engine process failed: %#x", status);
}

/* An engine publishes a prompt and exits; a second engine process opens
 * the same prompt, attaches the cached blocks (all but the one holding the
 * last token), computes the rest, and its attention outputs are
 * bit-identical to the first's. */
Test(prefix, second_process_attaches_and_attends_identically, .timeout = 60)
{
	struct shared_result *res = mmap(NULL, 2 * sizeof(*res), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
					 -1, 0);
	struct test_daemon d;
	size_t n = 700;

	cr_assert_neq(res, MAP_FAILED);
	daemon_start(&d, NULL);
	run_child(engine_process, d.socket, &res[0], n);
	run_child(engine_process, d.socket, &res[1], n);
	cr_assert_eq(res[0].cached, 0);
	cr_assert_eq(res[1].cached, (n - 1) / B * B);
	cr_assert_eq(memcmp(res[0].out, res[1].out, sizeof(res[0].out)), 0, "attention differs on a cache hit");
	cr_assert_eq(daemon_stat(&d, "prefix_lookups"), 2);
	cr_assert_eq(daemon_stat(&d, "prefix_query_tokens"), 2 * (long long)n);
	cr_assert_eq(daemon_stat(&d, "prefix_hit_tokens"), (long long)res[1].cached);
	cr_assert_eq(daemon_stat(&d, "bytes_pinned"), 0);
	cr_assert_gt(daemon_stat(&d, "bytes_cached"), 0);
	daemon_stop(&d);
	munmap(res, 2 * sizeof(*res));
}

/* A prompt longer than one message goes out in SEQ_TOKENS requests, and
 * the attach continues across them; generated tokens' ids index their
 * blocks too. */
Test(prefix, long_prompt_and_generated_tokens, .timeout = 60)
{
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s, *t;
	size_t n = 20000;
	uint32_t *ids = malloc((n + 200) * sizeof(*ids));

	daemon_start(&d, NULL);
	c = connect_model(d.socket, &test_model);
	cr_assert_eq(run_prompt(c, 9, 5, n, 0, &s), 0);
	/* 100 "generated" tokens, their ids told afterwards. */
	append_tokens(s, 5, n, 100);
	prompt_ids(9, ids, n + 200);
	cr_assert_eq(tqkv_seq_set_tokens(s, n, ids + n, 100), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_seq_wait(s, (n + 100) / B * B), 0);
	cr_assert_eq(tqkv_seq_set_tokens(s, 5, ids + 6, 1), -EINVAL, "a different id for a known token");
	cr_assert_eq(tqkv_seq_close(s), 0);

	cr_assert_eq(tqkv_seq_open_prompt(c, ids, n + 200, 0, &t, NULL), 0);
	cr_assert_eq(tqkv_seq_committed(t), (n + 100) / B * B);
	check_tokens(t, 5, (n + 100) / B * B);
	cr_assert_eq(tqkv_seq_close(t), 0);
	tqkv_client_free(c);
	daemon_stop(&d);
	free(ids);
}

/* Private sequences share nothing; a different model or policy finds
 * nothing; another uid (tenant) finds nothing. */
Test(prefix, sharing_is_scoped, .timeout = 60)
{
	struct test_daemon d;
	struct tqkv_client *c, *other;
	struct tqkv_seq *s, *t;
	struct tqkv_model m2 = test_model;
	struct tqkv_layer_desc layers2[N_LAYERS];
	pid_t pid;
	int status;

	daemon_start(&d, NULL);
	c = connect_model(d.socket, &test_model);
	cr_assert_eq(run_prompt(c, 3, 8, 300, TQKV_SEQ_PRIVATE, &s), 0);
	cr_assert_eq(tqkv_seq_close(s), 0);
	cr_assert_eq(run_prompt(c, 3, 8, 300, 0, &s), 0, "a private sequence was shared");
	cr_assert_eq(run_prompt(c, 3, 8, 300, 0, &t), 256, "an open sequence's blocks are shared");
	cr_assert_eq(tqkv_seq_close(t), 0);

	memcpy(layers2, test_layers, sizeof(layers2));
	layers2[2].k_kind = TQKV_KIND_TQ4;
	m2.layers = layers2;
	other = connect_model(d.socket, &m2);
	cr_assert_eq(run_prompt(other, 3, 8, 300, 0, &t), 0, "another codec policy shared blocks");
	tqkv_client_free(other);

	if (geteuid() == 0) {
		/* A client of another uid: its own tenant, no hit, and the arena
		 * it maps holds none of uid 0's bytes. */
		struct tqkv_layer_view pv;
		size_t psize;
		const uint8_t *page;
		uint8_t needle[64];

		cr_assert_eq(tqkv_seq_view(s, 0, &pv), 0);
		page = tqkv_view_page(&pv, 0, 0, 0, &psize);
		cr_assert(page && psize > 2 * sizeof(needle));
		memcpy(needle, page + psize / 2, sizeof(needle));
		cr_assert_not_null(memmem(pv.arena, pv.arena_bytes, needle, sizeof(needle)));
		cr_assert_eq(chmod(d.dir, 0755), 0);
		cr_assert_eq(chmod(d.socket, 0777), 0);
		pid = fork();
		if (pid == 0) {
			struct tqkv_client *o;
			struct tqkv_seq *u;

			if (setgid(65534) < 0 || setuid(65534) < 0)
				_exit(3);
			struct tqkv_layer_view uv;

			o = connect_model(d.socket, &test_model);
			if (run_prompt(o, 3, 9, 300, 0, &u) != 0)
				_exit(4);
			if (tqkv_seq_view(u, 0, &uv) < 0 || memmem(uv.arena, uv.arena_bytes, needle, sizeof(needle)))
				_exit(5);
			_exit(0);
		}
		cr_assert_eq(waitpid(pid, &status, 0), pid);
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "uid 65534 attached uid 0's blocks: %#x", status);
		cr_assert_eq(daemon_stat(&d, "prefix_lookups"), 4);
	}
	tqkv_seq_close(s);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* Fork shares the published blocks and copies the tail; trim drops tail
 * tokens exactly and blocks whole. */
Test(prefix, fork_and_trim, .timeout = 60)
{
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s, *f;
	struct tqkv_layer_view v1, v2;
	uint64_t kept;

	daemon_start(&d, NULL);
	c = connect_model(d.socket, &test_model);
	cr_assert_eq(run_prompt(c, 4, 11, 200, 0, &s), 0);
	cr_assert_eq(tqkv_seq_fork(s, &f), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_seq_committed(f), 200);
	cr_assert_eq(tqkv_seq_published(f), 192);
	cr_assert_eq(tqkv_seq_view(s, 0, &v1), 0);
	cr_assert_eq(tqkv_seq_view(f, 0, &v2), 0);
	cr_assert_eq(tqkv_view_page(&v1, 2, 1, 0, NULL), tqkv_view_page(&v2, 2, 1, 0, NULL), "fork copied a block: %p %p %llu %llu",
		     tqkv_view_page(&v1, 2, 1, 0, NULL), tqkv_view_page(&v2, 2, 1, 0, NULL), (unsigned long long)v1.n_blocks, (unsigned long long)v2.n_blocks);
	check_tokens(f, 11, 200);

	cr_assert_eq(tqkv_seq_trim(f, 150, &kept), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(kept, 128);
	cr_assert_eq(tqkv_seq_published(f), 128, "published %llu", (unsigned long long)tqkv_seq_published(f));
	check_tokens(f, 11, 128);
	append_tokens(f, 11, 128, 100);
	cr_assert_eq(tqkv_seq_wait(f, 192), 0);
	check_tokens(f, 11, 228);

	cr_assert_eq(tqkv_seq_trim(s, 196, &kept), 0);
	cr_assert_eq(kept, 196);
	cr_assert_eq(tqkv_seq_published(s), 192);
	append_tokens(s, 11, 196, 70);
	cr_assert_eq(tqkv_seq_wait(s, 256), 0);
	check_tokens(s, 11, 266);
	check_tokens(f, 11, 228);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* Under a small budget, closed prompts are evicted least recently used
 * first; a sequence that stays open keeps its blocks intact; the arena
 * stays within the budget; flush drops what is left. */
Test(prefix, eviction_spares_pinned_blocks, .timeout = 90)
{
	const char *extra[] = { "--memory-budget", "6M", "--set", "max_tokens_per_sequence=4096", NULL };
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *pinned, *s;
	uint64_t blocks, bytes;

	/* The harness's budget comes first; the later option wins. */
	daemon_start(&d, extra);
	c = connect_model(d.socket, &test_model);
	cr_assert_eq(run_prompt(c, 100, 100, 640, 0, &pinned), 0);
	for (uint32_t i = 0; i < 24; i++) {
		cr_assert_eq(run_prompt(c, 200 + i, 200 + i, 640, 0, &s), 0);
		cr_assert_eq(tqkv_seq_close(s), 0);
	}
	cr_assert_gt(daemon_stat(&d, "evicted_blocks"), 0);
	cr_assert_leq(daemon_stat(&d, "arena_bytes_used"), 6ll << 20);
	check_tokens(pinned, 100, 640);
	/* The newest prompt is still cached, the oldest is gone. */
	cr_assert_eq(run_prompt(c, 200 + 23, 200 + 23, 640, 0, &s), 576);
	cr_assert_eq(tqkv_seq_close(s), 0);
	cr_assert_eq(run_prompt(c, 200, 200, 640, 0, &s), 0);
	cr_assert_eq(tqkv_seq_close(s), 0);
	/* Another client's open sequence attaches the pinned blocks. */
	cr_assert_eq(run_prompt(c, 100, 100, 640, 0, &s), 576);
	cr_assert_eq(tqkv_seq_close(s), 0);

	cr_assert_eq(tqkv_client_flush(c, &blocks, &bytes), 0);
	cr_assert_gt(blocks, 0);
	cr_assert_eq(daemon_stat(&d, "blocks_cached"), 0);
	cr_assert_eq(run_prompt(c, 200 + 23, 200 + 23, 640, 0, &s), 0, "flush left a block");
	cr_assert_eq(tqkv_seq_close(s), 0);
	check_tokens(pinned, 100, 640);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* A tenant over its quota evicts its own cached blocks, and stays within
 * the quota while the budget has room. */
Test(prefix, tenant_quota, .timeout = 60)
{
	const char *extra[] = { "--set", "tenant_quota=2M", "--set", "max_tokens_per_sequence=4096", NULL };
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s;
	char *text;

	daemon_start(&d, extra);
	c = connect_model(d.socket, &test_model);
	for (uint32_t i = 0; i < 12; i++) {
		cr_assert_eq(run_prompt(c, 300 + i, 300 + i, 640, 0, &s), 0);
		cr_assert_eq(tqkv_seq_close(s), 0);
	}
	cr_assert_gt(daemon_stat(&d, "evicted_blocks"), 0);
	cr_assert_eq(tqkv_client_stats(c, &text), 0);
	cr_assert_leq(stats_value(strstr(text, "# Tenant"), "arena_bytes_used"), 2ll << 20);
	free(text);
	cr_assert_eq(run_prompt(c, 311, 311, 640, 0, &s), 576, "the newest prompt was evicted");
	tqkv_client_free(c);
	daemon_stop(&d);
}

static void snapshot_path(const struct test_daemon *d, char *buf, size_t size)
{
	snprintf(buf, size, "%s/cache.snapshot", d->dir);
}

/* Where the daemon keeps a snapshot it did not load in full. */
static void rejected_path(const struct test_daemon *d, char *buf, size_t size)
{
	snprintf(buf, size, "%s/cache.snapshot.rejected", d->dir);
}

/* Removes a kept snapshot, so that the directory can go. */
static void remove_rejected(const struct test_daemon *d)
{
	char path[128];

	rejected_path(d, path, sizeof(path));
	unlink(path);
}

/* A whole file; the caller frees it. */
static uint8_t *read_whole(const char *path, size_t *ret_size)
{
	struct stat st;
	uint8_t *p;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
	cr_assert_eq(fstat(fd, &st), 0);
	p = malloc((size_t)st.st_size + 1);
	cr_assert_not_null(p);
	cr_assert_eq(read(fd, p, (size_t)st.st_size), st.st_size);
	close(fd);
	*ret_size = (size_t)st.st_size;
	return p;
}

/* Publishes a 700-token prompt, keeps the attention it computed, and
 * stops the daemon with SIGTERM (it saves the cache). */
static void publish_and_stop(struct test_daemon *d, float out[N_LAYERS][HEADS * HEAD_DIM])
{
	struct tqkv_client *c = connect_model(d->socket, &test_model);
	struct tqkv_seq *s;

	cr_assert_eq(run_prompt(c, 1, 42, 700, 0, &s), 0);
	attend_all(s, 700, out);
	tqkv_client_free(c);
	daemon_terminate(d);
}

/* After a restart, the same prompt attaches what survived: expected
 * tokens, the right rows, the same attention. */
static void check_restored(struct test_daemon *d, uint64_t expected, float want[N_LAYERS][HEADS * HEAD_DIM])
{
	float got[N_LAYERS][HEADS * HEAD_DIM];
	struct tqkv_client *c = connect_model(d->socket, &test_model);
	struct tqkv_seq *s;

	cr_assert_eq(run_prompt(c, 1, 42, 700, 0, &s), expected);
	check_tokens(s, 42, 700);
	attend_all(s, 700, got);
	cr_assert_eq(memcmp(got, want, sizeof(got)), 0, "attention differs after a restart");
	tqkv_client_free(c);
}

/* SIGTERM saves the cache; the next daemon loads it and the prefix hits
 * with identical contents. */
Test(prefix, restart_keeps_the_cache, .timeout = 60)
{
	float out[N_LAYERS][HEADS * HEAD_DIM];
	struct test_daemon d;

	daemon_start(&d, NULL);
	publish_and_stop(&d, out);
	daemon_restart(&d, NULL);
	cr_assert_eq(daemon_stat(&d, "snapshot_loaded_blocks"), 10);
	cr_assert_eq(daemon_stat(&d, "bytes_cached"), daemon_stat(&d, "bytes_compressed"));
	check_restored(&d, 640, out);
	daemon_stop(&d);
}

/* A restart under a tenant_quota that holds half the snapshot: the
 * records that come first (the most recently used) are loaded, the rest
 * refused; none loaded is evicted for a later one. */
Test(prefix, load_under_quota_keeps_the_first_records, .timeout = 60)
{
	float out[N_LAYERS][HEADS * HEAD_DIM];
	struct test_daemon d;
	char snap[128], quota[64];
	const char *extra[] = { "--set", quota, NULL };
	struct stat st;
	long long loaded;

	daemon_start(&d, NULL);
	publish_and_stop(&d, out);
	snapshot_path(&d, snap, sizeof(snap));
	cr_assert_eq(stat(snap, &st), 0);
	snprintf(quota, sizeof(quota), "tenant_quota=%lldK", (long long)st.st_size / 2 / 1024);
	daemon_restart(&d, extra);
	loaded = daemon_stat(&d, "snapshot_loaded_blocks");
	cr_assert(loaded > 0 && loaded < 10, "%lld of 10 blocks loaded under %s", loaded, quota);
	cr_assert_eq(daemon_stat(&d, "evicted_blocks"), 0);
	cr_assert_eq(daemon_stat(&d, "blocks_cached"), loaded);
	daemon_stop(&d);
}

/* A snapshot damaged in its fourth record, truncated, or with a damaged
 * header: the daemon starts, keeps the intact records before the damage
 * (the chain's first blocks come first), and serves nothing wrong. */
Test(prefix, damaged_snapshots_are_detected, .timeout = 90)
{
	float out[N_LAYERS][HEADS * HEAD_DIM];
	struct test_daemon d;
	char path[128];
	struct stat st;
	int fd;
	uint8_t byte;

	daemon_start(&d, NULL);
	publish_and_stop(&d, out);
	snapshot_path(&d, path, sizeof(path));
	cr_assert_eq(stat(path, &st), 0);

	/* Records are 96 + record bytes; one byte inside the fourth record. */
	fd = open(path, O_RDWR);
	{
		uint64_t record = ((uint64_t)st.st_size - 64) / 10;

		cr_assert_eq(pread(fd, &byte, 1, (off_t)(64 + 3 * record + 96 + 500)), 1);
		byte ^= 0x40;
		cr_assert_eq(pwrite(fd, &byte, 1, (off_t)(64 + 3 * record + 96 + 500)), 1);
	}
	close(fd);
	daemon_restart(&d, NULL);
	cr_assert_eq(daemon_stat(&d, "snapshot_loaded_blocks"), 3);
	check_restored(&d, 192, out);
	/* The damaged file is kept aside, whole, for the next save. */
	{
		char kept[128];
		struct stat ks;

		rejected_path(&d, kept, sizeof(kept));
		cr_assert_eq(stat(kept, &ks), 0, "the damaged snapshot was not kept");
		cr_assert_eq(ks.st_size, st.st_size);
	}
	daemon_terminate(&d);

	/* It saved 10 blocks again; cut the file in the middle of a record. */
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(truncate(path, st.st_size / 2), 0);
	daemon_restart(&d, NULL);
	cr_assert_eq(daemon_stat(&d, "snapshot_loaded_blocks"), 4);
	check_restored(&d, 256, out);
	daemon_terminate(&d);

	/* A damaged file header: nothing loaded, the daemon serves anyway. */
	fd = open(path, O_RDWR);
	cr_assert_eq(pwrite(fd, "X", 1, 3), 1);
	close(fd);
	daemon_restart(&d, NULL);
	cr_assert_eq(daemon_stat(&d, "snapshot_loaded_blocks"), 0);
	check_restored(&d, 0, out);
	remove_rejected(&d);
	daemon_stop(&d);
}

/* A snapshot the daemon does not load in full (another block size, a
 * tenancy that names none of its tenants) is kept aside: the saves that
 * follow cannot destroy it, and renamed back it loads. */
Test(prefix, rejected_snapshot_survives_the_next_save, .timeout = 90)
{
	const char *other_blocks[] = { "--block-tokens", "128", NULL };
	const char *other_tenancy[] = { "--set", "tenants=gid", NULL };
	const char *const *configs[] = { other_blocks, other_tenancy };
	float out[N_LAYERS][HEADS * HEAD_DIM];
	struct test_daemon d;
	char path[128], kept[128];
	uint8_t *saved, *back;
	size_t size, back_size;
	struct stat st;

	daemon_start(&d, NULL);
	publish_and_stop(&d, out);
	snapshot_path(&d, path, sizeof(path));
	rejected_path(&d, kept, sizeof(kept));
	saved = read_whole(path, &size);
	for (size_t i = 0; i < sizeof(configs) / sizeof(configs[0]); i++) {
		daemon_restart(&d, configs[i]);
		cr_assert_eq(daemon_stat(&d, "snapshot_loaded_blocks"), 0);
		daemon_terminate(&d);  /* saves an empty cache */
		cr_assert_eq(stat(path, &st), 0);
		back = read_whole(kept, &back_size);
		cr_assert(back_size == size && memcmp(back, saved, size) == 0, "config %zu: the kept file differs", i);
		free(back);
		cr_assert_eq(rename(kept, path), 0);
	}
	daemon_restart(&d, NULL);
	cr_assert_eq(daemon_stat(&d, "snapshot_loaded_blocks"), 10);
	cr_assert_neq(stat(kept, &st), 0, "a snapshot loaded in full was set aside");
	check_restored(&d, 640, out);
	daemon_stop(&d);
	free(saved);
}

/* A daemon killed with SIGKILL loses only what came after its last
 * periodic snapshot. */
Test(prefix, periodic_snapshot_survives_sigkill, .timeout = 60)
{
	const char *extra[] = { "--set", "snapshot_interval=1", NULL };
	float out[N_LAYERS][HEADS * HEAD_DIM];
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s;
	int status;

	daemon_start(&d, extra);
	c = connect_model(d.socket, &test_model);
	cr_assert_eq(run_prompt(c, 1, 42, 700, 0, &s), 0);
	attend_all(s, 700, out);
	sleep_ms(2500);  /* two snapshots, the open sequence's blocks in them */
	kill(d.pid, SIGKILL);
	cr_assert_eq(waitpid(d.pid, &status, 0), d.pid);
	harness_daemon_pid = 0;
	tqkv_client_free(c);
	daemon_restart(&d, extra);
	cr_assert_eq(daemon_stat(&d, "snapshot_loaded_blocks"), 10);
	check_restored(&d, 640, out);
	daemon_stop(&d);
}

/* systemd's fd store, simulated: FDSTORE=1 messages on the daemon's
 * NOTIFY_SOCKET keep fds by name, FDSTOREREMOVE=1 drops them, and a
 * restarted daemon gets them back as LISTEN_FDS with LISTEN_FDNAMES. */
struct fd_store {
	int sock;
	char path[100], env[128];
	int fds[8];
	char names[8][80];
	unsigned n;
};

static void fd_store_drop(struct fd_store *st, unsigned i)
{
	close(st->fds[i]);
	st->fds[i] = st->fds[st->n - 1];
	memcpy(st->names[i], st->names[st->n - 1], sizeof(st->names[i]));
	st->n--;
}

/* Reads the notifications sent so far. */
static void fd_store_drain(struct fd_store *st)
{
	for (;;) {
		char buf[512];
		union {
			char c[CMSG_SPACE(sizeof(int) * 4)];
			struct cmsghdr align;
		} ctl;
		struct iovec iov = { buf, sizeof(buf) - 1 };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.c, .msg_controllen = sizeof(ctl) };
		ssize_t n = recvmsg(st->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		struct cmsghdr *cm;
		const char *name;
		int fd = -1;

		if (n < 0)
			return;
		buf[n] = 0;
		for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
				memcpy(&fd, CMSG_DATA(cm), sizeof(fd));
		name = strstr(buf, "FDNAME=");
		if (!name)
			continue;
		name += 7;
		for (unsigned i = 0; i < st->n; i++)
			if (!strncmp(st->names[i], name, strcspn(name, "\n")) && strlen(st->names[i]) == strcspn(name, "\n"))
				fd_store_drop(st, i);
		if (strstr(buf, "FDSTORE=1") && fd >= 0) {
			cr_assert_lt(st->n, 8);
			st->fds[st->n] = fd;
			snprintf(st->names[st->n++], sizeof(st->names[0]), "%.*s", (int)strcspn(name, "\n"), name);
		} else if (fd >= 0) {
			close(fd);
		}
	}
}

/* In the child: the stored fds at 3, 4, ... and the LISTEN_* variables. */
static void fd_store_hand_back(void *arg)
{
	struct fd_store *st = arg;
	char names[8 * 80] = "", env[32];
	int high[8];

	for (unsigned i = 0; i < st->n; i++)
		high[i] = fcntl(st->fds[i], F_DUPFD, 100);
	for (unsigned i = 0; i < st->n; i++) {
		dup2(high[i], 3 + (int)i);
		strcat(names, i ? ":" : "");
		strcat(names, st->names[i]);
	}
	snprintf(env, sizeof(env), "%u", st->n);
	setenv("LISTEN_FDS", env, 1);
	snprintf(env, sizeof(env), "%d", (int)getpid());
	setenv("LISTEN_PID", env, 1);
	setenv("LISTEN_FDNAMES", names, 1);
}

/* The notify socket in the daemon's directory. */
static void fd_store_open(struct fd_store *st, const struct test_daemon *d)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	snprintf(st->path, sizeof(st->path), "%s/notify", d->dir);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", st->path);
	snprintf(st->env, sizeof(st->env), "NOTIFY_SOCKET=%s", st->path);
	st->sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(bind(st->sock, (struct sockaddr *)&sa, sizeof(sa)), 0);
}

static void fd_store_close(struct fd_store *st)
{
	for (unsigned i = 0; i < st->n; i++)
		close(st->fds[i]);
	close(st->sock);
	unlink(st->path);
}

static void fd_store_start(struct test_daemon *d, struct fd_store *st)
{
	const char *argv[] = { getenv("TQKVD"), DAEMON_ARGS(d), "--set", "snapshot_interval=0", NULL };
	const char *env[] = { st->env, NULL };

	daemon_spawn_with(d, argv, env, st->n ? fd_store_hand_back : NULL, st);
}

/* SIGKILL loses nothing published: the tenant's arena and directory wait
 * in the fd store, and the next daemon copies every block back. */
Test(prefix, fd_store_survives_sigkill, .timeout = 60)
{
	float out[N_LAYERS][HEADS * HEAD_DIM];
	struct fd_store st = { 0 };
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s;
	char first[2][80];
	int status;

	daemon_make_dir(&d);
	fd_store_open(&st, &d);
	fd_store_start(&d, &st);

	c = connect_model(d.socket, &test_model);
	cr_assert_eq(run_prompt(c, 1, 42, 700, 0, &s), 0);
	attend_all(s, 700, out);
	tqkv_client_free(c);
	fd_store_drain(&st);
	cr_assert_eq(st.n, 2, "%u fds parked", st.n);
	memcpy(first, st.names, sizeof(first));

	kill(d.pid, SIGKILL);
	cr_assert_eq(waitpid(d.pid, &status, 0), d.pid);
	harness_daemon_pid = 0;
	fd_store_start(&d, &st);
	cr_assert_eq(daemon_stat(&d, "fdstore_adopted_blocks"), 10);
	check_restored(&d, 640, out);

	/* The old fds left the store, the new daemon's arrived. */
	fd_store_drain(&st);
	cr_assert_eq(st.n, 2, "%u fds parked after the restart", st.n);
	for (unsigned i = 0; i < 2; i++)
		cr_assert(strcmp(st.names[i], first[0]) && strcmp(st.names[i], first[1]), "%s is still parked",
			  st.names[i]);
	/* A clean stop empties the store (the snapshot takes over). */
	daemon_terminate(&d);
	fd_store_drain(&st);
	cr_assert_eq(st.n, 0, "%u fds parked after a clean stop", st.n);
	fd_store_close(&st);
	daemon_remove_dir(&d);
}

/* The crash suite's engine: publishes prompts one after another (prompt p
 * has ids salted p and rows seeded p), records each one whose blocks were
 * all published, and on any error reconnects and goes on. */
struct crash_log {
	_Atomic uint32_t published[4096];  /* prompt ids, in order */
	_Atomic uint32_t n_published;
	_Atomic uint32_t reconnects, errors;
	_Atomic int stop;
};

#define CRASH_PROMPT_TOKENS 300

static void crash_engine(const char *socket, struct crash_log *log)
{
	struct tqkv_client *c = NULL;

	for (uint32_t p = 1000; !atomic_load(&log->stop) && p < 1000 + 4096;) {
		uint32_t ids[CRASH_PROMPT_TOKENS];
		struct tqkv_seq *s;
		uint64_t cached;

		if (!c) {
			if (tqkv_client_connect(socket, &c) < 0 || tqkv_client_register_model(c, &test_model) < 0) {
				tqkv_client_free(c);
				c = NULL;
				sleep_ms(20);  /* the daemon is down: try again */
				continue;
			}
			atomic_fetch_add(&log->reconnects, 1);
		}
		prompt_ids(p, ids, CRASH_PROMPT_TOKENS);
		if (tqkv_seq_open_prompt(c, ids, CRASH_PROMPT_TOKENS, 0, &s, &cached) < 0 ||
		    try_append_tokens(s, p, cached, CRASH_PROMPT_TOKENS - cached) < 0 ||
		    tqkv_seq_wait(s, CRASH_PROMPT_TOKENS / B * B) < 0) {
			/* A clear error: the daemon went away.  Reconnect. */
			atomic_fetch_add(&log->errors, 1);
			tqkv_client_free(c);
			c = NULL;
			continue;
		}
		log->published[atomic_load(&log->n_published)] = p;
		atomic_fetch_add(&log->n_published, 1);
		tqkv_seq_close(s);
		p++;
	}
	tqkv_client_free(c);
}

/* Every prompt the engine saw published is still there, bit for bit. */
static uint64_t crash_verify(const char *socket, struct crash_log *log)
{
	struct tqkv_client *c = connect_model(socket, &test_model);
	uint64_t blocks = 0;

	for (uint32_t i = 0; i < atomic_load(&log->n_published); i++) {
		uint32_t p = log->published[i], ids[CRASH_PROMPT_TOKENS];
		struct tqkv_seq *s;
		uint64_t cached;

		prompt_ids(p, ids, CRASH_PROMPT_TOKENS);
		cr_assert_eq(tqkv_seq_open_prompt(c, ids, CRASH_PROMPT_TOKENS, 0, &s, &cached), 0);
		cr_assert_eq(cached, (CRASH_PROMPT_TOKENS - 1) / B * B, "prompt %u: %llu tokens survived", p,
			     (unsigned long long)cached);
		check_tokens(s, p, cached);
		blocks += cached / B;
		cr_assert_eq(tqkv_seq_close(s), 0);
	}
	tqkv_client_free(c);
	return blocks;
}

/* Polls (1 ms) until path exists; false after timeout_ms. */
static bool wait_for_file(const char *path, unsigned timeout_ms)
{
	for (unsigned i = 0; i < timeout_ms; i++) {
		if (access(path, F_OK) == 0)
			return true;
		sleep_ms(1);
	}
	return false;
}

/* The crash suite: the daemon is killed with SIGKILL at random moments
 * while an engine appends (blocks being compressed, background snapshots
 * every second), and restarted with what its fd store held.  No published
 * block is lost or changed; the engine gets errors, reconnects and goes
 * on. */
Test(prefix, crash_daemon_killed_while_working, .timeout = 120)
{
	const char *extra[] = { "--set", "snapshot_interval=1", "--worker-threads", "2", NULL };
	struct crash_log *log = mmap(NULL, sizeof(*log), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct fd_store st = { 0 };
	struct test_daemon d;
	uint64_t seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)time(NULL), blocks = 0;
	unsigned kills = 0, mid_snapshot = 0;
	char tmp[128];
	pid_t engine;
	int status;

	cr_assert_neq(log, MAP_FAILED);
	daemon_make_dir(&d);
	fd_store_open(&st, &d);
	{
		const char *argv[] = { getenv("TQKVD"), DAEMON_ARGS(&d), extra[0], extra[1], extra[2], extra[3], NULL };
		const char *env[] = { st.env, NULL };

		daemon_spawn_with(&d, argv, env, NULL, NULL);
	}
	snprintf(tmp, sizeof(tmp), "%s/cache.snapshot.tmp", d.dir);
	engine = fork();
	if (engine == 0) {
		crash_engine(d.socket, log);
		_exit(0);
	}
	for (unsigned round = 0; round < 8; round++) {
		const char *argv[] = { getenv("TQKVD"), DAEMON_ARGS(&d), extra[0], extra[1], extra[2], extra[3], NULL };
		const char *env[] = { st.env, NULL };

		sleep_ms(150 + (unsigned)(splitmix64_next(&seed) % 600));
		/* Every other round, wait for a background snapshot to be
		 * writing and kill the daemon in the middle of it. */
		if (round % 2 && wait_for_file(tmp, 3000))
			mid_snapshot++;
		fd_store_drain(&st);
		kill(d.pid, SIGKILL);
		cr_assert_eq(waitpid(d.pid, &status, 0), d.pid);
		harness_daemon_pid = 0;
		kills++;
		unlink(tmp);  /* what the killed writer left; the next one starts afresh */
		daemon_spawn_with(&d, argv, env, st.n ? fd_store_hand_back : NULL, &st);
	}
	atomic_store(&log->stop, 1);
	cr_assert_eq(waitpid(engine, &status, 0), engine);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the engine died: %#x", status);
	cr_assert_gt(atomic_load(&log->n_published), 8, "the engine published only %u prompts",
		     atomic_load(&log->n_published));
	blocks = crash_verify(d.socket, log);
	cr_assert_gt(mid_snapshot, 0, "no kill landed during a snapshot");
	cr_log_info("crash suite: %u kills and restarts (%u during a snapshot), %u prompts / %llu blocks verified, "
		    "engine reconnected %u times after %u errors", kills, mid_snapshot, atomic_load(&log->n_published),
		    (unsigned long long)blocks, atomic_load(&log->reconnects), atomic_load(&log->errors));
	daemon_terminate(&d);
	fd_store_drain(&st);
	fd_store_close(&st);
	/* An old snapshot's blocks that no longer fit next to those adopted
	 * from the fd store are refused, and that snapshot kept. */
	remove_rejected(&d);
	daemon_remove_dir(&d);
	munmap(log, sizeof(*log));
}

/* A Gemma-style hybrid model: head_dim 128 and 64 layers, a sliding-window
 * layer and a layer that reuses another's KV. */
static const struct tqkv_layer_desc hybrid_layers[] = {
	{ .n_kv_heads = 2, .head_dim = 128, .kv_source = -1, .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ4 },
	{ .n_kv_heads = 1, .head_dim = 64, .window = 128, .kv_source = -1, .k_kind = TQKV_KIND_TQ3,
	  .v_kind = TQKV_KIND_TQ3_5, .flags = TQKV_LAYER_CENTER_KEYS },
	{ .kv_source = 0 },
};
#define HYBRID_TOKENS 2000
#define HYBRID_OUT (4 * 128)  /* n_q_heads 4 x the largest head_dim */

struct hybrid_result {
	float out[3][HYBRID_OUT];
	uint64_t cached;
};

static const struct tqkv_model hybrid_model = { .fingerprint = 0x6e33a, .n_layers = 3, .layers = hybrid_layers,
						.staging_tokens = 256, .max_sequences = 6 };

/* Writes and commits tokens [from, n) of the stored layers. */
static void hybrid_write(struct tqkv_seq *s, uint64_t from, uint64_t n)
{
	for (uint64_t t = from; t < n; t++) {
		for (uint32_t l = 0; l < 2; l++) {
			uint16_t k[2 * 128], v[2 * 128];
			float f[2 * 128];
			unsigned w = hybrid_layers[l].n_kv_heads * hybrid_layers[l].head_dim;

			gaussian_fill(t * 131 + l, f, w);
			for (unsigned i = 0; i < w; i++)
				k[i] = tqkv_f32_to_f16(f[i] + (float)l);
			gaussian_fill(t * 137 + l + 9, f, w);
			for (unsigned i = 0; i < w; i++)
				v[i] = tqkv_f32_to_f16(f[i]);
			while (tqkv_seq_write(s, t, l, k, v) == -EAGAIN)
				cr_assert_eq(tqkv_seq_wait(s, t + 1 - 256), 0);
		}
		cr_assert_eq(tqkv_seq_commit(s, t + 1), 0);
	}
	cr_assert_eq(tqkv_seq_wait(s, n / B * B), 0);
}

/* Attends every layer at position pos (windowed where the layer is). */
static int hybrid_attend(struct tqkv_seq *s, uint64_t pos, float out[3][HYBRID_OUT])
{
	for (uint32_t l = 0; l < 3; l++) {
		struct tqkv_layer_view v;
		struct tqkv_attn a = { .n_q_heads = 4, .scale = 0.1f, .position = pos, .window = hybrid_layers[l].window };
		float q[HYBRID_OUT];
		int r;

		gaussian_fill(5 + l, q, HYBRID_OUT);
		cr_assert_eq(tqkv_seq_view_blocks(s, l, pos + 1, pos / B, &v), 0);
		cr_assert_eq(v.head_dim, l == 1 ? 64u : 128u);
		r = tqkv_attend(&v, q, &a, out[l]);
		if (r < 0)
			return r;
	}
	return 0;
}

static void hybrid_engine(const char *socket, void *arg, size_t n)
{
	struct hybrid_result *res = arg;
	struct tqkv_client *c = connect_model(socket, &hybrid_model);
	uint32_t ids[HYBRID_TOKENS];
	struct tqkv_seq *s;
	uint64_t cached;

	prompt_ids(77, ids, n);
	cr_assert_eq(tqkv_seq_open_prompt(c, ids, n, 0, &s, &cached), 0, "%s", tqkv_client_error(c));
	hybrid_write(s, cached, n);
	cr_assert_eq(hybrid_attend(s, n - 1, res->out), 0);
	res->cached = cached;
	tqkv_client_free(c);
}

/* Sharing works per layer: the second engine attaches the hybrid model's
 * blocks and attends, windowed where the layer is, exactly as the first. */
Test(prefix, hybrid_model_layers_share, .timeout = 60)
{
	struct hybrid_result *res = mmap(NULL, 2 * sizeof(*res), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
					 -1, 0);
	struct test_daemon d;

	cr_assert_neq(res, MAP_FAILED);
	daemon_start(&d, NULL);
	run_child(hybrid_engine, d.socket, &res[0], HYBRID_TOKENS);
	run_child(hybrid_engine, d.socket, &res[1], HYBRID_TOKENS);
	cr_assert_eq(res[0].cached, 0);
	cr_assert_eq(res[1].cached, (HYBRID_TOKENS - 1) / B * B);
	cr_assert_eq(memcmp(res[0].out, res[1].out, sizeof(res[0].out)), 0, "attention differs on a hit");
	daemon_stop(&d);
	munmap(res, 2 * sizeof(*res));
}

#define WINDOW_TOKENS 2000

/* Blocks whose window pages a hybrid_model sequence of n tokens no longer
 * needs: window 128 plus the staging ring 256 behind. */
static uint64_t window_frontier_of(uint64_t n)
{
	return n > 128 + 256 ? (n - 128 - 256) / B : 0;
}

/*
 * The sliding-window layer's pages go once every holder is past them by
 * the window (128) plus the staging ring (256): at once for a private
 * sequence; an indexed block's stay as evictable cache, for prompts that
 * attach right after them, until evicted or flushed.  Attention inside the
 * window is unchanged; outside it the pages are gone (an error, never
 * garbage); trims and attaches that would need freed pages are refused.
 */
Test(prefix, window_pages_are_freed, .timeout = 90)
{
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *priv, *shared, *later, *fork, *s;
	const char *extra[] = { "--set", "snapshot_interval=1", NULL };
	uint32_t ids[WINDOW_TOKENS];
	char path[PATH_MAX];
	float out[3][3][HYBRID_OUT] = { { { 0 } } };
	uint64_t cached, kept, blocks, bytes, passed = window_frontier_of(WINDOW_TOKENS), window_bytes, repinned;
	int64_t compressed;

	daemon_start(&d, extra);
	c = connect_model(d.socket, &hybrid_model);
	prompt_ids(78, ids, WINDOW_TOKENS);
	cr_assert_eq(tqkv_seq_open_prompt(c, ids, WINDOW_TOKENS, TQKV_SEQ_PRIVATE, &priv, &cached), 0);
	hybrid_write(priv, 0, WINDOW_TOKENS);
	cr_assert_eq(daemon_stat(&d, "window_freed_blocks"), (int64_t)passed);
	window_bytes = (uint64_t)daemon_stat(&d, "window_freed_bytes") / passed;
	cr_assert_gt(window_bytes, 0);
	cr_assert_eq((uint64_t)daemon_stat(&d, "window_freed_bytes"), passed * window_bytes);
	compressed = daemon_stat(&d, "bytes_compressed");
	cr_log_info("private sequence of %u tokens: %lld bytes of blocks, window pages of %llu blocks freed "
		    "(%llu bytes each)", WINDOW_TOKENS, (long long)compressed, (unsigned long long)passed,
		    (unsigned long long)window_bytes);
	cr_assert_eq(hybrid_attend(priv, WINDOW_TOKENS - 1, out[0]), 0, "attention inside the window");

	/* Outside the window the freed pages are an error, never garbage. */
	{
		struct tqkv_layer_view v;
		struct tqkv_attn a = { .n_q_heads = 4, .scale = 0.1f, .position = 1000 };
		float q[HYBRID_OUT] = { 0 };

		cr_assert_eq(tqkv_seq_view(priv, 1, &v), 0);
		cr_assert_lt(tqkv_attend(&v, q, &a, out[2][1]), 0, "a freed page was read");
	}
	cr_assert_lt(tqkv_seq_trim(priv, 1000, &kept), 0, "trimmed back onto freed pages");

	/* An indexed sequence: its passed window pages are cached, not freed. */
	cr_assert_eq(tqkv_seq_open_prompt(c, ids, WINDOW_TOKENS, 0, &shared, &cached), 0);
	cr_assert_eq(cached, 0, "a private sequence's blocks were shared");
	hybrid_write(shared, 0, WINDOW_TOKENS);
	cr_assert_eq(daemon_stat(&d, "window_freed_blocks"), (int64_t)passed);
	cr_assert_eq((uint64_t)daemon_stat(&d, "bytes_cached"), passed * window_bytes);
	cr_assert_eq(daemon_stat(&d, "bytes_compressed"), 2 * compressed + (int64_t)(passed * window_bytes));
	cr_assert_eq(hybrid_attend(shared, WINDOW_TOKENS - 1, out[1]), 0);
	cr_assert_eq(memcmp(out[0], out[1], sizeof(out[0])), 0, "freeing changed attention");
	/* A background snapshot holds the blocks while it writes them, then
	 * gives the window pages back to the cache. */
	snapshot_path(&d, path, sizeof(path));
	unlink(path);
	cr_assert(wait_for_file(path, 5000), "no periodic snapshot");
	/* Up to 10 s: on a loaded 2-core machine (the suite runs two tests at
	 * a time) 2 s was once not enough for the write to finish. */
	for (unsigned i = 0; i < 10000 && (uint64_t)daemon_stat(&d, "bytes_cached") != passed * window_bytes; i++)
		sleep_ms(1);
	cr_assert_eq((uint64_t)daemon_stat(&d, "bytes_cached"), passed * window_bytes, "a snapshot pinned window pages");

	/* A fork trimmed back pins the window pages it needs again. */
	cr_assert_eq(tqkv_seq_fork(shared, &fork), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_seq_trim(fork, WINDOW_TOKENS - 100, &kept), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(kept, (WINDOW_TOKENS - 100) / B * B);
	repinned = passed - window_frontier_of(kept);
	cr_assert_eq((uint64_t)daemon_stat(&d, "bytes_cached"), (passed - repinned) * window_bytes);

	/* Flushing takes the cached window pages; the pinned ones stay, so the
	 * whole prompt still attaches, bit-identical. */
	cr_assert_eq(tqkv_client_flush(c, &blocks, &bytes), 0);
	cr_assert_eq(blocks, 0);
	cr_assert_eq(bytes, (passed - repinned) * window_bytes);
	cr_assert_eq(daemon_stat(&d, "window_freed_blocks"), (int64_t)(2 * passed - repinned));
	cr_assert_eq(tqkv_seq_open_prompt(c, ids, WINDOW_TOKENS, 0, &later, &cached), 0);
	cr_assert_eq(cached, (WINDOW_TOKENS - 1) / B * B);
	hybrid_write(later, cached, WINDOW_TOKENS);
	cr_assert_eq(hybrid_attend(later, WINDOW_TOKENS - 1, out[2]), 0);
	cr_assert_eq(memcmp(out[1], out[2], sizeof(out[1])), 0, "attention differs on a hit");

	/* A shorter prompt would end where the window pages are gone: it
	 * attaches nothing rather than blocks it cannot attend over. */
	cr_assert_eq(tqkv_seq_open_prompt(c, ids, 1100, 0, &s, &cached), 0);
	cr_assert_eq(cached, 0);
	cr_assert_eq(tqkv_seq_close(s), 0);
	/* Trims that need only pages still held work; others are refused. */
	cr_assert_eq(tqkv_seq_trim(later, WINDOW_TOKENS - 100, &kept), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(kept, (WINDOW_TOKENS - 100) / B * B);
	cr_assert_eq(tqkv_seq_trim(later, 1000, &kept), -ENODATA);
	cr_assert_eq(tqkv_seq_committed(later), (WINDOW_TOKENS - 100) / B * B, "a refused trim changed the sequence");
	tqkv_client_free(c);

	/* A snapshot keeps blocks with and without their window pages; after a
	 * restart the prompt attaches as before and frees them again. */
	daemon_terminate(&d);
	daemon_restart(&d, NULL);
	cr_assert_eq(daemon_stat(&d, "snapshot_loaded_blocks"), WINDOW_TOKENS / B);
	c = connect_model(d.socket, &hybrid_model);
	cr_assert_eq(tqkv_seq_open_prompt(c, ids, WINDOW_TOKENS, 0, &later, &cached), 0);
	cr_assert_eq(cached, (WINDOW_TOKENS - 1) / B * B);
	hybrid_write(later, cached, WINDOW_TOKENS);
	cr_assert_eq(hybrid_attend(later, WINDOW_TOKENS - 1, out[2]), 0);
	cr_assert_eq(memcmp(out[1], out[2], sizeof(out[1])), 0, "attention differs after a restart");
	cr_assert_eq(tqkv_client_flush(c, &blocks, &bytes), 0);
	cr_assert_eq(bytes, (window_frontier_of(WINDOW_TOKENS) - window_frontier_of(kept)) * window_bytes,
		     "the restored blocks' window pages: %llu bytes flushed", (unsigned long long)bytes);
	tqkv_client_free(c);
	daemon_stop(&d);
}
