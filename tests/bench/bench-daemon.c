/* SPDX-License-Identifier: MIT */
/*
 * Daemon benchmarks, each starting its own tqkvd (next to this binary in the
 * build tree, or $TQKVD):
 *  - append: tokens/s that 1 and 2 client processes append for a 32-layer,
 *    8-KV-head, head_dim-128 model while the worker keeps up, and the largest
 *    FP16 tail seen (blocks): bounded by the staging capacity;
 *  - latency: PING round trips p50/p99 from one client, next to
 *    redis-benchmark -t ping -c 1 against a redis-server on a Unix socket
 *    started here (same machine, same run).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tqkv/client.h>

#include "bench-daemon.h"
#include "bench.h"

#define LAYERS 32
#define HEADS 8
#define DIM 128
#define STAGING 512  /* tokens: eight blocks of 64 */

static int daemon_path(char *buf, size_t size)
{
	char self[PATH_MAX];
	ssize_t n;

	if (getenv("TQKVD"))
		return snprintf(buf, size, "%s", getenv("TQKVD")) < (int)size ? 0 : -ENAMETOOLONG;
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n < 0)
		return -errno;
	self[n] = 0;
	/* build/tests/bench/tqkv-bench -> build/daemon/tqkvd */
	snprintf(buf, size, "%s/../../daemon/tqkvd", dirname(self));
	return access(buf, X_OK) == 0 ? 0 : -ENOENT;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { 0, (long)ms * 1000000L };

	nanosleep(&ts, NULL);
}

int bench_daemon_up(struct bench_daemon *d, const char *workers, const char *budget)
{
	char bin[PATH_MAX];
	int r = daemon_path(bin, sizeof(bin));

	if (r < 0) {
		fprintf(stderr, "tqkv-bench: cannot find tqkvd (set $TQKVD)\n");
		return r;
	}
	snprintf(d->dir, sizeof(d->dir), "/tmp/tqkv-bench-XXXXXX");
	if (!mkdtemp(d->dir))
		return -errno;
	snprintf(d->socket, sizeof(d->socket), "%s/tqkvd.sock", d->dir);
	d->pid = fork();
	if (d->pid == 0) {
		execl(bin, "tqkvd", "--socket", d->socket, "--config", "/dev/null", "--state-directory", "none", "--memory-budget", budget,
		      "--worker-threads", workers, "--log-level", "warning", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		struct tqkv_client *c;

		if (tqkv_client_connect(d->socket, &c) == 0) {
			tqkv_client_free(c);
			return 0;
		}
		sleep_ms(10);
	}
	return -ETIMEDOUT;
}

void bench_daemon_down(struct bench_daemon *d)
{
	if (d->pid > 0) {  /* 0: it died and was reaped already */
		kill(d->pid, SIGTERM);
		waitpid(d->pid, NULL, 0);
	}
	rmdir(d->dir);
}

void bench_rows(uint16_t *k, uint16_t *v, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		k[i] = tqkv_f32_to_f16((float)((i * 7919) % 1000) / 500.0f - 1.0f);
		v[i] = tqkv_f32_to_f16((float)((i * 104729) % 1000) / 500.0f - 1.0f);
	}
}

int bench_connect(const char *socket, const struct tqkv_model *m, struct tqkv_client **ret)
{
	int r = tqkv_client_connect(socket, ret);

	if (r >= 0 && (r = tqkv_client_register_model(*ret, m)) < 0)
		tqkv_client_free(*ret);
	return r;
}

struct append_result {
	double seconds;
	uint64_t tokens;
	uint64_t max_tail;
};

/* One engine: appends n tokens to one sequence, committing every 16, as a
 * decode loop would after prefill; results go back through shared memory. */
