/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

static int max_level = LOG_INFO;

void log_set_max_level(int level)
{
	max_level = level;
}

int log_get_max_level(void)
{
	return max_level;
}

int log_internal(int level, int error, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	if (error < 0)
		error = -error;
	if (level <= max_level) {
		char line[1024];

		va_start(ap, fmt);
		vsnprintf(line, sizeof(line), fmt, ap);
		va_end(ap);
		if (error)
			fprintf(stderr, "<%d>%s: %s\n", level, line, strerror(error));
		else
			fprintf(stderr, "<%d>%s\n", level, line);
	}
	errno = saved;
	return -error;
}

uint64_t now_usec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

bool ratelimit_below(struct ratelimit *rl)
{
	uint64_t now = now_usec();

	if (rl->begin_usec == 0 || now - rl->begin_usec >= rl->interval_usec) {
		if (rl->suppressed)
			log_warning("%u similar messages suppressed", rl->suppressed);
		rl->begin_usec = now;
		rl->num = 0;
		rl->suppressed = 0;
	}
	if (rl->num < rl->burst) {
		rl->num++;
		return true;
	}
	rl->suppressed++;
	return false;
}
