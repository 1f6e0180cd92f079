/* SPDX-License-Identifier: MIT */
/*
 * AVX-512 tile kernel for 4-bit TurboQuant K and V (PERFORMANCE.md): one
 * zmm lane per token of a 16-token tile, so a 64-byte chunk of a plane is
 * one word of every token.  Scores: per nibble field, vpermps looks the
 * nibbles of 16 tokens up in the query's float table row T_i (exact: no
 * int8 rounding) and adds them.  Values: per coordinate, vpermps looks up
 * the centroids and one FMA adds p * norm * c into a per-lane accumulator;
 * lanes are summed once at the end of the call.  Softmax is online per
 * tile with a vector exp.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include <tqkv/codec.h>

#include "attention-private.h"

/* e^x for x <= 0 (scores minus the running max), relative error ~1e-7. */
static __m512 exp_ps(__m512 x)
{
	const __m512 log2e = _mm512_set1_ps(1.44269504f), ln2_hi = _mm512_set1_ps(0.693359375f),
		     ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
	__m512 n, r, p;

	x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
	n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm512_fnmadd_ps(n, ln2_hi, x);
	r = _mm512_fnmadd_ps(n, ln2_lo, r);
	p = _mm512_set1_ps(1.9875691500e-4f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	return _mm512_scalef_ps(p, n);
}

/* Scores of the chunk's tokens for query head k: s[t] per tile.  vpermps
 * reads only the low 4 bits of each index, so a shift isolates a nibble.
 * Two partial sums per tile keep the adds from forming one long chain. */
static void chunk_scores(const struct attn_tile *tile, const struct attn_lane_state *st, __m512 *s)
{
	const unsigned W = tile->d / 8;
	__m512 s2[ATTN_CHUNK_TILES][2];

	for (unsigned t = 0; t < tile->n_tiles; t++)
		s2[t][0] = s2[t][1] = _mm512_setzero_ps();
	for (unsigned w = 0; w < W; w++) {
		__m512i word[ATTN_CHUNK_TILES];

		for (unsigned t = 0; t < tile->n_tiles; t++)
			word[t] = _mm512_loadu_si512(tile->kbits + t * tile->tile_bytes + w * 64);
		for (unsigned f = 0; f < 8; f++) {
			__m512 row = _mm512_loadu_ps(st->table + (w + f * W) * 16);

			for (unsigned t = 0; t < tile->n_tiles; t++)
				s2[t][f & 1] = _mm512_add_ps(s2[t][f & 1],
							     _mm512_permutexvar_ps(_mm512_srli_epi32(word[t], 4 * f), row));
		}
	}
	for (unsigned t = 0; t < tile->n_tiles; t++)
		s[t] = _mm512_add_ps(s2[t][0], s2[t][1]);
}

/* One softmax update per chunk for query head k: scores s[t] become
 * weights times value norms p[t]. */
static void chunk_softmax(const struct attn_tile *tile, struct attn_lane_state *st, __m512 *s, __m512 *p)
{
	const unsigned nt = tile->n_tiles;
	float m_chunk = -INFINITY, m_new, sum = 0;

	for (unsigned t = 0; t < nt; t++) {
		__m512 kn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tile->knorms + 16 * t)));
		float m;

		s[t] = _mm512_add_ps(_mm512_mul_ps(s[t], kn), _mm512_set1_ps(st->q_mean));
		s[t] = _mm512_mask_blend_ps(tile->valid[t], _mm512_set1_ps(-INFINITY), s[t]);
		m = _mm512_reduce_max_ps(s[t]);
		m_chunk = m > m_chunk ? m : m_chunk;
	}
	m_new = m_chunk > *st->m ? m_chunk : *st->m;
	if (m_new > *st->m) {
		float f = expf(*st->m - m_new);
		__m512 fv = _mm512_set1_ps(f);

		*st->l *= f;
		for (unsigned i = 0; i < tile->d; i++)
			_mm512_store_ps(st->lanes + i * 16, _mm512_mul_ps(_mm512_load_ps(st->lanes + i * 16), fv));
		attn_rescale_scalar(st, f);
		*st->m = m_new;
	}
	for (unsigned t = 0; t < nt; t++) {
		__m512 vn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tile->vnorms + 16 * t)));

		p[t] = _mm512_maskz_mov_ps(tile->valid[t], exp_ps(_mm512_sub_ps(s[t], _mm512_set1_ps(m_new))));
		sum += _mm512_reduce_add_ps(p[t]);
		p[t] = _mm512_mul_ps(p[t], vn);
	}
	*st->l += sum;
}

/* lanes[i] += sum over tiles of weights * centroids, per query head: the
 * accumulator is loaded and stored once per chunk. */
static void accumulate_values(struct attn_lane_state *st, unsigned g, unsigned i, const __m512 *c,
			      __m512 (*p)[ATTN_CHUNK_TILES], unsigned nt)
{
	for (unsigned k = 0; k < g; k++) {
		float *a = st[k].lanes + i * 16;
		__m512 acc = _mm512_load_ps(a);

		for (unsigned t = 0; t < nt; t++)
			acc = _mm512_fmadd_ps(p[k][t], c[t], acc);
		_mm512_store_ps(a, acc);
	}
}