static int append_client(const char *socket, uint64_t n, struct append_result *res)
{
	static struct tqkv_layer_desc layers[LAYERS];
	struct tqkv_model m = { .fingerprint = 0xbe7c4, .n_layers = LAYERS, .layers = layers,
				.staging_tokens = STAGING, .max_sequences = 1 };
	static uint16_t k[HEADS * DIM], v[HEADS * DIM];
	struct tqkv_client *c;
	struct tqkv_seq *s;
	double t0;
	int r;

	for (int l = 0; l < LAYERS; l++)
		layers[l] = (struct tqkv_layer_desc){ .n_kv_heads = HEADS, .head_dim = DIM, .kv_source = -1,
						      .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ4 };
	bench_rows(k, v, HEADS * DIM);
	r = bench_connect(socket, &m, &c);
	if (r >= 0)
		r = tqkv_seq_open(c, &s);
	if (r < 0)
		return r;
	t0 = bench_now();
	for (uint64_t t = 0; t < n; t++) {
		for (uint32_t l = 0; l < LAYERS; l++)
			while ((r = tqkv_seq_write(s, t, l, k, v)) == -EAGAIN) {
				r = tqkv_seq_commit(s, t);
				if (r >= 0)
					r = tqkv_seq_wait(s, t + 1 - STAGING);
				if (r < 0)
					return r;
			}
		if ((t + 1) % 16 == 0) {
			uint64_t tail;

			r = tqkv_seq_commit(s, t + 1);
			if (r < 0)
				return r;
			tail = t + 1 - tqkv_seq_published(s);
			if (tail > res->max_tail)
				res->max_tail = tail;
		}
	}
	r = tqkv_seq_commit(s, n);
	if (r >= 0)
		r = tqkv_seq_wait(s, n);  /* the whole cycle: compressed too */
	res->seconds = bench_now() - t0;
	res->tokens = n;
	tqkv_seq_close(s);
	tqkv_client_free(c);
	return r;
}

int bench_append(const struct bench_options *o)
{
	uint64_t n = o->quick ? 1024 : 4096;
	struct append_result *res = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (res == MAP_FAILED)
		return -errno;
	if (!o->json)
		printf("%-8s %14s %14s %16s\n", "clients", "tokens/s", "MB/s of FP16", "max tail blocks");
	for (unsigned clients = 1; clients <= 2; clients++) {
		struct bench_daemon d;
		char workers[8];
		double seconds = 0;
		uint64_t tokens = 0, max_tail = 0;
		int r, failed = 0;

		snprintf(workers, sizeof(workers), "%u", clients);
		memset(res, 0, 4096);
		r = bench_daemon_up(&d, workers, "4G");
		if (r < 0)
			return r;
		for (unsigned i = 0; i < clients; i++)
			if (fork() == 0)
				_exit(append_client(d.socket, n, &res[i]) < 0);
		for (unsigned i = 0; i < clients; i++) {
			int status;

			wait(&status);
			failed |= !WIFEXITED(status) || WEXITSTATUS(status);
		}
		bench_daemon_down(&d);
		if (failed)
			return -EIO;
		for (unsigned i = 0; i < clients; i++) {
			seconds = res[i].seconds > seconds ? res[i].seconds : seconds;
			tokens += res[i].tokens;
			max_tail = res[i].max_tail > max_tail ? res[i].max_tail : max_tail;
		}
		if (o->json)
			printf("{\"bench\":\"append\",\"clients\":%u,\"tokens_per_s\":%.0f,\"max_tail_blocks\":%llu,"
			       "\"staging_blocks\":%u,\"layers\":%u,\"kv_heads\":%u,\"head_dim\":%u}\n",
			       clients, (double)tokens / seconds, (unsigned long long)((max_tail + 63) / 64), STAGING / 64,
			       LAYERS, HEADS, DIM);
		else
			printf("%-8u %14.0f %14.1f %16llu\n", clients, (double)tokens / seconds,
			       (double)tokens * LAYERS * HEADS * DIM * 4 / seconds / 1e6,
			       (unsigned long long)((max_tail + 63) / 64));
		fflush(stdout);
	}
	munmap(res, 4096);
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* redis-benchmark's CSV: "PING_INLINE","rps","avg","min","p50","p95","p99","max" (ms). */
static int redis_ping(unsigned n, double *p50_us, double *p99_us)
{
	char dir[] = "/tmp/tqkv-redis-XXXXXX", cmd[512], line[512];
	FILE *f;
	int r = -ENOENT;

	if (system("command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null") != 0)
		return -ENOENT;
	if (!mkdtemp(dir))
		return -errno;
	snprintf(cmd, sizeof(cmd),
		 "redis-server --port 0 --unixsocket %s/redis.sock --save '' --appendonly no --daemonize yes "
		 "--pidfile %s/redis.pid --logfile %s/redis.log",
		 dir, dir, dir);
	if (system(cmd) != 0)
		return -EIO;
	snprintf(line, sizeof(line), "%s/redis.sock", dir);
	for (int i = 0; i < 200 && access(line, F_OK) != 0; i++)
		sleep_ms(10);
	snprintf(cmd, sizeof(cmd), "redis-benchmark -s %s/redis.sock -t ping -c 1 -n %u --csv", dir, n);
	f = popen(cmd, "r");
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, "\"PING_MBULK\"", 12) == 0) {
			double v[7];

			if (sscanf(line, "\"PING_MBULK\",\"%lf\",\"%lf\",\"%lf\",\"%lf\",\"%lf\",\"%lf\",\"%lf\"", &v[0], &v[1],
				   &v[2], &v[3], &v[4], &v[5], &v[6]) == 7) {
				*p50_us = v[3] * 1000;
				*p99_us = v[5] * 1000;
				r = 0;
			}
		}
	if (f)
		pclose(f);
	snprintf(cmd, sizeof(cmd), "kill $(cat %s/redis.pid) 2>/dev/null; sleep 0.2; rm -rf %s", dir, dir);
	if (system(cmd) != 0)
		r = r < 0 ? r : -EIO;
	return r;
}

