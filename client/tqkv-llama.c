/* SPDX-License-Identifier: MIT */
/*
 * tqkv-llama: a small CPU inference engine for llama GGUF models whose KV
 * cache lives in tqkv, and the harness that compares it with an
 * uncompressed cache.  Modes: generate, perplexity, compare.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tqkv/attention.h>
#include <tqkv/client.h>

#include "gguf.h"
#include "llama-model.h"
#include "llama-tokenizer.h"
#include "llama-tqkv.h"

struct options {
	const char *mode, *model, *prompt, *text, *socket;
	unsigned n_predict, tokens, threads;
	bool greedy, json, f32;
	float temperature;
	unsigned long seed;
	struct llama_kv_policy policy;
};

static void help(FILE *f)
{
	fprintf(f,
		"Usage: tqkv-llama MODE --model FILE [OPTIONS]\n"
		"\n"
		"Runs a llama-architecture GGUF model (F32/F16 weights) on the CPU with its KV cache in\n"
		"tqkv: each token's K and V rows go to tqkvd, which compresses them with TurboQuant, and\n"
		"attention runs over the compressed pages.  Without --socket a private tqkvd is started\n"
		"(from $TQKVD, next to this program in a build tree, or from PATH) and stopped at exit.\n"
		"\n"
		"Modes:\n"
		"  generate     continue --prompt by -n tokens and print the continuation\n"
		"  perplexity   perplexity of --text, in windows of the model's context\n"
		"  compare      run the FP32 cache and tqkv on the same tokens of --text and report\n"
		"               PPL of each, PPL delta %%, mean KL divergence, top-1 agreement, mean\n"
		"               logit cosine and the cache's compression ratio\n"
		"\n"
		"Options:\n"
		"  --model FILE      the GGUF model (required)\n"
		"  --prompt TEXT     generate: the prompt\n"
		"  -n, --n-predict N generate: tokens to produce (default 32)\n"
		"  --greedy          generate: always the most likely token (default)\n"
		"  --temperature T   generate: sample at temperature T > 0 instead\n"
		"  --seed N          generate: the sampler's seed (default 1)\n"
		"  --text FILE       perplexity, compare: the evaluation text\n"
		"  --tokens N        perplexity, compare: tokens to score (default 4096; 0: the whole text)\n"
		"  --k KIND          key codec: fp16, int8, tq2, tq2.5, tq3, tq3.5, tq4, or its bits\n"
		"                    (16, 8, 4, 3.5, 3, 2.5, 2; default tq4)\n"
		"  --v KIND          value codec, the same names (default tq4)\n"
		"  --preset NAME     a named policy (sets --k, --v, --center, --boundary; later options\n"
		"                    override it): quality (K int8, V tq4), balanced (tq4/tq4),\n"
		"                    compact (tq3/tq3); docs/QUALITY.md has their measured quality;\n"
		"                    \"daemon\": the preset configured in tqkvd.conf (preset=)\n"
		"  --center          subtract each head's key mean before quantizing keys\n"
		"  --boundary N      keep FP16 K and V in the first and last N layers (default 0)\n"
		"  --threads N       attention threads per call (default 1)\n"
		"  --int8-scores     attention with 8-bit score tables (TQKV_ATTN_INT8_SCORES:\n"
		"                    faster, approximate; compare shows what it costs)\n"
		"  --int8-values     attention with 8-bit weights and value centroids\n"
		"                    (TQKV_ATTN_INT8_VALUES: faster, approximate)\n"
		"  --socket PATH     use the running tqkvd at PATH\n"
		"  --kv f32          generate, perplexity: the local FP32 cache instead of tqkv\n"
		"  --json            perplexity, compare: one JSON object\n"
		"  -h, --help        this help\n"
		"\n"
		"Exit status: 0 on success, 1 on a runtime error, 2 on bad usage.\n");
}

static int usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tqkv-llama: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (try --help)\n");
	return 2;
}

static int parse_uint(const char *s, unsigned max, unsigned *ret)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || end == s || v > max)
		return -1;
	*ret = (unsigned)v;
	return 0;
}

/* A codec kind by name (tq4, int8, fp16, ...) or by its bits as the
 * quality table writes them: 16 = fp16, 8 = int8, 4 = tq4, 3.5 = tq3.5... */
