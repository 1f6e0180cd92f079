/* SPDX-License-Identifier: MIT */
/*
 * libtqkv: the client library engines link to keep their KV cache in tqkvd.
 *
 * An engine connects, registers its model (layers, KV heads, head_dim, codec
 * policy), opens sequences, writes the FP16 K/V rows of new tokens into the
 * sequence's tail in its staging memory and commits them.  The daemon's
 * worker compresses every full block into pages in the shared arena, which
 * this library maps read-only; a layer view gives the published pages and
 * the FP16 tail for attention.
 *
 * Errors are negative errno values; tqkv_client_error() has the daemon's
 * message for the last failed request.  The library never logs.  After a
 * failure that leaves the connection out of step (lost, or a reply that
 * cannot be framed) the library closes it: later requests fail with -EPIPE.
 *
 * Thread safety: a struct tqkv_client and its sequences may be used by one
 * thread at a time (serialise requests yourself); views and codecs are
 * read-only and may be used from any thread while the sequence is open and
 * the view is current (struct tqkv_layer_view).
 */
#ifndef TQKV_CLIENT_H
#define TQKV_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <tqkv/codec.h>
#include <tqkv/export.h>
#include <tqkv/protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

struct tqkv_client;
struct tqkv_seq;

/* What a client registers: one tqkv_layer_desc per layer. */
struct tqkv_model {
	uint64_t fingerprint;      /* identifies the model; seeds the rotations */
	uint32_t n_layers;
	const struct tqkv_layer_desc *layers;
	uint32_t staging_tokens;   /* FP16 tail capacity per sequence: a multiple of the
				    * block size, at least two blocks (0: four blocks) */
	uint32_t max_sequences;    /* sequences open at once (0: 16) */
};

/*
 * Connects to tqkvd at socket_path, or if NULL at $TQKV_SOCKET, or the
 * default ($XDG_RUNTIME_DIR/tqkv/tqkvd.sock, /run/tqkv/tqkvd.sock as root),
 * and negotiates the protocol version.  -EPROTO if the daemon's HELLO reply
 * is unusable; on failure *ret is NULL and tqkv_client_error(NULL) says
 * why, if the socket connected.
 */
TQKV_EXPORT int tqkv_client_connect(const char *socket_path, struct tqkv_client **ret);
/* Closes the connection; the daemon then releases this client's sequences.
 * Accepts NULL. */
TQKV_EXPORT void tqkv_client_free(struct tqkv_client *c);

/* The daemon's message for the last failed request ("" if none); with
 * NULL, why this thread's last tqkv_client_connect() failed. */
TQKV_EXPORT const char *tqkv_client_error(const struct tqkv_client *c);
/* Tokens per block of this daemon. */
TQKV_EXPORT uint32_t tqkv_client_block_tokens(const struct tqkv_client *c);

TQKV_EXPORT int tqkv_client_ping(struct tqkv_client *c);
/* The daemon's stats as INFO text ("# Section", "key:value" lines); free() it. */
TQKV_EXPORT int tqkv_client_stats(struct tqkv_client *c, char **ret_text);
/* The open sequences (this client's tenant's; every tenant's for root and
 * the daemon's user) as "# Sequence ID" sections of key:value lines:
 * tenant, client, pid, tokens, published_tokens, blocks, blocks_shared,
 * bytes, private; free() it. */
TQKV_EXPORT int tqkv_client_list(struct tqkv_client *c, char **ret_text);

/* Registers the model (once per connection) and maps the shared memory.
 * Layers flagged TQKV_LAYER_DAEMON_POLICY get the kinds and centering of
 * the daemon's configured preset (tqkvd.conf preset=; refused without
 * one); tqkv_client_layers() then says what they are. */
TQKV_EXPORT int tqkv_client_register_model(struct tqkv_client *c, const struct tqkv_model *m);
/* The registered layers as the daemon applied them (*ret_n of them), or
 * NULL before registration. */
TQKV_EXPORT const struct tqkv_layer_desc *tqkv_client_layers(const struct tqkv_client *c, uint32_t *ret_n);

/*
 * Named codec policies, chosen from docs/QUALITY.md (the head_dim-128
 * model, 16384 tokens of its own domain):
 *   quality   K int8, V tq4     PPL +0.05%, top-1 98.5%, 2.6x smaller than FP16
 *   balanced  K tq4, V tq4      PPL +0.11%, top-1 97.3%, 3.9x
 *   compact   K tq3, V tq3      PPL +0.75%, top-1 94.5%, 5.1x
 * An engine applies one to every layer of its model (boundary_layers
 * first and last layers keep FP16), or flags its layers
 * TQKV_LAYER_DAEMON_POLICY to get the one tqkvd.conf names (preset=).
 */
