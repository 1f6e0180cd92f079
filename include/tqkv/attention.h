/* SPDX-License-Identifier: MIT */
/*
 * Decode attention over a layer view (include/tqkv/client.h): the published
 * compressed blocks and the FP16 tail, without expanding K or V to FP16 in
 * memory.  Scores of TurboQuant keys are computed in the rotated domain
 * (the query is rotated once per head) and values are accumulated there and
 * rotated back once per query head.
 *
 * Thread safety: calls on different sequences (or the same one, read-only)
 * may run concurrently.
 */
#ifndef TQKV_ATTENTION_H
#define TQKV_ATTENTION_H

#include <stdint.h>

#include <tqkv/client.h>
#include <tqkv/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Which kernels tqkv_attend() runs (struct tqkv_attn.kernel). */
enum tqkv_attn_kernel {
	TQKV_ATTN_KERNEL_AUTO = 0,    /* the fastest this CPU has */
	TQKV_ATTN_KERNEL_SCALAR = 1,  /* the portable reference: float64 accumulation, token by token */
	TQKV_ATTN_KERNEL_AVX2 = 2,    /* AVX2 + FMA + F16C tiles where the kinds allow, else scalar */
	TQKV_ATTN_KERNEL_AVX512 = 3,  /* AVX-512 F/BW/VL/DQ/VBMI/VNNI tiles where the kinds allow, else scalar */
};

/* Options of tqkv_attend() (struct tqkv_attn.flags). */
enum tqkv_attn_flag {
	/* Approximate scores, faster: the AVX-512 kernel of 2-, 3- and 4-bit
	 * TurboQuant keys looks each key coordinate up in an 8-bit table (one
	 * lookup per four coordinates instead of three).  Its output is no
	 * longer within 1e-4 of exact attention; docs/PERFORMANCE.md has the
	 * measured error.  Other kernels and kinds ignore it and stay exact. */
	TQKV_ATTN_INT8_SCORES = 1u << 0,
	/* Approximate values, faster: the same kernel weights each chunk of
	 * 64 tokens with 8-bit softmax weights (scaled to the chunk's
	 * largest) against 8-bit value centroids, four tokens per vpdpbusd,
	 * instead of a float lookup and FMA per token and coordinate.  Not
	 * within 1e-4 either; docs/PERFORMANCE.md has the measured error.
	 * Other kernels and kinds ignore it and stay exact. */
	TQKV_ATTN_INT8_VALUES = 1u << 1,
};

struct tqkv_attn {
	uint32_t n_q_heads;   /* query heads of the layer, a multiple of the view's n_kv_heads */
	float scale;          /* softmax scale, usually 1 / sqrt(head_dim) */
	uint64_t position;    /* the (first) query's position: it sees tokens <= position */
	uint32_t window;      /* sliding window: tokens > position - window (0 = all) */
	/* Threads for this call (0 or 1: the caller's only), up to 64.  They
	 * split the KV heads; where there are more threads than KV heads (a
	 * layer with one or two, say), one query's tokens of each head are
	 * split into ranges instead (each at least 4096 tokens times query
	 * heads per KV head, else fewer threads work), merged by their
	 * softmax maxima; a batch's queries are split instead. */
	unsigned threads;
	enum tqkv_attn_kernel kernel;  /* 0: automatic; a kernel this CPU lacks: -ENOTSUP */
	uint32_t flags;       /* enum tqkv_attn_flag; 0: exact (an unknown flag: -EINVAL) */
};

/*
 * One query token: q holds n_q_heads * head_dim floats (head after head),
 * out receives the same shape.  The view must contain position
 * (position < v->n_tokens).  Returns 0, -EINVAL, -ENOTSUP (a->kernel needs
 * an instruction set this CPU or build lacks), or -ENOMEM.
 */
TQKV_EXPORT int tqkv_attend(const struct tqkv_layer_view *v, const float *q, const struct tqkv_attn *a, float *out);

/*
 * n query tokens at positions position .. position + n - 1 (a prefill chunk
 * or speculative tokens), each masked causally: query i sees tokens
 * <= position + i (and, with a window, > position + i - window).  q and
 * out hold n * n_q_heads * head_dim floats, token after token.  The tokens
 * that several queries all see are read once for them (up to 8 query
 * heads per KV head at a time), so a batch costs less than n calls of
 * tqkv_attend(); each output equals that call's within float rounding
 * (the tokens are summed in another order), not bit for bit.
 */
TQKV_EXPORT int tqkv_attend_batch(const struct tqkv_layer_view *v, const float *q, uint32_t n,
				  const struct tqkv_attn *a, float *out);

#ifdef __cplusplus
}
#endif

#endif