static int kind_of(const char *s)
{
	char name[16];

	if (!strcmp(s, "16"))
		return TQKV_KIND_FP16;
	if (!strcmp(s, "8"))
		return TQKV_KIND_INT8;
	if (strlen(s) < sizeof(name) - 2 && ((s[0] >= '1' && s[0] <= '4' && !s[1]) || !strcmp(s, "2.5") || !strcmp(s, "3.5"))) {
		snprintf(name, sizeof(name), "tq%s", s);
		return tqkv_kind_from_string(name);
	}
	return tqkv_kind_from_string(s);
}

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "model", required_argument, NULL, 'm' }, { "prompt", required_argument, NULL, 'p' },
		{ "n-predict", required_argument, NULL, 'n' }, { "greedy", no_argument, NULL, 'g' },
		{ "temperature", required_argument, NULL, 'T' }, { "seed", required_argument, NULL, 'S' },
		{ "text", required_argument, NULL, 't' }, { "tokens", required_argument, NULL, 'N' },
		{ "k", required_argument, NULL, 'k' }, { "v", required_argument, NULL, 'v' },
		{ "center", no_argument, NULL, 'c' }, { "boundary", required_argument, NULL, 'b' },
		{ "threads", required_argument, NULL, 'j' }, { "socket", required_argument, NULL, 's' },
		{ "kv", required_argument, NULL, 'K' }, { "json", no_argument, NULL, 'J' },
		{ "preset", required_argument, NULL, 'P' }, { "help", no_argument, NULL, 'h' },
		{ "int8-scores", no_argument, NULL, '8' }, { "int8-values", no_argument, NULL, 'V' }, { 0 },
	};
	int c, kind;

	*o = (struct options){ .n_predict = 32, .tokens = 4096, .threads = 1, .greedy = true, .seed = 1,
			       .policy = { TQKV_KIND_TQ4, TQKV_KIND_TQ4, false, 0, 1, 0, false } };
	while ((c = getopt_long(argc, argv, "n:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'm': o->model = optarg; break;
		case 'p': o->prompt = optarg; break;
		case 't': o->text = optarg; break;
		case 's': o->socket = optarg; break;
		case 'g': o->greedy = true; break;
		case 'c': o->policy.center_keys = true; break;
		case 'J': o->json = true; break;
		case '8': o->policy.attn_flags |= TQKV_ATTN_INT8_SCORES; break;
		case 'V': o->policy.attn_flags |= TQKV_ATTN_INT8_VALUES; break;
		case 'n':
			if (parse_uint(optarg, 1u << 20, &o->n_predict) < 0)
				return usage("-n wants a token count, not '%s'", optarg);
			break;
		case 'N':
			if (parse_uint(optarg, 1u << 24, &o->tokens) < 0)
				return usage("--tokens wants a token count, not '%s'", optarg);
			break;
		case 'b':
			if (parse_uint(optarg, 1024, &o->policy.boundary) < 0)
				return usage("--boundary wants a layer count, not '%s'", optarg);
			break;
		case 'j':
			if (parse_uint(optarg, 64, &o->threads) < 0 || o->threads == 0)
				return usage("--threads wants 1..64, not '%s'", optarg);
			o->policy.threads = o->threads;
			break;
		case 'S':
			o->seed = strtoul(optarg, NULL, 10);
			break;
		case 'T':
			o->temperature = strtof(optarg, NULL);
			if (!(o->temperature > 0) || !isfinite(o->temperature))
				return usage("--temperature wants a number above 0, not '%s'", optarg);
			o->greedy = false;
			break;
		case 'k':
		case 'v':
			kind = kind_of(optarg);
			if (kind < 0)
				return usage("unknown codec kind '%s' (fp16, int8, tq2, tq2.5, tq3, tq3.5, tq4; or 16, 8, 4, 3.5, 3, 2.5, 2)",
					     optarg);
			*(c == 'k' ? &o->policy.k_kind : &o->policy.v_kind) = (enum tqkv_kind)kind;
			break;
		case 'P': {
			const struct tqkv_preset *p = tqkv_preset_find(optarg);

			o->policy.daemon = !strcmp(optarg, "daemon");
			if (o->policy.daemon)
				break;
			if (!p)
				return usage("unknown preset '%s' (quality, balanced, compact, daemon)", optarg);
			o->policy.k_kind = p->k_kind;
			o->policy.v_kind = p->v_kind;
			o->policy.center_keys = p->layer_flags & TQKV_LAYER_CENTER_KEYS;
			o->policy.boundary = p->boundary_layers;
			break;
		}
		case 'K':
			if (strcmp(optarg, "f32") != 0 && strcmp(optarg, "tqkv") != 0)
				return usage("--kv is f32 or tqkv, not '%s'", optarg);
			o->f32 = strcmp(optarg, "f32") == 0;
			break;
		case 'h':
			help(stdout);
			exit(0);
		default:
			return 2;
		}
	}
	if (optind != argc - 1)
		return usage("expected one mode: generate, perplexity or compare");
	o->mode = argv[optind];
	if (strcmp(o->mode, "generate") && strcmp(o->mode, "perplexity") && strcmp(o->mode, "compare"))
		return usage("unknown mode '%s'", o->mode);
	if (!o->model)
		return usage("--model is required");
	if (!strcmp(o->mode, "generate") && !o->prompt)
		return usage("generate needs --prompt");
	if (strcmp(o->mode, "generate") && !o->text)
		return usage("%s needs --text", o->mode);
	return 0;
}

