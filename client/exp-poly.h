/* SPDX-License-Identifier: MIT */
/*
 * The constants of the softmax's vector e^x, shared by every width
 * (exp-avx512.h, the AVX2 kernel): e^x = 2^n e^r with n = round(x log2 e)
 * and r = x - n ln 2 (ln 2 in two parts, so r keeps its precision), and
 * e^r ~ 1 + r + r^2 P(r), relative error ~1e-7 (the Cephes expf
 * polynomial).  x below EXP_X_MIN is clamped there.
 */
#ifndef TQKV_CLIENT_EXP_POLY_H
#define TQKV_CLIENT_EXP_POLY_H

#define EXP_LOG2E 1.44269504f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO (-2.12194440e-4f)
#define EXP_X_MIN (-87.0f)
#define EXP_POLY_TERMS 6

/* P's coefficients, highest power first (Horner order). */
static const float exp_poly[EXP_POLY_TERMS] = { 1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
						4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f };

#endif
