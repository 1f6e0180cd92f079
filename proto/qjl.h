/* SPDX-License-Identifier: MIT */
/*
 * QJL residual sketch (TurboQuant-prod).  With S the d x d Gaussian matrix
 * of the codec and r the MSE stage's residual in the rotated domain, the
 * page keeps sign(S r) (bit 7 of each index) and |r|; then
 *   <q', r> ~= sqrt(pi/2) / d * |r| * <S q', sign(S r)>
 * is unbiased (Zandieh et al., QJL, arXiv 2406.03482).
 */
#ifndef TQKV_PROTO_QJL_H
#define TQKV_PROTO_QJL_H

#include <stdint.h>

#include "codec-private.h"

#define QJL_SIGN_BIT 0x80u

/* Sets bit 7 of index[i] when (S r)_i >= 0. */
void qjl_sketch(const struct tqkv_codec *c, const float *r, uint8_t *index);
/* y += sqrt(pi/2) / d * rho * S^T sign, with sign taken from bit 7 of index. */
void qjl_expand(const struct tqkv_codec *c, const uint8_t *index, float rho, float *y);

#endif
