/* SPDX-License-Identifier: MIT */
/* The named codec policies: every one is found by its name, with valid
 * kinds and a summary; unknown names are NULL. */
#include <criterion/criterion.h>

#include <tqkv/client.h>

Test(presets, names_and_kinds)
{
	size_t n;
	const struct tqkv_preset *all = tqkv_presets(&n);

	cr_assert_geq(n, 3);
	for (size_t i = 0; i < n; i++) {
		cr_assert_eq(tqkv_preset_find(all[i].name), &all[i]);
		cr_assert_not_null(tqkv_kind_to_string(all[i].k_kind));
		cr_assert_not_null(tqkv_kind_to_string(all[i].v_kind));
		cr_assert_gt(strlen(all[i].summary), 10);
	}
	cr_assert_eq(tqkv_preset_find("balanced")->k_kind, TQKV_KIND_TQ4);
	cr_assert_eq(tqkv_preset_find("compact")->v_kind, TQKV_KIND_TQ3);
	cr_assert_null(tqkv_preset_find("Balanced"));
	cr_assert_null(tqkv_preset_find(NULL));
}
