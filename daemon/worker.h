/* SPDX-License-Identifier: MIT */
/*
 * The compression workers (the "delegated cache"): threads that turn a full
 * FP16 tail block into a block record of pages and publish it.  The loop
 * submits jobs; finished jobs come back to the loop through uv_async_send.
 */
#ifndef TQKVD_WORKER_H
#define TQKVD_WORKER_H

#include <stdint.h>
#include <uv.h>

#include <tqkv/protocol.h>

#include "model.h"

struct job {
	struct job *next;
	void *owner;                  /* the loop's sequence; untouched by workers */
	const struct model *model;
	const uint8_t *staging_slot;  /* this sequence's ring in the client's staging */
	uint32_t staging_tokens;
	uint64_t block;               /* block index in the sequence */
	uint8_t *record;              /* where the block record goes (arena) */
	uint64_t record_offset;
	struct tqkv_seq_desc *desc;   /* published with release */
	uint64_t *table;
	uint32_t seq_id;
	float *key_means;             /* the sequence's key means (arena), or NULL */
	int result;                   /* 0 or negative errno */
	uint64_t encode_nsec;
};

struct worker_pool;

typedef void (*job_done_fn)(struct job *job, void *userdata);

int worker_pool_new(uv_loop_t *loop, unsigned n_threads, job_done_fn done, void *userdata,
		    struct worker_pool **ret);
/* Stops the threads after the jobs in flight; finished jobs are delivered
 * before it returns. */
void worker_pool_free(struct worker_pool *p);
void worker_submit(struct worker_pool *p, struct job *job);
unsigned worker_queue_depth(struct worker_pool *p);
/* Delivers the finished jobs now (the loop thread), rather than when the
 * async wakeup comes: every block a client can see published is then
 * known to the loop. */
void worker_collect(struct worker_pool *p);

/* Builds the block record: copies the block's rows out of staging (they are
 * the client's, so they are read exactly once), encodes every page, and
 * writes the header and page table.  Block 0 also computes the key means of
 * centered layers into key_means; later blocks use them.  scratch holds
 * block_tokens token rows. */
int compress_block(const struct model *m, const uint8_t *staging_slot, uint32_t staging_tokens, uint64_t block,
		   uint32_t seq_id, float *key_means, uint8_t *record, uint8_t *scratch);

#endif
