/* SPDX-License-Identifier: MIT */
/*
 * The GGUF reader: the two real models of ../shared/models, a small file
 * written here, every truncation of it, and a table of corruptions, each
 * a clear error and never a crash.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <criterion/criterion.h>

#include "gguf.h"
#include "ref-json.h"

/* ---- a tiny GGUF writer ------------------------------------------------- */

struct image {
	uint8_t b[4096];
	size_t n;
	/* Where the fields the corruption table patches are. */
	size_t version, kv_type, array_type, array_count, str_len, bool_value, alignment_value;
	size_t t0_ndims, t0_dim0, t0_type, t0_offset, t1_offset, t1_name, kv2_key;
};

static size_t put(struct image *im, uint64_t v, unsigned bytes)
{
	size_t at = im->n;

	for (unsigned i = 0; i < bytes; i++)
		im->b[im->n++] = (uint8_t)(v >> (8 * i));
	return at;
}

static size_t put_str(struct image *im, const char *s)
{
	size_t at = put(im, strlen(s), 8);

	memcpy(im->b + im->n, s, strlen(s));
	im->n += strlen(s);
	return at;
}

/* A valid v3 file: 6 metadata entries, an F32 [4, 2] and an F16 [8]
 * tensor, alignment 32. */
static void write_image(struct image *im)
{
	memset(im, 0, sizeof(*im));
	put(im, 0x46554747u, 4);
	im->version = put(im, 3, 4);
	put(im, 2, 8);  /* tensors */
	put(im, 6, 8);  /* metadata */
	put_str(im, "general.architecture");
	im->kv_type = put(im, GGUF_TYPE_STRING, 4);
	im->str_len = put_str(im, "llama");
	put_str(im, "llama.block_count");
	put(im, GGUF_TYPE_UINT32, 4);
	put(im, 5, 4);
	im->kv2_key = put_str(im, "llama.rope.freq_base");  /* as long as general.architecture */
	put(im, GGUF_TYPE_FLOAT32, 4);
	put(im, 0x461c4000u, 4);  /* 10000.0f */
	put_str(im, "tokenizer.ggml.tokens");
	put(im, GGUF_TYPE_ARRAY, 4);
	im->array_type = put(im, GGUF_TYPE_STRING, 4);
	im->array_count = put(im, 3, 8);
	put_str(im, "<unk>");
	put_str(im, "a");
	put_str(im, "bc");
	put_str(im, "tokenizer.ggml.add_bos_token");
	put(im, GGUF_TYPE_BOOL, 4);
	im->bool_value = put(im, 1, 1);
	put_str(im, "general.alignment");
	put(im, GGUF_TYPE_UINT32, 4);
	im->alignment_value = put(im, 32, 4);
	put_str(im, "token_embd.weight");
	im->t0_ndims = put(im, 2, 4);
	im->t0_dim0 = put(im, 4, 8);
	put(im, 2, 8);
	im->t0_type = put(im, GGUF_TENSOR_F32, 4);
	im->t0_offset = put(im, 0, 8);
	im->t1_name = put_str(im, "norm_final.weight");  /* as long as token_embd.weight */
	put(im, 1, 4);
	put(im, 8, 8);
	put(im, GGUF_TENSOR_F16, 4);
	im->t1_offset = put(im, 32, 8);
	while (im->n % 32)
		put(im, 0, 1);
	for (unsigned i = 0; i < 8; i++) {
		float f = (float)i + 0.5f;
		uint32_t u;

		memcpy(&u, &f, 4);
		put(im, u, 4);
	}
	for (unsigned i = 0; i < 8; i++)
		put(im, 0x3c00, 2);  /* 1.0 in fp16 */
}

static void patch(struct image *im, size_t at, uint64_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		im->b[at + i] = (uint8_t)(v >> (8 * i));
}

/* ---- the tests ---------------------------------------------------------- */

