/* SPDX-License-Identifier: MIT */
/* A private tqkvd for a benchmark: started from the build tree (or $TQKVD). */
#ifndef TQKV_BENCH_DAEMON_H
#define TQKV_BENCH_DAEMON_H

#include <sys/types.h>

struct bench_daemon {
	pid_t pid;
	char dir[64], socket[128];
};

int bench_daemon_up(struct bench_daemon *d, const char *workers, const char *budget);
void bench_daemon_down(struct bench_daemon *d);

#endif
