/* SPDX-License-Identifier: MIT */
/*
 * The tqkv KV backend of the reference engine.  store() converts a token's
 * rows of one layer to FP16 and writes them into the sequence's staging
 * ring; after the last layer the token is committed, and the daemon's
 * worker compresses each full block.  attend() takes a view that includes
 * the token being computed (written, not yet committed) and runs
 * tqkv_attend() over its pages and FP16 tail.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tqkv/attention.h>
#include <tqkv/client.h>

#include "llama-tqkv.h"

struct llama_kv_tqkv {
	struct llama_hparams hp;
	struct tqkv_client *client;
	struct tqkv_seq *seq;
	struct tqkv_layer_desc *layers;
	uint32_t staging_tokens;
	unsigned threads;
	uint32_t attn_flags;
	uint16_t *k16, *v16;
};

uint64_t llama_model_fingerprint(const struct llama_model *m)
{
	const uint8_t *p = (const uint8_t *)&m->hp, *w = m->tok_embd.data;
	uint64_t h = 1469598103934665603ull;  /* FNV-1a */
	size_t n = (size_t)m->tok_embd.rows * m->tok_embd.cols * (m->tok_embd.type == GGUF_TENSOR_F32 ? 4 : 2);

	for (size_t i = 0; i < sizeof(m->hp); i++)
		h = (h ^ p[i]) * 1099511628211ull;
	for (size_t i = 0; i < n && i < 65536; i++)
		h = (h ^ w[i]) * 1099511628211ull;
	return h;
}

int llama_kv_tqkv_new(const struct llama_hparams *hp, uint64_t fingerprint, const char *socket,
		      const struct llama_kv_policy *policy, struct llama_kv_tqkv **ret, char *err, size_t err_size)
{
	struct llama_kv_tqkv *kv = calloc(1, sizeof(*kv));
	struct tqkv_model model;
	size_t row = (size_t)hp->n_kv_heads * hp->head_dim;
	int r;

	if (!kv)
		return -ENOMEM;
	kv->hp = *hp;
	kv->threads = policy->threads;
	kv->attn_flags = policy->attn_flags;
	kv->layers = calloc(hp->n_layers, sizeof(*kv->layers));
	kv->k16 = malloc(sizeof(uint16_t) * row);
	kv->v16 = malloc(sizeof(uint16_t) * row);
	if (!kv->layers || !kv->k16 || !kv->v16) {
		llama_kv_tqkv_free(kv);
		return -ENOMEM;
	}
	for (uint32_t l = 0; l < hp->n_layers; l++) {
		bool edge = l < policy->boundary || l + policy->boundary >= hp->n_layers;

		kv->layers[l] = (struct tqkv_layer_desc){
			.n_kv_heads = (uint16_t)hp->n_kv_heads,
			.head_dim = (uint16_t)hp->head_dim,
			.kv_source = -1,
			.k_kind = (uint8_t)(edge ? TQKV_KIND_FP16 : policy->k_kind),
			.v_kind = (uint8_t)(edge ? TQKV_KIND_FP16 : policy->v_kind),
			.flags = (uint8_t)(policy->center_keys && !edge ? TQKV_LAYER_CENTER_KEYS : 0),
		};
		if (policy->daemon)
			kv->layers[l].flags = TQKV_LAYER_DAEMON_POLICY;
	}
	r = tqkv_client_connect(socket, &kv->client);
	if (r < 0) {
		snprintf(err, err_size, "cannot connect to tqkvd%s%s: %s", socket ? " at " : "", socket ? socket : "",
			 strerror(-r));
		goto fail;
	}
	kv->staging_tokens = 4 * tqkv_client_block_tokens(kv->client);
	model = (struct tqkv_model){ .fingerprint = fingerprint, .n_layers = hp->n_layers, .layers = kv->layers,
				     .staging_tokens = kv->staging_tokens, .max_sequences = 1 };
	r = tqkv_client_register_model(kv->client, &model);
	if (r >= 0) {
		/* What the daemon chose, for the compression figure. */
		memcpy(kv->layers, tqkv_client_layers(kv->client, NULL), hp->n_layers * sizeof(*kv->layers));
		r = tqkv_seq_open(kv->client, &kv->seq);
	}
	if (r < 0) {
		snprintf(err, err_size, "tqkvd: %s", tqkv_client_error(kv->client));
		goto fail;
	}
	*ret = kv;
	return 0;
fail:
	llama_kv_tqkv_free(kv);
	return r;
}

void llama_kv_tqkv_free(struct llama_kv_tqkv *kv)
{
	if (!kv)
		return;
	if (kv->seq)
		tqkv_seq_close(kv->seq);
	tqkv_client_free(kv->client);
	free(kv->layers);
	free(kv->k16);
	free(kv->v16);
	free(kv);
}

