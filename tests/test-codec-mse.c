/* SPDX-License-Identifier: MIT */
/*
 * The codec's error figures against ../shared/design/ALGORITHMS.md and the generator's
 * optimum, on fresh random unit vectors:
 *  - D = E|x - P^T c[idx]|^2 (before norm correction) within 3% of the
 *    Lloyd-Max optimum at d = 64, 128, 256, b = 1..4; the corrected error
 *    is reported too; 2.5 and 3.5 bits land between their neighbours;
 *  - the inner-product error E[(q.k - q.k~)^2] matches D / d;
 *  - with QJL, q.k~ is unbiased within noise.
 */
#include <math.h>
#include <string.h>

#include "codebook.h"
#include "codec-stats.h"
#include "test-util.h"

#define N_VECTORS 100000u

struct mse {
	double raw, corrected;
};

static struct mse measure(enum tqkv_kind kind, unsigned d, uint64_t seed)
{
	struct tqkv_codec *c = test_codec(kind, d, 0, seed);
	struct codec_mse m;

	cr_assert_eq(codec_unit_mse(c, N_VECTORS, seed, &m), 0);
	tqkv_codec_free(c);
	return (struct mse){ m.raw, m.corrected };
}

Test(codec_mse, matches_lloyd_max_optimum, .timeout = 240)
{
	static const double algorithms_md_d128[4] = { 0.361, 0.116, 0.0340, 0.0093 };
	static const enum tqkv_kind kinds[4] = { TQKV_KIND_TQ1, TQKV_KIND_TQ2, TQKV_KIND_TQ3, TQKV_KIND_TQ4 };
	uint64_t seed = test_seed();

	for (unsigned d = 64; d <= 256; d *= 2)
		for (unsigned b = 1; b <= 4; b++) {
			double opt = codebook_mse[__builtin_ctz(d) - CODEBOOK_DIM_MIN_LOG2][b - 1];
			struct mse m = measure(kinds[b - 1], d, seed + b * 1000 + d);

			fprintf(stderr, "d=%u b=%u mse %.5f (corrected %.5f), optimum %.5f\n", d, b, m.raw,
				m.corrected, opt);
			cr_assert(fabs(m.raw / opt - 1) < 0.03, "d=%u b=%u: mse %g vs optimum %g", d, b, m.raw, opt);
			if (d == 128)
				cr_assert(fabs(m.raw / algorithms_md_d128[b - 1] - 1) < 0.03, "b=%u: %g", b, m.raw);
			/* Rescaling to the true norm may add a little error, never much. */
			cr_assert_lt(m.corrected, m.raw * 1.25, "d=%u b=%u", d, b);
		}
}

Test(codec_mse, half_bits_between_neighbours, .timeout = 120)
{
	uint64_t seed = test_seed();
	double tq2 = measure(TQKV_KIND_TQ2, 128, seed).raw, tq25 = measure(TQKV_KIND_TQ2_5, 128, seed).raw;
	double tq3 = measure(TQKV_KIND_TQ3, 128, seed).raw, tq35 = measure(TQKV_KIND_TQ3_5, 128, seed).raw;
	double tq4 = measure(TQKV_KIND_TQ4, 128, seed).raw;

	fprintf(stderr, "d=128 mse tq2 %.5f tq2.5 %.5f tq3 %.5f tq3.5 %.5f tq4 %.5f\n", tq2, tq25, tq3, tq35, tq4);
	cr_assert(tq2 > tq25 && tq25 > tq3 && tq3 > tq35 && tq35 > tq4);
	/* Half the channels at each rate: the mean of the two optima. */
	cr_assert(fabs(tq25 / ((codebook_mse[2][2] + codebook_mse[2][1]) / 2) - 1) < 0.03);
	cr_assert(fabs(tq35 / ((codebook_mse[2][3] + codebook_mse[2][2]) / 2) - 1) < 0.03);
}

/* Inner products: with q independent of k, E[(q.k - q.k~)^2] = E|k - k~|^2 / d
 * for unit q (the error is isotropic after the random rotation). */
