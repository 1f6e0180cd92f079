/* SPDX-License-Identifier: MIT */
/*
 * The tokenizer of llama GGUF models (tokenizer.ggml.model = "llama"):
 * SentencePiece BPE over the vocabulary's scores, with a dummy "▁" prefix,
 * spaces as "▁", and byte fallback (<0xXX> pieces) for text the
 * vocabulary lacks.  Detokenizing maps pieces back to bytes.
 */
#ifndef TQKV_CLIENT_LLAMA_TOKENIZER_H
#define TQKV_CLIENT_LLAMA_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

struct llama_tokenizer;

/* Reads the vocabulary of f; on error returns -EBADMSG or -ENOTSUP with a
 * message in err, or -ENOMEM.  f must outlive the tokenizer. */
int llama_tokenizer_new(const struct gguf_file *f, struct llama_tokenizer **ret, char *err, size_t err_size);
void llama_tokenizer_free(struct llama_tokenizer *t);

uint32_t llama_tokenizer_vocab(const struct llama_tokenizer *t);
uint32_t llama_tokenizer_bos(const struct llama_tokenizer *t);
uint32_t llama_tokenizer_eos(const struct llama_tokenizer *t);

/* Tokenizes len bytes of text, BOS first when bos (and the model adds
 * one).  Writes at most max ids; returns the number the text needs (so a
 * larger one means ids was too small), or -ENOMEM. */
int llama_tokenize(const struct llama_tokenizer *t, const char *text, size_t len, bool bos, uint32_t *ids,
		   size_t max);

/* The bytes of token id (byte tokens as their byte, "▁" as a space,
 * control tokens as nothing) into out; returns their count (at most
 * out_size), or -EINVAL for an id outside the vocabulary. */
int llama_token_text(const struct llama_tokenizer *t, uint32_t id, char *out, size_t out_size);

#endif
