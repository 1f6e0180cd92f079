/* SPDX-License-Identifier: MIT */
/*
 * The llama forward pass: RMSNorm, Q/K/V projections, RoPE on interleaved
 * pairs (x[2i], x[2i+1]) with angles in float64, grouped-query attention
 * through the KV cache interface, the output projection, SwiGLU, and the
 * (possibly tied) classifier.  Matrix-vector products read F16 or F32
 * weights straight from the mapping (F16C + FMA where the CPU has them).
 */
#include <errno.h>
#ifdef __x86_64__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tqkv/codec.h>

#include "cpu.h"
#include "llama-model.h"

/* ---- loading ------------------------------------------------------------ */

static int hparam(const struct gguf_file *f, const char *key, uint64_t max, uint32_t *ret, char *err, size_t err_size)
{
	uint64_t v;
	int r = gguf_get_u64(f, key, &v);

	if (r < 0 || v == 0 || v > max) {
		snprintf(err, err_size, "%s: %s", key, r == -ENOENT ? "missing" : "not an integer in range");
		return -EBADMSG;
	}
	*ret = (uint32_t)v;
	return 0;
}

/* The tensor name must exist with GGUF dims [cols, rows]. */
static int matrix(const struct gguf_file *f, const char *name, uint32_t rows, uint32_t cols, struct llama_matrix *ret,
		  char *err, size_t err_size)
{
	const struct gguf_tensor *t = gguf_find_tensor(f, name);

	if (!t) {
		snprintf(err, err_size, "tensor %s is missing", name);
		return -EBADMSG;
	}
	if (t->n_dims > 2 || t->dims[0] != cols || t->dims[1] != rows) {
		snprintf(err, err_size, "tensor %s has shape [%llu, %llu], expected [%u, %u]", name,
			 (unsigned long long)t->dims[0], (unsigned long long)t->dims[1], cols, rows);
		return -EBADMSG;
	}
	*ret = (struct llama_matrix){ t->data, t->type, rows, cols };
	return 0;
}

static float element(const struct llama_matrix *m, size_t i)
{
	return m->type == GGUF_TENSOR_F32 ? ((const float *)m->data)[i]
					  : tqkv_f16_to_f32(((const uint16_t *)m->data)[i]);
}

/* A norm's weights as floats. */
static int vector(const struct gguf_file *f, const char *name, uint32_t n, float **ret, char *err, size_t err_size)
{
	struct llama_matrix m;
	int r = matrix(f, name, 1, n, &m, err, err_size);

	if (r < 0)
		return r;
	*ret = malloc(sizeof(float) * n);
	if (!*ret)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++)
		(*ret)[i] = element(&m, i);
	return 0;
}