void attn_tile_tq4_avx512(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g)
{
	const unsigned D = tile->d, W = D / 8, nt = tile->n_tiles;
	const __m512 vcent = _mm512_loadu_ps(tile->vcent);
	__m512 p[8][ATTN_CHUNK_TILES];

	for (unsigned t = 0; t < nt; t++) {
		_mm_prefetch((const char *)tile->kbits + (nt + t) * tile->tile_bytes, _MM_HINT_T0);
		_mm_prefetch((const char *)tile->vbits + (nt + t) * tile->tile_bytes, _MM_HINT_T0);
	}
	for (unsigned k = 0; k < g; k++) {
		__m512 s[ATTN_CHUNK_TILES];

		chunk_scores(tile, &st[k], s);
		chunk_softmax(tile, &st[k], s, p[k]);
	}
	/* Values: per coordinate, each tile's centroids, weighted; the
	 * accumulator is loaded and stored once per chunk. */
	for (unsigned w = 0; w < W; w++) {
		__m512i word[ATTN_CHUNK_TILES];

		for (unsigned t = 0; t < nt; t++)
			word[t] = _mm512_loadu_si512(tile->vbits + t * tile->tile_bytes + w * 64);
		for (unsigned f = 0; f < 8; f++) {
			__m512 c[ATTN_CHUNK_TILES];
			unsigned i = w + f * W;

			for (unsigned t = 0; t < nt; t++)
				c[t] = _mm512_permutexvar_ps(_mm512_srli_epi32(word[t], 4 * f), vcent);
			accumulate_values(st, g, i, c, p, nt);
		}
	}
}

/* Unpacks a tile's planes: idx[i] holds coordinate i's index for the 16
 * tokens (one per lane).  Words of 16 bits (tiny planes) are widened.  The
 * plane with an index's low bits comes first for its coordinates (codec.c),
 * so it assigns and the others OR. */
static void unpack_tile(const struct tqkv_layout *l, const uint8_t *bits, __m512i *idx)
{
	for (unsigned p = 0; p < l->n_planes; p++) {
		const struct tqkv_plane *pl = &l->planes[p];
		const __m512i mask = _mm512_set1_epi32((1 << pl->bits) - 1);
		unsigned fields = pl->n_coords / pl->words;

		for (unsigned w = 0; w < pl->words; w++) {
			__m512i word = pl->word_bits == 32
				? _mm512_loadu_si512(bits + pl->offset + w * 64)
				: _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(bits + pl->offset + w * 32)));

			for (unsigned f = 0; f < fields; f++) {
				__m512i v = _mm512_and_si512(_mm512_srli_epi32(word, f * pl->bits), mask);
				unsigned i = pl->first_coord + w + f * pl->words;

				idx[i] = pl->shift ? _mm512_or_si512(idx[i], _mm512_slli_epi32(v, pl->shift)) : v;
			}
		}
	}
}

void attn_tile_tq_avx512(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g)
{
	const unsigned D = tile->d, nt = tile->n_tiles;
	const __m512 vc_hi = _mm512_loadu_ps(tile->vcent), vc_lo = _mm512_loadu_ps(tile->vcent_lo);
	__m512i *kidx = (__m512i *)tile->idx, *vidx = kidx + ATTN_CHUNK_TILES * D;
	__m512 p[8][ATTN_CHUNK_TILES];

	for (unsigned t = 0; t < nt; t++) {
		unpack_tile(tile->klayout, tile->kbits + t * tile->tile_bytes, kidx + t * D);
		unpack_tile(tile->vlayout, tile->vbits + t * tile->vtile_bytes, vidx + t * D);
	}
	for (unsigned k = 0; k < g; k++) {
		__m512 s[ATTN_CHUNK_TILES], s2[ATTN_CHUNK_TILES];

		for (unsigned t = 0; t < nt; t++)
			s[t] = s2[t] = _mm512_setzero_ps();
		for (unsigned i = 0; i < D; i += 2) {
			__m512 r0 = _mm512_loadu_ps(st[k].table + i * 16), r1 = _mm512_loadu_ps(st[k].table + i * 16 + 16);

			for (unsigned t = 0; t < nt; t++) {
				s[t] = _mm512_add_ps(s[t], _mm512_permutexvar_ps(kidx[t * D + i], r0));
				s2[t] = _mm512_add_ps(s2[t], _mm512_permutexvar_ps(kidx[t * D + i + 1], r1));
			}
		}
		for (unsigned t = 0; t < nt; t++)
			s[t] = _mm512_add_ps(s[t], s2[t]);
		chunk_softmax(tile, &st[k], s, p[k]);
	}
	for (unsigned i = 0; i < D; i++) {
		__m512 cent = i < tile->vsplit ? vc_hi : vc_lo, c[ATTN_CHUNK_TILES];

		for (unsigned t = 0; t < nt; t++)
			c[t] = _mm512_permutexvar_ps(vidx[t * D + i], cent);
		accumulate_values(st, g, i, c, p, nt);
	}
}

void attn_lanes_fold_avx512(const float *lanes, unsigned d, float *acc)
{
	for (unsigned i = 0; i < d; i++)
		acc[i] += _mm512_reduce_add_ps(_mm512_load_ps(lanes + i * 16));
}
