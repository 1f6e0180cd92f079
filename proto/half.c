/* SPDX-License-Identifier: MIT */
/* IEEE binary16 conversions, round-to-nearest-even, bit-identical to F16C's
 * vcvtps2ph with imm 0 (test-half checks every half and many floats). */
#include <string.h>

#include <tqkv/codec.h>

static uint32_t float_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float bits_float(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

TQKV_EXPORT uint16_t tqkv_f32_to_f16(float f)
{
	uint32_t u = float_bits(f);
	uint32_t sign = (u >> 16) & 0x8000u;
	uint32_t a = u & 0x7fffffffu;

	if (a > 0x7f800000u)			/* NaN: keep it quiet, keep top payload bits */
		return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
	if (a >= 0x47800000u)			/* >= 65536: infinity either way */
		return (uint16_t)(sign | 0x7c00u);
	if (a < 0x38800000u) {
		/* Below the smallest normal half: adding 0.5 (2^-1) puts the
		 * half's subnormal mantissa, rounded to nearest even by the FPU,
		 * into the low bits of the float's mantissa (2^-24 is the ulp). */
		float g = bits_float(a) + 0.5f;

		return (uint16_t)(sign | (float_bits(g) - 0x3f000000u));
	}
	/* Normal: rebias the exponent and round the 13 dropped bits to nearest
	 * even; a carry into the exponent is the correct result (up to inf). */
	a += ((uint32_t)(15 - 127) << 23) + 0xfffu + ((a >> 13) & 1u);
	return (uint16_t)(sign | (a >> 13));
}

TQKV_EXPORT float tqkv_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t e = (h >> 10) & 0x1fu;
	uint32_t m = h & 0x3ffu;

	if (e == 0x1f)
		return bits_float(sign | 0x7f800000u | (m << 13));
	if (e == 0) {
		/* Subnormal or zero: m * 2^-24, exact in float. */
		float v = (float)m * 0x1p-24f;

		return sign ? -v : v;
	}
	return bits_float(sign | ((e + 127 - 15) << 23) | (m << 13));
}
