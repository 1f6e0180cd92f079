/* SPDX-License-Identifier: MIT */
/* Runs a libFuzzer target over every file of its corpus directories: the
 * fuzz corpora as ordinary tests (any crash or sanitizer report fails). */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
	unsigned n = 0;

	for (int a = 1; a < argc; a++) {
		DIR *d = opendir(argv[a]);
		struct dirent *e;

		if (!d) {
			perror(argv[a]);
			return 1;
		}
		while ((e = readdir(d))) {
			char path[4096];
			FILE *f;
			uint8_t *buf;
			long size;

			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", argv[a], e->d_name);
			f = fopen(path, "rb");
			if (!f || fseek(f, 0, SEEK_END) < 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0) {
				perror(path);
				return 1;
			}
			/* Exactly size bytes, so ASan sees any read past them. */
			buf = malloc(size ? (size_t)size : 1);
			if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
				perror(path);
				return 1;
			}
			fclose(f);
			LLVMFuzzerTestOneInput(buf, (size_t)size);
			free(buf);
			n++;
		}
		closedir(d);
	}
	printf("replayed %u inputs\n", n);
	return n ? 0 : 1;
}
