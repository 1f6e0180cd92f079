/* SPDX-License-Identifier: MIT */
/*
 * SentencePiece BPE as llama.cpp's "llama" tokenizer does it: the text
 * (with a leading space, spaces as U+2581) is split into UTF-8 characters;
 * the adjacent pair whose concatenation is a vocabulary piece with the
 * highest score merges first (the leftmost on ties), until no pair is a
 * piece; what is left and is no piece becomes byte tokens.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama-tokenizer.h"

#define TOKEN_TYPE_CONTROL 3
#define TOKEN_TYPE_BYTE 6

struct llama_tokenizer {
	uint32_t n;
	struct gguf_string *pieces;
	float *scores;
	int32_t *types;
	uint32_t bos, eos;
	bool add_bos, space_prefix;
	int32_t byte_id[256];         /* <0xXX> tokens, -1 if absent */
	uint32_t *slots;              /* open addressing: id + 1, 0 = empty */
	uint32_t n_slots;
};

static uint64_t hash(const char *s, size_t len)
{
	uint64_t h = 1469598103934665603ull;  /* FNV-1a */

	for (size_t i = 0; i < len; i++)
		h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
	return h;
}

static int32_t lookup(const struct llama_tokenizer *t, const char *s, size_t len)
{
	for (uint32_t i = (uint32_t)hash(s, len) & (t->n_slots - 1);; i = (i + 1) & (t->n_slots - 1)) {
		uint32_t id = t->slots[i];

		if (id == 0)
			return -1;
		if (t->pieces[id - 1].len == len && memcmp(t->pieces[id - 1].s, s, len) == 0)
			return (int32_t)(id - 1);
	}
}

static int hex_byte(const struct gguf_string *p)
{
	unsigned v;

	if (p->len != 6 || memcmp(p->s, "<0x", 3) != 0 || p->s[5] != '>' || sscanf(p->s + 3, "%2x", &v) != 1)
		return -1;
	return (int)v;
}

