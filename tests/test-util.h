/* SPDX-License-Identifier: MIT */
/* Helpers shared by the unit tests: fresh random data with a printed seed
 * (rerun a failure with TQKV_TEST_SEED=...), and codec construction. */
#ifndef TQKV_TEST_UTIL_H
#define TQKV_TEST_UTIL_H

#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

#include <tqkv/codec.h>

#include "codec-private.h"
#include "codec-stats.h"
#include "rotation.h"

static inline uint64_t test_seed(void)
{
	const char *e = getenv("TQKV_TEST_SEED");
	uint64_t s;

	if (e)
		return strtoull(e, NULL, 0);
	if (getrandom(&s, sizeof(s), 0) != sizeof(s))
		s = 0x5eed;
	fprintf(stderr, "random data seed: TQKV_TEST_SEED=0x%016" PRIx64 "\n", s);
	return s;
}

/* n x d standard normal floats (caller frees). */
static inline float *test_gaussian(uint64_t seed, size_t n, unsigned d)
{
	float *v = malloc(n * d * sizeof(float));

	cr_assert_not_null(v);
	gaussian_fill(seed, v, (unsigned)(n * d));
	return v;
}

static inline struct tqkv_codec *test_codec(enum tqkv_kind kind, unsigned head_dim, uint32_t flags, uint64_t seed)
{
	struct tqkv_codec_params p = {
		.model_seed = seed,
		.layer = 1,
		.kv_head = 2,
		.stream = TQKV_STREAM_K,
		.head_dim = head_dim,
		.kind = kind,
		.flags = flags,
	};
	struct tqkv_codec *c = NULL;

	cr_assert_eq(tqkv_codec_new(&p, &c), 0, "codec %s d=%u", tqkv_kind_to_string(kind), head_dim);
	return c;
}

/* Encodes n rows of v (stride d) into a fresh page and decodes them back. */
static inline void *test_encode(const struct tqkv_codec *c, const float *v, uint32_t n, size_t stride,
				const float *mean, size_t *ret_size)
{
	size_t size = tqkv_page_size(c, n);
	void *page = aligned_alloc(64, (size + 63) & ~(size_t)63);

	cr_assert_not_null(page);
	cr_assert_eq(tqkv_page_encode_f32(c, v, stride, n, mean, page, size), 0);
	*ret_size = size;
	return page;
}

#endif
