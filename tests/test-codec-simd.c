/* SPDX-License-Identifier: MIT */
/*
 * The SIMD paths produce exactly the scalar reference's pages (indices,
 * norms, padding: every byte) and decode to exactly the same floats, on
 * fresh random data mixed with edge cases.
 */
#include <math.h>
#include <string.h>

#include "test-util.h"

/* Random rows, with every 16th row an edge case. */
static void fill_rows(uint64_t *state, float *x, unsigned n, unsigned d)
{
	gaussian_fill(splitmix64_next(state), x, n * d);
	for (unsigned t = 0; t < n; t++) {
		float *row = x + (size_t)t * d;
		unsigned kind = (unsigned)(splitmix64_next(state) % 64);

		switch (kind) {
		case 0: memset(row, 0, sizeof(float) * d); break;
		case 1: row[splitmix64_next(state) % d] = NAN; break;
		case 2: row[splitmix64_next(state) % d] = -INFINITY; break;
		case 3: for (unsigned j = 0; j < d; j++) row[j] *= 1e30f; break;
		case 4: for (unsigned j = 0; j < d; j++) row[j] *= 1e-30f; break;
		case 5: for (unsigned j = 0; j < d; j++) row[j] = (float)(j % 5) - 2.0f; break;  /* ties */
		case 6: row[0] = 70000.0f; break;
		case 7: for (unsigned j = 0; j < d; j++) row[j] = j & 1 ? -0.0f : 0x1p-140f * (float)j; break;  /* subnormals */
		case 8: row[splitmix64_next(state) % d] = -0.0f; break;
		default: {
			/* Non-isotropic scales, like real keys. */
			float s = 0.01f + (float)(splitmix64_next(state) % 1000) / 10.0f;

			for (unsigned j = 0; j < d; j++)
				row[j] *= s;
		}
		}
	}
}

/* Encodes float or fp16 rows with the kernels of isa. */
static void encode_with(struct tqkv_codec *c, enum cpu_isa isa, const void *rows, bool f16, unsigned n,
			const float *mean, uint8_t *page, size_t size)
{
	unsigned d = c->params.head_dim;

	cr_assert_eq(codec_set_isa(c, isa), 0);
	if (f16)
		cr_assert_eq(tqkv_page_encode_f16(c, rows, d, n, mean, page, size), 0);
	else
		cr_assert_eq(tqkv_page_encode_f32(c, rows, d, n, mean, page, size), 0);
}

static void compare_paths(enum tqkv_kind kind, unsigned d, uint32_t flags, unsigned n_vectors, uint64_t *state)
{
	struct tqkv_codec *c = test_codec(kind, d, flags, splitmix64_next(state));
	const unsigned n = n_vectors >= 2048 ? 1024 : n_vectors / 2;  /* >= 2 batches: with and without a mean */
	float *x = malloc(sizeof(float) * n * d), *mean = malloc(sizeof(float) * d);
	float *ya = malloc(sizeof(float) * n * d), *yb = malloc(sizeof(float) * n * d);
	size_t size = tqkv_page_size(c, n);
	uint8_t *ref = malloc(size), *fast = malloc(size);
	uint16_t *h = malloc(sizeof(uint16_t) * n * d);

	for (unsigned done = 0; done < n_vectors; done += n) {
		const float *m = (done / n) % 2 ? mean : NULL;

		fill_rows(state, x, n, d);
		gaussian_fill(splitmix64_next(state), mean, d);
		for (size_t i = 0; i < (size_t)n * d; i++)
			h[i] = tqkv_f32_to_f16(x[i]);
		/* Float rows, then fp16 rows (what the daemon's worker encodes). */
		for (int f16 = 0; f16 < 2; f16++) {
			const void *rows = f16 ? (const void *)h : (const void *)x;

			encode_with(c, CPU_ISA_SCALAR, rows, f16, n, m, ref, size);
			cr_assert_eq(tqkv_page_decode_f32(c, ref, size, 0, n, m, ya, d), 0);
			for (int isa = CPU_ISA_AVX2; isa < CPU_ISA_MAX; isa++) {
				if (!cpu_has_isa((enum cpu_isa)isa))
					continue;
				encode_with(c, (enum cpu_isa)isa, rows, f16, n, m, fast, size);
				for (size_t i = 0; i < size; i++)
					cr_assert_eq(fast[i], ref[i], "%s %s d=%u qjl=%u f16=%d: byte %zu of %zu differs",
						     cpu_isa_to_string(isa), tqkv_kind_to_string(kind), d, flags, f16, i,
						     size);
				cr_assert_eq(tqkv_page_decode_f32(c, ref, size, 0, n, m, yb, d), 0);
				cr_assert_eq(memcmp(ya, yb, sizeof(float) * n * d), 0, "%s %s d=%u: decode differs",
					     cpu_isa_to_string(isa), tqkv_kind_to_string(kind), d);
			}
		}
	}
	free(x);
	free(mean);
	free(ya);
	free(yb);
	free(ref);
	free(fast);
	free(h);
	tqkv_codec_free(c);
}