int llama_tokenizer_new(const struct gguf_file *f, struct llama_tokenizer **ret, char *err, size_t err_size)
{
	struct llama_tokenizer *t;
	struct gguf_string model;
	const uint8_t *pieces, *scores, *types = NULL;
	uint64_t n, n_scores, n_types = 0, v;
	int r;

	if (gguf_get_string(f, "tokenizer.ggml.model", &model) < 0 || model.len != 5 || memcmp(model.s, "llama", 5)) {
		snprintf(err, err_size, "tokenizer.ggml.model is not \"llama\" (only SentencePiece BPE is supported)");
		return -ENOTSUP;
	}
	if (gguf_get_array(f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &pieces, &n) < 0 || n == 0 || n > (1u << 24) ||
	    gguf_get_array(f, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &scores, &n_scores) < 0 || n_scores != n ||
	    (gguf_get_array(f, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, &types, &n_types) == 0 && n_types != n)) {
		snprintf(err, err_size, "tokenizer.ggml.tokens/scores/token_type: missing, of the wrong type or of different lengths");
		return -EBADMSG;
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->n = (uint32_t)n;
	for (t->n_slots = 16; t->n_slots < 2 * t->n; t->n_slots *= 2)
		;
	t->pieces = calloc(n, sizeof(*t->pieces));
	t->scores = calloc(n, sizeof(*t->scores));
	t->types = calloc(n, sizeof(*t->types));
	t->slots = calloc(t->n_slots, sizeof(*t->slots));
	if (!t->pieces || !t->scores || !t->types || !t->slots) {
		llama_tokenizer_free(t);
		return -ENOMEM;
	}
	gguf_array_strings(pieces, n, t->pieces);
	memcpy(t->scores, scores, sizeof(float) * n);  /* little-endian host */
	if (types)
		memcpy(t->types, types, sizeof(int32_t) * n);
	for (int i = 0; i < 256; i++)
		t->byte_id[i] = -1;
	for (uint32_t id = 0; id < t->n; id++) {
		uint32_t i = (uint32_t)hash(t->pieces[id].s, t->pieces[id].len) & (t->n_slots - 1);
		int b = hex_byte(&t->pieces[id]);

		if (lookup(t, t->pieces[id].s, t->pieces[id].len) >= 0)
			continue;  /* a duplicate piece: the first id wins */
		while (t->slots[i])
			i = (i + 1) & (t->n_slots - 1);
		t->slots[i] = id + 1;
		if (b >= 0 && (!types || t->types[id] == TOKEN_TYPE_BYTE))
			t->byte_id[b] = (int32_t)id;
	}
	t->bos = gguf_get_u64(f, "tokenizer.ggml.bos_token_id", &v) == 0 ? (uint32_t)v : 1;
	t->eos = gguf_get_u64(f, "tokenizer.ggml.eos_token_id", &v) == 0 ? (uint32_t)v : 2;
	t->add_bos = true;
	t->space_prefix = true;
	{
		const struct gguf_kv *kv = gguf_find(f, "tokenizer.ggml.add_bos_token");

		if (kv && kv->value.type == GGUF_TYPE_BOOL)
			t->add_bos = kv->value.u;
		kv = gguf_find(f, "tokenizer.ggml.add_space_prefix");
		if (kv && kv->value.type == GGUF_TYPE_BOOL)
			t->space_prefix = kv->value.u;
	}
	if (t->bos >= t->n || t->eos >= t->n) {
		snprintf(err, err_size, "bos/eos token id outside the vocabulary of %u", t->n);
		r = -EBADMSG;
		llama_tokenizer_free(t);
		return r;
	}
	*ret = t;
	return 0;
}

void llama_tokenizer_free(struct llama_tokenizer *t)
{
	if (!t)
		return;
	free(t->pieces);
	free(t->scores);
	free(t->types);
	free(t->slots);
	free(t);
}

uint32_t llama_tokenizer_vocab(const struct llama_tokenizer *t)
{
	return t->n;
}

uint32_t llama_tokenizer_bos(const struct llama_tokenizer *t)
{
	return t->bos;
}

uint32_t llama_tokenizer_eos(const struct llama_tokenizer *t)
{
	return t->eos;
}

/* ---- encoding ----------------------------------------------------------- */

struct symbol {
	int prev, next;     /* neighbours in the list, -1 at the ends */
	size_t start, len;  /* bytes of the normalised text; len 0 = merged away */
};

struct bigram {
	int left, right;
	float score;
	size_t len;         /* of the merged text, to spot stale entries */
};

/* Max-heap on score, then on the leftmost position. */
static bool before(const struct bigram *a, const struct bigram *b)
{
	return a->score > b->score || (a->score == b->score && a->left < b->left);
}

struct heap {
	struct bigram *v;
	size_t n, cap;
};

static int heap_push(struct heap *h, struct bigram b)
{
	size_t i;

	if (h->n == h->cap) {
		size_t cap = h->cap ? 2 * h->cap : 64;
		struct bigram *v = realloc(h->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		h->v = v;
		h->cap = cap;
	}
	for (i = h->n++; i > 0 && before(&b, &h->v[(i - 1) / 2]); i = (i - 1) / 2)
		h->v[i] = h->v[(i - 1) / 2];
	h->v[i] = b;
	return 0;
}

static struct bigram heap_pop(struct heap *h)
{
	struct bigram top = h->v[0], last = h->v[--h->n];
	size_t i = 0;

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= h->n)
			break;
		if (c + 1 < h->n && before(&h->v[c + 1], &h->v[c]))
			c++;
		if (!before(&h->v[c], &last))
			break;
		h->v[i] = h->v[c];
		i = c;
	}
	if (h->n)
		h->v[i] = last;
	return top;
}

static int try_bigram(const struct llama_tokenizer *t, const char *text, const struct symbol *sym, int left,
		      int right, struct heap *h)
{
	int32_t id;

	if (left < 0 || right < 0)
		return 0;
	id = lookup(t, text + sym[left].start, sym[left].len + sym[right].len);
	if (id < 0)
		return 0;
	return heap_push(h, (struct bigram){ left, right, t->scores[id], sym[left].len + sym[right].len });
}

