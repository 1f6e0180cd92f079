/* SPDX-License-Identifier: MIT */
#include <math.h>
#include <string.h>

#include "cpu.h"
#include "test-util.h"

/* Every half converts to float and back to itself (NaNs stay NaNs). */
Test(half, every_half_round_trips)
{
	for (uint32_t h = 0; h < 0x10000; h++) {
		float f = tqkv_f16_to_f32((uint16_t)h);
		uint16_t back = tqkv_f32_to_f16(f);

		if (isnan(f))
			cr_assert((back & 0x7c00) == 0x7c00 && (back & 0x3ff), "NaN %#x", h);
		else
			cr_assert_eq(back, h, "half %#x -> %g -> %#x", h, f, back);
	}
}

Test(half, known_values)
{
	cr_assert_eq(tqkv_f32_to_f16(1.0f), 0x3c00);
	cr_assert_eq(tqkv_f32_to_f16(-2.0f), 0xc000);
	cr_assert_eq(tqkv_f32_to_f16(65504.0f), 0x7bff);
	cr_assert_eq(tqkv_f32_to_f16(65519.996f), 0x7bff);
	cr_assert_eq(tqkv_f32_to_f16(65520.0f), 0x7c00);  /* ties to even -> inf */
	cr_assert_eq(tqkv_f32_to_f16(INFINITY), 0x7c00);
	cr_assert_eq(tqkv_f32_to_f16(0x1p-24f), 0x0001);
	cr_assert_eq(tqkv_f32_to_f16(0x1p-25f), 0x0000);  /* tie to even */
	cr_assert_eq(tqkv_f32_to_f16(0x1.8p-25f), 0x0001);
	cr_assert_eq(tqkv_f32_to_f16(-0.0f), 0x8000);
	cr_assert_float_eq(tqkv_f16_to_f32(0x3555), 0.333251953125f, 0);
}

#ifdef __x86_64__
#include <immintrin.h>

__attribute__((target("f16c"))) static uint16_t f16c_convert(float f)
{
	return (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0);
}

/* The software conversion equals the F16C instruction on random floats of
 * every magnitude (the SIMD kernels use the instruction). */
Test(half, matches_f16c)
{
	uint64_t state = test_seed();

	if (!cpu_has_isa(CPU_ISA_AVX2))  /* AVX2 here implies F16C */
		cr_skip_test("no F16C");
	for (int i = 0; i < 2000000; i++) {
		uint32_t u = (uint32_t)splitmix64_next(&state);
		float f;

		/* Bias towards the half range: exponents 100..150. */
		if (i & 1)
			u = (u & 0x807fffffu) | ((100u + (u >> 24) % 50u) << 23);
		memcpy(&f, &u, sizeof(f));
		if (isnan(f))
			continue;
		cr_assert_eq(tqkv_f32_to_f16(f), f16c_convert(f), "float %a (%#x)", f, u);
	}
}
#endif
