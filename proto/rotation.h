/* SPDX-License-Identifier: MIT */
/*
 * The rotation of the TurboQuant kinds: y = D2 H D1 x, with H the
 * (unnormalised) Walsh-Hadamard transform of size d (a power of two) and D1,
 * D2 diagonal sign matrices drawn from SplitMix64.  docs/CODEC.md documents
 * the derivation bit for bit: every process and every restart agrees.
 */
#ifndef TQKV_PROTO_ROTATION_H
#define TQKV_PROTO_ROTATION_H

#include <stdint.h>

#include <tqkv/codec.h>

#define ROTATION_SIGN_WORDS (TQKV_HEAD_DIM_MAX / 64)

/* SplitMix64 (Steele, Lea, Flood 2014): state += golden gamma, then mix. */
uint64_t splitmix64_next(uint64_t *state);
/* SplitMix64's output mix alone. */
uint64_t splitmix64_mix(uint64_t z);

/* The PRNG state of one (model seed, layer, kv head, stream). */
uint64_t rotation_stream_seed(uint64_t model_seed, uint32_t layer, uint32_t kv_head,
			      enum tqkv_stream stream);

/* Draws the sign words of D1 then D2 (ceil(d / 64) words each, bit j of word
 * j / 64 for coordinate j; 1 = negate). */
void rotation_draw_signs(uint64_t seed, unsigned d, uint64_t d1[ROTATION_SIGN_WORDS],
			 uint64_t d2[ROTATION_SIGN_WORDS]);

/* In-place unnormalised Walsh-Hadamard transform, stages h = 1, 2, 4, ...
 * in that order; each butterfly (a, b) -> (a + b, a - b).  The order is
 * part of the canonical arithmetic: the SIMD kernels use the same one. */
void wht_f32(float *v, unsigned d);

/* Negates v[j] where sign bit j is set. */
void apply_signs_f32(float *v, const uint64_t *signs, unsigned d);

/* n standard normal floats from the seed (Box-Muller on SplitMix64). */
void gaussian_fill(uint64_t seed, float *out, unsigned n);

#endif
