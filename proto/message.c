/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <string.h>

#include "message.h"

#define ANY UINT32_MAX

static const struct msg_spec specs[TQKV_OP_MAX] = {
	[TQKV_OP_HELLO] = { "HELLO", 1, sizeof(struct tqkv_hello), sizeof(struct tqkv_hello), false },
	[TQKV_OP_REGISTER_MODEL] = { "REGISTER_MODEL", 1,
				     sizeof(struct tqkv_register_model) + sizeof(struct tqkv_layer_desc), ANY,
				     false },
	[TQKV_OP_SEQ_OPEN] = { "SEQ_OPEN", 1, 0, ANY, true },
	[TQKV_OP_SEQ_COMMIT] = { "SEQ_COMMIT", 1, sizeof(struct tqkv_seq_tokens), sizeof(struct tqkv_seq_tokens),
				 true },
	[TQKV_OP_SEQ_CLOSE] = { "SEQ_CLOSE", 1, sizeof(struct tqkv_seq_close), sizeof(struct tqkv_seq_close), true },
	[TQKV_OP_SEQ_WAIT] = { "SEQ_WAIT", 1, sizeof(struct tqkv_seq_tokens), sizeof(struct tqkv_seq_tokens), true },
	[TQKV_OP_STATS] = { "STATS", 1, 0, 0, false },
	[TQKV_OP_PING] = { "PING", 1, 0, 0, false },
	[TQKV_OP_SEQ_TOKENS] = { "SEQ_TOKENS", 2, sizeof(struct tqkv_seq_token_ids), ANY, true },
	[TQKV_OP_SEQ_FORK] = { "SEQ_FORK", 2, sizeof(struct tqkv_seq_close), sizeof(struct tqkv_seq_close), true },
	[TQKV_OP_SEQ_TRIM] = { "SEQ_TRIM", 2, sizeof(struct tqkv_seq_tokens), sizeof(struct tqkv_seq_tokens), true },
	[TQKV_OP_FLUSH] = { "FLUSH", 2, 0, 0, false },
	[TQKV_OP_LIST] = { "LIST", 2, 0, 0, false },
};

const struct msg_spec *msg_spec_of(uint16_t opcode)
{
	if (opcode >= TQKV_OP_MAX || !specs[opcode].name)
		return NULL;
	return &specs[opcode];
}

int msg_check_request(const struct tqkv_msg_header *h, uint32_t max_size)
{
	const struct msg_spec *s;
	uint32_t payload;

	if (h->size < sizeof(*h))
		return -EBADMSG;
	if (h->size > max_size)
		return -EMSGSIZE;
	if (h->n_fds)
		return -EPROTO;
	s = msg_spec_of(h->opcode);
	if (!s)
		return -EOPNOTSUPP;
	if (h->flags || h->reserved)
		return -EBADMSG;
	payload = h->size - (uint32_t)sizeof(*h);
	if (payload < s->payload_min || (s->payload_max != ANY && payload > s->payload_max))
		return -EBADMSG;
	return 0;
}

int msg_read(struct msg_reader *r, void *out, size_t n)
{
	if (n > r->size - r->offset)
		return -EBADMSG;
	memcpy(out, r->data + r->offset, n);
	r->offset += n;
	return 0;
}
