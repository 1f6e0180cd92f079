/* SPDX-License-Identifier: MIT */
/* A private tqkvd for a benchmark: started from the build tree (or $TQKVD). */
#ifndef TQKV_BENCH_DAEMON_H
#define TQKV_BENCH_DAEMON_H

#include <stdint.h>
#include <sys/types.h>

struct bench_daemon {
	pid_t pid;
	char dir[64], socket[128];
};

int bench_daemon_up(struct bench_daemon *d, const char *workers, const char *budget);
void bench_daemon_down(struct bench_daemon *d);

struct tqkv_client;
struct tqkv_model;

/* Fixed K and V rows of n values, the same in every benchmark. */
void bench_rows(uint16_t *k, uint16_t *v, unsigned n);
/* Connects to socket and registers m. */
int bench_connect(const char *socket, const struct tqkv_model *m, struct tqkv_client **ret);

#endif
