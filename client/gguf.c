/* SPDX-License-Identifier: MIT */
/*
 * GGUF reader.  Layout (v2 and v3, little-endian): magic "GGUF", version
 * u32, tensor count u64, metadata count u64; the metadata (key string,
 * type u32, value; arrays are element type u32, count u64, elements); the
 * tensor infos (name, n_dims u32, dims u64[n_dims], type u32, offset u64);
 * padding to general.alignment (default 32); the data section.  Strings
 * are a u64 length and that many bytes.
 *
 * Every read goes through a cursor that refuses to pass the end, so a
 * truncated or lying file fails with the place it went wrong.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"

#define GGUF_MAGIC 0x46554747u  /* "GGUF" */
#define GGUF_DEFAULT_ALIGNMENT 32u

struct cursor {
	const uint8_t *p, *end, *base;
	char *err;
	size_t err_size;
};

static int fail(struct cursor *c, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct cursor *c, int r, const char *fmt, ...)
{
	va_list ap;
	int n = 0;

	if (c->err && c->err_size) {
		n = snprintf(c->err, c->err_size, "offset %zu: ", (size_t)(c->p - c->base));
		if (n < 0 || (size_t)n >= c->err_size)
			n = 0;
		va_start(ap, fmt);
		vsnprintf(c->err + n, c->err_size - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return r;
}

static int take(struct cursor *c, size_t n, const uint8_t **ret, const char *what)
{
	*ret = c->p;
	if ((size_t)(c->end - c->p) < n)
		return fail(c, -EBADMSG, "truncated: %s needs %zu bytes, %zu left", what, n, (size_t)(c->end - c->p));
	c->p += n;
	return 0;
}

static uint64_t le(const uint8_t *p, unsigned bytes)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < bytes; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static int read_u32(struct cursor *c, uint32_t *ret, const char *what)
{
	const uint8_t *p;
	int r = take(c, 4, &p, what);

	*ret = r == 0 ? (uint32_t)le(p, 4) : 0;
	return r;
}

static int read_u64(struct cursor *c, uint64_t *ret, const char *what)
{
	const uint8_t *p;
	int r = take(c, 8, &p, what);

	*ret = r == 0 ? le(p, 8) : 0;
	return r;
}

static int read_string(struct cursor *c, struct gguf_string *ret, const char *what)
{
	const uint8_t *p;
	uint64_t len = 0;
	int r = read_u64(c, &len, what);

	if (r < 0)
		return r;
	if (len > (uint64_t)(c->end - c->p))
		return fail(c, -EBADMSG, "%s: length %" PRIu64 " runs past the end of the file", what, len);
	r = take(c, (size_t)len, &p, what);
	*ret = (struct gguf_string){ (const char *)p, len };
	return r;
}

/* Bytes of one scalar value of type t, or 0 for STRING, ARRAY and unknown. */
static unsigned scalar_size(enum gguf_type t)
{
	switch (t) {
	case GGUF_TYPE_UINT8:
	case GGUF_TYPE_INT8:
	case GGUF_TYPE_BOOL:
		return 1;
	case GGUF_TYPE_UINT16:
	case GGUF_TYPE_INT16:
		return 2;
	case GGUF_TYPE_UINT32:
	case GGUF_TYPE_INT32:
	case GGUF_TYPE_FLOAT32:
		return 4;
	case GGUF_TYPE_UINT64:
	case GGUF_TYPE_INT64:
	case GGUF_TYPE_FLOAT64:
		return 8;
	default:
		return 0;
	}
}

const char *gguf_type_name(enum gguf_type t)
{
	static const char *const names[] = { "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
					     "bool", "string", "array", "uint64", "int64", "float64" };

	return (unsigned)t < GGUF_TYPE_COUNT ? names[t] : "unknown";
}

static int read_scalar(struct cursor *c, enum gguf_type t, struct gguf_value *v, const char *what)
{
	unsigned n = scalar_size(t);
	const uint8_t *p;
	uint64_t raw;
	int r = take(c, n, &p, what);

	if (r < 0)
		return r;
	raw = le(p, n);
	v->type = t;
	switch (t) {
	case GGUF_TYPE_INT8:
		v->i = (int8_t)raw;
		break;
	case GGUF_TYPE_INT16:
		v->i = (int16_t)raw;
		break;
	case GGUF_TYPE_INT32:
		v->i = (int32_t)raw;
		break;
	case GGUF_TYPE_INT64:
		v->i = (int64_t)raw;
		break;
	case GGUF_TYPE_FLOAT32: {
		uint32_t u = (uint32_t)raw;
		float f;

		memcpy(&f, &u, 4);
		v->f = f;
		break;
	}
	case GGUF_TYPE_FLOAT64:
		memcpy(&v->f, &raw, 8);
		break;
	case GGUF_TYPE_BOOL:
		if (raw > 1)
			return fail(c, -EBADMSG, "%s: bool value %" PRIu64 " is neither 0 nor 1", what, raw);
		v->u = raw;
		break;
	default:
		v->u = raw;
	}
	return 0;
}

static int read_value(struct cursor *c, struct gguf_value *v, const char *what)
{
	uint32_t t;
	int r = read_u32(c, &t, what);

	if (r < 0)
		return r;
	if (t >= GGUF_TYPE_COUNT)
		return fail(c, -EBADMSG, "%s: unknown value type %" PRIu32, what, t);
	if (t == GGUF_TYPE_STRING) {
		v->type = GGUF_TYPE_STRING;
		return read_string(c, &v->str, what);
	}
	if (t == GGUF_TYPE_ARRAY) {
		uint32_t et = 0;
		uint64_t n = 0;

		if ((r = read_u32(c, &et, what)) < 0 || (r = read_u64(c, &n, what)) < 0)
			return r;
		if (et >= GGUF_TYPE_COUNT || et == GGUF_TYPE_ARRAY)
			return fail(c, -EBADMSG, "%s: array of unsupported element type %" PRIu32, what, et);
		v->type = GGUF_TYPE_ARRAY;
		v->array.type = (enum gguf_type)et;
		v->array.n = n;
		v->array.data = c->p;
		if (et == GGUF_TYPE_STRING) {
			/* Each string is at least its 8-byte length. */
			if (n > (uint64_t)(c->end - c->p) / 8)
				return fail(c, -EBADMSG, "%s: %" PRIu64 " strings cannot fit in the file", what, n);
			for (uint64_t i = 0; i < n; i++) {
				struct gguf_string s;

				if ((r = read_string(c, &s, what)) < 0)
					return r;
			}
			return 0;
		}
		if (n > (uint64_t)(c->end - c->p) / scalar_size((enum gguf_type)et))
			return fail(c, -EBADMSG, "%s: %" PRIu64 " %s elements run past the end of the file", what, n,
				    gguf_type_name((enum gguf_type)et));
		c->p += n * scalar_size((enum gguf_type)et);
		if (et == GGUF_TYPE_BOOL)
			for (uint64_t i = 0; i < n; i++)
				if (v->array.data[i] > 1)
					return fail(c, -EBADMSG, "%s: bool element %" PRIu64 " is neither 0 nor 1", what, i);
		return 0;
	}
	return read_scalar(c, (enum gguf_type)t, v, what);
}

static bool string_eq(struct gguf_string a, const char *b)
{
	size_t n = strlen(b);

	return a.len == n && memcmp(a.s, b, n) == 0;
}

static bool strings_equal(struct gguf_string a, struct gguf_string b)
{
	return a.len == b.len && memcmp(a.s, b.s, (size_t)a.len) == 0;
}

static int read_tensor_info(struct cursor *c, struct gguf_tensor *t, uint64_t index)
{
	char what[64];
	uint32_t type;
	int r;

	snprintf(what, sizeof(what), "tensor %" PRIu64, index);
	if ((r = read_string(c, &t->name, what)) < 0 || (r = read_u32(c, &t->n_dims, what)) < 0)
		return r;
	if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
		return fail(c, -EBADMSG, "tensor '%.*s': %" PRIu32 " dimensions (1 to %u allowed)", (int)t->name.len,
			    t->name.s, t->n_dims, GGUF_MAX_DIMS);
	t->n_elements = 1;
	for (unsigned d = 0; d < GGUF_MAX_DIMS; d++) {
		t->dims[d] = 1;
		if (d < t->n_dims && (r = read_u64(c, &t->dims[d], what)) < 0)
			return r;
		if (t->dims[d] == 0 || t->dims[d] > (UINT64_C(1) << 40) / t->n_elements)
			return fail(c, -EBADMSG, "tensor '%.*s': dimension %u is %" PRIu64 " (zero or too large)",
				    (int)t->name.len, t->name.s, d, t->dims[d]);
		t->n_elements *= t->dims[d];
	}
	if ((r = read_u32(c, &type, what)) < 0 || (r = read_u64(c, &t->offset, what)) < 0)
		return r;
	if (type != GGUF_TENSOR_F32 && type != GGUF_TENSOR_F16)
		return fail(c, -ENOTSUP, "tensor '%.*s': element type %" PRIu32 " is not supported (F32 and F16 only)",
			    (int)t->name.len, t->name.s, type);
	t->type = (enum gguf_tensor_type)type;
	t->bytes = t->n_elements * (type == GGUF_TENSOR_F32 ? 4 : 2);
	return 0;
}

/* Tensors sorted by offset, to check that none overlaps the next. */
static int by_offset(const void *a, const void *b)
{
	const struct gguf_tensor *x = *(const struct gguf_tensor *const *)a, *y = *(const struct gguf_tensor *const *)b;

	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int place_tensors(struct cursor *c, struct gguf_file *f)
{
	uint64_t header = (uint64_t)(c->p - c->base), start = (header + f->alignment - 1) / f->alignment * f->alignment;
	uint64_t room;
	const struct gguf_tensor **order;
	int r = 0;

	if (start > f->size)
		return fail(c, -EBADMSG, "truncated: the data section would start at %" PRIu64 ", past the end (%zu)",
			    start, f->size);
	f->data = f->base + start;
	room = f->size - start;
	order = malloc(sizeof(*order) * (f->n_tensors ? f->n_tensors : 1));
	if (!order)
		return -ENOMEM;
	for (uint64_t i = 0; i < f->n_tensors; i++) {
		struct gguf_tensor *t = &f->tensors[i];

		order[i] = t;
		if (t->offset % f->alignment)
			r = fail(c, -EBADMSG, "tensor '%.*s': offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
				 (int)t->name.len, t->name.s, t->offset, f->alignment);
		else if (t->offset > room || t->bytes > room - t->offset)
			r = fail(c, -EBADMSG, "tensor '%.*s': %" PRIu64 " bytes at %" PRIu64 " run past the end of the file",
				 (int)t->name.len, t->name.s, t->bytes, t->offset);
		if (r < 0)
			goto out;
		t->data = f->data + t->offset;
	}
	qsort(order, f->n_tensors, sizeof(*order), by_offset);
	for (uint64_t i = 1; i < f->n_tensors; i++)
		if (order[i - 1]->offset + order[i - 1]->bytes > order[i]->offset) {
			r = fail(c, -EBADMSG, "tensors '%.*s' and '%.*s' overlap", (int)order[i - 1]->name.len,
				 order[i - 1]->name.s, (int)order[i]->name.len, order[i]->name.s);
			goto out;
		}
out:
	free(order);
	return r;
}

int gguf_parse(const void *buf, size_t size, struct gguf_file **ret, char *err, size_t err_size)
{
	struct cursor c = { buf, (const uint8_t *)buf + size, buf, err, err_size };
	struct gguf_file *f;
	uint32_t magic;
	int r;

	if (err && err_size)
		err[0] = 0;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->base = buf;
	f->size = size;
	f->alignment = GGUF_DEFAULT_ALIGNMENT;
	if ((r = read_u32(&c, &magic, "magic")) < 0)
		goto fail;
	if (magic != GGUF_MAGIC) {
		c.p = c.base;
		r = fail(&c, -EBADMSG, "not a GGUF file (magic %08" PRIx32 ")", magic);
		goto fail;
	}
	if ((r = read_u32(&c, &f->version, "version")) < 0)
		goto fail;
	if (f->version != 2 && f->version != 3) {
		r = fail(&c, -ENOTSUP, "GGUF version %" PRIu32 " is not supported (2 and 3 are)", f->version);
		goto fail;
	}
	if ((r = read_u64(&c, &f->n_tensors, "tensor count")) < 0 || (r = read_u64(&c, &f->n_kv, "metadata count")) < 0)
		goto fail;
	/* A metadata entry takes at least 12 bytes, a tensor info 28. */
	if (f->n_kv > size / 12 || f->n_tensors > size / 28) {
		r = fail(&c, -EBADMSG, "%" PRIu64 " metadata entries and %" PRIu64 " tensors cannot fit in %zu bytes",
			 f->n_kv, f->n_tensors, size);
		goto fail;
	}
	f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof(*f->kv));
	f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof(*f->tensors));
	if (!f->kv || !f->tensors) {
		r = -ENOMEM;
		goto fail;
	}
	for (uint64_t i = 0; i < f->n_kv; i++) {
		struct gguf_kv *kv = &f->kv[i];
		char what[96];

		if ((r = read_string(&c, &kv->key, "metadata key")) < 0)
			goto fail;
		snprintf(what, sizeof(what), "metadata '%.*s'", (int)(kv->key.len < 64 ? kv->key.len : 64), kv->key.s);
		for (uint64_t j = 0; j < i; j++)
			if (strings_equal(f->kv[j].key, kv->key)) {
				r = fail(&c, -EBADMSG, "%s appears twice", what);
				goto fail;
			}
		if ((r = read_value(&c, &kv->value, what)) < 0)
			goto fail;
		if (string_eq(kv->key, "general.alignment")) {
			if (kv->value.type != GGUF_TYPE_UINT32 || kv->value.u == 0 || (kv->value.u & (kv->value.u - 1))) {
				r = fail(&c, -EBADMSG, "general.alignment must be a power of two as uint32");
				goto fail;
			}
			f->alignment = kv->value.u;
		}
	}
	for (uint64_t i = 0; i < f->n_tensors; i++) {
		if ((r = read_tensor_info(&c, &f->tensors[i], i)) < 0)
			goto fail;
		for (uint64_t j = 0; j < i; j++)
			if (strings_equal(f->tensors[j].name, f->tensors[i].name)) {
				r = fail(&c, -EBADMSG, "tensor '%.*s' appears twice", (int)f->tensors[i].name.len,
					 f->tensors[i].name.s);
				goto fail;
			}
	}
	if ((r = place_tensors(&c, f)) < 0)
		goto fail;
	*ret = f;
	return 0;
fail:
	gguf_close(f);
	return r;
}

int gguf_open(const char *path, struct gguf_file **ret, char *err, size_t err_size)
{
	struct stat st;
	void *map;
	int fd = open(path, O_RDONLY | O_CLOEXEC), r;

	if (fd < 0) {
		r = -errno;
		snprintf(err, err_size, "%s: %s", path, strerror(errno));
		return r;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
		r = S_ISREG(st.st_mode) ? -EBADMSG : -EINVAL;
		snprintf(err, err_size, "%s: %s", path, S_ISREG(st.st_mode) ? "empty file" : "not a regular file");
		close(fd);
		return r;
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	r = -errno;
	close(fd);
	if (map == MAP_FAILED) {
		snprintf(err, err_size, "%s: mmap: %s", path, strerror(-r));
		return r;
	}
	r = gguf_parse(map, (size_t)st.st_size, ret, err, err_size);
	if (r < 0) {
		munmap(map, (size_t)st.st_size);
		return r;
	}
	(*ret)->mapped = true;
	return 0;
}

void gguf_close(struct gguf_file *f)
{
	if (!f)
		return;
	if (f->mapped)
		munmap((void *)f->base, f->size);
	free(f->kv);
	free(f->tensors);
	free(f);
}

const struct gguf_kv *gguf_find(const struct gguf_file *f, const char *key)
{
	for (uint64_t i = 0; i < f->n_kv; i++)
		if (string_eq(f->kv[i].key, key))
			return &f->kv[i];
	return NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name)
{
	for (uint64_t i = 0; i < f->n_tensors; i++)
		if (string_eq(f->tensors[i].name, name))
			return &f->tensors[i];
	return NULL;
}

int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *ret)
{
	const struct gguf_kv *kv = gguf_find(f, key);

	if (!kv)
		return -ENOENT;
	switch (kv->value.type) {
	case GGUF_TYPE_UINT8:
	case GGUF_TYPE_UINT16:
	case GGUF_TYPE_UINT32:
	case GGUF_TYPE_UINT64:
		*ret = kv->value.u;
		return 0;
	case GGUF_TYPE_INT8:
	case GGUF_TYPE_INT16:
	case GGUF_TYPE_INT32:
	case GGUF_TYPE_INT64:
		if (kv->value.i < 0)
			return -EBADMSG;
		*ret = (uint64_t)kv->value.i;
		return 0;
	default:
		return -EBADMSG;
	}
}

int gguf_get_f64(const struct gguf_file *f, const char *key, double *ret)
{
	const struct gguf_kv *kv = gguf_find(f, key);

	if (!kv)
		return -ENOENT;
	if (kv->value.type != GGUF_TYPE_FLOAT32 && kv->value.type != GGUF_TYPE_FLOAT64)
		return -EBADMSG;
	*ret = kv->value.f;
	return 0;
}

int gguf_get_string(const struct gguf_file *f, const char *key, struct gguf_string *ret)
{
	const struct gguf_kv *kv = gguf_find(f, key);

	if (!kv)
		return -ENOENT;
	if (kv->value.type != GGUF_TYPE_STRING)
		return -EBADMSG;
	*ret = kv->value.str;
	return 0;
}

int gguf_get_array(const struct gguf_file *f, const char *key, enum gguf_type type, const uint8_t **ret_data,
		   uint64_t *ret_n)
{
	const struct gguf_kv *kv = gguf_find(f, key);

	if (!kv)
		return -ENOENT;
	if (kv->value.type != GGUF_TYPE_ARRAY || kv->value.array.type != type)
		return -EBADMSG;
	*ret_data = kv->value.array.data;
	*ret_n = kv->value.array.n;
	return 0;
}

void gguf_array_strings(const uint8_t *data, uint64_t n, struct gguf_string *out)
{
	/* The parser walked these already: every length is in bounds. */
	for (uint64_t i = 0; i < n; i++) {
		uint64_t len = le(data, 8);

		out[i] = (struct gguf_string){ (const char *)data + 8, len };
		data += 8 + len;
	}
}