Test(codec_mse, inner_product_error_matches_mse)
{
	const unsigned d = 128, n = 20000;
	uint64_t seed = test_seed();

	for (int kind = TQKV_KIND_TQ2; kind <= TQKV_KIND_TQ4; kind += 2) {
		struct tqkv_codec *c = test_codec(kind, d, 0, seed);
		float *k = test_gaussian(seed + 1, n, d), *q = test_gaussian(seed + 2, n, d);
		float *kk = malloc(sizeof(float) * n * d);
		size_t size;
		void *page;
		double ip = 0, mse = 0;

		unit_normalize(k, n, d);
		unit_normalize(q, n, d);
		page = test_encode(c, k, n, d, NULL, &size);
		cr_assert_eq(tqkv_page_decode_f32(c, page, size, 0, n, NULL, kk, d), 0);
		for (unsigned t = 0; t < n; t++) {
			double e = 0;

			for (unsigned j = 0; j < d; j++) {
				double diff = (double)k[t * d + j] - kk[t * d + j];

				e += q[t * d + j] * diff;
				mse += diff * diff;
			}
			ip += e * e;
		}
		ip /= n;
		mse /= n;
		fprintf(stderr, "%s: E[(q.k - q.k~)^2] = %.3g, mse / d = %.3g\n", tqkv_kind_to_string(kind), ip,
			mse / d);
		cr_assert(fabs(ip / (mse / d) - 1) < 0.1, "%s: %g vs %g", tqkv_kind_to_string(kind), ip, mse / d);
		free(page);
		free(k);
		free(q);
		free(kk);
		tqkv_codec_free(c);
	}
}

/* Mean of q.(k~ - k) over n vector pairs for one codec. */
static double ip_bias(const struct tqkv_codec *c, const float *k, const float *q, unsigned n, unsigned d,
		      double *ret_sq)
{
	float *kk = malloc(sizeof(float) * n * d);
	size_t size;
	void *page = test_encode(c, k, n, d, NULL, &size);
	double sum = 0;

	cr_assert_eq(tqkv_page_decode_f32(c, page, size, 0, n, NULL, kk, d), 0);
	for (unsigned t = 0; t < n; t++) {
		double e = 0;

		for (unsigned j = 0; j < d; j++)
			e += (double)q[t * d + j] * ((double)kk[t * d + j] - k[t * d + j]);
		sum += e;
		*ret_sq += e * e;
	}
	free(page);
	free(kk);
	return sum / n;
}

/* QJL makes q.k~ unbiased even when q and k are correlated (where the MSE
 * quantizer's shrinkage shows).  Unbiased means over the random sketch
 * matrix too, so the bias is averaged over many codecs (seeds) and judged
 * against the spread between them; both variants are reported. */
Test(codec_mse, qjl_inner_product_is_unbiased, .timeout = 120)
{
	const unsigned d = 64, n = 1000, n_codecs = 32;
	uint64_t seed = test_seed();
	float *k = test_gaussian(seed + 1, n, d), *g = test_gaussian(seed + 2, n, d);
	float *q = malloc(sizeof(float) * n * d);

	unit_normalize(k, n, d);
	unit_normalize(g, n, d);
	for (unsigned i = 0; i < n * d; i++)
		q[i] = 0.8f * k[i] + 0.6f * g[i];

	for (int qjl = 0; qjl < 2; qjl++) {
		double sum = 0, sum2 = 0, sq = 0, mean, se;

		for (unsigned s = 0; s < n_codecs; s++) {
			struct tqkv_codec *c = test_codec(TQKV_KIND_TQ3, d, qjl ? TQKV_CODEC_QJL : 0, seed + 7919 * s);
			double b = ip_bias(c, k, q, n, d, &sq);

			sum += b;
			sum2 += b * b;
			tqkv_codec_free(c);
		}
		mean = sum / n_codecs;
		se = sqrt((sum2 / n_codecs - mean * mean) / (n_codecs - 1));
		fprintf(stderr, "tq3%s: bias of q.k~ %.3g (standard error %.3g over %u codecs), rms %.3g\n",
			qjl ? "+qjl" : "", mean, se, n_codecs, sqrt(sq / (n * n_codecs)));
		if (qjl)
			cr_assert_lt(fabs(mean), 4 * se, "QJL bias %g, se %g", mean, se);
		else
			cr_assert_gt(fabs(mean), 4 * se, "the MSE stage alone should show its shrinkage");
	}
	free(k);
	free(g);
	free(q);
}
