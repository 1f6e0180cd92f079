/* SPDX-License-Identifier: MIT */
/*
 * The forward pass with the FP32 cache against the reference outputs of
 * ../shared/models: the last prompt position's logits (max difference at
 * most 1e-3 of their range) and the 48-token greedy continuations.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>

#include <criterion/criterion.h>
#include <tqkv/attention.h>

#include "gguf.h"
#include "daemon-harness.h"
#include "llama-model.h"
#include "llama-tqkv.h"
#include "ref-json.h"

static void check_model(const char *model, const char *ref)
{
	char dir[4096], path[4300], err[256];
	struct gguf_file *f;
	struct llama_model *m;
	char *json;

	if (!models_dir(dir, sizeof(dir))) {
		cr_log_warn("no model directory (set TQKV_MODELS): %s not checked", model);
		return;
	}
	snprintf(path, sizeof(path), "%s/%s", dir, model);
	cr_assert_eq(gguf_open(path, &f, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(llama_model_load(f, &m, err, sizeof(err)), 0, "%s", err);
	snprintf(path, sizeof(path), "%s/%s", dir, ref);
	json = read_text_file(path, NULL);
	cr_assert_not_null(json);
	for (int p = 0; p < 3; p++) {
		double ids[256], want[8192], greedy[64];
		int n = json_array(json, "ids", p, ids, 256), n_logits = json_array(json, "last_logits", p, want, 8192);
		int n_greedy = json_array(json, "greedy_ids", p, greedy, 64);
		struct llama_kv_f32 *kv;
		struct llama_ctx *c;
		float *logits = malloc(sizeof(float) * m->hp.vocab);
		double lo = INFINITY, hi = -INFINITY, worst = 0;
		uint32_t pos = 0, next;

		cr_assert(n > 0 && n_logits == (int)m->hp.vocab && n_greedy == 48);
		cr_assert_eq(llama_kv_f32_new(&m->hp, (uint32_t)(n + n_greedy), &kv), 0);
		cr_assert_eq(llama_ctx_new(m, &llama_kv_f32_ops, kv, &c), 0);
		for (; pos < (uint32_t)n; pos++)
			cr_assert_eq(llama_forward(c, (uint32_t)ids[pos], pos, pos + 1 == (uint32_t)n ? logits : NULL), 0);
		for (int i = 0; i < n_logits; i++) {
			lo = want[i] < lo ? want[i] : lo;
			hi = want[i] > hi ? want[i] : hi;
			worst = fmax(worst, fabs(logits[i] - want[i]));
		}
		cr_assert_leq(worst, 1e-3 * (hi - lo), "%s prompt %d: max logit difference %g, range %g", model, p, worst,
			      hi - lo);
		cr_log_info("%s prompt %d: max logit difference %.3g of a range of %.3g", model, p, worst, hi - lo);
		/* Greedy: the argmax, fed back. */
		for (int g = 0; g < n_greedy; g++, pos++) {
			next = 0;
			for (uint32_t i = 1; i < m->hp.vocab; i++)
				if (logits[i] > logits[next])
					next = i;
			cr_assert_eq(next, (uint32_t)greedy[g], "%s prompt %d: greedy token %d is %u, want %u", model, p, g,
				     next, (uint32_t)greedy[g]);
			cr_assert_eq(llama_forward(c, next, pos, logits), 0);
		}
		llama_ctx_free(c);
		llama_kv_f32_free(kv);
		free(logits);
	}
	free(json);
	llama_model_free(m);
	gguf_close(f);
}

Test(llama_model, stories260k_matches_the_reference, .timeout = 120)
{
	check_model("stories260K-f32.gguf", "stories260K-f32.ref.json");
}

Test(llama_model, head_dim_128_model_matches_the_reference, .timeout = 300)
{
	check_model("selftrained-llama-hd128-20M-f16.gguf", "selftrained-llama-hd128-20M-f16.ref.json");
}

/* ---- the tqkv backend, through a real tqkvd ----------------------------- */

/* Mean NLL of the reference's long_context ids (1024 tokens) with a KV
 * backend. */