int bench_latency(const struct bench_options *o)
{
	unsigned n = o->quick ? 20000 : 100000;
	double *lat = malloc(sizeof(double) * n), redis_p50 = -1, redis_p99 = -1;
	struct bench_daemon d;
	struct tqkv_client *c;
	int r;

	if (!lat)
		return -ENOMEM;
	r = bench_daemon_up(&d, "1", "1G");
	if (r < 0)
		goto out;
	r = tqkv_client_connect(d.socket, &c);
	if (r < 0) {
		bench_daemon_down(&d);
		goto out;
	}
	for (unsigned i = 0; i < 1000; i++)  /* warm up */
		tqkv_client_ping(c);
	for (unsigned i = 0; i < n && r >= 0; i++) {
		double t0 = bench_now();

		r = tqkv_client_ping(c);
		lat[i] = (bench_now() - t0) * 1e6;
	}
	tqkv_client_free(c);
	bench_daemon_down(&d);
	if (r < 0)
		goto out;
	qsort(lat, n, sizeof(double), cmp_double);
	if (redis_ping(n, &redis_p50, &redis_p99) < 0)
		fprintf(stderr, "tqkv-bench: redis-server/redis-benchmark not available; no comparison\n");
	if (o->json)
		printf("{\"bench\":\"latency\",\"requests\":%u,\"p50_us\":%.1f,\"p99_us\":%.1f,\"redis_p50_us\":%.1f,"
		       "\"redis_p99_us\":%.1f}\n",
		       n, lat[n / 2], lat[n * 99 / 100], redis_p50, redis_p99);
	else
		printf("%-22s %10s %10s\n%-22s %10.1f %10.1f\n%-22s %10.1f %10.1f\n", "PING, 1 client", "p50 us",
		       "p99 us", "tqkvd (libtqkv)", lat[n / 2], lat[n * 99 / 100], "redis-server (bench)", redis_p50,
		       redis_p99);
out:
	free(lat);
	return r;
}
