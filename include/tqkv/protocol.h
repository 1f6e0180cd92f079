/* SPDX-License-Identifier: MIT */
/*
 * The tqkv wire protocol (docs/PROTOCOL.md) and the shared-memory structures
 * both sides read.  Little-endian, fixed-size headers, offsets not pointers.
 */
#ifndef TQKV_PROTOCOL_H
#define TQKV_PROTOCOL_H

#include <stdint.h>

/* Version 2 added prefix lookups to SEQ_OPEN (its reply grew) and the
 * SEQ_TOKENS, SEQ_FORK, SEQ_TRIM and FLUSH requests. */
#define TQKV_PROTOCOL_VERSION 2u
#define TQKV_PROTOCOL_VERSION_MIN 2u

/* Every message starts with this header; size counts the header too. */
struct tqkv_msg_header {
	uint32_t size;
	uint16_t opcode;   /* enum tqkv_opcode */
	uint16_t flags;    /* enum tqkv_msg_flag */
	uint32_t serial;   /* chosen by the client, echoed in the reply */
	uint16_t n_fds;    /* file descriptors attached (SCM_RIGHTS) */
	uint16_t reserved; /* 0 */
};
_Static_assert(sizeof(struct tqkv_msg_header) == 16, "wire header is 16 bytes");

enum tqkv_msg_flag {
	TQKV_MSG_REPLY = 1u << 0,
	TQKV_MSG_ERROR = 1u << 1,  /* payload: struct tqkv_error + message text */
};

enum tqkv_opcode {
	TQKV_OP_HELLO = 1,
	TQKV_OP_REGISTER_MODEL = 2,
	TQKV_OP_SEQ_OPEN = 3,
	TQKV_OP_SEQ_COMMIT = 4,
	TQKV_OP_SEQ_CLOSE = 5,
	TQKV_OP_SEQ_WAIT = 6,
	TQKV_OP_STATS = 7,
	TQKV_OP_PING = 8,
	TQKV_OP_SEQ_TOKENS = 9,
	TQKV_OP_SEQ_FORK = 10,
	TQKV_OP_SEQ_TRIM = 11,
	TQKV_OP_FLUSH = 12,
	TQKV_OP_LIST = 13,
	TQKV_OP_MAX
};

struct tqkv_error {
	int32_t code;      /* positive errno value */
	uint32_t length;   /* bytes of message text that follow, not NUL-terminated */
};

/* HELLO: the client's range of versions; the reply has the chosen one and
 * the daemon's limits. */
struct tqkv_hello {
	uint32_t version_min;
	uint32_t version_max;
};

struct tqkv_hello_reply {
	uint32_t version;
	uint32_t block_tokens;
	uint32_t max_message_bytes;
	uint32_t max_fds_per_message;
	uint32_t max_layers;
	uint32_t max_kv_heads;
	uint32_t max_head_dim;
	uint32_t max_sequences;
	uint32_t max_tokens_per_sequence;
	uint32_t reserved;
};

enum tqkv_layer_flag {
	/* Keys are centered: each sequence subtracts, per head, the mean of
	 * its first block's keys before encoding (docs/PROTOCOL.md). */
	TQKV_LAYER_CENTER_KEYS = 1u << 0,
	/* K and V kinds and centering are the daemon's configured preset
	 * (tqkvd.conf preset=): the REGISTER_MODEL reply says what they are. */
	TQKV_LAYER_DAEMON_POLICY = 1u << 1,
};

/* One layer of a registered model. */
struct tqkv_layer_desc {
	uint16_t n_kv_heads;
	uint16_t head_dim;
	uint32_t window;         /* sliding window in tokens, 0 = full attention */
	int16_t kv_source;       /* -1, or the earlier layer whose KV this layer reuses */
	uint8_t k_kind;          /* enum tqkv_kind */
	uint8_t v_kind;
	uint8_t flags;           /* enum tqkv_layer_flag */
	uint8_t reserved[3];
};
_Static_assert(sizeof(struct tqkv_layer_desc) == 16, "layer descriptor is 16 bytes");

/* REGISTER_MODEL: followed by n_layers struct tqkv_layer_desc. */
struct tqkv_register_model {
	uint64_t fingerprint;      /* model identity; seeds the rotations */
	uint32_t n_layers;
	uint32_t staging_tokens;   /* FP16 tail capacity per sequence (>= 2 blocks) */
	uint32_t max_sequences;    /* sequences open at once */
	uint32_t reserved;
};

