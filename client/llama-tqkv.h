/* SPDX-License-Identifier: MIT */
/*
 * The engine's KV cache in tqkv: each token's K and V rows go into the
 * sequence's FP16 tail through libtqkv, the daemon compresses full blocks,
 * and attention runs over the pages and the tail with tqkv_attend().
 */
#ifndef TQKV_CLIENT_LLAMA_TQKV_H
#define TQKV_CLIENT_LLAMA_TQKV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tqkv/codec.h>

#include "llama-model.h"

/* Which codec each layer gets. */
struct llama_kv_policy {
	enum tqkv_kind k_kind, v_kind;
	bool center_keys;          /* subtract each head's key mean (TQKV_LAYER_CENTER_KEYS) */
	uint32_t boundary;         /* the first and last this many layers keep FP16 K and V */
	unsigned threads;          /* attention threads per call */
	uint32_t attn_flags;       /* struct tqkv_attn.flags (the approximate int8 options) */
	bool daemon;               /* the daemon's preset instead of the above (TQKV_LAYER_DAEMON_POLICY) */
};

struct llama_kv_tqkv;

/* Connects to tqkvd at socket (NULL: the default), registers the model
 * under fingerprint and opens a sequence; errors with a message in err. */
int llama_kv_tqkv_new(const struct llama_hparams *hp, uint64_t fingerprint, const char *socket,
		      const struct llama_kv_policy *policy, struct llama_kv_tqkv **ret, char *err, size_t err_size);
void llama_kv_tqkv_free(struct llama_kv_tqkv *kv);
/* Closes the sequence and opens an empty one (a new context window). */
int llama_kv_tqkv_reset(struct llama_kv_tqkv *kv);
/* Closes the sequence and opens one for the prompt ids: the daemon
 * attaches the cached blocks that start it, *ret_cached tokens (a whole
 * number of blocks; forward from there). */
int llama_kv_tqkv_open_prompt(struct llama_kv_tqkv *kv, const uint32_t *ids, size_t n, uint64_t *ret_cached);
/* Token ids of generated tokens [first, first + n), so their blocks can
 * be shared too. */
int llama_kv_tqkv_add_tokens(struct llama_kv_tqkv *kv, uint64_t first, const uint32_t *ids, size_t n);
/* The daemon's message for the last failed request. */
const char *llama_kv_tqkv_error(const struct llama_kv_tqkv *kv);
/* The policy as registered (the daemon's, with policy->daemon): the kinds
 * and centering of the middle layer, and the FP16 layers before it. */
void llama_kv_tqkv_effective(const struct llama_kv_tqkv *kv, struct llama_kv_policy *ret);
/* FP16 K/V bytes per token over the bytes the pages take (norms and
 * headers included), over all layers. */
double llama_kv_tqkv_compression(const struct llama_kv_tqkv *kv);

extern const struct llama_kv_ops llama_kv_tqkv_ops;

/* A fingerprint of the model: its hyper-parameters and first weights. */
uint64_t llama_model_fingerprint(const struct llama_model *m);

#endif