static size_t utf8_len(uint8_t c)
{
	return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}

int llama_tokenize(const struct llama_tokenizer *t, const char *text, size_t len, bool bos, uint32_t *ids,
		   size_t max)
{
	static const char space[] = "\xe2\x96\x81";  /* U+2581 */
	char *norm = malloc(3 * len + 4);
	struct symbol *sym = malloc(sizeof(*sym) * (3 * len + 4));
	struct heap h = { NULL, 0, 0 };
	size_t n = 0, count = 0, nsym = 0;
	int r = 0;

	if (!norm || !sym) {
		r = -ENOMEM;
		goto out;
	}
	if (t->space_prefix && len > 0) {
		memcpy(norm, space, 3);
		n = 3;
	}
	for (size_t i = 0; i < len; i++)
		if (text[i] == ' ') {
			memcpy(norm + n, space, 3);
			n += 3;
		} else {
			norm[n++] = text[i];
		}
	for (size_t i = 0; i < n; nsym++) {
		size_t l = utf8_len((uint8_t)norm[i]);

		if (l > n - i)
			l = n - i;
		sym[nsym] = (struct symbol){ (int)nsym - 1, (int)nsym + 1, i, l };
		i += l;
	}
	if (nsym)
		sym[nsym - 1].next = -1;
	for (size_t i = 1; i < nsym && r == 0; i++)
		r = try_bigram(t, norm, sym, (int)i - 1, (int)i, &h);
	while (r == 0 && h.n) {
		struct bigram b = heap_pop(&h);
		struct symbol *l = &sym[b.left], *rt = &sym[b.right];

		if (l->len == 0 || rt->len == 0 || l->len + rt->len != b.len)
			continue;  /* one side merged since */
		l->len += rt->len;
		rt->len = 0;
		l->next = rt->next;
		if (rt->next >= 0)
			sym[rt->next].prev = b.left;
		r = try_bigram(t, norm, sym, l->prev, b.left, &h);
		if (r == 0)
			r = try_bigram(t, norm, sym, b.left, l->next, &h);
	}
	if (r < 0)
		goto out;
	if (bos && t->add_bos) {
		if (count < max)
			ids[count] = t->bos;
		count++;
	}
	for (int i = nsym ? 0 : -1; i >= 0; i = sym[i].next) {
		int32_t id = lookup(t, norm + sym[i].start, sym[i].len);

		if (id >= 0) {
			if (count < max)
				ids[count] = (uint32_t)id;
			count++;
			continue;
		}
		for (size_t k = 0; k < sym[i].len; k++) {
			int32_t b = t->byte_id[(uint8_t)norm[sym[i].start + k]];

			if (count < max)
				ids[count] = b >= 0 ? (uint32_t)b : 0;  /* no byte piece: unknown (id 0) */
			count++;
		}
	}
	r = (int)count;
out:
	free(norm);
	free(sym);
	free(h.v);
	return r;
}

int llama_token_text(const struct llama_tokenizer *t, uint32_t id, char *out, size_t out_size)
{
	const struct gguf_string *p;
	size_t n = 0;

	if (id >= t->n)
		return -EINVAL;
	p = &t->pieces[id];
	if (t->types[id] == TOKEN_TYPE_CONTROL)
		return 0;
	if (t->types[id] == TOKEN_TYPE_BYTE && hex_byte(p) >= 0) {
		if (out_size)
			out[0] = (char)hex_byte(p);
		return out_size ? 1 : 0;
	}
	for (size_t i = 0; i < p->len && n < out_size;) {
		if (i + 3 <= p->len && memcmp(p->s + i, "\xe2\x96\x81", 3) == 0) {
			out[n++] = ' ';
			i += 3;
		} else {
			out[n++] = p->s[i++];
		}
	}
	return (int)n;
}