Test(gguf, parses_a_small_file)
{
	struct image im;
	struct gguf_file *f;
	struct gguf_string s, toks[3];
	const struct gguf_tensor *t;
	const uint8_t *arr;
	uint64_t u, n;
	double x;
	char err[256];

	write_image(&im);
	cr_assert_eq(gguf_parse(im.b, im.n, &f, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(f->version, 3);
	cr_assert_eq(gguf_get_string(f, "general.architecture", &s), 0);
	cr_assert(s.len == 5 && memcmp(s.s, "llama", 5) == 0);
	cr_assert_eq(gguf_get_u64(f, "llama.block_count", &u), 0);
	cr_assert_eq(u, 5);
	cr_assert_eq(gguf_get_f64(f, "llama.rope.freq_base", &x), 0);
	cr_assert_eq(x, 10000.0);
	cr_assert_eq(gguf_get_u64(f, "tokenizer.ggml.add_bos_token", &u), -EBADMSG, "a bool is not an integer");
	cr_assert_eq(gguf_get_u64(f, "llama.missing", &u), -ENOENT);
	cr_assert_eq(gguf_get_string(f, "llama.block_count", &s), -EBADMSG);
	cr_assert_eq(gguf_get_array(f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &arr, &n), 0);
	cr_assert_eq(n, 3);
	gguf_array_strings(arr, n, toks);
	cr_assert(toks[2].len == 2 && memcmp(toks[2].s, "bc", 2) == 0);
	t = gguf_find_tensor(f, "token_embd.weight");
	cr_assert_not_null(t);
	cr_assert(t->n_dims == 2 && t->dims[0] == 4 && t->dims[1] == 2 && t->n_elements == 8 && t->bytes == 32);
	cr_assert_eq(((const float *)t->data)[7], 7.5f);
	t = gguf_find_tensor(f, "norm_final.weight");
	cr_assert(t && t->type == GGUF_TENSOR_F16 && ((const uint16_t *)t->data)[0] == 0x3c00);
	cr_assert_null(gguf_find_tensor(f, "output.weight"));
	gguf_close(f);
}

/* Every prefix of a valid file is refused with a message, none crashes. */
Test(gguf, every_truncation_is_an_error)
{
	struct image im;

	write_image(&im);
	for (size_t n = 0; n < im.n; n++) {
		struct gguf_file *f = NULL;
		char err[256];
		uint8_t *copy = malloc(n ? n : 1);  /* exactly n bytes, so ASan sees any overread */
		int r;

		memcpy(copy, im.b, n);
		r = gguf_parse(copy, n, &f, err, sizeof(err));
		cr_assert_eq(r, -EBADMSG, "prefix of %zu bytes: %d", n, r);
		cr_assert_null(f);
		cr_assert_gt(strlen(err), 0);
		free(copy);
	}
}

Test(gguf, corruptions_are_clear_errors)
{
	static const struct {
		const char *what;
		int field;       /* offsetof in struct image of the patched place, or -1 for magic */
		unsigned shift;  /* bytes after the field */
		uint64_t value;
		unsigned bytes;
		int result;
		const char *message;
	} cases[] = {
		{ "magic", -1, 0, 0x46554746, 4, -EBADMSG, "not a GGUF file" },
		{ "version 1", offsetof(struct image, version), 0, 1, 4, -ENOTSUP, "version 1" },
		{ "version 4", offsetof(struct image, version), 0, 4, 4, -ENOTSUP, "version 4" },
		{ "value type", offsetof(struct image, kv_type), 0, 13, 4, -EBADMSG, "unknown value type" },
		{ "string length", offsetof(struct image, str_len), 0, UINT64_MAX / 2, 8, -EBADMSG, "past the end" },
		{ "array of arrays", offsetof(struct image, array_type), 0, GGUF_TYPE_ARRAY, 4, -EBADMSG, "element type" },
		{ "array count", offsetof(struct image, array_count), 0, UINT64_MAX, 8, -EBADMSG, "cannot fit" },
		{ "bool", offsetof(struct image, bool_value), 0, 2, 1, -EBADMSG, "neither 0 nor 1" },
		{ "alignment", offsetof(struct image, alignment_value), 0, 24, 4, -EBADMSG, "power of two" },
		{ "no dims", offsetof(struct image, t0_ndims), 0, 0, 4, -EBADMSG, "0 dimensions" },
		{ "5 dims", offsetof(struct image, t0_ndims), 0, 5, 4, -EBADMSG, "5 dimensions" },
		{ "zero dim", offsetof(struct image, t0_dim0), 0, 0, 8, -EBADMSG, "dimension 0 is 0" },
		{ "huge dim", offsetof(struct image, t0_dim0), 0, UINT64_MAX, 8, -EBADMSG, "too large" },
		{ "q4_0 tensor", offsetof(struct image, t0_type), 0, 2, 4, -ENOTSUP, "not supported" },
		{ "misaligned", offsetof(struct image, t0_offset), 0, 4, 8, -EBADMSG, "not a multiple" },
		{ "past the end", offsetof(struct image, t1_offset), 0, 64, 8, -EBADMSG, "past the end" },
		{ "overlap", offsetof(struct image, t1_offset), 0, 0, 8, -EBADMSG, "overlap" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct image im;
		struct gguf_file *f = NULL;
		char err[256];
		size_t at;
		int r;

		write_image(&im);
		at = cases[i].field < 0 ? 0 : *(const size_t *)((const char *)&im + cases[i].field) + cases[i].shift;
		patch(&im, at, cases[i].value, cases[i].bytes);
		r = gguf_parse(im.b, im.n, &f, err, sizeof(err));
		cr_assert_eq(r, cases[i].result, "%s: %d (%s)", cases[i].what, r, err);
		cr_assert_null(f);
		if (cases[i].message)
			cr_assert_not_null(strstr(err, cases[i].message), "%s: message '%s'", cases[i].what, err);
	}
}

/* A key or a tensor name given twice. */
Test(gguf, duplicate_names)
{
	struct image im;
	struct gguf_file *f = NULL;
	char err[256];

	write_image(&im);
	memcpy(im.b + im.kv2_key + 8, "general.architecture", 20);
	cr_assert_eq(gguf_parse(im.b, im.n, &f, err, sizeof(err)), -EBADMSG);
	cr_assert_not_null(strstr(err, "'general.architecture' appears twice"), "%s", err);
	write_image(&im);
	memcpy(im.b + im.t1_name + 8, "token_embd.weight", 17);
	cr_assert_eq(gguf_parse(im.b, im.n, &f, err, sizeof(err)), -EBADMSG);
	cr_assert_not_null(strstr(err, "tensor 'token_embd.weight' appears twice"), "%s", err);
	cr_assert_null(f);
}

Test(gguf, open_errors)
{
	struct gguf_file *f = NULL;
	char err[256];

	cr_assert_eq(gguf_open("/nonexistent/model.gguf", &f, err, sizeof(err)), -ENOENT);
	cr_assert_not_null(strstr(err, "/nonexistent/model.gguf"));
	cr_assert_eq(gguf_open("/", &f, err, sizeof(err)), -EINVAL);
	cr_assert_null(f);
}

/* ---- the real models ---------------------------------------------------- */

static struct gguf_file *open_model(const char *name)
{
	char dir[4096], path[4200], err[256];
	struct gguf_file *f = NULL;

	if (!models_dir(dir, sizeof(dir))) {
		cr_log_warn("no model directory (set TQKV_MODELS): %s not checked", name);
		return NULL;
	}
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	cr_assert_eq(gguf_open(path, &f, err, sizeof(err)), 0, "%s", err);
	return f;
}

static uint64_t u64_of(const struct gguf_file *f, const char *key)
{
	uint64_t v = 0;

	cr_assert_eq(gguf_get_u64(f, key, &v), 0, "%s", key);
	return v;
}

Test(gguf, reads_stories260k)
{
	struct gguf_file *f = open_model("stories260K-f32.gguf");
	const struct gguf_tensor *t;
	const uint8_t *arr;
	uint64_t n;

	if (!f)
		return;
	cr_assert_eq(u64_of(f, "llama.block_count"), 5);
	cr_assert_eq(u64_of(f, "llama.embedding_length"), 64);
	cr_assert_eq(u64_of(f, "llama.attention.head_count"), 8);
	cr_assert_eq(u64_of(f, "llama.attention.head_count_kv"), 4);
	cr_assert_eq(gguf_get_array(f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &arr, &n), 0);
	cr_assert_eq(n, 512);
	t = gguf_find_tensor(f, "token_embd.weight");
	cr_assert(t && t->type == GGUF_TENSOR_F32 && t->dims[0] == 64 && t->dims[1] == 512);
	cr_assert_not_null(gguf_find_tensor(f, "blk.4.ffn_down.weight"));
	gguf_close(f);
}

Test(gguf, reads_the_head_dim_128_model)
{
	struct gguf_file *f = open_model("selftrained-llama-hd128-20M-f16.gguf");
	const struct gguf_tensor *t;
	struct gguf_string arch;

	if (!f)
		return;
	cr_assert_eq(gguf_get_string(f, "general.architecture", &arch), 0);
	cr_assert(arch.len == 5 && memcmp(arch.s, "llama", 5) == 0);
	cr_assert_eq(u64_of(f, "llama.block_count"), 6);
	cr_assert_eq(u64_of(f, "llama.embedding_length"), 512);
	cr_assert_eq(u64_of(f, "llama.attention.head_count"), 4);
	cr_assert_eq(u64_of(f, "llama.attention.head_count_kv"), 2);
	t = gguf_find_tensor(f, "blk.0.attn_k.weight");
	cr_assert(t && t->type == GGUF_TENSOR_F16 && t->dims[0] == 512 && t->dims[1] == 256);
	t = gguf_find_tensor(f, "blk.5.attn_norm.weight");
	cr_assert(t && t->type == GGUF_TENSOR_F32 && t->n_dims == 1 && t->dims[0] == 512);
	cr_assert_null(gguf_find_tensor(f, "output.weight"), "the classifier is tied");
	gguf_close(f);
}
