/* SPDX-License-Identifier: MIT */
/*
 * Lloyd-Max quantizer for one coordinate of a uniform point on S^{d-1}.
 *
 * Substituting t = sin θ turns the density (1 - t²)^((d-3)/2) dt into
 * cos^(d-2) θ dθ: smooth up to the ends of [-π/2, π/2] (no square-root kink
 * at small d) and equal to 1 at its peak, so it needs no normalising
 * constant and cannot overflow at d = 512.  Composite 16-point
 * Gauss-Legendre on sub-intervals of half a standard deviation integrates
 * it to rounding error.  Only the positive half is solved; the negative half
 * is its mirror, so the codebooks come out exactly symmetric.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>

#include "codebook.h"

#define LLOYD_TOLERANCE 1e-13
/* Lloyd's iteration converges on a log-concave density (Kieffer 1983);
 * the cap only bounds the run time. */
#define LLOYD_ITERATIONS_MAX 100000
/* The weight beyond e^-TAIL_LOG of its peak is left out. */
#define TAIL_LOG 70.0
#define HALF_LEVELS_MAX (1u << (CODEBOOK_BITS_MAX - 1))

/* 16-point Gauss-Legendre rule on [-1, 1]: the positive nodes. */
static const double gl_node[8] = {
	0.0950125098376374402, 0.281603550779258913, 0.458016777657227386,
	0.617876244402643748, 0.755404408355003034, 0.865631202387831744,
	0.944575023073232576, 0.989400934991649933,
};
static const double gl_weight[8] = {
	0.189450610455068496, 0.182603415044923589, 0.169156519395002538,
	0.149595988816576732, 0.124628971255533872, 0.0951585116824927848,
	0.0622535239386478929, 0.0271524594117540949,
};

struct sphere_density {
	double exponent;	/* d - 2, of cos θ */
	double theta_max;	/* the weight is below e^-TAIL_LOG past here */
	double step;		/* longest quadrature sub-interval */
};

struct cell_moments {
	double mass;
	double first;		/* of t - c */
	double second;		/* of (t - c)² */
};

static void sphere_density_init(struct sphere_density *s, unsigned dim)
{
	double sigma;

	s->exponent = (double)dim - 2.0;
	/* cos θ <= exp(-θ²/2), so the weight is a Gaussian with this
	 * deviation or narrower. */
	sigma = 1.0 / sqrt(s->exponent);
	s->theta_max = fmin(M_PI / 2.0, sigma * sqrt(2.0 * TAIL_LOG));
	s->step = 0.5 * sigma;
}

/* Moments of the cell [theta_lo, theta_hi] about c (not normalised). */
static struct cell_moments cell_integrate(const struct sphere_density *s,
		double theta_lo, double theta_hi, double c)
{
	struct cell_moments m = { 0.0, 0.0, 0.0 };
	unsigned n, i, k;
	double h;

	if (!(theta_hi > theta_lo))
		return m;

	n = (unsigned)ceil((theta_hi - theta_lo) / s->step);
	h = (theta_hi - theta_lo) / n;
	for (i = 0; i < n; i++) {
		double mid = theta_lo + (i + 0.5) * h;

		for (k = 0; k < 16; k++) {
			double x = k < 8 ? -gl_node[k] : gl_node[k - 8];
			double theta = mid + 0.5 * h * x;
			double w = 0.5 * h * gl_weight[k % 8] * pow(cos(theta), s->exponent);
			double u = sin(theta) - c;

			m.mass += w;
			m.first += w * u;
			m.second += w * u * u;
		}
	}
	return m;
}

/* Standard normal quantile for p in [0.5, 1), by bisection: only a seed. */
static double normal_quantile(double p)
{
	double lo = 0.0, hi = 40.0;
	unsigned i;

	for (i = 0; i < 64; i++) {
		double x = 0.5 * (lo + hi);

		if (0.5 * erfc(-x / M_SQRT2) < p)
			lo = x;
		else
			hi = x;
	}
	return 0.5 * (lo + hi);
}

/*
 * Seed: the high-resolution optimum places levels with density ∝ f^(1/3),
 * which for the near-Gaussian f is N(0, 3/d).  Pulled inside the support
 * where that overshoots (tiny d), so that every cell starts with mass.
 */
static void seed_half(unsigned dim, unsigned half, const struct sphere_density *s, double *c)
{
	double limit = 0.9 * sin(s->theta_max);
	unsigned j;

	for (j = 0; j < half; j++)
		c[j] = sqrt(3.0 / dim) * normal_quantile((half + j + 0.5) / (2.0 * half));
	if (c[half - 1] > limit) {
		double scale = limit / c[half - 1];

		for (j = 0; j < half; j++)
			c[j] *= scale;
	}
}

/* Cell boundaries in θ for the positive centroids c: 0, midpoints, the tail. */
static void half_boundaries(const struct sphere_density *s, unsigned half, const double *c,
		double *theta)
{
	unsigned j;

	theta[0] = 0.0;
	for (j = 1; j < half; j++)
		theta[j] = fmin(asin(0.5 * (c[j - 1] + c[j])), s->theta_max);
	theta[half] = s->theta_max;
}

int lloyd_max_sphere(unsigned dim, unsigned bits, double *ret_centroids, double *ret_mse)
{
	double c[HALF_LEVELS_MAX], theta[HALF_LEVELS_MAX + 1];
	struct sphere_density s;
	double mass = 0.0, second = 0.0;
	unsigned half, iter, j;

	if (dim < 3 || bits < 1 || bits > CODEBOOK_BITS_MAX)
		return -EINVAL;
	assert(ret_centroids);
	assert(ret_mse);

	half = 1u << (bits - 1);
	sphere_density_init(&s, dim);
	seed_half(dim, half, &s, c);

	for (iter = 0; iter < LLOYD_ITERATIONS_MAX; iter++) {
		double move = 0.0;

		half_boundaries(&s, half, c, theta);
		for (j = 0; j < half; j++) {
			struct cell_moments m = cell_integrate(&s, theta[j], theta[j + 1], c[j]);
			double delta;

			/* An empty cell keeps its level rather than turn NaN. */
			if (!(m.mass > 0.0))
				continue;
			/* The mean as an offset from c[j]: no cancellation. */
			delta = m.first / m.mass;
			c[j] += delta;
			move = fmax(move, fabs(delta));
		}
		if (move < LLOYD_TOLERANCE)
			break;
	}

	half_boundaries(&s, half, c, theta);
	for (j = 0; j < half; j++) {
		struct cell_moments m = cell_integrate(&s, theta[j], theta[j + 1], c[j]);

		mass += m.mass;
		second += m.second;
	}

	for (j = 0; j < half; j++) {
		ret_centroids[half - 1 - j] = -c[j];
		ret_centroids[half + j] = c[j];
	}
	/* Half the sphere's mass and half its error: the ratio is the same. */
	*ret_mse = dim * (second / mass);
	return 0;
}
