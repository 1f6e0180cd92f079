/* SPDX-License-Identifier: MIT */
/*
 * The llama tokenizer against the reference ids of ../shared/models: the
 * prompts of both models and 8000 characters of TinyStories; byte
 * fallback; detokenizing gives the text back.
 */
#define _GNU_SOURCE
#include <errno.h>

#include <criterion/criterion.h>

#include "gguf.h"
#include "llama-tokenizer.h"
#include "ref-json.h"

struct fixture {
	struct gguf_file *f;
	struct llama_tokenizer *t;
	char *json;
};

static bool load(const char *model, const char *ref, struct fixture *fx)
{
	char dir[4096], path[4300], err[256];

	if (!models_dir(dir, sizeof(dir))) {
		cr_log_warn("no model directory (set TQKV_MODELS): %s not checked", model);
		return false;
	}
	snprintf(path, sizeof(path), "%s/%s", dir, model);
	cr_assert_eq(gguf_open(path, &fx->f, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(llama_tokenizer_new(fx->f, &fx->t, err, sizeof(err)), 0, "%s", err);
	snprintf(path, sizeof(path), "%s/%s", dir, ref);
	fx->json = read_text_file(path, NULL);
	cr_assert_not_null(fx->json, "%s", path);
	return true;
}

static void unload(struct fixture *fx)
{
	llama_tokenizer_free(fx->t);
	gguf_close(fx->f);
	free(fx->json);
}

/* text tokenizes (with BOS) to the nth "ids" array of the reference, at
 * most limit ids of it. */
static void check_ids(const struct fixture *fx, const char *text, size_t len, int nth, int limit)
{
	double want[2048];
	uint32_t got[4096];
	int n_want = json_array(fx->json, "ids", nth, want, 2048);
	int n = llama_tokenize(fx->t, text, len, true, got, 4096);

	cr_assert_gt(n_want, 0);
	if (limit && n_want > limit)
		n_want = limit;
	cr_assert_geq(n, n_want, "'%.40s': %d ids, want %d", text, n, n_want);
	if (!limit)
		cr_assert_eq(n, n_want, "'%.40s': %d ids, want %d", text, n, n_want);
	for (int i = 0; i < n_want; i++)
		cr_assert_eq(got[i], (uint32_t)want[i], "'%.40s': id %d is %u, want %u", text, i, got[i], (uint32_t)want[i]);
}

static void check_model(const char *model, const char *ref, const char *const prompts[3], int long_ids)
{
	struct fixture fx;
	char dir[4096], path[4300];
	size_t len = 0;
	char *stories;

	if (!load(model, ref, &fx))
		return;
	for (int i = 0; i < 3; i++)
		check_ids(&fx, prompts[i], strlen(prompts[i]), i, 0);
	/* long_context: the first 8000 characters (ASCII) of TinyStories. */
	snprintf(path, sizeof(path), "%s/tinystories_valid_first32k.txt", models_dir(dir, sizeof(dir)));
	stories = read_text_file(path, &len);
	cr_assert_not_null(stories);
	check_ids(&fx, stories, len < 8000 ? len : 8000, 3, long_ids);
	free(stories);
	unload(&fx);
}

Test(llama_tokenizer, stories260k_reference_ids)
{
	static const char *const prompts[3] = { "Once upon a time", "Lily and Tom went to the park",
						"The little dog was sad because" };

	check_model("stories260K-f32.gguf", "stories260K-f32.ref.json", prompts, 512);
}

Test(llama_tokenizer, head_dim_128_reference_ids)
{
	static const char *const prompts[3] = { "The Linux kernel", "In the beginning God created the heaven and the earth.",
						"Once upon a time, there was a little girl named Lily." };

	check_model("selftrained-llama-hd128-20M-f16.gguf", "selftrained-llama-hd128-20M-f16.ref.json", prompts, 1024);
}

/* Text the vocabulary lacks falls back to byte tokens; every token's text
 * concatenated gives the input back (after the dummy prefix space). */
Test(llama_tokenizer, byte_fallback_and_round_trip)
{
	static const char text[] = "Grüße, 世界!\n\ttabs\x01 and  two spaces";
	struct fixture fx;
	uint32_t ids[256];
	char out[512];
	size_t n = 0;
	int count;

	if (!load("selftrained-llama-hd128-20M-f16.gguf", "selftrained-llama-hd128-20M-f16.ref.json", &fx))
		return;
	count = llama_tokenize(fx.t, text, strlen(text), true, ids, 256);
	cr_assert_gt(count, 0);
	cr_assert_eq(ids[0], llama_tokenizer_bos(fx.t));
	for (int i = 0; i < count; i++) {
		int k = llama_token_text(fx.t, ids[i], out + n, sizeof(out) - n);

		cr_assert_geq(k, 0);
		n += (size_t)k;
	}
	out[n] = 0;
	cr_assert_str_eq(out, " Grüße, 世界!\n\ttabs\x01 and  two spaces");
	cr_assert_eq(llama_token_text(fx.t, 4096, out, sizeof(out)), -EINVAL);
	cr_assert_eq(llama_tokenize(fx.t, "", 0, false, ids, 256), 0);
	unload(&fx);
}
