/* SPDX-License-Identifier: MIT */
/*
 * tqkv-demo: what an engine does with libtqkv, in two processes.  Each
 * registers a small model (8 layers, 8 KV heads, head_dim 128, 4-bit K,
 * 3.5-bit V), appends K/V rows for several sequences, waits for the
 * daemon's worker to compress the full blocks, reads every token back and
 * reports the error of the compressed part and that the FP16 tail is exact.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tqkv/client.h>

#define LAYERS 8
#define HEADS 8
#define DIM 128
#define SEQS 3

static uint64_t rng_state;

static float gauss(void)
{
	/* Sum of uniforms: cheap, deterministic, close enough to normal. */
	float s = 0;

	for (int i = 0; i < 4; i++) {
		rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
		s += (float)(rng_state >> 40) / (float)(1ull << 24);
	}
	return (s - 2.0f) * 1.7f;
}

/* Pipes for the barrier: children say "read back", the parent prints the
 * stats while every sequence is still open, then lets them close. */
static int done_pipe[2], go_pipe[2];

static int run_client(const char *socket, int id, unsigned tokens)
{
	struct tqkv_layer_desc layers[LAYERS];
	struct tqkv_model model = { .fingerprint = 0xde110, .n_layers = LAYERS, .layers = layers,
				    .staging_tokens = 256, .max_sequences = SEQS };
	static uint16_t k[SEQS][1024][HEADS * DIM], v[SEQS][1024][HEADS * DIM];
	struct tqkv_client *c;
	struct tqkv_seq *s[SEQS];
	double err = 0, norm = 0;
	uint64_t tail_exact = 0, tail_total = 0;
	int r;

	if (tokens > 1024)
		tokens = 1024;
	for (int l = 0; l < LAYERS; l++)
		layers[l] = (struct tqkv_layer_desc){ .n_kv_heads = HEADS, .head_dim = DIM, .kv_source = -1,
						      .k_kind = TQKV_KIND_TQ4, .v_kind = TQKV_KIND_TQ3_5 };
	r = tqkv_client_connect(socket, &c);
	if (r < 0) {
		fprintf(stderr, "client %d: cannot connect: %s\n", id, strerror(-r));
		return 1;
	}
	r = tqkv_client_register_model(c, &model);
	if (r < 0) {
		fprintf(stderr, "client %d: register: %s\n", id, tqkv_client_error(c));
		return 1;
	}
	rng_state = (uint64_t)id * 7919 + 1;
	for (int q = 0; q < SEQS; q++) {
		if (tqkv_seq_open(c, &s[q]) < 0)
			return 1;
		for (unsigned t = 0; t < tokens; t++) {
			for (int i = 0; i < HEADS * DIM; i++) {
				/* Same rows for every layer keeps the demo's memory small. */
				k[q][t][i] = tqkv_f32_to_f16(gauss());
				v[q][t][i] = tqkv_f32_to_f16(gauss());
			}
			for (uint32_t l = 0; l < LAYERS; l++)
				while ((r = tqkv_seq_write(s[q], t, l, k[q][t], v[q][t])) == -EAGAIN) {
					tqkv_seq_commit(s[q], t);
					tqkv_seq_wait(s[q], t + 1 - model.staging_tokens);
				}
			if (r < 0)
				return 1;
			if ((t + 1) % 32 == 0 && tqkv_seq_commit(s[q], t + 1) < 0)
				return 1;
		}
		if (tqkv_seq_commit(s[q], tokens) < 0 || tqkv_seq_wait(s[q], tokens) < 0)
			return 1;
	}
	for (int q = 0; q < SEQS; q++) {
		uint64_t published = tqkv_seq_published(s[q]);
		static float out[1024 * DIM];

		for (uint32_t l = 0; l < LAYERS; l++)
			for (uint32_t h = 0; h < HEADS; h++) {
				if (tqkv_seq_read(s[q], l, h, 0, 0, tokens, out) < 0)
					return 1;
				for (unsigned t = 0; t < tokens; t++)
					for (int j = 0; j < DIM; j++) {
						double x = tqkv_f16_to_f32(k[q][t][h * DIM + j]), y = out[t * DIM + j];

						if (t < published) {
							err += (x - y) * (x - y);
							norm += x * x;
						} else {
							tail_total++;
							tail_exact += x == y;
						}
					}
			}
	}
	printf("client %d (pid %d): %d sequences x %u tokens x %d layers; %llu tokens compressed per sequence, "
	       "key relative MSE %.4f; FP16 tail %llu/%llu values exact\n",
	       id, (int)getpid(), SEQS, tokens, LAYERS, (unsigned long long)tqkv_seq_published(s[0]), err / norm,
	       (unsigned long long)tail_exact, (unsigned long long)tail_total);
	fflush(stdout);
	{
		char b = 1;

		if (write(done_pipe[1], &b, 1) != 1 || read(go_pipe[0], &b, 1) != 1)
			return 1;
	}
	for (int q = 0; q < SEQS; q++)
		tqkv_seq_close(s[q]);
	tqkv_client_free(c);
	return tail_exact == tail_total && err / norm < 0.02 ? 0 : 1;
}

int main(int argc, char **argv)
{
	const char *socket = NULL;
	int failed = 0;

	if (argc > 1 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
		printf("Usage: tqkv-demo [SOCKET]\n\nRuns two client processes against tqkvd (default socket:\n"
		       "$TQKV_SOCKET or the standard path) and checks what they read back.\n");
		return 0;
	}
	if (argc > 1)
		socket = argv[1];
	if (pipe(done_pipe) < 0 || pipe(go_pipe) < 0)
		return 1;
	for (int i = 0; i < 2; i++)
		if (fork() == 0)
			_exit(run_client(socket, i + 1, i ? 700 : 1000));
	for (int i = 0; i < 2; i++) {
		char b;

		if (read(done_pipe[0], &b, 1) != 1)
			break;
	}
	{
		struct tqkv_client *c;
		char *text, b[2] = { 1, 1 };

		printf("\n== tqkv stats while both clients keep their sequences open\n");
		fflush(stdout);
		if (tqkv_client_connect(socket, &c) == 0 && tqkv_client_stats(c, &text) == 0) {
			fputs(text, stdout);
			free(text);
		}
		tqkv_client_free(c);
		if (write(go_pipe[1], b, 2) != 2)
			return 1;
	}
	for (int i = 0; i < 2; i++) {
		int status;

		wait(&status);
		failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
	}
	return failed;
}
