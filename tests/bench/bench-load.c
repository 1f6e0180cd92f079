/* SPDX-License-Identifier: MIT */
/*
 * A load test: N client processes (default 32), each with three sequences,
 * open prompts (a quarter of them share a prefix, so some attach cached
 * blocks), append K/V token by token, attend every few tokens, and start
 * over with a new prompt, for S seconds (default 60), while the parent kills
 * a random client with SIGKILL every second and starts a new one in its
 * place.  Every request of a client that was not killed must succeed.  The
 * parent samples the daemon's RSS; it must stay within the memory budget
 * plus the clients' staging and a documented overhead.  Prints ops/s and
 * p50/p99 latency per operation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tqkv/attention.h>
#include <tqkv/client.h>

#include "bench-daemon.h"
#include "bench.h"

#define LAYERS 4
#define HEADS 2
#define DIM 64
#define SEQS 3
#define BLOCK 64
#define STAGING (4 * BLOCK)
#define BUDGET_MIB 256
#define OVERHEAD_MIB 64   /* daemon heap, index, stacks, libraries */
#define BUCKETS 64        /* latency histogram: 2^(i/4) microseconds */
#define MAX_CLIENTS 256

enum op { OP_COMMIT, OP_ATTEND, OP_OPEN, OP_MAX };
static const char *const op_names[OP_MAX] = { "commit", "attend", "open" };

struct client_slot {
	_Atomic uint64_t ops[OP_MAX];
	_Atomic uint64_t hist[OP_MAX][BUCKETS];
	_Atomic uint64_t failures;
	_Atomic uint64_t cached_tokens;
	char error[160];
};

struct shared {
	_Atomic int stop;
	struct client_slot slots[MAX_CLIENTS];
};

static unsigned bucket_of(double usec)
{
	int b = usec <= 1 ? 0 : (int)(4 * log2(usec));

	return b < 0 ? 0 : b >= BUCKETS ? BUCKETS - 1 : (unsigned)b;
}

static void record(struct client_slot *s, enum op op, double seconds)
{
	atomic_fetch_add_explicit(&s->ops[op], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->hist[op][bucket_of(seconds * 1e6)], 1, memory_order_relaxed);
}

static uint64_t rng(uint64_t *s)
{
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	return *s >> 17;
}

static void rows(uint32_t prompt, uint64_t token, uint32_t layer, uint16_t *k, uint16_t *v)
{
	uint64_t s = ((uint64_t)prompt << 40) ^ (token << 8) ^ layer;

	for (unsigned i = 0; i < HEADS * DIM; i++) {
		k[i] = tqkv_f32_to_f16((float)((int)(rng(&s) % 2001) - 1000) / 500.0f);
		v[i] = tqkv_f32_to_f16((float)((int)(rng(&s) % 2001) - 1000) / 500.0f);
	}
}

static int fail(struct client_slot *slot, struct tqkv_client *c, const char *what, int r)
{
	atomic_fetch_add(&slot->failures, 1);
	snprintf(slot->error, sizeof(slot->error), "%s: %s (%s)", what, strerror(-r), c ? tqkv_client_error(c) : "");
	return r;
}

/* One sequence's prompt: ids of group (shared prefix) then unique ones. */
static int open_prompt(struct tqkv_client *c, struct client_slot *slot, uint64_t *seed, struct tqkv_seq **ret,
		       uint32_t *ret_prompt, uint64_t *ret_len)
{
	uint32_t ids[1024], group = (uint32_t)(rng(seed) % 4);
	uint32_t prompt = rng(seed) % 4 == 0 ? group : (uint32_t)(rng(seed) | 0x100);
	uint64_t len = 256 + rng(seed) % 768, cached;
	double t0 = bench_now();
	int r;

	for (uint64_t i = 0; i < len; i++)
		ids[i] = (uint32_t)(prompt * 100003u + i);
	r = tqkv_seq_open_prompt(c, ids, len, 0, ret, &cached);
	if (r < 0)
		return fail(slot, c, "open", r);
	record(slot, OP_OPEN, bench_now() - t0);
	atomic_fetch_add(&slot->cached_tokens, cached);
	*ret_prompt = prompt;
	*ret_len = len;
	return 0;
}