/* Reply: two fds in this order: the arena (sealed, map read-only) and this
 * client's staging memfd (map read-write).  The payload is this struct
 * followed by the n_layers layer descriptors as registered (the daemon's
 * preset applied to TQKV_LAYER_DAEMON_POLICY layers). */
struct tqkv_register_reply {
	uint64_t arena_bytes;
	uint64_t staging_bytes;
	uint64_t staging_slot_bytes;  /* bytes per sequence slot in staging */
	uint32_t token_bytes;         /* bytes of one token's K and V rows, all layers */
	uint32_t block_tokens;
};

enum tqkv_seq_flag {
	/* Neither looks up nor indexes this sequence's blocks: nothing of it
	 * is shared, and it is freed when it closes. */
	TQKV_SEQ_PRIVATE = 1u << 0,
};

/*
 * SEQ_OPEN: an empty payload, or this followed by n_tokens uint32 token ids
 * (the prompt).  The daemon attaches the longest chain of cached blocks
 * that are a prefix of the prompt, at most (n_tokens - 1) / block_tokens
 * blocks so that the engine computes at least the last prompt token, and
 * keeps the ids to index the blocks the sequence publishes.
 */
struct tqkv_seq_open {
	uint32_t n_tokens;
	uint32_t flags;            /* enum tqkv_seq_flag */
};

/* Also the reply of SEQ_FORK. */
struct tqkv_seq_open_reply {
	uint32_t seq_id;
	uint32_t slot;             /* staging slot of this sequence */
	uint64_t desc_offset;      /* struct tqkv_seq_desc in the arena */
	uint64_t cached_tokens;    /* tokens already published (attached or shared): skip them */
};

/* SEQ_TOKENS: followed by n uint32 token ids of tokens [first, first + n);
 * first is at most the number of ids the daemon already has (ids are
 * appended; ones it has must match).  Blocks are indexed for sharing once
 * their ids are known. */
struct tqkv_seq_token_ids {
	uint32_t seq_id;
	uint32_t first;
	uint32_t n;
	uint32_t reserved;
};

/* SEQ_FORK: a new sequence holding the same published blocks and token
 * ids; the caller copies the FP16 tail rows into the new slot and commits
 * them.  SEQ_CLOSE's payload. */

/* SEQ_TRIM: keeps the first n_tokens tokens; inside the published blocks
 * it keeps whole blocks only, so the reply's committed_tokens may be less
 * than asked (the engine rewrites the rest).  Refused with EBUSY while a
 * block of the sequence is being compressed (SEQ_WAIT first). */

/* LIST reply: text, one "# Sequence ID" section of key:value lines per open
 * sequence (the caller's tenant's, or all for root and the daemon's user). */

/* FLUSH reply: what was dropped from the cache. */
struct tqkv_flush_reply {
	uint64_t blocks;
	uint64_t bytes;
};

/* COMMIT: tokens [0, n_tokens) are in staging; WAIT: reply once at least
 * n_tokens tokens are published (compressed). */
struct tqkv_seq_tokens {
	uint32_t seq_id;
	uint32_t n_tokens;
};

struct tqkv_seq_tokens_reply {
	uint64_t committed_tokens;
	uint64_t published_tokens;
};

struct tqkv_seq_close {
	uint32_t seq_id;
	uint32_t reserved;
};

/*
 * Shared memory, written only by the daemon.  A sequence descriptor; its
 * block table holds, for published block b, the arena offset of that
 * block's record.  n_blocks is stored with release after the record and the
 * table entry are complete; readers load it with acquire.
 */
struct tqkv_seq_desc {
	uint64_t n_blocks;           /* atomic: published blocks */
	uint64_t block_table_offset; /* arena offset of uint64_t[max_blocks] */
	uint32_t max_blocks;
	uint32_t block_tokens;
	uint32_t seq_id;
	uint32_t reserved;
	/* Arena offset of the key means of centered layers (float, per layer
	 * then head, head_dim each), 0 if none; valid once n_blocks > 0. */
	uint64_t key_mean_offset;
};

/*
 * A block record: block_tokens tokens of every layer.  After the header come
 * page offsets (relative to the record) for every (layer, kv head, K then V)
 * in layer order; 0 for layers that reuse another layer's KV.  Pages follow.
 */
#define TQKV_BLOCK_MAGIC 0x4b4c4254u /* "TBLK" */

struct tqkv_block_header {
	uint32_t magic;
	uint32_t n_pages;
	uint64_t first_token;
	uint64_t record_bytes;
	uint32_t seq_id;
	uint32_t reserved;
};

#endif
