/* SPDX-License-Identifier: MIT */
/*
 * The worker threads of tqkv_attend(): created on first need and kept, so
 * a call costs a wake-up (microseconds) rather than thread creation and
 * teardown (tens of microseconds, as long as a 1K-token attention).
 *
 * Calls from several threads share the pool.  A caller runs its first job
 * itself and then helps with queued jobs until its own are done, so every
 * call finishes even when no worker could be created.  After fork() the
 * child starts with an empty pool.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>

#include "attention-private.h"

#define POOL_WORKERS_MAX 63

struct pool_task {
	struct pool_task *next;
	struct attn_batch *batch;
	void *arg;
};

struct attn_batch {
	void (*fn)(void *arg);
	unsigned left;                 /* jobs not finished, under pool.lock */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work, done;
	struct pool_task *head, *tail;
	unsigned workers;
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0 };

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

/* The child of a fork has none of the parent's workers. */
static void pool_after_fork(void)
{
	pthread_mutex_init(&pool.lock, NULL);
	pthread_cond_init(&pool.work, NULL);
	pthread_cond_init(&pool.done, NULL);
	pool.head = pool.tail = NULL;
	pool.workers = 0;
}

static void pool_init(void)
{
	pthread_atfork(NULL, NULL, pool_after_fork);
}

/* Under pool.lock. */
static struct pool_task *pool_pop(void)
{
	struct pool_task *t = pool.head;

	if (t) {
		pool.head = t->next;
		if (!pool.head)
			pool.tail = NULL;
	}
	return t;
}

/* Runs a task outside the lock; returns with the lock held again. */
static void pool_run(struct pool_task *t)
{
	struct attn_batch *b = t->batch;

	pthread_mutex_unlock(&pool.lock);
	b->fn(t->arg);
	pthread_mutex_lock(&pool.lock);
	if (--b->left == 0)
		pthread_cond_broadcast(&pool.done);
}

static void *pool_worker(void *unused)
{
	pthread_mutex_lock(&pool.lock);
	for (;;) {
		struct pool_task *t = pool_pop();

		if (t)
			pool_run(t);
		else
			pthread_cond_wait(&pool.work, &pool.lock);
	}
	return NULL;
}

/* Under pool.lock: grows the pool to n workers if it can. */
static void pool_grow(unsigned n)
{
	pthread_attr_t attr;

	if (n > POOL_WORKERS_MAX)
		n = POOL_WORKERS_MAX;
	if (pool.workers >= n || pthread_attr_init(&attr) != 0)
		return;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	while (pool.workers < n) {
		pthread_t tid;

		if (pthread_create(&tid, &attr, pool_worker, NULL) != 0)
			break;
		pool.workers++;
	}
	pthread_attr_destroy(&attr);
}

void attn_pool_run(void (*fn)(void *arg), void *args, size_t stride, unsigned n)
{
	struct pool_task tasks[POOL_WORKERS_MAX + 1];
	struct attn_batch batch = { fn, 0 };

	if (n > POOL_WORKERS_MAX + 1)
		n = POOL_WORKERS_MAX + 1;
	if (n > 1) {
		pthread_once(&pool_once, pool_init);
		pthread_mutex_lock(&pool.lock);
		pool_grow(n - 1);
		for (unsigned i = 1; i < n; i++) {
			tasks[i] = (struct pool_task){ NULL, &batch, (char *)args + i * stride };
			if (pool.tail)
				pool.tail->next = &tasks[i];
			else
				pool.head = &tasks[i];
			pool.tail = &tasks[i];
		}
		batch.left = n - 1;
		pthread_cond_broadcast(&pool.work);
		pthread_mutex_unlock(&pool.lock);
	}
	fn(args);
	if (n <= 1)
		return;
	pthread_mutex_lock(&pool.lock);
	while (batch.left > 0) {
		struct pool_task *t = pool_pop();

		if (t)
			pool_run(t);
		else
			pthread_cond_wait(&pool.done, &pool.lock);
	}
	pthread_mutex_unlock(&pool.lock);
}