struct tqkv_preset {
	const char *name;
	enum tqkv_kind k_kind, v_kind;
	uint8_t layer_flags;         /* enum tqkv_layer_flag */
	uint32_t boundary_layers;
	const char *summary;         /* one line: measured quality and size */
};

/* The preset called name, or NULL. */
TQKV_EXPORT const struct tqkv_preset *tqkv_preset_find(const char *name);
/* All presets: *ret_n of them. */
TQKV_EXPORT const struct tqkv_preset *tqkv_presets(size_t *ret_n);

/* Opens an empty sequence (nothing shared: a private prefix of nothing). */
TQKV_EXPORT int tqkv_seq_open(struct tqkv_client *c, struct tqkv_seq **ret);

/*
 * Opens a sequence for a prompt of n_tokens token ids.  The daemon attaches
 * the longest chain of cached blocks (published earlier by any client of
 * this tenant with the same model and codec policy) that starts the
 * prompt, leaving at least the last prompt token to compute; *ret_cached
 * (may be NULL) says how many tokens are already there (a multiple of the
 * block size): the engine runs the prompt from that position.  The ids are
 * kept to index the blocks this sequence publishes, so later prompts find
 * them.  flags: TQKV_SEQ_PRIVATE neither looks up nor shares.
 */
TQKV_EXPORT int tqkv_seq_open_prompt(struct tqkv_client *c, const uint32_t *tokens, size_t n_tokens, uint32_t flags,
				     struct tqkv_seq **ret, uint64_t *ret_cached);
/* Tells the daemon the ids of tokens [first, first + n) (generated tokens,
 * or a prompt given later): first is at most the number of ids it has, and
 * ids it has must match.  Blocks whose ids are known become shareable. */
TQKV_EXPORT int tqkv_seq_set_tokens(struct tqkv_seq *s, uint64_t first, const uint32_t *tokens, size_t n);
/* A new sequence with the same tokens: it shares every published block
 * and gets a copy of the committed FP16 tail (beam search, branches). */
TQKV_EXPORT int tqkv_seq_fork(struct tqkv_seq *s, struct tqkv_seq **ret);
/* Keeps the first n_tokens tokens.  Tokens of the FP16 tail are dropped
 * exactly; inside the published blocks whole blocks only, so *ret_kept (may
 * be NULL) may be less than n_tokens and the engine rewrites the rest.
 * Waits for blocks in compression first.  -ENODATA (nothing changed) when
 * the daemon already freed sliding-window pages that position needs. */
TQKV_EXPORT int tqkv_seq_trim(struct tqkv_seq *s, uint64_t n_tokens, uint64_t *ret_kept);
/* Drops the cached blocks no sequence holds: this client's tenant's, or
 * every tenant's for root and the daemon's own user. */
TQKV_EXPORT int tqkv_client_flush(struct tqkv_client *c, uint64_t *ret_blocks, uint64_t *ret_bytes);
/* Closes the sequence and frees it; accepts NULL. */
TQKV_EXPORT int tqkv_seq_close(struct tqkv_seq *s);
TQKV_EXPORT uint32_t tqkv_seq_id(const struct tqkv_seq *s);

/*
 * Writes the K and V rows of one token for one layer into the tail: k and v
 * each hold n_kv_heads * head_dim IEEE halves (head after head).  Tokens are
 * written in any order but committed in order.  Returns -EAGAIN when the tail
 * is full (the token is a whole staging capacity ahead of what is published:
 * wait with tqkv_seq_wait()), -EINVAL for a committed token or a layer that
 * reuses another layer's KV.
 */
TQKV_EXPORT int tqkv_seq_write(struct tqkv_seq *s, uint64_t token, uint32_t layer, const uint16_t *k,
			       const uint16_t *v);

/* The same for every layer at once: k[layer] and v[layer] as above (NULL
 * for layers that reuse another layer's KV). */
TQKV_EXPORT int tqkv_seq_write_layers(struct tqkv_seq *s, uint64_t token, const uint16_t *const *k,
				      const uint16_t *const *v);

