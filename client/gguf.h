/* SPDX-License-Identifier: MIT */
/*
 * A GGUF (v2, v3) reader for the reference engine: the file is mapped, every
 * count, length and offset is checked against what is left of it, and
 * anything malformed or unsupported is one clear message, never a crash.
 * Strings point into the mapping (not NUL-terminated: use their length).
 */
#ifndef TQKV_CLIENT_GGUF_H
#define TQKV_CLIENT_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum gguf_type {
	GGUF_TYPE_UINT8 = 0,
	GGUF_TYPE_INT8 = 1,
	GGUF_TYPE_UINT16 = 2,
	GGUF_TYPE_INT16 = 3,
	GGUF_TYPE_UINT32 = 4,
	GGUF_TYPE_INT32 = 5,
	GGUF_TYPE_FLOAT32 = 6,
	GGUF_TYPE_BOOL = 7,
	GGUF_TYPE_STRING = 8,
	GGUF_TYPE_ARRAY = 9,
	GGUF_TYPE_UINT64 = 10,
	GGUF_TYPE_INT64 = 11,
	GGUF_TYPE_FLOAT64 = 12,
	GGUF_TYPE_COUNT
};

/* Tensor element types this reader accepts (ggml's numbering). */
enum gguf_tensor_type {
	GGUF_TENSOR_F32 = 0,
	GGUF_TENSOR_F16 = 1,
};

#define GGUF_MAX_DIMS 4

struct gguf_string {
	const char *s;
	uint64_t len;
};

struct gguf_value {
	enum gguf_type type;
	union {
		uint64_t u;          /* unsigned integers and bool */
		int64_t i;           /* signed integers */
		double f;            /* FLOAT32 and FLOAT64 */
		struct gguf_string str;
		struct {
			enum gguf_type type;   /* of the elements (never ARRAY) */
			uint64_t n;
			const uint8_t *data;   /* raw little-endian elements; strings are length-prefixed */
		} array;
	};
};

struct gguf_kv {
	struct gguf_string key;
	struct gguf_value value;
};

struct gguf_tensor {
	struct gguf_string name;
	uint32_t n_dims;
	uint64_t dims[GGUF_MAX_DIMS];   /* innermost first; unused ones are 1 */
	uint64_t n_elements;
	enum gguf_tensor_type type;
	uint64_t offset;                /* from the start of the data section */
	const void *data;
	uint64_t bytes;
};

struct gguf_file {
	const uint8_t *base;
	size_t size;
	bool mapped;
	uint32_t version;
	uint64_t alignment;
	uint64_t n_kv, n_tensors;
	struct gguf_kv *kv;
	struct gguf_tensor *tensors;
	const uint8_t *data;            /* the data section */
};

/* Parses a GGUF image of size bytes (not copied: buf must outlive the
 * result).  Returns 0, -EBADMSG (malformed: err says where and why),
 * -ENOTSUP (valid but unsupported: version, tensor type), -ENOMEM. */
int gguf_parse(const void *buf, size_t size, struct gguf_file **ret, char *err, size_t err_size);
/* Maps and parses path; errors as gguf_parse(), plus -errno of open/mmap. */
int gguf_open(const char *path, struct gguf_file **ret, char *err, size_t err_size);
void gguf_close(struct gguf_file *f);

const struct gguf_kv *gguf_find(const struct gguf_file *f, const char *key);
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name);
/* Typed look-ups: 0, -ENOENT (absent), -EBADMSG (wrong type or out of
 * range for the result). Integers of any width convert when they fit. */
int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *ret);
int gguf_get_f64(const struct gguf_file *f, const char *key, double *ret);
int gguf_get_string(const struct gguf_file *f, const char *key, struct gguf_string *ret);
/* An array of the given element type and its length. */
int gguf_get_array(const struct gguf_file *f, const char *key, enum gguf_type type, const uint8_t **ret_data,
		   uint64_t *ret_n);
/* The n strings of a string array (from gguf_get_array) into out[n]. */
void gguf_array_strings(const uint8_t *data, uint64_t n, struct gguf_string *out);

const char *gguf_type_name(enum gguf_type t);

#endif
