/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the GGUF reader: any bytes are parsed; a file that
 * parses is then walked like the engine walks it (every metadata value,
 * string arrays, every tensor's data).  Build and run (clang):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iclient \
 *     tests/fuzz/fuzz-gguf.c client/gguf.c -o fuzz-gguf
 *   ./fuzz-gguf -max_total_time=600 tests/fuzz/corpus/gguf
 *
 * tests/fuzz/replay.c runs the corpus as an ordinary test.
 */
#include <stdint.h>
#include <stdlib.h>

#include "gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gguf_file *f;
	char err[256];
	volatile uint64_t sink = 0;

	if (gguf_parse(data, size, &f, err, sizeof(err)) < 0)
		return 0;
	for (uint64_t i = 0; i < f->n_kv; i++) {
		const struct gguf_value *v = &f->kv[i].value;

		if (v->type == GGUF_TYPE_ARRAY && v->array.type == GGUF_TYPE_STRING && v->array.n < 100000) {
			struct gguf_string *s = malloc(sizeof(*s) * (v->array.n ? v->array.n : 1));

			if (s) {
				gguf_array_strings(v->array.data, v->array.n, s);
				for (uint64_t j = 0; j < v->array.n; j++)
					sink += s[j].len ? (uint8_t)s[j].s[s[j].len - 1] : 0;
				free(s);
			}
		}
	}
	for (uint64_t i = 0; i < f->n_tensors; i++)
		if (f->tensors[i].bytes)
			sink += ((const uint8_t *)f->tensors[i].data)[f->tensors[i].bytes - 1];
	gguf_close(f);
	(void)sink;
	return 0;
}
