/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "worker.h"

struct worker_pool {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct job *queue_head, *queue_tail;  /* submitted, FIFO */
	struct job *done;                     /* finished, any order */
	unsigned depth;
	bool stopping;
	unsigned n_threads;
	pthread_t *threads;
	uv_async_t async;
	job_done_fn done_fn;
	void *userdata;
};

int compress_block(const struct model *m, const uint8_t *staging_slot, uint32_t staging_tokens, uint64_t block,
		   uint32_t seq_id, float *key_means, uint8_t *record, uint8_t *scratch)
{
	uint32_t B = m->block_tokens;
	uint64_t first = block * B, ring = first % staging_tokens;
	const uint8_t *rows = staging_slot + ring * m->token_bytes;  /* a block never wraps */
	struct tqkv_block_header *h = (struct tqkv_block_header *)record;
	uint64_t *table = (uint64_t *)(record + MODEL_PAGE_TABLE_OFFSET);

	/*
	 * Copy the block out of the client's memory (read exactly once) and
	 * transpose it so each (layer, head, K/V) stream is contiguous: token
	 * rows are a power-of-two apart in staging, and encoding across them
	 * would thrash the caches' sets.
	 */
	for (uint32_t t = 0; t < B; t++) {
		const uint8_t *row = rows + (uint64_t)t * m->token_bytes;
		uint8_t *dst = scratch;

		for (uint32_t l = 0; l < m->reg.n_layers; l++) {
			const struct model_layer *ml = &m->layers[l];
			uint32_t bytes = ml->desc.head_dim * 2u;

			if (ml->desc.kv_source >= 0)
				continue;
			for (uint32_t k = 0; k < 2u * ml->desc.n_kv_heads; k++) {
				memcpy(dst + (uint64_t)t * bytes, row + ml->row_offset + k * bytes, bytes);
				dst += (uint64_t)B * bytes;
			}
		}
	}

	for (uint32_t l = 0; l < m->reg.n_layers; l++) {
		const struct model_layer *ml = &m->layers[l];
		uint32_t bytes = ml->desc.head_dim * 2u;
		uint64_t off = ml->record_offset;

		if (ml->desc.kv_source >= 0)
			continue;
		for (uint32_t hd = 0; hd < ml->desc.n_kv_heads; hd++)
			for (unsigned s = 0; s < 2; s++) {
				/* Stream order in scratch: K of every head, then V. */
				const uint16_t *src = (const uint16_t *)(scratch + (uint64_t)B * bytes *
									  (s * ml->desc.n_kv_heads + hd));
				const float *mean = s ? NULL : model_key_mean(m, key_means, l, hd);
				int r;

				if (mean && block == 0)
					model_rows_mean(src, ml->desc.head_dim, B, ml->desc.head_dim, (float *)mean);
				r = tqkv_page_encode_f16(ml->codecs[hd * 2 + s], src, ml->desc.head_dim, B, mean,
							 record + off, ml->page_bytes[s]);

				if (r < 0)
					return r;
				table[model_page_index(m, l, hd, s)] = off;
				off += ml->page_bytes[s];
			}
		scratch += (uint64_t)B * bytes * 2u * ml->desc.n_kv_heads;
	}
	h->magic = TQKV_BLOCK_MAGIC;
	h->n_pages = m->n_pages;
	h->first_token = first;
	h->record_bytes = m->block_bytes;
	h->seq_id = seq_id;
	return 0;
}

static uint64_t nsec_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void run_job(struct job *j, uint8_t **scratch, size_t *scratch_size)
{
	size_t need = (size_t)j->model->block_tokens * j->model->token_bytes;
	uint64_t t0 = nsec_now();

	if (*scratch_size < need) {
		free(*scratch);
		*scratch = aligned_alloc(64, (need + 63) & ~(size_t)63);
		*scratch_size = *scratch ? need : 0;
		if (!*scratch) {
			j->result = -ENOMEM;
			return;
		}
	}
	j->result = compress_block(j->model, j->staging_slot, j->staging_tokens, j->block, j->seq_id, j->key_means,
				   j->record, *scratch);
	j->encode_nsec = nsec_now() - t0;
}

