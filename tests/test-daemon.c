/* SPDX-License-Identifier: MIT */
/*
 * tqkvd end to end: a real daemon process, client processes using libtqkv,
 * real sockets and memfds.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <math.h>
#include <sys/mman.h>
#include <sys/ptrace.h>

#include "daemon-fixture.h"

static void client_process(const char *socket, uint64_t seed, uint64_t n_tokens)
{
	struct tqkv_client *c;
	struct tqkv_seq *s[2];

	cr_assert_eq(tqkv_client_connect(socket, &c), 0);
	cr_assert_eq(tqkv_client_register_model(c, &test_model), 0, "%s", tqkv_client_error(c));
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(tqkv_seq_open(c, &s[i]), 0);
		append_tokens(s[i], seed + (uint64_t)i, 0, n_tokens);
	}
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(tqkv_seq_wait(s[i], n_tokens), 0);
		cr_assert_eq(tqkv_seq_published(s[i]), n_tokens / 64 * 64);
		check_tokens(s[i], seed + (uint64_t)i, n_tokens);
	}
	for (int i = 0; i < 2; i++)
		cr_assert_eq(tqkv_seq_close(s[i]), 0);
	tqkv_client_free(c);
}

/* Two client processes append K/V for two sequences each; what they read
 * back is exactly the codec's encode -> decode (published blocks) and the
 * written rows (tail); the stats count the blocks and the bytes saved. */