static int client_main(const char *socket, struct shared *sh, unsigned id)
{
	static const struct tqkv_layer_desc layer = { .n_kv_heads = HEADS, .head_dim = DIM, .kv_source = -1,
						      .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ4 };
	struct tqkv_layer_desc layers[LAYERS];
	struct tqkv_model m = { .fingerprint = 0x10ad, .n_layers = LAYERS, .layers = layers,
				.staging_tokens = STAGING, .max_sequences = SEQS };
	struct client_slot *slot = &sh->slots[id];
	struct tqkv_client *c = NULL;
	struct tqkv_seq *seq[SEQS];
	uint32_t prompt[SEQS];
	uint64_t len[SEQS], seed = (uint64_t)getpid() * 7919 + id;
	uint16_t k[LAYERS][HEADS * DIM], v[LAYERS][HEADS * DIM];
	const uint16_t *kp[LAYERS], *vp[LAYERS];
	float q[HEADS * DIM], out[HEADS * DIM];
	int r;

	for (unsigned l = 0; l < LAYERS; l++) {
		layers[l] = layer;
		kp[l] = k[l];
		vp[l] = v[l];
	}
	for (unsigned i = 0; i < HEADS * DIM; i++)
		q[i] = (float)(i % 7) / 7.0f;
	r = tqkv_client_connect(socket, &c);
	if (r < 0)
		return fail(slot, NULL, "connect", r);
	r = tqkv_client_register_model(c, &m);
	if (r < 0)
		return fail(slot, c, "register", r);
	for (unsigned i = 0; i < SEQS; i++)
		if ((r = open_prompt(c, slot, &seed, &seq[i], &prompt[i], &len[i])) < 0)
			return r;
	while (!atomic_load(&sh->stop)) {
		unsigned i = (unsigned)(rng(&seed) % SEQS);
		uint64_t t = tqkv_seq_committed(seq[i]);
		double t0;

		if (t >= len[i]) {  /* the prompt is in: next one */
			if ((r = tqkv_seq_close(seq[i])) < 0)
				return fail(slot, c, "close", r);
			if ((r = open_prompt(c, slot, &seed, &seq[i], &prompt[i], &len[i])) < 0)
				return r;
			continue;
		}
		for (unsigned l = 0; l < LAYERS; l++)
			rows(prompt[i], t, l, k[l], v[l]);
		while ((r = tqkv_seq_write_layers(seq[i], t, kp, vp)) == -EAGAIN)
			if ((r = tqkv_seq_wait(seq[i], t + 1 - STAGING)) < 0)
				return fail(slot, c, "wait", r);
		if (r < 0)
			return fail(slot, c, "write", r);
		t0 = bench_now();
		if ((r = tqkv_seq_commit(seq[i], t + 1)) < 0)
			return fail(slot, c, "commit", r);
		record(slot, OP_COMMIT, bench_now() - t0);
		if (t % 8 == 7) {
			struct tqkv_layer_view view;
			struct tqkv_attn a = { .n_q_heads = HEADS, .scale = 0.125f, .position = t };

			t0 = bench_now();
			r = tqkv_seq_view(seq[i], (unsigned)(t % LAYERS), &view);
			if (r >= 0)
				r = tqkv_attend(&view, q, &a, out);
			if (r < 0)
				return fail(slot, c, "attend", r);
			record(slot, OP_ATTEND, bench_now() - t0);
		}
	}
	tqkv_client_free(c);
	return 0;
}

static pid_t spawn(const char *socket, struct shared *sh, unsigned id)
{
	pid_t pid = fork();

	if (pid == 0)
		_exit(client_main(socket, sh, id) < 0 ? 1 : 0);
	return pid;
}

