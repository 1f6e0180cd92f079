/* SPDX-License-Identifier: MIT */
/* Reading the reference JSONs of ../shared/models: their numeric arrays,
 * found by key in file order (enough for these machine-written files). */
#ifndef TQKV_TESTS_REF_JSON_H
#define TQKV_TESTS_REF_JSON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The models directory: $TQKV_MODELS, else ../shared/models next to the
 * source tree; NULL if neither exists. */
static inline const char *models_dir(char *buf, size_t size)
{
	const char *env = getenv("TQKV_MODELS"), *root = getenv("TQKV_SOURCE_ROOT");
	struct stat st;

	if (env)
		snprintf(buf, size, "%s", env);
	else
		snprintf(buf, size, "%s/../shared/models", root ? root : ".");
	return stat(buf, &st) == 0 && S_ISDIR(st.st_mode) ? buf : NULL;
}

/* The whole file, NUL-terminated, or NULL. */
static inline char *read_text_file(const char *path, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;

	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
	    (buf = malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n) {
		buf[n] = 0;
		if (ret_len)
			*ret_len = (size_t)n;
	} else {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

/* The numbers of the nth (from 0) array under "key": into out[max];
 * returns how many, or -1 if there is no such array. */
static inline int json_array(const char *json, const char *key, int nth, double *out, int max)
{
	char pat[64];
	const char *p = json;
	int n = 0;

	snprintf(pat, sizeof(pat), "\"%s\": [", key);
	for (int i = 0; i <= nth; i++) {
		p = strstr(p, pat);
		if (!p)
			return -1;
		p += strlen(pat);
	}
	while (*p && *p != ']') {
		char *end;
		double v = strtod(p, &end);

		if (end == p) {
			p++;
			continue;
		}
		if (n < max)
			out[n] = v;
		n++;
		p = end;
	}
	return n;
}

#endif
