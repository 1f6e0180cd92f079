/* SPDX-License-Identifier: MIT */
/*
 * AVX2 tile kernel for CPUs without AVX-512 VBMI/VNNI: the same chunks of
 * four tiles of nibble words as the AVX-512 kernel (2- and 3-bit streams
 * converted first), each 64-byte word split in two halves of 8 tokens.
 * A 16-entry lookup is two vpermps (low 3 bits) and a blend on bit 3.
 * Keys are looked up among their float centroids once for the query group
 * and scored by FMA against each head's rotated query, so scores are exact
 * in float.  Values are accumulated per lane in the rotated domain as in
 * the AVX-512 kernel.
 */
#include <immintrin.h>
#include <math.h>
#include <stdbool.h>

#include <tqkv/codec.h>

#include "attention-private.h"
#include "exp-avx2.h"

#define HALVES 2

/* row[idx & 15] per lane: vpermps reads the low 3 bits, bit 3 picks the
 * half (moved to the sign bit for the blend). */
static inline __m256 lookup16(__m256 lo, __m256 hi, __m256i idx)
{
	return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
				_mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

static inline __m256i load_half_word(const uint8_t *bits, unsigned w, unsigned h)
{
	return _mm256_loadu_si256((const __m256i *)(bits + w * 64 + h * 32));
}

/* Scores of tiles [t0, t0 + nt) of the chunk for g query heads,
 * s[k][t][h]: each key index is looked up once among the centroids and
 * weighed by every head's scale * q'_j (an FMA per head, where a score
 * table per head would take a lookup per head).  nt * g accumulators, so
 * that each FMA chain has a neighbour to overlap with. */
static inline __attribute__((always_inline)) void tiles_scores(const struct attn_tile *tile,
								const struct attn_lane_state *st, unsigned g,
								unsigned t0, unsigned nt, __m256 (*s)[ATTN_CHUNK_TILES][HALVES])
{
	const unsigned W = tile->d / 8;
	const __m256 lo = _mm256_loadu_ps(tile->kcent), hi = _mm256_loadu_ps(tile->kcent + 8);

	for (unsigned h = 0; h < HALVES; h++) {
		__m256 acc[8][ATTN_CHUNK_TILES];

		for (unsigned k = 0; k < g; k++)
			for (unsigned t = 0; t < nt; t++)
				acc[k][t] = _mm256_setzero_ps();
		for (unsigned w = 0; w < W; w++) {
			__m256i word[ATTN_CHUNK_TILES];

			for (unsigned t = 0; t < nt; t++)
				word[t] = load_half_word(tile->kbits[t0 + t], w, h);
			for (unsigned f = 0; f < 8; f++) {
				for (unsigned t = 0; t < nt; t++) {
					__m256 c = lookup16(lo, hi, _mm256_srli_epi32(word[t], (int)(4 * f)));

					for (unsigned k = 0; k < g; k++)
						acc[k][t] = _mm256_fmadd_ps(_mm256_broadcast_ss(st[k].qs + w + f * W), c,
									    acc[k][t]);
				}
			}
		}
		for (unsigned k = 0; k < g; k++)
			for (unsigned t = 0; t < nt; t++)
				s[k][t0 + t][h] = acc[k][t];
	}
}

/* Scores of the chunk for g query heads: as many tiles at a time as keep
 * 4-8 accumulators (16 ymm registers). */
static inline __attribute__((always_inline)) void chunk_scores(const struct attn_tile *tile,
								const struct attn_lane_state *st, unsigned g,
								__m256 (*s)[ATTN_CHUNK_TILES][HALVES])
{
	unsigned nt = g == 1 ? 4 : g == 2 ? 2 : 1;

	for (unsigned t0 = 0; t0 < ATTN_CHUNK_TILES; t0 += nt)
		tiles_scores(tile, st, g, t0, nt, s);
}

/* Softmax update for a query head: scores become weights times value
 * norms, p[t][h]. */
static void chunk_softmax(const struct attn_tile *tile, struct attn_lane_state *st, __m256 (*s)[HALVES],
			  __m256 (*p)[HALVES])
{
	float m_new, sum = 0;
	double m_old = *st->m;
	__m256 total = _mm256_setzero_ps(), max = _mm256_set1_ps(-INFINITY);

	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
		for (unsigned h = 0; h < HALVES; h++) {
			__m256 kn = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tile->knorms[t] + 8 * h)));
			__m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
			__m256i valid = _mm256_set1_epi32((tile->valid[t] >> (8 * h)) & 0xff);
			__m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(valid, bit), bit));

			s[t][h] = _mm256_fmadd_ps(s[t][h], kn, _mm256_set1_ps(st->q_mean));
			s[t][h] = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), s[t][h], keep);
			max = _mm256_max_ps(max, s[t][h]);
			p[t][h] = keep;  /* the mask, until the weights replace it */
		}
	/* The max moves only by more than ATTN_MAX_SLACK (attention-private.h). */
	m_new = (float)m_old;
	if (_mm256_movemask_ps(_mm256_cmp_ps(max, _mm256_set1_ps((float)m_old + ATTN_MAX_SLACK), _CMP_GT_OQ))) {
		m_new = hmax256(max);
		attn_move_max(st, m_new);
	}
	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
		for (unsigned h = 0; h < HALVES; h++) {
			__m256 vn = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tile->vnorms[t] + 8 * h)));
			__m256 e = _mm256_and_ps(p[t][h], exp256(_mm256_sub_ps(s[t][h], _mm256_set1_ps(m_new))));

			total = _mm256_add_ps(total, e);
			p[t][h] = _mm256_mul_ps(e, vn);
		}
	sum = hsum256(total);
	*st->l += sum;
}

