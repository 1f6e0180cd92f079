/* SPDX-License-Identifier: MIT */
#include <math.h>

#include "qjl.h"

void qjl_sketch(const struct tqkv_codec *c, const float *r, uint8_t *index)
{
	for (unsigned i = 0; i < c->d; i++) {
		const float *row = c->qjl + (size_t)i * c->d;
		double z = 0.0;

		for (unsigned j = 0; j < c->d; j++)
			z += (double)row[j] * r[j];
		if (z >= 0.0)
			index[i] |= QJL_SIGN_BIT;
	}
}

void qjl_expand(const struct tqkv_codec *c, const uint8_t *index, float rho, float *y)
{
	double k = sqrt(M_PI / 2.0) / c->d * rho;

	for (unsigned j = 0; j < c->d; j++) {
		double acc = 0.0;

		for (unsigned i = 0; i < c->d; i++) {
			float s = c->qjl[(size_t)i * c->d + j];

			acc += (index[i] & QJL_SIGN_BIT) ? s : -s;
		}
		y[j] += (float)(k * acc);
	}
}