static double long_context_nll(const struct llama_model *m, const char *json, const struct llama_kv_ops *ops, void *kv)
{
	static double ids[1024];
	int n = json_array(json, "ids", 3, ids, 1024);
	float *logits = malloc(sizeof(float) * m->hp.vocab);
	struct llama_ctx *c;
	double total = 0;

	cr_assert_eq(n, 1024);
	cr_assert_eq(llama_ctx_new(m, ops, kv, &c), 0);
	for (int pos = 0; pos + 1 < n; pos++) {
		double mx = -INFINITY, sum = 0;

		cr_assert_eq(llama_forward(c, (uint32_t)ids[pos], (uint32_t)pos, logits), 0, "position %d", pos);
		for (uint32_t i = 0; i < m->hp.vocab; i++)
			mx = fmax(mx, logits[i]);
		for (uint32_t i = 0; i < m->hp.vocab; i++)
			sum += exp(logits[i] - mx);
		total += mx + log(sum) - logits[(uint32_t)ids[pos + 1]];
	}
	llama_ctx_free(c);
	free(logits);
	return total / (n - 1);
}

Test(llama_model, tqkv_backend_long_context, .timeout = 300)
{
	static const struct {
		struct llama_kv_policy policy;
		double max_increase;  /* of the mean NLL over the FP32 cache's, relative */
	} policies[] = {
		{ { .k_kind = TQKV_KIND_FP16, .v_kind = TQKV_KIND_FP16, .threads = 1 }, 1e-4 },
		{ { .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ4, .center_keys = true, .threads = 2 }, 0.01 },
		{ { .k_kind = TQKV_KIND_TQ3, .v_kind = TQKV_KIND_TQ3, .center_keys = true, .boundary = 1, .threads = 1 },
		  0.03 },
		/* The approximate attention options, on the real model. */
		{ { .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ4, .threads = 1,
		    .attn_flags = TQKV_ATTN_INT8_SCORES | TQKV_ATTN_INT8_VALUES }, 0.02 },
	};
	char dir[4096], path[4300], err[256];
	struct gguf_file *f;
	struct llama_model *m;
	struct llama_kv_f32 *base;
	struct test_daemon d;
	double want, got_base;
	char *json;

	if (!models_dir(dir, sizeof(dir))) {
		cr_log_warn("no model directory (set TQKV_MODELS): nothing checked");
		return;
	}
	snprintf(path, sizeof(path), "%s/selftrained-llama-hd128-20M-f16.gguf", dir);
	cr_assert_eq(gguf_open(path, &f, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(llama_model_load(f, &m, err, sizeof(err)), 0, "%s", err);
	snprintf(path, sizeof(path), "%s/selftrained-llama-hd128-20M-f16.ref.json", dir);
	json = read_text_file(path, NULL);
	cr_assert_not_null(json);
	cr_assert_eq(json_array(json, "mean_nll", 0, &want, 1), -1, "mean_nll is a number, not an array");
	want = strtod(strstr(json, "\"mean_nll\": ") + strlen("\"mean_nll\": "), NULL);
	cr_assert_eq(llama_kv_f32_new(&m->hp, 1024, &base), 0);
	got_base = long_context_nll(m, json, &llama_kv_f32_ops, base);
	cr_assert_leq(fabs(got_base - want), 1e-4, "FP32 cache: mean NLL %.6f, reference %.6f", got_base, want);
	llama_kv_f32_free(base);
	daemon_start(&d, NULL);
	for (size_t i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
		struct llama_kv_tqkv *kv;
		double got;

		cr_assert_eq(llama_kv_tqkv_new(&m->hp, llama_model_fingerprint(m) + i, d.socket, &policies[i].policy, &kv, err,
					       sizeof(err)), 0, "%s", err);
		got = long_context_nll(m, json, &llama_kv_tqkv_ops, kv);
		cr_log_info("K %s V %s center %d boundary %u flags %#x: mean NLL %.5f vs %.5f (%+.3f%%), compression %.2f",
			    tqkv_kind_to_string(policies[i].policy.k_kind), tqkv_kind_to_string(policies[i].policy.v_kind),
			    policies[i].policy.center_keys, policies[i].policy.boundary, policies[i].policy.attn_flags, got,
			    got_base,
			    100 * (got / got_base - 1), llama_kv_tqkv_compression(kv));
		cr_assert_leq(got, got_base * (1 + policies[i].max_increase), "policy %zu: mean NLL %.5f vs %.5f", i, got,
			      got_base);
		llama_kv_tqkv_free(kv);
	}
	daemon_stop(&d);
	free(json);
	llama_model_free(m);
	gguf_close(f);
}
