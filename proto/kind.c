/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <string.h>

#include <tqkv/codec.h>

static const struct {
	const char *name;
	double bits;
} kinds[TQKV_KIND_MAX] = {
	[TQKV_KIND_FP16] = { "fp16", 16.0 },
	[TQKV_KIND_INT8] = { "int8", 8.0 },
	[TQKV_KIND_TQ1] = { "tq1", 1.0 },
	[TQKV_KIND_TQ2] = { "tq2", 2.0 },
	[TQKV_KIND_TQ2_5] = { "tq2.5", 2.5 },
	[TQKV_KIND_TQ3] = { "tq3", 3.0 },
	[TQKV_KIND_TQ3_5] = { "tq3.5", 3.5 },
	[TQKV_KIND_TQ4] = { "tq4", 4.0 },
};

TQKV_EXPORT const char *tqkv_kind_to_string(enum tqkv_kind kind)
{
	if ((unsigned)kind >= TQKV_KIND_MAX)
		return NULL;
	return kinds[kind].name;
}

TQKV_EXPORT int tqkv_kind_from_string(const char *s)
{
	if (!s)
		return -EINVAL;
	for (int k = 0; k < TQKV_KIND_MAX; k++)
		if (strcmp(s, kinds[k].name) == 0)
			return k;
	return -EINVAL;
}

TQKV_EXPORT double tqkv_kind_bits(enum tqkv_kind kind)
{
	if ((unsigned)kind >= TQKV_KIND_MAX)
		return 0.0;
	return kinds[kind].bits;
}