Test(daemon, two_clients_append_and_read_back, .timeout = 120)
{
	struct test_daemon d;
	pid_t kids[2];
	char *text;
	struct tqkv_client *c;

	daemon_start(&d, NULL);
	for (int i = 0; i < 2; i++) {
		kids[i] = fork();
		if (kids[i] == 0) {
			client_process(d.socket, 1000 + (uint64_t)i * 10, 300 + (uint64_t)i * 41);
			_exit(0);
		}
	}
	for (int i = 0; i < 2; i++) {
		int status;

		cr_assert_eq(waitpid(kids[i], &status, 0), kids[i]);
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client %d failed: %#x", i, status);
	}
	/* 300 and 341 tokens, two sequences each: 4 + 4 + 5 + 5 blocks. */
	cr_assert_eq(daemon_stat_eventually(&d, "blocks_compressed", 18), 18);
	cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
	cr_assert_eq(tqkv_client_stats(c, &text), 0);
	cr_assert_eq(stats_value(text, "sequences"), 0);
	cr_assert_eq(stats_value(text, "blocks_live"), 0);
	free(text);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* While sequences are open the stats show blocks, tail tokens and the
 * compression ratio. */
Test(daemon, stats_show_compression, .timeout = 60)
{
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s;
	char *text;

	daemon_start(&d, NULL);
	cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
	cr_assert_eq(tqkv_client_register_model(c, &test_model), 0, "%s", tqkv_client_error(c));
	cr_assert_eq(tqkv_seq_open(c, &s), 0);
	append_tokens(s, 5, 0, 200);
	cr_assert_eq(tqkv_seq_wait(s, 192), 0);
	cr_assert_eq(daemon_stat_eventually(&d, "blocks_live", 3), 3);
	cr_assert_eq(tqkv_client_stats(c, &text), 0);
	cr_assert_eq(stats_value(text, "sequences"), 1);
	cr_assert_eq(stats_value(text, "blocks_live"), 3);
	cr_assert_eq(stats_value(text, "tail_tokens"), 8);
	cr_assert_gt(stats_value(text, "bytes_fp16_equivalent"), stats_value(text, "bytes_compressed"));
	/* What the arena holds in memory covers what it has handed out. */
	cr_assert_geq(stats_value(text, "arena_bytes_resident"), stats_value(text, "arena_bytes_used"));
	cr_assert_geq(stats_value(strstr(text, "# Tenant"), "arena_bytes_resident"),
		      stats_value(strstr(text, "# Tenant"), "arena_bytes_used"));
	free(text);
	{
		/* fp16 read-back of the exact tail equals what was written. */
		uint16_t rows[HEADS * HEAD_DIM], got[8 * HEAD_DIM];

		cr_assert_eq(tqkv_seq_read_f16(s, 2, 1, 1, 192, 8, got), 0);
		for (unsigned t = 0; t < 8; t++) {
			token_rows(5, 192 + t, 2, 1, rows);
			cr_assert_arr_eq(got + t * HEAD_DIM, rows + HEAD_DIM, HEAD_DIM * 2);
		}
	}
	tqkv_seq_close(s);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* A client killed with SIGKILL in the middle of appends: the daemon keeps
 * serving, releases that client's memory and leaks no fd. */
Test(daemon, killed_client_is_cleaned_up, .timeout = 60)
{
	struct test_daemon d;
	int fds_before;
	pid_t kid;
	int status;

	daemon_start(&d, NULL);
	{
		/* The tenant's arena outlives its clients (it keeps the cache):
		 * create it before counting. */
		struct tqkv_client *c;

		cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
		cr_assert_eq(tqkv_client_register_model(c, &test_model), 0);
		tqkv_client_free(c);
	}
	sleep_ms(100);
	fds_before = count_fds(d.pid);
	kid = fork();
	if (kid == 0) {
		struct tqkv_client *c;
		struct tqkv_seq *s;

		if (tqkv_client_connect(d.socket, &c) || tqkv_client_register_model(c, &test_model) ||
		    tqkv_seq_open(c, &s))
			_exit(1);
		for (uint64_t t = 0;; t += 64)
			append_tokens(s, 9, t, 64);
	}
	/* Let it get going: blocks compressed and staging mapped. */
	for (int i = 0; i < 500 && daemon_stat(&d, "blocks_compressed") < 20; i++)
		sleep_ms(10);
	cr_assert_gt(daemon_stat(&d, "staging_bytes"), 0);
	kill(kid, SIGKILL);
	waitpid(kid, &status, 0);
	for (int i = 0; i < 500 && daemon_stat(&d, "clients") > 1; i++)
		sleep_ms(10);
	sleep_ms(50);
	cr_assert_eq(daemon_stat_eventually(&d, "staging_bytes", 0), 0);
	cr_assert_eq(daemon_stat_eventually(&d, "sequences", 0), 0);
	cr_assert_eq(daemon_stat_eventually(&d, "blocks_live", 0), 0);
	cr_assert_eq(daemon_stat_eventually(&d, "arena_bytes_used", 0), 0);
	cr_assert_eq(settled_fds(d.pid, fds_before), fds_before, "fds before %d, after %d", fds_before,
		     count_fds(d.pid));
	daemon_stop(&d);
}

/* A client can neither write nor resize the daemon's arena: writable
 * mappings, mprotect to writable and ftruncate all fail. */
Test(daemon, arena_is_sealed_against_clients, .timeout = 60)
{
	struct test_daemon d;
	int sock, fds[4], arena;
	unsigned n_fds = 0;
	struct tqkv_register_reply rep;
	void *p;

	daemon_start(&d, NULL);
	sock = raw_connect(&d);
	raw_hello(sock);
	raw_register(sock, &test_model, &rep, fds, &n_fds);
	cr_assert_eq(n_fds, 2);
	arena = fds[0];
	cr_assert_eq(fcntl(arena, F_GET_SEALS) & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL),
		     F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL);
	cr_assert_eq(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, arena, 0), MAP_FAILED);
	p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, arena, 0);
	cr_assert_neq(p, MAP_FAILED);
	cr_assert_neq(mprotect(p, 4096, PROT_READ | PROT_WRITE), 0);
	cr_assert_neq(ftruncate(arena, 0), 0);
	cr_assert_neq(ftruncate(arena, (off_t)rep.arena_bytes * 2), 0);
	cr_assert_neq(fcntl(arena, F_ADD_SEALS, F_SEAL_WRITE), 0);
	/* Staging is the client's to write, but not to resize. */
	cr_assert_neq(ftruncate(fds[1], 0), 0);
	munmap(p, 4096);
	close(fds[0]);
	close(fds[1]);
	close(sock);
	daemon_stop(&d);
}

/* Staging belongs to the client: NaN, Inf and random bit patterns in it
 * cost that client its data quality, never the daemon. */