static uint64_t rss_kib(pid_t pid)
{
	char path[64], line[256];
	uint64_t kib = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %lu kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* The latency below which a fraction p of the samples fall (bucket upper
 * bound, microseconds). */
static double percentile(const uint64_t *hist, double p)
{
	uint64_t total = 0, seen = 0;

	for (unsigned b = 0; b < BUCKETS; b++)
		total += hist[b];
	for (unsigned b = 0; b < BUCKETS; b++) {
		seen += hist[b];
		if (total && (double)seen >= p * (double)total)
			return exp2((b + 1) / 4.0);
	}
	return 0;
}

int bench_load(const struct bench_options *o)
{
	unsigned n = o->clients ? o->clients : o->quick ? 8 : 32;
	double seconds = o->seconds ? o->seconds : o->quick ? 6 : 60;
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pid_t pids[MAX_CLIENTS];
	struct bench_daemon d;
	char budget[16];
	uint64_t peak_kib = 0, kills = 0, failed = 0, ops = 0, hist[OP_MAX][BUCKETS] = { { 0 } }, cached = 0;
	uint64_t staging_mib = ((uint64_t)n * SEQS * STAGING * LAYERS * HEADS * DIM * 4 + (1u << 20) - 1) >> 20;
	double t0, next_kill;
	int r;

	if (sh == MAP_FAILED)
		return -errno;
	if (n > MAX_CLIENTS) {
		fprintf(stderr, "tqkv-bench load: at most %d clients\n", MAX_CLIENTS);
		return -EINVAL;
	}
	snprintf(budget, sizeof(budget), "%dM", BUDGET_MIB);
	r = bench_daemon_up(&d, "2", budget);
	if (r < 0)
		return r;
	for (unsigned i = 0; i < n; i++)
		pids[i] = spawn(d.socket, sh, i);
	t0 = bench_now();
	next_kill = t0 + 1;
	while (bench_now() - t0 < seconds) {
		uint64_t kib = rss_kib(d.pid);
		int status;
		pid_t p;

		peak_kib = kib > peak_kib ? kib : peak_kib;
		if (bench_now() >= next_kill) {
			unsigned victim = (unsigned)(rand() % (int)n);

			kill(pids[victim], SIGKILL);
			waitpid(pids[victim], &status, 0);
			kills++;
			pids[victim] = spawn(d.socket, sh, victim);
			next_kill += 1;
		}
		/* A client that exited by itself failed (a killed one was reaped). */
		while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
			if (p == d.pid) {
				fprintf(stderr, "tqkv-bench load: tqkvd died (status %#x)\n", status);
				d.pid = 0;
				failed++;
				seconds = 0;
			}
			for (unsigned i = 0; i < n; i++)
				if (pids[i] == p) {
					fprintf(stderr, "tqkv-bench load: client %u failed: %s\n", i, sh->slots[i].error);
					failed++;
					pids[i] = spawn(d.socket, sh, i);
				}
		}
		usleep(100000);
	}
	atomic_store(&sh->stop, 1);
	for (unsigned i = 0; i < n; i++) {
		int status;

		waitpid(pids[i], &status, 0);
		if (!WIFEXITED(status) || WEXITSTATUS(status)) {
			fprintf(stderr, "tqkv-bench load: client %u failed: %s\n", i, sh->slots[i].error);
			failed++;
		}
	}
	seconds = bench_now() - t0;
	bench_daemon_down(&d);
	for (unsigned i = 0; i < n; i++) {
		cached += sh->slots[i].cached_tokens;
		for (unsigned op = 0; op < OP_MAX; op++) {
			ops += sh->slots[i].ops[op];
			for (unsigned b = 0; b < BUCKETS; b++)
				hist[op][b] += sh->slots[i].hist[op][b];
		}
	}
	if (o->json) {
		printf("{\"bench\":\"load\",\"clients\":%u,\"seconds\":%.1f,\"ops_per_s\":%.0f,", n, seconds,
		       (double)ops / seconds);
		for (unsigned op = 0; op < OP_MAX; op++)
			printf("\"%s_p50_us\":%.0f,\"%s_p99_us\":%.0f,", op_names[op], percentile(hist[op], 0.5), op_names[op],
			       percentile(hist[op], 0.99));
		printf("\"kills\":%llu,\"failed\":%llu,\"cached_tokens\":%llu,\"peak_rss_mib\":%.1f,\"budget_mib\":%d,"
		       "\"staging_mib\":%llu,\"overhead_mib\":%d}\n",
		       (unsigned long long)kills, (unsigned long long)failed, (unsigned long long)cached,
		       (double)peak_kib / 1024, BUDGET_MIB, (unsigned long long)staging_mib, OVERHEAD_MIB);
	} else {
		printf("%u clients x %d sequences, %.0f s, a client killed and restarted every second\n", n, SEQS, seconds);
		printf("%-8s %12s %10s %10s\n", "op", "ops/s", "p50 us", "p99 us");
		for (unsigned op = 0; op < OP_MAX; op++) {
			uint64_t k = 0;

			for (unsigned b = 0; b < BUCKETS; b++)
				k += hist[op][b];
			printf("%-8s %12.0f %10.0f %10.0f\n", op_names[op], (double)k / seconds, percentile(hist[op], 0.5),
			       percentile(hist[op], 0.99));
		}
		printf("all ops %.0f/s; kills %llu; failed requests of live clients %llu; tokens from the cache %llu\n",
		       (double)ops / seconds, (unsigned long long)kills, (unsigned long long)failed,
		       (unsigned long long)cached);
		printf("daemon peak RSS %.1f MiB <= budget %d + staging %llu + overhead %d MiB\n", (double)peak_kib / 1024,
		       BUDGET_MIB, (unsigned long long)staging_mib, OVERHEAD_MIB);
	}
	munmap(sh, sizeof(*sh));
	if (failed)
		return -EIO;
	if ((double)peak_kib / 1024 > BUDGET_MIB + (double)staging_mib + OVERHEAD_MIB) {
		fprintf(stderr, "tqkv-bench load: the daemon's RSS exceeded its budget\n");
		return -EIO;
	}
	return 0;
}