Test(codec_simd, tq4_d128_100k_vectors)
{
	uint64_t state = test_seed();

	if (cpu_best_isa() == CPU_ISA_SCALAR)
		cr_skip_test("no SIMD path on this CPU or build");
	compare_paths(TQKV_KIND_TQ4, 128, 0, 100 * 1024, &state);
}

Test(codec_simd, every_kind_and_head_dim)
{
	static const unsigned dims[] = { 32, 64, 96, 128, 192, 256, 512, 80, 100, 7, 1, 33, 500 };
	uint64_t state = test_seed();

	if (cpu_best_isa() == CPU_ISA_SCALAR)
		cr_skip_test("no SIMD path on this CPU or build");
	for (int k = 0; k < TQKV_KIND_MAX; k++)
		for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++)
			compare_paths(k, dims[i], 0, 2048, &state);
}

/* QJL encodes through the reference in every kernel set (its O(d^2)
 * sketch has no SIMD path); this checks that dispatch, with and without a
 * mean. */
Test(codec_simd, qjl_kinds_use_the_reference)
{
	uint64_t state = test_seed();

	if (cpu_best_isa() == CPU_ISA_SCALAR)
		cr_skip_test("no SIMD path on this CPU or build");
	for (int k = TQKV_KIND_TQ2; k < TQKV_KIND_MAX; k++)
		compare_paths(k, 64, TQKV_CODEC_QJL, 128, &state);
}

/* The attention kernels' AVX-512 rotation (of a query, and back for the
 * values) matches the reference to float rounding (the butterflies add in
 * another order), fresh random data per dim. */
static void assert_close(const float *a, const float *b, unsigned d, const char *what)
{
	double norm = 0;

	for (unsigned j = 0; j < d; j++)
		norm += (double)a[j] * a[j];
	norm = sqrt(norm);
	for (unsigned j = 0; j < d; j++)
		cr_assert_leq(fabs((double)a[j] - b[j]), 1e-6 * norm, "%s d=%u: coordinate %u: %g vs %g", what, d, j,
			      a[j], b[j]);
}

Test(codec_simd, avx512_rotation_equals_scalar)
{
	if (!cpu_has_isa(CPU_ISA_AVX512)) {
		cr_log_warn("no AVX-512 on this CPU: nothing to compare");
		return;
	}
	for (unsigned d = 16; d <= TQKV_HEAD_DIM_MAX; d *= 2) {
		struct tqkv_codec *c = test_codec(TQKV_KIND_TQ4, d, 0, 0x5eed + d);
		float a[TQKV_HEAD_DIM_MAX], b[TQKV_HEAD_DIM_MAX];

		for (unsigned rep = 0; rep < 64; rep++) {
			gaussian_fill(d * 1000 + rep, a, c->d);  /* the padded dim: what the rotation sees */
			memcpy(b, a, sizeof(float) * c->d);
			codec_rotate(c, a);
			codec_rotate_avx512(c, b);
			assert_close(a, b, c->d, "rotate");
			codec_unrotate(c, a, 0.37f);
			codec_unrotate_avx512(c, b, 0.37f);
			assert_close(a, b, c->d, "unrotate");
		}
		tqkv_codec_free(c);
	}
}