int llama_kv_tqkv_reset(struct llama_kv_tqkv *kv)
{
	int r = tqkv_seq_close(kv->seq);

	kv->seq = NULL;
	if (r >= 0)
		r = tqkv_seq_open(kv->client, &kv->seq);
	return r;
}

int llama_kv_tqkv_open_prompt(struct llama_kv_tqkv *kv, const uint32_t *ids, size_t n, uint64_t *ret_cached)
{
	int r = tqkv_seq_close(kv->seq);

	kv->seq = NULL;
	if (r >= 0)
		r = tqkv_seq_open_prompt(kv->client, ids, n, 0, &kv->seq, ret_cached);
	return r;
}

int llama_kv_tqkv_add_tokens(struct llama_kv_tqkv *kv, uint64_t first, const uint32_t *ids, size_t n)
{
	return tqkv_seq_set_tokens(kv->seq, first, ids, n);
}

const char *llama_kv_tqkv_error(const struct llama_kv_tqkv *kv)
{
	return tqkv_client_error(kv->client);
}

void llama_kv_tqkv_effective(const struct llama_kv_tqkv *kv, struct llama_kv_policy *ret)
{
	const struct tqkv_layer_desc *mid = &kv->layers[kv->hp.n_layers / 2];

	ret->k_kind = (enum tqkv_kind)mid->k_kind;
	ret->v_kind = (enum tqkv_kind)mid->v_kind;
	ret->center_keys = mid->flags & TQKV_LAYER_CENTER_KEYS;
	ret->boundary = 0;
	while (ret->boundary < kv->hp.n_layers / 2 && kv->layers[ret->boundary].k_kind == TQKV_KIND_FP16 &&
	       kv->layers[ret->boundary].v_kind == TQKV_KIND_FP16 && (mid->k_kind != TQKV_KIND_FP16 || mid->v_kind != TQKV_KIND_FP16))
		ret->boundary++;
}

double llama_kv_tqkv_compression(const struct llama_kv_tqkv *kv)
{
	const uint32_t block = 1024;
	double fp16 = 0, pages = 0;

	for (uint32_t l = 0; l < kv->hp.n_layers; l++)
		for (unsigned s = 0; s < 2; s++) {
			struct tqkv_codec_params p = { .kind = s ? kv->layers[l].v_kind : kv->layers[l].k_kind,
						       .head_dim = kv->hp.head_dim };
			struct tqkv_codec *c;

			if (tqkv_codec_new(&p, &c) < 0)
				return 0;
			fp16 += 2.0 * kv->hp.head_dim * kv->hp.n_kv_heads;
			pages += (double)tqkv_page_size(c, block) / block * kv->hp.n_kv_heads;
			tqkv_codec_free(c);
		}
	return pages > 0 ? fp16 / pages : 0;
}

static int tqkv_store(void *p, uint32_t layer, uint32_t pos, const float *k, const float *v)
{
	struct llama_kv_tqkv *kv = p;
	size_t row = (size_t)kv->hp.n_kv_heads * kv->hp.head_dim;
	int r;

	for (size_t i = 0; i < row; i++) {
		kv->k16[i] = tqkv_f32_to_f16(k[i]);
		kv->v16[i] = tqkv_f32_to_f16(v[i]);
	}
	/* A full ring: let the worker publish what is committed. */
	while ((r = tqkv_seq_write(kv->seq, pos, layer, kv->k16, kv->v16)) == -EAGAIN) {
		uint64_t floor = pos + 1 > kv->staging_tokens ? pos + 1 - kv->staging_tokens : 0;

		if ((r = tqkv_seq_wait(kv->seq, floor)) < 0)
			return r;
	}
	if (r < 0 || layer + 1 < kv->hp.n_layers)
		return r;
	return tqkv_seq_commit(kv->seq, (uint64_t)pos + 1);
}

/* The current block is read exactly from the FP16 tail and every block
 * before it from its pages, whatever the worker's progress: results do
 * not depend on timing, and a sequence that attached cached blocks sees
 * exactly what the one that published them saw. */
static int tqkv_attend_layer(void *p, uint32_t layer, uint32_t pos, const float *q, float *out)
{
	struct llama_kv_tqkv *kv = p;
	struct tqkv_layer_view view;
	struct tqkv_attn a = { .n_q_heads = kv->hp.n_heads, .scale = 1.0f / sqrtf((float)kv->hp.head_dim),
			       .position = pos, .threads = kv->threads, .flags = kv->attn_flags };
	uint64_t blocks = pos / tqkv_client_block_tokens(kv->client);
	int r;

	while ((r = tqkv_seq_view_blocks(kv->seq, layer, (uint64_t)pos + 1, blocks, &view)) == -EAGAIN)
		if ((r = tqkv_seq_wait(kv->seq, blocks * tqkv_client_block_tokens(kv->client))) < 0)
			return r;
	return r < 0 ? r : tqkv_attend(&view, q, &a, out);
}

const struct llama_kv_ops llama_kv_tqkv_ops = { tqkv_store, tqkv_attend_layer };