/* Tells the daemon that tokens [0, n_tokens) are written for every layer. */
TQKV_EXPORT int tqkv_seq_commit(struct tqkv_seq *s, uint64_t n_tokens);
/* Waits until n_tokens are published, or every full committed block is. */
TQKV_EXPORT int tqkv_seq_wait(struct tqkv_seq *s, uint64_t n_tokens);
TQKV_EXPORT uint64_t tqkv_seq_committed(const struct tqkv_seq *s);
/* Tokens in compressed blocks (acquire load of the shared block count). */
TQKV_EXPORT uint64_t tqkv_seq_published(const struct tqkv_seq *s);

/* A read-only view of one layer of a sequence: published blocks, then the
 * FP16 tail.  Its memory stays mapped while the sequence is open, but its
 * tail rows live in the staging ring, which later writes reuse: it reads
 * the tokens it was taken with until the sequence writes a token
 * staging_tokens past the view's first tail token (n_blocks *
 * block_tokens), or is trimmed below n_tokens.  Take a new view after
 * writing, as a decode step does anyway. */
struct tqkv_layer_view {
	uint32_t layer;           /* the layer whose KV this is (after kv_source) */
	uint32_t n_kv_heads, head_dim;
	uint32_t block_tokens;
	uint64_t n_blocks;        /* published blocks in this view */
	uint64_t n_tokens;        /* n_blocks * block_tokens + tail tokens */
	const uint8_t *arena;
	uint64_t arena_bytes;
	const uint64_t *block_table;
	const uint8_t *tail;      /* staging ring of the sequence */
	uint32_t token_bytes;
	uint32_t staging_tokens;
	uint32_t row_offset[2];   /* K and V rows of this layer in a token row */
	uint32_t page_index;
	const struct tqkv_codec *const *codecs;  /* [head * 2 + stream] */
	/* Centered keys (TQKV_LAYER_CENTER_KEYS): the mean of head h is
	 * key_mean + h * head_dim; K pages decode to rows minus it.  NULL
	 * otherwise. */
	const float *key_mean;
};

TQKV_EXPORT int tqkv_seq_view(struct tqkv_seq *s, uint32_t layer, struct tqkv_layer_view *ret);
/* The same view extended to n_tokens with tokens this process has
 * written but not committed yet: what an engine attends over while it
 * computes a token, layer by layer.  The caller vouches that those tokens
 * were written for this layer; -EINVAL past the highest token written or
 * past what the staging ring holds. */
TQKV_EXPORT int tqkv_seq_view_written(struct tqkv_seq *s, uint32_t layer, uint64_t n_tokens,
				      struct tqkv_layer_view *ret);
/* The view of exactly the first n_tokens tokens (written) with exactly
 * n_blocks of them from published blocks and the rest from the FP16 tail:
 * attention over it gives the same result whatever the worker's progress.
 * An engine that keeps the current block exact uses n_blocks = position /
 * block_tokens.  -EAGAIN while fewer blocks are published (wait with
 * tqkv_seq_wait()), -EINVAL if the tail no longer holds the rest. */
TQKV_EXPORT int tqkv_seq_view_blocks(struct tqkv_seq *s, uint32_t layer, uint64_t n_tokens, uint64_t n_blocks,
				     struct tqkv_layer_view *ret);
/* The page of (block, head, stream) and its size; NULL if out of range. */
TQKV_EXPORT const void *tqkv_view_page(const struct tqkv_layer_view *v, uint64_t block, uint32_t head,
				       unsigned stream, size_t *ret_size);
/* The FP16 row of a tail token (n_blocks * block_tokens <= token < n_tokens). */
TQKV_EXPORT const uint16_t *tqkv_view_tail_row(const struct tqkv_layer_view *v, uint64_t token, uint32_t head,
					       unsigned stream);

/* Decodes tokens [first, first + n) of one head and stream (0 K, 1 V) of a
 * view to floats (centered keys with their mean added back), from pages or
 * the tail as they lie. */
TQKV_EXPORT int tqkv_view_read(const struct tqkv_layer_view *v, uint32_t head, unsigned stream, uint64_t first,
			       uint32_t n, float *out);

/* The same through a fresh view of (layer) of a sequence. */
TQKV_EXPORT int tqkv_seq_read(struct tqkv_seq *s, uint32_t layer, uint32_t head, unsigned stream, uint64_t first,
			      uint32_t n, float *out);
/* The same, as IEEE halves (round to nearest even). */
TQKV_EXPORT int tqkv_seq_read_f16(struct tqkv_seq *s, uint32_t layer, uint32_t head, unsigned stream, uint64_t first,
				  uint32_t n, uint16_t *out);

#ifdef __cplusplus
}
#endif

#endif