/* ---- a private tqkvd ---------------------------------------------------- */

struct daemon {
	pid_t pid;
	char dir[64], socket[96];  /* fits sockaddr_un.sun_path */
};

/* $TQKVD, else ../daemon/tqkvd next to this program (a build tree), else
 * tqkvd from PATH. */
static void daemon_path(char *buf, size_t size)
{
	const char *env = getenv("TQKVD");
	char self[PATH_MAX - 32];
	ssize_t n;

	if (env) {
		snprintf(buf, size, "%s", env);
		return;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		char *slash;

		self[n] = 0;
		slash = strrchr(self, '/');
		if (slash) {
			*slash = 0;
			snprintf(buf, size, "%s/../daemon/tqkvd", self);
			if (access(buf, X_OK) == 0)
				return;
		}
	}
	snprintf(buf, size, "tqkvd");
}

static int daemon_start(struct daemon *d)
{
	char path[PATH_MAX];

	snprintf(d->dir, sizeof(d->dir), "/tmp/tqkv-llama-XXXXXX");
	if (!mkdtemp(d->dir))
		return -errno;
	snprintf(d->socket, sizeof(d->socket), "%s/tqkvd.sock", d->dir);
	daemon_path(path, sizeof(path));
	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (d->pid == 0) {
		execlp(path, path, "--socket", d->socket, "--config", "/dev/null", "--state-directory", "none", "--log-level",
		       "warning", (char *)NULL);
		fprintf(stderr, "tqkv-llama: cannot run %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	/* Ready when it accepts a connection (the socket file appears at
	 * bind(), a moment before listen()). */
	for (int i = 0; i < 500; i++) {
		struct sockaddr_un addr = { .sun_family = AF_UNIX };
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), status;

		snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", d->socket);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
			close(fd);
			return 0;
		}
		if (fd >= 0)
			close(fd);
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			d->pid = 0;
			return -ECHILD;
		}
		nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
	}
	return -ETIMEDOUT;
}

static void daemon_stop(struct daemon *d)
{
	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		waitpid(d->pid, NULL, 0);
	}
	unlink(d->socket);
	rmdir(d->dir);
}

/* ---- the modes ---------------------------------------------------------- */

struct engine {
	struct gguf_file *file;
	struct llama_model *model;
	struct llama_tokenizer *tok;
	struct daemon daemon;
	struct llama_kv_tqkv *tqkv;
	struct llama_kv_f32 *f32;
	const char *socket;
};

static int engine_open(struct engine *e, const struct options *o, bool want_tqkv)
{
	char err[512];
	int r;

	if ((r = gguf_open(o->model, &e->file, err, sizeof(err))) < 0 ||
	    (r = llama_model_load(e->file, &e->model, err, sizeof(err))) < 0 ||
	    (r = llama_tokenizer_new(e->file, &e->tok, err, sizeof(err))) < 0) {
		fprintf(stderr, "tqkv-llama: %s: %s\n", o->model, err);
		return r;
	}
	if (!want_tqkv)
		return 0;
	e->socket = o->socket;
	if (!e->socket) {
		if ((r = daemon_start(&e->daemon)) < 0) {
			fprintf(stderr, "tqkv-llama: cannot start tqkvd: %s (set TQKVD or use --socket)\n", strerror(-r));
			return r;
		}
		e->socket = e->daemon.socket;
	}
	r = llama_kv_tqkv_new(&e->model->hp, llama_model_fingerprint(e->model), e->socket, &o->policy, &e->tqkv, err,
			      sizeof(err));
	if (r < 0)
		fprintf(stderr, "tqkv-llama: %s\n", err);
	return r;
}