int llama_model_load(const struct gguf_file *f, struct llama_model **ret, char *err, size_t err_size)
{
	struct llama_model *m;
	struct llama_hparams *hp;
	struct gguf_string arch;
	double v;
	int r;

	if (gguf_get_string(f, "general.architecture", &arch) < 0 || arch.len != 5 || memcmp(arch.s, "llama", 5)) {
		snprintf(err, err_size, "general.architecture is not \"llama\"");
		return -ENOTSUP;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	hp = &m->hp;
	if ((r = hparam(f, "llama.block_count", 1024, &hp->n_layers, err, err_size)) < 0 ||
	    (r = hparam(f, "llama.embedding_length", 1 << 16, &hp->dim, err, err_size)) < 0 ||
	    (r = hparam(f, "llama.attention.head_count", 1024, &hp->n_heads, err, err_size)) < 0 ||
	    (r = hparam(f, "llama.feed_forward_length", 1 << 18, &hp->ffn, err, err_size)) < 0 ||
	    (r = hparam(f, "llama.context_length", 1 << 24, &hp->context, err, err_size)) < 0)
		goto fail;
	if (hparam(f, "llama.attention.head_count_kv", hp->n_heads, &hp->n_kv_heads, err, err_size) < 0)
		hp->n_kv_heads = hp->n_heads;
	if (hp->dim % hp->n_heads || hp->n_heads % hp->n_kv_heads) {
		snprintf(err, err_size, "embedding_length %u, head_count %u, head_count_kv %u do not divide", hp->dim,
			 hp->n_heads, hp->n_kv_heads);
		r = -EBADMSG;
		goto fail;
	}
	hp->head_dim = hp->dim / hp->n_heads;
	if (hp->head_dim % 2 || hp->head_dim > TQKV_HEAD_DIM_MAX) {
		snprintf(err, err_size, "head_dim %u is odd or above %u", hp->head_dim, TQKV_HEAD_DIM_MAX);
		r = -ENOTSUP;
		goto fail;
	}
	hp->rope_theta = gguf_get_f64(f, "llama.rope.freq_base", &v) == 0 ? (float)v : 10000.0f;
	hp->rms_eps = gguf_get_f64(f, "llama.attention.layer_norm_rms_epsilon", &v) == 0 ? (float)v : 1e-5f;
	{
		const struct gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");

		if (!t || t->n_dims != 2 || t->dims[1] == 0 || t->dims[1] > (1u << 24)) {
			snprintf(err, err_size, "tensor token_embd.weight is missing or not a matrix");
			r = -EBADMSG;
			goto fail;
		}
		hp->vocab = (uint32_t)t->dims[1];
	}
	if ((r = matrix(f, "token_embd.weight", hp->vocab, hp->dim, &m->tok_embd, err, err_size)) < 0 ||
	    (r = vector(f, "output_norm.weight", hp->dim, &m->output_norm, err, err_size)) < 0)
		goto fail;
	if (gguf_find_tensor(f, "output.weight")) {
		if ((r = matrix(f, "output.weight", hp->vocab, hp->dim, &m->output, err, err_size)) < 0)
			goto fail;
	} else {
		m->output = m->tok_embd;  /* tied classifier */
	}
	m->layers = calloc(hp->n_layers, sizeof(*m->layers));
	if (!m->layers) {
		r = -ENOMEM;
		goto fail;
	}
	for (uint32_t l = 0; l < hp->n_layers; l++) {
		struct llama_layer *L = &m->layers[l];
		uint32_t q = hp->n_heads * hp->head_dim, kv = hp->n_kv_heads * hp->head_dim;
		char name[64];

#define NAME(s) (snprintf(name, sizeof(name), "blk.%u." s, l), name)
		if ((r = vector(f, NAME("attn_norm.weight"), hp->dim, &L->attn_norm, err, err_size)) < 0 ||
		    (r = vector(f, NAME("ffn_norm.weight"), hp->dim, &L->ffn_norm, err, err_size)) < 0 ||
		    (r = matrix(f, NAME("attn_q.weight"), q, hp->dim, &L->wq, err, err_size)) < 0 ||
		    (r = matrix(f, NAME("attn_k.weight"), kv, hp->dim, &L->wk, err, err_size)) < 0 ||
		    (r = matrix(f, NAME("attn_v.weight"), kv, hp->dim, &L->wv, err, err_size)) < 0 ||
		    (r = matrix(f, NAME("attn_output.weight"), hp->dim, q, &L->wo, err, err_size)) < 0 ||
		    (r = matrix(f, NAME("ffn_gate.weight"), hp->ffn, hp->dim, &L->w_gate, err, err_size)) < 0 ||
		    (r = matrix(f, NAME("ffn_up.weight"), hp->ffn, hp->dim, &L->w_up, err, err_size)) < 0 ||
		    (r = matrix(f, NAME("ffn_down.weight"), hp->dim, hp->ffn, &L->w_down, err, err_size)) < 0)
			goto fail;
#undef NAME
	}
	*ret = m;
	return 0;
fail:
	llama_model_free(m);
	return r;
}

void llama_model_free(struct llama_model *m)
{
	if (!m)
		return;
	for (uint32_t l = 0; m->layers && l < m->hp.n_layers; l++) {
		free(m->layers[l].attn_norm);
		free(m->layers[l].ffn_norm);
	}
	free(m->layers);
	free(m->output_norm);
	free(m);
}

/* ---- kernels ------------------------------------------------------------ */

#ifdef __x86_64__
__attribute__((target("avx2,fma,f16c"))) static float dot_f16_avx2(const uint16_t *w, const float *x, uint32_t n)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0;
	uint32_t i = 0;
	float s;

	for (; i + 16 <= n; i += 16) {
		a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i))), _mm256_loadu_ps(x + i), a0);
		a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8))),
				     _mm256_loadu_ps(x + i + 8), a1);
	}
	a0 = _mm256_add_ps(a0, a1);
	{
		__m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));

		h = _mm_add_ps(h, _mm_movehl_ps(h, h));
		h = _mm_add_ss(h, _mm_movehdup_ps(h));
		s = _mm_cvtss_f32(h);
	}
	for (; i < n; i++)
		s += tqkv_f16_to_f32(w[i]) * x[i];
	return s;
}

__attribute__((target("avx2,fma"))) static float dot_f32_avx2(const float *w, const float *x, uint32_t n)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0;
	uint32_t i = 0;
	float s;

	for (; i + 16 <= n; i += 16) {
		a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
		a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
	}
	a0 = _mm256_add_ps(a0, a1);
	{
		__m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));

		h = _mm_add_ps(h, _mm_movehl_ps(h, h));
		h = _mm_add_ss(h, _mm_movehdup_ps(h));
		s = _mm_cvtss_f32(h);
	}
	for (; i < n; i++)
		s += w[i] * x[i];
	return s;
}

