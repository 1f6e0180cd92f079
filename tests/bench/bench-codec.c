/* SPDX-License-Identifier: MIT */
/*
 * Codec throughput on one thread: encode fp16 rows into 64-token pages (what
 * the daemon's worker does with a full block) and decode pages to float, in
 * vectors per second, plus the unit-vector MSE next to the Lloyd-Max optimum.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "codec-private.h"
#include "codec-stats.h"

#define ROWS 8192u
#define BLOCK 64u

struct codec_result {
	double encode_vps, decode_vps;
	struct codec_mse mse;
};

static int select_isa(struct tqkv_codec *c, const char *name)
{
	for (int i = 0; name && i < CPU_ISA_MAX; i++)
		if (strcmp(name, cpu_isa_to_string(i)) == 0)
			return codec_set_isa(c, i);
	return name ? -EINVAL : 0;
}

static int run_one(struct tqkv_codec *c, const uint16_t *rows, unsigned d, double seconds, unsigned mse_n,
		   struct codec_result *res)
{
	size_t page = tqkv_page_size(c, BLOCK), n_pages = ROWS / BLOCK;
	uint8_t *pages = aligned_alloc(64, page * n_pages);
	float *out = aligned_alloc(64, sizeof(float) * BLOCK * d);
	double t0, t;
	unsigned long done;
	int r = 0;

	if (!pages || !out) {
		r = -ENOMEM;
		goto out;
	}
	for (t0 = bench_now(), done = 0; (t = bench_now()) - t0 < seconds || done == 0; done += ROWS)
		for (size_t p = 0; p < n_pages; p++)
			tqkv_page_encode_f16(c, rows + p * BLOCK * d, d, BLOCK, NULL, pages + p * page, page);
	res->encode_vps = (double)done / (t - t0);

	for (t0 = bench_now(), done = 0; (t = bench_now()) - t0 < seconds || done == 0; done += ROWS)
		for (size_t p = 0; p < n_pages; p++) {
			r = tqkv_page_decode_f32(c, pages + p * page, page, 0, BLOCK, NULL, out, d);
			if (r < 0)
				goto out;
		}
	res->decode_vps = (double)done / (t - t0);
	r = codec_unit_mse(c, mse_n, 0x5eed, &res->mse);
out:
	free(pages);
	free(out);
	return r;
}

int bench_codec(const struct bench_options *o)
{
	static const unsigned dims[] = { 64, 128, 256 };
	static const enum tqkv_kind kinds[] = { TQKV_KIND_FP16, TQKV_KIND_INT8, TQKV_KIND_TQ2, TQKV_KIND_TQ2_5,
						TQKV_KIND_TQ3, TQKV_KIND_TQ3_5, TQKV_KIND_TQ4 };
	double seconds = o->quick ? 0.05 : 0.3;
	unsigned mse_n = o->quick ? 4096 : 50000;

	if (!o->json)
		printf("%-8s %-6s %-7s %12s %12s %10s %10s %10s\n", "head_dim", "kind", "isa", "encode Mv/s",
		       "decode Mv/s", "enc ns/vec", "mse", "optimum");
	for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
		unsigned d = dims[i];
		uint16_t *rows = malloc(sizeof(uint16_t) * ROWS * d);
		float *g = malloc(sizeof(float) * ROWS * d);

		if (!rows || !g) {
			free(rows);
			free(g);
			return -ENOMEM;
		}
		gaussian_fill(d, g, ROWS * d);
		for (size_t j = 0; j < (size_t)ROWS * d; j++)
			rows[j] = tqkv_f32_to_f16(g[j]);
		free(g);

		for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
			struct tqkv_codec_params p = {
				.model_seed = 0x7e57, .head_dim = d, .kind = kinds[k],
			};
			struct tqkv_codec *c;
			struct codec_result res;
			int r = tqkv_codec_new(&p, &c);

			if (r >= 0)
				r = select_isa(c, o->isa);
			if (r == -EINVAL)
				fprintf(stderr, "tqkv-bench: unknown --isa '%s'\n", o->isa);
			if (r >= 0)
				r = run_one(c, rows, d, seconds, mse_n, &res);
			if (r < 0) {
				tqkv_codec_free(c);
				free(rows);
				return r;
			}
			if (o->json)
				printf("{\"bench\":\"codec\",\"head_dim\":%u,\"kind\":\"%s\",\"isa\":\"%s\","
				       "\"encode_vps\":%.0f,\"decode_vps\":%.0f,\"mse\":%.6g,\"mse_corrected\":%.6g,"
				       "\"mse_optimum\":%.6g}\n",
				       d, tqkv_kind_to_string(kinds[k]), cpu_isa_to_string(c->isa), res.encode_vps,
				       res.decode_vps, res.mse.raw, res.mse.corrected, res.mse.optimum);
			else
				printf("%-8u %-6s %-7s %12.2f %12.2f %10.1f %10.5f %10.5f\n", d,
				       tqkv_kind_to_string(kinds[k]), cpu_isa_to_string(c->isa), res.encode_vps / 1e6,
				       res.decode_vps / 1e6, 1e9 / res.encode_vps, res.mse.raw, res.mse.optimum);
			fflush(stdout);
			tqkv_codec_free(c);
		}
		free(rows);
	}
	return 0;
}