static void engine_close(struct engine *e)
{
	llama_kv_tqkv_free(e->tqkv);
	llama_kv_f32_free(e->f32);
	if (e->daemon.pid)
		daemon_stop(&e->daemon);
	llama_tokenizer_free(e->tok);
	llama_model_free(e->model);
	gguf_close(e->file);
}

static uint64_t now_nsec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t argmax(const float *x, uint32_t n)
{
	uint32_t best = 0;

	for (uint32_t i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

static uint32_t sample(const float *logits, uint32_t n, float temperature, unsigned long *state)
{
	double mx = -INFINITY, sum = 0, u;
	uint32_t i;

	for (i = 0; i < n; i++)
		mx = fmax(mx, logits[i]);
	for (i = 0; i < n; i++)
		sum += exp((logits[i] - mx) / temperature);
	*state = *state * 6364136223846793005ul + 1442695040888963407ul;
	u = (double)(*state >> 11) / 9007199254740992.0 * sum;
	for (i = 0; i + 1 < n; i++) {
		u -= exp((logits[i] - mx) / temperature);
		if (u <= 0)
			break;
	}
	return i;
}

static int run_generate(const struct options *o)
{
	struct engine e = { 0 };
	uint32_t *ids = NULL;
	float *logits = NULL;
	struct llama_ctx *c = NULL;
	unsigned long state = o->seed;
	uint64_t cached = 0, t0, t1;
	unsigned made = 0;
	int n, r;

	if ((r = engine_open(&e, o, !o->f32)) < 0)
		goto out;
	n = llama_tokenize(e.tok, o->prompt, strlen(o->prompt), true, NULL, 0);
	if (n <= 0 || (uint32_t)n + o->n_predict > e.model->hp.context) {
		fprintf(stderr, "tqkv-llama: the prompt (%d tokens) and -n %u exceed the model's context of %u\n", n,
			o->n_predict, e.model->hp.context);
		r = -EINVAL;
		goto out;
	}
	if (o->f32 && (r = llama_kv_f32_new(&e.model->hp, (uint32_t)n + o->n_predict, &e.f32)) < 0)
		goto out;
	ids = malloc(sizeof(uint32_t) * ((size_t)n + o->n_predict));
	logits = malloc(sizeof(float) * e.model->hp.vocab);
	if (!ids || !logits) {
		r = -ENOMEM;
		goto out;
	}
	llama_tokenize(e.tok, o->prompt, strlen(o->prompt), true, ids, (size_t)n);
	r = o->f32 ? llama_ctx_new(e.model, &llama_kv_f32_ops, e.f32, &c) : llama_ctx_new(e.model, &llama_kv_tqkv_ops, e.tqkv, &c);
	/* The daemon attaches what another run of this prompt published:
	 * those tokens are not computed again. */
	if (r >= 0 && !o->f32 && (r = llama_kv_tqkv_open_prompt(e.tqkv, ids, (size_t)n, &cached)) < 0)
		fprintf(stderr, "tqkv-llama: tqkvd: %s\n", llama_kv_tqkv_error(e.tqkv));
	t0 = now_nsec();
	for (int i = (int)cached; r >= 0 && i < n; i++)
		r = llama_forward(c, ids[i], (uint32_t)i, i + 1 == n ? logits : NULL);
	t1 = now_nsec();
	for (unsigned i = 0; r >= 0 && i < o->n_predict; i++) {
		uint32_t next = o->greedy ? argmax(logits, e.model->hp.vocab) : sample(logits, e.model->hp.vocab, o->temperature, &state);
		char piece[256];
		int len;

		if (next == llama_tokenizer_eos(e.tok))
			break;
		len = llama_token_text(e.tok, next, piece, sizeof(piece));
		fwrite(piece, 1, len > 0 ? (size_t)len : 0, stdout);
		fflush(stdout);
		ids[n + made++] = next;
		r = llama_forward(c, next, (uint32_t)n + i, logits);
	}
	putchar('\n');
	fflush(stdout);
	/* The continuation's ids: its blocks become shareable too. */
	if (r >= 0 && !o->f32 && made && (r = llama_kv_tqkv_add_tokens(e.tqkv, (uint64_t)n, ids + n, made)) < 0)
		fprintf(stderr, "tqkv-llama: tqkvd: %s\n", llama_kv_tqkv_error(e.tqkv));
	if (r >= 0 && !o->f32)
		fprintf(stderr, "tqkv-llama: prompt %d tokens, %llu from the cache, %d computed in %.1f ms; %u generated in %.1f ms\n",
			n, (unsigned long long)cached, n - (int)cached, (double)(t1 - t0) / 1e6, made,
			(double)(now_nsec() - t1) / 1e6);
	if (r < 0)
		fprintf(stderr, "tqkv-llama: %s\n", strerror(-r));
out:
	llama_ctx_free(c);
	free(ids);
	free(logits);
	engine_close(&e);
	return r < 0 ? 1 : 0;
}

/* The text's tokens, in windows of the model's context, each starting with
 * BOS: at most limit scored tokens (0: all). */
static int load_tokens(const struct engine *e, const char *path, unsigned limit, uint32_t **ret, size_t *ret_n)
{
	FILE *f = fopen(path, "rb");
	char *text = NULL;
	long size;
	int n;

	if (!f) {
		fprintf(stderr, "tqkv-llama: %s: %s\n", path, strerror(errno));
		return -errno;
	}
	if (fseek(f, 0, SEEK_END) < 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0 ||
	    !(text = malloc((size_t)size + 1)) || fread(text, 1, (size_t)size, f) != (size_t)size) {
		fprintf(stderr, "tqkv-llama: %s: cannot read\n", path);
		fclose(f);
		free(text);
		return -EIO;
	}
	fclose(f);
	n = llama_tokenize(e->tok, text, (size_t)size, false, NULL, 0);
	*ret = malloc(sizeof(uint32_t) * (size_t)(n > 0 ? n : 1));
	if (n < 0 || !*ret) {
		free(text);
		return -ENOMEM;
	}
	llama_tokenize(e->tok, text, (size_t)size, false, *ret, (size_t)n);
	free(text);
	*ret_n = limit && (size_t)limit < (size_t)n ? limit : (size_t)n;
	return 0;
}

struct scores {
	double nll_base, nll, kld, cosine;
	size_t top1, n;
};

static double log_softmax_at(const float *x, uint32_t n, uint32_t i, double *ret_lse)
{
	double mx = -INFINITY, sum = 0;

	for (uint32_t j = 0; j < n; j++)
		mx = fmax(mx, x[j]);
	for (uint32_t j = 0; j < n; j++)
		sum += exp(x[j] - mx);
	*ret_lse = mx + log(sum);
	return x[i] - *ret_lse;
}

/* Adds position's metrics: base and test logits predicting target. */
static void score(struct scores *s, const float *base, const float *test, uint32_t n, uint32_t target)
{
	double lse_b, lse_t, dot = 0, nb = 0, nt = 0, kl = 0;

	s->nll_base -= log_softmax_at(base, n, target, &lse_b);
	if (!test) {
		s->n++;
		return;
	}
	s->nll -= log_softmax_at(test, n, target, &lse_t);
	for (uint32_t j = 0; j < n; j++) {
		double pb = exp(base[j] - lse_b);

		kl += pb * ((base[j] - lse_b) - (test[j] - lse_t));
		dot += (double)base[j] * test[j];
		nb += (double)base[j] * base[j];
		nt += (double)test[j] * test[j];
	}
	s->kld += kl;
	s->cosine += dot / sqrt(nb * nt);
	s->top1 += argmax(base, n) == argmax(test, n);
	s->n++;
}

static int run_eval(const struct options *o, bool compare)
{
	struct engine e = { 0 };
	bool use_f32 = compare || o->f32, use_tqkv = compare || !o->f32;
	uint32_t *ids = NULL, ctx = 0, vocab;
	size_t n = 0;
	float *lb = NULL, *lt = NULL;
	struct llama_ctx *cb = NULL, *ct = NULL;
	struct scores s = { 0 };
	int r;

	if ((r = engine_open(&e, o, use_tqkv)) < 0)
		goto out;
	ctx = e.model->hp.context;
	vocab = e.model->hp.vocab;
	if ((r = load_tokens(&e, o->text, o->tokens, &ids, &n)) < 0 || (r = llama_kv_f32_new(&e.model->hp, ctx, &e.f32)) < 0)
		goto out;
	lb = malloc(sizeof(float) * vocab);
	lt = malloc(sizeof(float) * vocab);
	if (!lb || !lt || (r = llama_ctx_new(e.model, &llama_kv_f32_ops, e.f32, &cb)) < 0 ||
	    (use_tqkv && (r = llama_ctx_new(e.model, &llama_kv_tqkv_ops, e.tqkv, &ct)) < 0)) {
		r = r < 0 ? r : -ENOMEM;
		goto out;
	}
	/* Windows of ctx positions: BOS, then up to ctx - 1 text tokens, every
	 * prediction of a text token scored. */
	for (size_t at = 0; at < n && r >= 0; at += ctx - 1) {
		size_t len = n - at < ctx - 1 ? n - at : ctx - 1;

		if (at && use_tqkv && (r = llama_kv_tqkv_reset(e.tqkv)) < 0)
			break;
		for (size_t i = 0; i < len && r >= 0; i++) {
			uint32_t tok = i ? ids[at + i - 1] : llama_tokenizer_bos(e.tok);

			if (use_f32 && (r = llama_forward(cb, tok, (uint32_t)i, lb)) < 0)
				break;
			if (use_tqkv && (r = llama_forward(ct, tok, (uint32_t)i, use_f32 ? lt : lb)) < 0)
				break;
			score(&s, lb, compare ? lt : NULL, vocab, ids[at + i]);
		}
	}
	if (r < 0) {
		fprintf(stderr, "tqkv-llama: forward pass: %s\n", strerror(-r));
		goto out;
	}
	if (!compare) {
		double ppl = exp(s.nll_base / (double)s.n);

		if (o->json)
			printf("{\"ppl\":%.6f,\"tokens\":%zu}\n", ppl, s.n);
		else
			printf("perplexity %.4f over %zu tokens\n", ppl, s.n);
	} else {
		double ppl_base = exp(s.nll_base / (double)s.n), ppl = exp(s.nll / (double)s.n);
		double comp = llama_kv_tqkv_compression(e.tqkv);
		struct llama_kv_policy eff = o->policy;

		llama_kv_tqkv_effective(e.tqkv, &eff);

		if (o->json)
			printf("{\"ppl_base\":%.6f,\"ppl\":%.6f,\"ppl_delta_pct\":%.4f,\"kld\":%.6f,\"top1\":%.5f,"
			       "\"cosine\":%.6f,\"compression\":%.3f,\"tokens\":%zu,\"k\":\"%s\",\"v\":\"%s\","
			       "\"center\":%s,\"boundary\":%u,\"int8_scores\":%s,\"int8_values\":%s}\n",
			       ppl_base, ppl, 100 * (ppl / ppl_base - 1), s.kld / (double)s.n, (double)s.top1 / (double)s.n,
			       s.cosine / (double)s.n, comp, s.n, tqkv_kind_to_string(eff.k_kind),
			       tqkv_kind_to_string(eff.v_kind), eff.center_keys ? "true" : "false", eff.boundary,
			       o->policy.attn_flags & TQKV_ATTN_INT8_SCORES ? "true" : "false",
			       o->policy.attn_flags & TQKV_ATTN_INT8_VALUES ? "true" : "false");
		else
			printf("tokens %zu  ppl fp32 %.4f  ppl tqkv %.4f (%+.3f%%)  kld %.5f  top1 %.2f%%  cosine %.5f  "
			       "compression %.2f\n",
			       s.n, ppl_base, ppl, 100 * (ppl / ppl_base - 1), s.kld / (double)s.n,
			       100.0 * (double)s.top1 / (double)s.n, s.cosine / (double)s.n, comp);
	}
out:
	llama_ctx_free(cb);
	llama_ctx_free(ct);
	free(ids);
	free(lb);
	free(lt);
	engine_close(&e);
	return r < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
	struct options o;
	int r = parse_args(argc, argv, &o);

	if (r)
		return r;
	signal(SIGPIPE, SIG_IGN);
	if (!strcmp(o.mode, "generate"))
		return run_generate(&o);
	return run_eval(&o, !strcmp(o.mode, "compare"));
}