#endif

/* y = W x: one float64 dot per row on CPUs without AVX2 (the reference). */
static void matvec(const struct llama_matrix *w, const float *x, float *y)
{
#ifdef __x86_64__
	static int simd = -1;

	if (simd < 0)
		simd = cpu_has_isa(CPU_ISA_AVX2);  /* AVX2, FMA, F16C */
#else
	const int simd = 0;
#endif
	for (uint32_t r = 0; r < w->rows; r++) {
		size_t at = (size_t)r * w->cols;

#ifdef __x86_64__
		if (simd && w->type == GGUF_TENSOR_F16) {
			y[r] = dot_f16_avx2((const uint16_t *)w->data + at, x, w->cols);
			continue;
		}
		if (simd) {
			y[r] = dot_f32_avx2((const float *)w->data + at, x, w->cols);
			continue;
		}
#endif
		{
			double s = 0;

			for (uint32_t c = 0; c < w->cols; c++)
				s += (double)element(w, at + c) * x[c];
			y[r] = (float)s;
		}
	}
}

static void rmsnorm(const float *x, const float *w, uint32_t n, float eps, float *out)
{
	double ss = 0;
	float scale;

	for (uint32_t i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	scale = (float)(1.0 / sqrt(ss / n + eps));
	for (uint32_t i = 0; i < n; i++)
		out[i] = x[i] * scale * w[i];
}

/* Rotates pairs (x[2i], x[2i+1]) of every head by pos * theta^(-2i/d). */
static void rope(float *x, uint32_t n_heads, uint32_t d, uint32_t pos, float theta)
{
	for (uint32_t i = 0; i < d / 2; i++) {
		double angle = pos * pow(theta, -2.0 * i / d);
		float c = (float)cos(angle), s = (float)sin(angle);

		for (uint32_t h = 0; h < n_heads; h++) {
			float *p = x + h * d + 2 * i, a = p[0], b = p[1];

			p[0] = a * c - b * s;
			p[1] = a * s + b * c;
		}
	}
}

/* ---- the FP32 KV cache -------------------------------------------------- */

struct llama_kv_f32 {
	struct llama_hparams hp;
	uint32_t max_tokens;
	float *k, *v;          /* [layer][token][n_kv_heads * head_dim] */
	float *scores;         /* max_tokens */
};

int llama_kv_f32_new(const struct llama_hparams *hp, uint32_t max_tokens, struct llama_kv_f32 **ret)
{
	struct llama_kv_f32 *kv = calloc(1, sizeof(*kv));
	size_t n = (size_t)hp->n_layers * max_tokens * hp->n_kv_heads * hp->head_dim;

	if (!kv)
		return -ENOMEM;
	kv->hp = *hp;
	kv->max_tokens = max_tokens;
	kv->k = malloc(sizeof(float) * n);
	kv->v = malloc(sizeof(float) * n);
	kv->scores = malloc(sizeof(float) * max_tokens);
	if (!kv->k || !kv->v || !kv->scores) {
		llama_kv_f32_free(kv);
		return -ENOMEM;
	}
	*ret = kv;
	return 0;
}

void llama_kv_f32_free(struct llama_kv_f32 *kv)
{
	if (!kv)
		return;
	free(kv->k);
	free(kv->v);
	free(kv->scores);
	free(kv);
}

static int kv_f32_store(void *p, uint32_t layer, uint32_t pos, const float *k, const float *v)
{
	struct llama_kv_f32 *kv = p;
	size_t row = (size_t)kv->hp.n_kv_heads * kv->hp.head_dim, at = ((size_t)layer * kv->max_tokens + pos) * row;

	if (pos >= kv->max_tokens)
		return -ENOSPC;
	memcpy(kv->k + at, k, sizeof(float) * row);
	memcpy(kv->v + at, v, sizeof(float) * row);
	return 0;
}

static int kv_f32_attend(void *p, uint32_t layer, uint32_t pos, const float *q, float *out)
{
	struct llama_kv_f32 *kv = p;
	const struct llama_hparams *hp = &kv->hp;
	uint32_t d = hp->head_dim, g = hp->n_heads / hp->n_kv_heads;
	size_t row = (size_t)hp->n_kv_heads * d;
	const float *K = kv->k + (size_t)layer * kv->max_tokens * row, *V = kv->v + (size_t)layer * kv->max_tokens * row;
	float scale = 1.0f / sqrtf((float)d);

	for (uint32_t h = 0; h < hp->n_heads; h++) {
		const float *qh = q + (size_t)h * d;
		float *o = out + (size_t)h * d, m = -INFINITY;
		double sum = 0;
		uint32_t kvh = h / g;

		for (uint32_t t = 0; t <= pos; t++) {
			const float *k = K + t * row + kvh * d;
			float s = 0;

			for (uint32_t j = 0; j < d; j++)
				s += qh[j] * k[j];
			kv->scores[t] = s * scale;
			m = kv->scores[t] > m ? kv->scores[t] : m;
		}
		memset(o, 0, sizeof(float) * d);
		for (uint32_t t = 0; t <= pos; t++) {
			const float *v = V + t * row + kvh * d;
			float w = expf(kv->scores[t] - m);

			sum += w;
			for (uint32_t j = 0; j < d; j++)
				o[j] += w * v[j];
		}
		for (uint32_t j = 0; j < d; j++)
			o[j] = (float)(o[j] / sum);
	}
	return 0;
}

const struct llama_kv_ops llama_kv_f32_ops = { kv_f32_store, kv_f32_attend };

/* ---- the forward pass --------------------------------------------------- */

struct llama_ctx {
	const struct llama_model *m;
	const struct llama_kv_ops *ops;
	void *kv;
	float *x, *xb, *q, *k, *v, *att, *gate, *up;
};

int llama_ctx_new(const struct llama_model *m, const struct llama_kv_ops *ops, void *kv, struct llama_ctx **ret)
{
	const struct llama_hparams *hp = &m->hp;
	struct llama_ctx *c = calloc(1, sizeof(*c));
	size_t q = (size_t)hp->n_heads * hp->head_dim, kvn = (size_t)hp->n_kv_heads * hp->head_dim;

	if (!c)
		return -ENOMEM;
	*c = (struct llama_ctx){ m, ops, kv, malloc(sizeof(float) * hp->dim), malloc(sizeof(float) * hp->dim),
				 malloc(sizeof(float) * q), malloc(sizeof(float) * kvn), malloc(sizeof(float) * kvn),
				 malloc(sizeof(float) * q), malloc(sizeof(float) * hp->ffn), malloc(sizeof(float) * hp->ffn) };
	if (!c->x || !c->xb || !c->q || !c->k || !c->v || !c->att || !c->gate || !c->up) {
		llama_ctx_free(c);
		return -ENOMEM;
	}
	*ret = c;
	return 0;
}

void llama_ctx_free(struct llama_ctx *c)
{
	if (!c)
		return;
	free(c->x);
	free(c->xb);
	free(c->q);
	free(c->k);
	free(c->v);
	free(c->att);
	free(c->gate);
	free(c->up);
	free(c);
}

int llama_forward(struct llama_ctx *c, uint32_t token, uint32_t pos, float *logits)
{
	const struct llama_model *m = c->m;
	const struct llama_hparams *hp = &m->hp;

	if (token >= hp->vocab)
		return -EINVAL;
	for (uint32_t i = 0; i < hp->dim; i++)
		c->x[i] = element(&m->tok_embd, (size_t)token * hp->dim + i);
	for (uint32_t l = 0; l < hp->n_layers; l++) {
		const struct llama_layer *L = &m->layers[l];
		int r;

		rmsnorm(c->x, L->attn_norm, hp->dim, hp->rms_eps, c->xb);
		matvec(&L->wq, c->xb, c->q);
		matvec(&L->wk, c->xb, c->k);
		matvec(&L->wv, c->xb, c->v);
		rope(c->q, hp->n_heads, hp->head_dim, pos, hp->rope_theta);
		rope(c->k, hp->n_kv_heads, hp->head_dim, pos, hp->rope_theta);
		if ((r = c->ops->store(c->kv, l, pos, c->k, c->v)) < 0 || (r = c->ops->attend(c->kv, l, pos, c->q, c->att)) < 0)
			return r;
		matvec(&L->wo, c->att, c->xb);
		for (uint32_t i = 0; i < hp->dim; i++)
			c->x[i] += c->xb[i];
		rmsnorm(c->x, L->ffn_norm, hp->dim, hp->rms_eps, c->xb);
		matvec(&L->w_gate, c->xb, c->gate);
		matvec(&L->w_up, c->xb, c->up);
		for (uint32_t i = 0; i < hp->ffn; i++)
			c->gate[i] = c->gate[i] / (1.0f + expf(-c->gate[i])) * c->up[i];
		matvec(&L->w_down, c->gate, c->xb);
		for (uint32_t i = 0; i < hp->dim; i++)
			c->x[i] += c->xb[i];
	}
	if (logits) {
		rmsnorm(c->x, m->output_norm, hp->dim, hp->rms_eps, c->xb);
		matvec(&m->output, c->xb, logits);
	}
	return 0;
}
