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

void attn_tile_tq4_avx512(const struct attn_tile *tile, struct attn_lane_state *st, unsigned g)
{
	const unsigned D = tile->d, W = D / 8, nt = tile->n_tiles;
	const __m512 vcent = _mm512_loadu_ps(tile->vcent);
	__m512 p[8][ATTN_CHUNK_TILES];

	for (unsigned t = 0; t < nt; t++) {
		_mm_prefetch((const char *)tile->kbits + (nt + t) * tile->tile_bytes, _MM_HINT_T0);
		_mm_prefetch((const char *)tile->vbits + (nt + t) * tile->tile_bytes, _MM_HINT_T0);
	}
	/* Scores, one softmax update per chunk, weights times value norms. */
	for (unsigned k = 0; k < g; k++) {
		__m512 s[ATTN_CHUNK_TILES];
		float m_chunk = -INFINITY, m_new, sum = 0;

		chunk_scores(tile, &st[k], s);
		for (unsigned t = 0; t < nt; t++) {
			__m512 kn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tile->knorms + 16 * t)));
			float m;

			s[t] = _mm512_add_ps(_mm512_mul_ps(s[t], kn), _mm512_set1_ps(st[k].q_mean));
			s[t] = _mm512_mask_blend_ps(tile->valid[t], _mm512_set1_ps(-INFINITY), s[t]);
			m = _mm512_reduce_max_ps(s[t]);
			m_chunk = m > m_chunk ? m : m_chunk;
		}
		m_new = m_chunk > *st[k].m ? m_chunk : *st[k].m;
		if (m_new > *st[k].m) {
			float f = expf(*st[k].m - m_new);
			__m512 fv = _mm512_set1_ps(f);

			*st[k].l *= f;
			for (unsigned i = 0; i < D; i++)
				_mm512_store_ps(st[k].lanes + i * 16, _mm512_mul_ps(_mm512_load_ps(st[k].lanes + i * 16), fv));
			attn_rescale_scalar(&st[k], f);
			*st[k].m = m_new;
		}
		for (unsigned t = 0; t < nt; t++) {
			__m512 vn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tile->vnorms + 16 * t)));

			p[k][t] = _mm512_maskz_mov_ps(tile->valid[t], exp_ps(_mm512_sub_ps(s[t], _mm512_set1_ps(m_new))));
			sum += _mm512_reduce_add_ps(p[k][t]);
			p[k][t] = _mm512_mul_ps(p[k][t], vn);
		}
		*st[k].l += sum;
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
			for (unsigned k = 0; k < g; k++) {
				float *a = st[k].lanes + i * 16;
				__m512 acc = _mm512_load_ps(a);

				for (unsigned t = 0; t < nt; t++)
					acc = _mm512_fmadd_ps(p[k][t], c[t], acc);
				_mm512_store_ps(a, acc);
			}
		}
	}
}

void attn_lanes_fold_avx512(const float *lanes, unsigned d, float *acc)
{
	for (unsigned i = 0; i < d; i++)
		acc[i] += _mm512_reduce_add_ps(_mm512_load_ps(lanes + i * 16));
}
