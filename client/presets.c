/* SPDX-License-Identifier: MIT */
/* The named codec policies of tqkv/client.h, with the figures measured
 * for them by scripts/quality.sh (docs/QUALITY.md). */
#include <string.h>

#include <tqkv/client.h>

static const struct tqkv_preset presets[] = {
	{ "quality", TQKV_KIND_INT8, TQKV_KIND_TQ4, 0, 0, "K int8, V tq4: PPL +0.05%, top-1 98.5%, 2.6x smaller than FP16" },
	{ "balanced", TQKV_KIND_TQ4, TQKV_KIND_TQ4, 0, 0, "K tq4, V tq4: PPL +0.11%, top-1 97.3%, 3.9x smaller than FP16" },
	{ "compact", TQKV_KIND_TQ3, TQKV_KIND_TQ3, 0, 0, "K tq3, V tq3: PPL +0.75%, top-1 94.5%, 5.1x smaller than FP16" },
};

TQKV_EXPORT const struct tqkv_preset *tqkv_preset_find(const char *name)
{
	for (size_t i = 0; name && i < sizeof(presets) / sizeof(presets[0]); i++)
		if (strcmp(name, presets[i].name) == 0)
			return &presets[i];
	return NULL;
}

TQKV_EXPORT const struct tqkv_preset *tqkv_presets(size_t *ret_n)
{
	*ret_n = sizeof(presets) / sizeof(presets[0]);
	return presets;
}
