/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <math.h>

#include <criterion/criterion.h>

#include "codebook.h"

static unsigned table_dim(unsigned i)
{
	return 1u << (CODEBOOK_DIM_MIN_LOG2 + i);
}

static double rel_diff(double a, double b)
{
	return fabs(a - b) / fabs(b);
}

Test(codebook, table_matches_generator)
{
	unsigned i, bits, k;

	for (i = 0; i < CODEBOOK_DIMS; i++)
		for (bits = 1; bits <= CODEBOOK_BITS_MAX; bits++) {
			const float *table = codebook_centroids[i][bits - 1];
			double c[16], mse;

			cr_assert_eq(lloyd_max_sphere(table_dim(i), bits, c, &mse), 0);
			for (k = 0; k < 1u << bits; k++)
				cr_assert(rel_diff((double)table[k], c[k]) < 1e-6,
					  "d=%u b=%u c[%u]: table %.9g, generator %.17g",
					  table_dim(i), bits, k, (double)table[k], c[k]);
			for (; k < 16; k++)
				cr_assert(table[k] == 0.0f, "d=%u b=%u c[%u] unused but %g",
					  table_dim(i), bits, k, (double)table[k]);
			cr_assert(rel_diff(codebook_mse[i][bits - 1], mse) < 1e-9,
				  "d=%u b=%u mse: table %.17g, generator %.17g",
				  table_dim(i), bits, codebook_mse[i][bits - 1], mse);
		}
}

/* ../shared/design/ALGORITHMS.md: measured on the sphere at d=128. */
Test(codebook, mse_d128_matches_design)
{
	static const double design[CODEBOOK_BITS_MAX] = { 0.361, 0.116, 0.0340, 0.0093 };
	unsigned bits;

	for (bits = 1; bits <= CODEBOOK_BITS_MAX; bits++) {
		double c[16], mse;

		cr_assert_eq(lloyd_max_sphere(128, bits, c, &mse), 0);
		cr_assert(rel_diff(mse, design[bits - 1]) < 0.01, "b=%u mse %.6g, design %.6g",
			  bits, mse, design[bits - 1]);
	}
}

/*
 * ../shared/design/ALGORITHMS.md's (b=3, d=128) centroids.  They sit up to 1.3e-4 from the
 * converged optimum (0.0216043, 0.0665856, 0.1181398, 0.1883972; checked
 * with mpmath, and the design's set has the larger MSE), so the bound is
 * 2e-4 rather than their last digit; centroids_are_cell_means pins the
 * exact values.
 */
Test(codebook, centroids_d128_b3_match_design)
{
	static const double design[4] = { 0.02156, 0.06648, 0.11801, 0.18829 };
	double c[8], mse;
	unsigned k;

	cr_assert_eq(lloyd_max_sphere(128, 3, c, &mse), 0);
	for (k = 0; k < 4; k++) {
		cr_assert(fabs(c[4 + k] - design[k]) < 2e-4, "c[%u] %.6g, design %.6g",
			  4 + k, c[4 + k], design[k]);
		cr_assert(fabs(c[3 - k] + design[k]) < 2e-4, "c[%u] %.6g, design %.6g",
			  3 - k, c[3 - k], -design[k]);
	}
}

Test(codebook, tables_symmetric_and_ascending)
{
	unsigned i, bits, k;

	for (i = 0; i < CODEBOOK_DIMS; i++)
		for (bits = 1; bits <= CODEBOOK_BITS_MAX; bits++) {
			const float *c = codebook_centroids[i][bits - 1];
			unsigned n = 1u << bits;

			for (k = 0; k < n; k++)
				cr_assert(c[k] == -c[n - 1 - k], "d=%u b=%u c[%u] %.9g",
					  table_dim(i), bits, k, (double)c[k]);
			for (k = 1; k < n; k++)
				cr_assert(c[k - 1] < c[k], "d=%u b=%u c[%u] not ascending",
					  table_dim(i), bits, k);
			cr_assert(c[n - 1] < 1.0f);
		}
}