static inline __attribute__((always_inline)) void tile_nibbles(const struct attn_tile *tile,
								struct attn_lane_state *st, unsigned g)
{
	const unsigned W = tile->d / 8;
	const __m256 vlo = _mm256_loadu_ps(tile->vcent), vhi = _mm256_loadu_ps(tile->vcent + 8);
	__m256 p[8][ATTN_CHUNK_TILES][HALVES], s[8][ATTN_CHUNK_TILES][HALVES];

	chunk_scores(tile, st, g, s);
	for (unsigned k = 0; k < g; k++)
		chunk_softmax(tile, &st[k], s[k], p[k]);
	for (unsigned w = 0; w < W; w++) {
		attn_prefetch_slice(tile, w, W);
		for (unsigned h = 0; h < HALVES; h++) {
			__m256i word[ATTN_CHUNK_TILES];

			for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
				word[t] = load_half_word(tile->vbits[t], w, h);
			for (unsigned f = 0; f < 8; f++) {
				unsigned i = w + f * W;
				__m256 c[ATTN_CHUNK_TILES];

				for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
					c[t] = lookup16(vlo, vhi, _mm256_srli_epi32(word[t], (int)(4 * f)));
				for (unsigned k = 0; k < g; k++) {
					float *a = st[k].lanes + i * 16 + h * 8;
					__m256 x = _mm256_load_ps(a);

					for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++)
						x = _mm256_fmadd_ps(p[k][t][h], c[t], x);
					_mm256_store_ps(a, x);
				}
			}
		}
	}
}

static inline void store_half_word(uint8_t *out, unsigned w, unsigned h, __m256i v)
{
	_mm256_store_si256((__m256i *)(out + w * 64 + h * 32), v);
}

/* (a & m) | (b & ~m) */
static inline __m256i blend_bits(__m256i a, __m256i b, uint32_t m)
{
	const __m256i mask = _mm256_set1_epi32((int)m);

	return _mm256_or_si256(_mm256_and_si256(a, mask), _mm256_andnot_si256(mask, b));
}

/* One tile of 2- or 3-bit planes as nibble words, each index in bits 0-2
 * of its nibble (the bits above may hold others').  2-bit: the even and
 * the odd fields of word w are nibble words w and w + W / 2.  3-bit: the
 * words of a group of four nibble words (tq3-words.h) moved back to the
 * index's own bits, which attn_tile_tq4_avx512 avoids by permuting its
 * tables but costs this kernel's two-register lookups too much. */
static void tile_to_nibbles(const struct tqkv_layout *l, const uint8_t *bits, uint8_t *out)
{
	const unsigned W = l->padded_dim / 8;
	const __m256i m = _mm256_set1_epi32(0x33333333);

	for (unsigned h = 0; h < HALVES; h++) {
		if (l->bits_hi == 2) {
			for (unsigned w = 0; w < W / 2; w++) {
				__m256i L = load_half_word(bits, w, h);

				store_half_word(out, w, h, _mm256_and_si256(L, m));
				store_half_word(out, w + W / 2, h, _mm256_and_si256(_mm256_srli_epi32(L, 2), m));
			}
			continue;
		}
		for (unsigned g = 0; g < W / 4; g++) {
			__m256i a = load_half_word(bits, 3 * g, h), b = load_half_word(bits, 3 * g + 1, h),
				c = load_half_word(bits, 3 * g + 2, h);
			__m256i d = blend_bits(_mm256_srli_epi32(a, 3), _mm256_srli_epi32(b, 1), 0x11111111);

			store_half_word(out, 4 * g, h, a);
			store_half_word(out, 4 * g + 1, h, blend_bits(b, _mm256_srli_epi32(b, 1), 0x33333333));
			store_half_word(out, 4 * g + 2, h, blend_bits(c, _mm256_srli_epi32(c, 1), 0x11111111));
			store_half_word(out, 4 * g + 3, h, blend_bits(d, _mm256_slli_epi32(c, 1), 0x33333333));
		}
	}
}

void attn_tile_nibbles_avx2(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g)
{
	struct attn_tile nib = *tile;
	uint8_t *buf = (uint8_t *)tile->idx;
	const size_t tile_size = (size_t)tile->d / 2 * 16;

	for (unsigned t = 0; t < ATTN_CHUNK_TILES; t++) {
		if (tile->klayout->bits_hi != 4) {
			nib.kbits[t] = buf + t * tile_size;
			tile_to_nibbles(tile->klayout, tile->kbits[t], buf + t * tile_size);
		}
		if (tile->vlayout->bits_hi != 4) {
			nib.vbits[t] = buf + (ATTN_CHUNK_TILES + t) * tile_size;
			tile_to_nibbles(tile->vlayout, tile->vbits[t], buf + (ATTN_CHUNK_TILES + t) * tile_size);
		}
	}
	switch (g) {
	case 1:
		tile_nibbles(&nib, st, 1);
		break;
	case 2:
		tile_nibbles(&nib, st, 2);
		break;
	case 4:
		tile_nibbles(&nib, st, 4);
		break;
	default:
		tile_nibbles(&nib, st, g);
	}
}
