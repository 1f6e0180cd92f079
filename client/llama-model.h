/* SPDX-License-Identifier: MIT */
/*
 * A llama-architecture model read from GGUF (weights stay in the mapping)
 * and its forward pass, one token at a time, with the KV cache behind an
 * interface: a local FP32 cache (the baseline) or tqkv (llama-tqkv.c).
 */
#ifndef TQKV_CLIENT_LLAMA_MODEL_H
#define TQKV_CLIENT_LLAMA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

struct llama_hparams {
	uint32_t n_layers, dim, n_heads, n_kv_heads, head_dim, ffn, vocab, context;
	float rope_theta, rms_eps;
};

/* A matrix of rows x cols (GGUF dims [cols, rows]), F32 or F16. */
struct llama_matrix {
	const void *data;
	enum gguf_tensor_type type;
	uint32_t rows, cols;
};

struct llama_layer {
	float *attn_norm, *ffn_norm;   /* dim floats (converted at load) */
	struct llama_matrix wq, wk, wv, wo, w_gate, w_up, w_down;
};

struct llama_model {
	struct llama_hparams hp;
	struct llama_matrix tok_embd, output;   /* output is tok_embd when tied */
	float *output_norm;
	struct llama_layer *layers;
};

/* Reads hyper-parameters and weights, checking every shape; -EBADMSG or
 * -ENOTSUP with a message in err, or -ENOMEM.  f must outlive the model. */
int llama_model_load(const struct gguf_file *f, struct llama_model **ret, char *err, size_t err_size);
void llama_model_free(struct llama_model *m);

/*
 * The KV cache seen by the forward pass.  For each layer and token in
 * order, store() receives the token's K and V rows (n_kv_heads * head_dim
 * floats each, K after RoPE); attend() then computes attention for the
 * layer's query heads over tokens 0..pos into out (n_heads * head_dim).
 */
struct llama_kv_ops {
	int (*store)(void *kv, uint32_t layer, uint32_t pos, const float *k, const float *v);
	int (*attend)(void *kv, uint32_t layer, uint32_t pos, const float *q, float *out);
};

/* The local FP32 cache. */
struct llama_kv_f32;
int llama_kv_f32_new(const struct llama_hparams *hp, uint32_t max_tokens, struct llama_kv_f32 **ret);
void llama_kv_f32_free(struct llama_kv_f32 *kv);
extern const struct llama_kv_ops llama_kv_f32_ops;

struct llama_ctx;
int llama_ctx_new(const struct llama_model *m, const struct llama_kv_ops *ops, void *kv, struct llama_ctx **ret);
void llama_ctx_free(struct llama_ctx *c);
/* Runs token at position pos (every earlier position must have run);
 * logits (vocab floats) may be NULL to skip the classifier.  Returns 0 or
 * the KV cache's error. */
int llama_forward(struct llama_ctx *c, uint32_t token, uint32_t pos, float *logits);

#endif