/* The sphere's tails are lighter than N(0, 1/d)'s, so slightly less error. */
Test(codebook, mse_d128_near_gaussian_above_bound)
{
	static const double gaussian[CODEBOOK_BITS_MAX] = { 0.3634, 0.1175, 0.03454, 0.009497 };
	unsigned bits;

	for (bits = 1; bits <= CODEBOOK_BITS_MAX; bits++) {
		double mse = codebook_mse[2][bits - 1];

		cr_assert_eq(table_dim(2), 128);
		cr_assert(rel_diff(mse, gaussian[bits - 1]) < 0.03, "b=%u mse %.6g, Gaussian %.6g",
			  bits, mse, gaussian[bits - 1]);
		cr_assert(mse > ldexp(1.0, -2 * (int)bits), "b=%u mse %.6g under 4^-b", bits, mse);
	}
}

/* Composite Simpson in t on (1 - t²)^((d-3)/2): independent of the
 * generator's Gauss-Legendre in θ. */
static void simpson_moments(unsigned dim, double a, double b, double c, double ret[3])
{
	const unsigned n = 4000;
	double h = (b - a) / n;
	unsigned i;

	ret[0] = ret[1] = ret[2] = 0.0;
	for (i = 0; i <= n; i++) {
		double t = a + i * h;
		double w = (i == 0 || i == n ? 1.0 : i % 2 ? 4.0 : 2.0) * h / 3.0;
		double f = w * pow(fmax(1.0 - t * t, 0.0), 0.5 * (dim - 3.0));

		ret[0] += f;
		ret[1] += f * t;
		ret[2] += f * (t - c) * (t - c);
	}
}

Test(codebook, centroids_are_cell_means)
{
	static const unsigned dims[] = { 5, 32, 128, 512 };
	unsigned i, bits, k;

	for (i = 0; i < sizeof(dims) / sizeof(dims[0]); i++)
		for (bits = 1; bits <= CODEBOOK_BITS_MAX; bits++) {
			unsigned n = 1u << bits;
			double c[16], mse, mass = 0.0, err = 0.0;

			cr_assert_eq(lloyd_max_sphere(dims[i], bits, c, &mse), 0);
			for (k = 0; k < n; k++) {
				double lo = k == 0 ? -1.0 : 0.5 * (c[k - 1] + c[k]);
				double hi = k == n - 1 ? 1.0 : 0.5 * (c[k] + c[k + 1]);
				double m[3];

				simpson_moments(dims[i], lo, hi, c[k], m);
				cr_assert(fabs(m[1] / m[0] - c[k]) < 1e-9,
					  "d=%u b=%u c[%u] %.17g, cell mean %.17g",
					  dims[i], bits, k, c[k], m[1] / m[0]);
				mass += m[0];
				err += m[2];
			}
			cr_assert(rel_diff(mse, dims[i] * err / mass) < 1e-8,
				  "d=%u b=%u mse %.17g, Simpson %.17g",
				  dims[i], bits, mse, dims[i] * err / mass);
		}
}

/* d = 3 is uniform on [-1, 1]: centroids at the cell centres, MSE 4^-b. */
Test(codebook, uniform_at_d3)
{
	unsigned bits, k;

	for (bits = 1; bits <= CODEBOOK_BITS_MAX; bits++) {
		unsigned n = 1u << bits;
		double c[16], mse;

		cr_assert_eq(lloyd_max_sphere(3, bits, c, &mse), 0);
		for (k = 0; k < n; k++)
			cr_assert(fabs(c[k] - ((2.0 * k + 1.0) / n - 1.0)) < 1e-11,
				  "b=%u c[%u] %.17g", bits, k, c[k]);
		cr_assert(rel_diff(mse, ldexp(1.0, -2 * (int)bits)) < 1e-11, "b=%u mse %.17g",
			  bits, mse);
	}
}

Test(codebook, invalid_arguments)
{
	static const struct {
		unsigned dim, bits;
	} bad[] = {
		{ 0, 2 }, { 1, 2 }, { 2, 2 },
		{ 128, 0 }, { 128, 5 }, { 128, 16 },
		{ 2, 0 },
	};
	unsigned i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		double c[16], mse;

		cr_assert_eq(lloyd_max_sphere(bad[i].dim, bad[i].bits, c, &mse), -EINVAL,
			     "dim %u bits %u", bad[i].dim, bad[i].bits);
	}
}