static void *worker_main(void *arg)
{
	struct worker_pool *p = arg;
	uint8_t *scratch = NULL;
	size_t scratch_size = 0;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		struct job *j;

		while (!p->queue_head && !p->stopping)
			pthread_cond_wait(&p->wake, &p->lock);
		if (!p->queue_head)
			break;
		j = p->queue_head;
		p->queue_head = j->next;
		if (!p->queue_head)
			p->queue_tail = NULL;
		pthread_mutex_unlock(&p->lock);

		run_job(j, &scratch, &scratch_size);

		pthread_mutex_lock(&p->lock);
		if (j->result == 0) {
			/* Publishes the record and the table entry to clients,
			 * under the lock: whatever a client saw published,
			 * worker_collect() then delivers. */
			j->table[j->block] = j->record_offset;
			atomic_store_explicit((_Atomic uint64_t *)&j->desc->n_blocks, j->block + 1, memory_order_release);
		}
		j->next = p->done;
		p->done = j;
		p->depth--;
		uv_async_send(&p->async);
	}
	pthread_mutex_unlock(&p->lock);
	free(scratch);
	return NULL;
}

static void deliver_done(struct worker_pool *p)
{
	struct job *j;

	pthread_mutex_lock(&p->lock);
	j = p->done;
	p->done = NULL;
	pthread_mutex_unlock(&p->lock);
	while (j) {
		struct job *next = j->next;

		p->done_fn(j, p->userdata);
		j = next;
	}
}

void worker_collect(struct worker_pool *p)
{
	deliver_done(p);
}

static void on_async_closed(uv_handle_t *h)
{
	free(h->data);
}

static void on_async(uv_async_t *a)
{
	deliver_done(a->data);
}

int worker_pool_new(uv_loop_t *loop, unsigned n_threads, job_done_fn done, void *userdata,
		    struct worker_pool **ret)
{
	struct worker_pool *p = calloc(1, sizeof(*p));
	int r;

	if (!p)
		return -ENOMEM;
	p->threads = calloc(n_threads, sizeof(*p->threads));
	if (!p->threads) {
		free(p);
		return -ENOMEM;
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->wake, NULL);
	p->done_fn = done;
	p->userdata = userdata;
	r = uv_async_init(loop, &p->async, on_async);
	if (r < 0) {
		free(p->threads);
		free(p);
		return r;
	}
	p->async.data = p;
	for (unsigned i = 0; i < n_threads; i++) {
		r = pthread_create(&p->threads[i], NULL, worker_main, p);
		if (r) {
			worker_pool_free(p);
			return -r;
		}
		p->n_threads++;
	}
	*ret = p;
	return 0;
}

void worker_pool_free(struct worker_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->lock);
	for (unsigned i = 0; i < p->n_threads; i++)
		pthread_join(p->threads[i], NULL);
	deliver_done(p);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->wake);
	free(p->threads);
	/* The loop frees the pool once the async handle is closed. */
	uv_close((uv_handle_t *)&p->async, on_async_closed);
}

void worker_submit(struct worker_pool *p, struct job *job)
{
	pthread_mutex_lock(&p->lock);
	job->next = NULL;
	if (p->queue_tail)
		p->queue_tail->next = job;
	else
		p->queue_head = job;
	p->queue_tail = job;
	p->depth++;
	pthread_cond_signal(&p->wake);
	pthread_mutex_unlock(&p->lock);
}

unsigned worker_queue_depth(struct worker_pool *p)
{
	unsigned d;

	pthread_mutex_lock(&p->lock);
	d = p->depth;
	pthread_mutex_unlock(&p->lock);
	return d;
}
