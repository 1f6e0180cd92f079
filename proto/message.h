/* SPDX-License-Identifier: MIT */
/*
 * Message framing and validation, shared by the daemon and libtqkv.
 * Validation follows STYLE.md's order: header complete -> size under the cap
 * -> declared fds arrived -> opcode known -> version -> payload decode with
 * bounds checks.
 */
#ifndef TQKV_PROTO_MESSAGE_H
#define TQKV_PROTO_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tqkv/protocol.h>

/* What a request of each opcode must look like. */
struct msg_spec {
	const char *name;
	uint32_t since;          /* first protocol version with this opcode */
	uint32_t payload_min;    /* bytes */
	uint32_t payload_max;    /* bytes; UINT32_MAX: bounded by the message cap */
	bool needs_model;        /* only after REGISTER_MODEL */
};

/* The spec of a request opcode, or NULL if unknown. */
const struct msg_spec *msg_spec_of(uint16_t opcode);

/*
 * Checks a complete header: size within [16, max_size], reserved 0, a
 * request (no reply/error flags), n_fds as the opcode expects (requests
 * carry none).  Returns 0, -EMSGSIZE (too large), -EBADMSG (malformed),
 * -EOPNOTSUPP (unknown opcode), -EPROTO (fds where none belong).
 */
int msg_check_request(const struct tqkv_msg_header *h, uint32_t max_size);

/* Bounds-checked reading of a payload. */
struct msg_reader {
	const uint8_t *data;
	size_t size;
	size_t offset;
};

/* Copies n bytes out; -EBADMSG when fewer remain. */
int msg_read(struct msg_reader *r, void *out, size_t n);
/* Bytes left unread. */
static inline size_t msg_remaining(const struct msg_reader *r)
{
	return r->size - r->offset;
}

#endif