Test(daemon, garbage_rows_are_survived, .timeout = 60)
{
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s;
	uint64_t state = 0x6a5b;
	float out[HEAD_DIM];

	daemon_start(&d, NULL);
	cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
	cr_assert_eq(tqkv_client_register_model(c, &test_model), 0);
	cr_assert_eq(tqkv_seq_open(c, &s), 0);
	for (uint64_t t = 0; t < 128; t++)
		for (uint32_t l = 0; l < N_LAYERS; l++) {
			uint16_t k[HEADS * HEAD_DIM], v[HEADS * HEAD_DIM];

			if (test_layers[l].kv_source >= 0)
				continue;
			for (unsigned i = 0; i < HEADS * HEAD_DIM; i++) {
				k[i] = (uint16_t)splitmix64_next(&state);
				v[i] = t % 2 ? 0x7c00 : 0x7e00;  /* Inf, NaN */
			}
			cr_assert_eq(tqkv_seq_write(s, t, l, k, v), 0);
		}
	cr_assert_eq(tqkv_seq_commit(s, 128), 0);
	cr_assert_eq(tqkv_seq_wait(s, 128), 0);
	cr_assert_eq(tqkv_seq_published(s), 128);
	for (uint32_t l = 0; l < N_LAYERS; l++)
		for (uint64_t t = 0; t < 128; t++) {
			cr_assert_eq(tqkv_seq_read(s, l, 1, 0, t, 1, out), 0);
			for (unsigned j = 0; j < HEAD_DIM; j++)
				cr_assert(isfinite(out[j]), "layer %u token %llu decodes to a non-finite key", l,
					  (unsigned long long)t);
		}
	cr_assert_eq(daemon_stat(&d, "compress_failures"), 0);
	tqkv_seq_close(s);
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* Layers that let the daemon choose get its configured preset; without
 * one they are refused with a message. */
Test(daemon, daemon_preset_applies_to_flagged_layers, .timeout = 60)
{
	const char *extra[] = { "--set", "preset=compact", NULL };
	struct tqkv_layer_desc layers[N_LAYERS];
	struct tqkv_model m = test_model;
	const struct tqkv_layer_desc *got;
	struct test_daemon d;
	struct tqkv_client *c;
	struct tqkv_seq *s;
	uint32_t n = 0;

	memcpy(layers, test_layers, sizeof(layers));
	layers[2].flags = TQKV_LAYER_DAEMON_POLICY;
	m.layers = layers;
	daemon_start(&d, extra);
	cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
	cr_assert_eq(tqkv_client_register_model(c, &m), 0, "%s", tqkv_client_error(c));
	got = tqkv_client_layers(c, &n);
	cr_assert_eq(n, N_LAYERS);
	cr_assert_eq(got[2].k_kind, TQKV_KIND_TQ3);
	cr_assert_eq(got[2].v_kind, TQKV_KIND_TQ3);
	cr_assert_eq(got[2].flags, 0);
	cr_assert_eq(memcmp(&got[0], &test_layers[0], sizeof(got[0])), 0, "an unflagged layer changed");
	cr_assert_eq(tqkv_seq_open(c, &s), 0);
	append_tokens(s, 3, 0, 130);
	cr_assert_eq(tqkv_seq_wait(s, 128), 0);
	cr_assert_eq(tqkv_seq_close(s), 0);
	tqkv_client_free(c);
	daemon_stop(&d);

	daemon_start(&d, NULL);
	cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
	cr_assert_eq(tqkv_client_register_model(c, &m), -EINVAL);
	cr_assert(strstr(tqkv_client_error(c), "sets no preset"), "%s", tqkv_client_error(c));
	tqkv_client_free(c);
	daemon_stop(&d);
}

/* Stops the daemon's threads but the loop (the compression worker) with
 * ptrace, so that jobs queue and none runs.  Returns how many it stopped:
 * none where ptrace is not allowed. */
static int stop_workers(pid_t pid, pid_t *tids, int max)
{
	char path[64];
	struct dirent *e;
	DIR *dir;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	dir = opendir(path);
	cr_assert_not_null(dir);
	while ((e = readdir(dir)) && n < max) {
		pid_t tid = (pid_t)atoi(e->d_name);
		int status;

		if (tid <= 0 || tid == pid || ptrace(PTRACE_SEIZE, tid, NULL, NULL) < 0)
			continue;
		tids[n++] = tid;
		cr_assert_eq(ptrace(PTRACE_INTERRUPT, tid, NULL, NULL), 0);
		cr_assert_eq(waitpid(tid, &status, __WALL), tid);
	}
	closedir(dir);
	return n;
}

static void resume_workers(const pid_t *tids, int n)
{
	for (int i = 0; i < n; i++)
		cr_assert_eq(ptrace(PTRACE_DETACH, tids[i], NULL, NULL), 0);
}

/* Writes the rows of tokens [0, n) of seed, committing nothing. */
static void write_rows(struct tqkv_seq *s, uint64_t seed, uint64_t n)
{
	for (uint64_t t = 0; t < n; t++) {
		uint16_t k[N_LAYERS][HEADS * HEAD_DIM], v[N_LAYERS][HEADS * HEAD_DIM];
		const uint16_t *kp[N_LAYERS], *vp[N_LAYERS];

		for (uint32_t l = 0; l < N_LAYERS; l++) {
			token_rows(seed, t, l, 0, k[l]);
			token_rows(seed, t, l, 1, v[l]);
			kp[l] = test_layers[l].kv_source >= 0 ? NULL : k[l];
			vp[l] = test_layers[l].kv_source >= 0 ? NULL : v[l];
		}
		cr_assert_eq(tqkv_seq_write_layers(s, t, kp, vp), 0);
	}
}

/* A sequence closed while its block waits for the worker, then a new one
 * writing other rows into the client's staging: the block the worker
 * makes of the closed one's slot is indexed under the closed one's token
 * ids only if it holds the closed one's rows.  With a free slot the new
 * sequence takes that one and the block is cached; with none it takes
 * the closed one's slot and the block is dropped.  The worker is stopped
 * (ptrace) meanwhile, else it would win the race almost always. */
Test(daemon, reopened_slot_does_not_poison_the_cache, .timeout = 60)
{
	for (uint32_t slots = 2; slots >= 1; slots--) {
		struct tqkv_model m = test_model;
		struct test_daemon d;
		struct tqkv_client *c;
		struct tqkv_seq *closed, *reopened, *s;
		uint64_t cached = 1;
		uint32_t ids[65];
		pid_t tids[16];
		int n_stopped;

		m.max_sequences = slots;
		for (uint32_t i = 0; i < 65; i++)
			ids[i] = 7000 + i;
		daemon_start(&d, NULL);
		cr_assert_eq(tqkv_client_connect(d.socket, &c), 0);
		cr_assert_eq(tqkv_client_register_model(c, &m), 0, "%s", tqkv_client_error(c));
		cr_assert_eq(tqkv_seq_open_prompt(c, ids, 65, 0, &closed, &cached), 0);
		cr_assert_eq(cached, 0);
		write_rows(closed, 11, 64);
		n_stopped = stop_workers(d.pid, tids, 16);
		if (!n_stopped)
			cr_log_warn("ptrace is not allowed: the worker races the rewrite");
		cr_assert_eq(tqkv_seq_commit(closed, 64), 0);
		cr_assert_eq(tqkv_seq_close(closed), 0);
		cr_assert_eq(tqkv_seq_open(c, &reopened), 0, "%s", tqkv_client_error(c));
		write_rows(reopened, 22, 64);
		cr_assert_eq(tqkv_seq_commit(reopened, 64), 0);
		resume_workers(tids, n_stopped);
		/* One worker, jobs in order: the closed sequence's is done. */
		cr_assert_eq(tqkv_seq_wait(reopened, 64), 0);
		cr_assert_eq(tqkv_seq_close(reopened), 0);

		cr_assert_eq(tqkv_seq_open_prompt(c, ids, 65, 0, &s, &cached), 0);
		if (cached)
			check_tokens(s, 11, 64);
		if (slots == 2)
			cr_assert_eq(cached, 64, "the closed sequence's block was not cached");
		else if (n_stopped)
			cr_assert_eq(cached, 0, "a block read from a reused slot was cached");
		cr_assert_eq(tqkv_seq_close(s), 0);
		tqkv_client_free(c);
		daemon_stop(&d);
	}
}
