/* SPDX-License-Identifier: MIT */
/*
 * Logging to stderr with sd-daemon "<N>" priority prefixes, so journald
 * keeps the level.  One line per event, prefixed with its object.
 */
#ifndef TQKVD_LOG_H
#define TQKVD_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <syslog.h>

void log_set_max_level(int level);
int log_get_max_level(void);

/* Logs at level; returns -abs(error) so callers can "return log_...()". */
int log_internal(int level, int error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define log_debug(...) log_internal(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...) log_internal(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...) log_internal(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_internal(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...) log_internal(LOG_ERR, 0, __VA_ARGS__)
/* Appends ": <strerror(error)>" to the message. */
#define log_error_errno(error, ...) log_internal(LOG_ERR, (error), __VA_ARGS__)
#define log_warning_errno(error, ...) log_internal(LOG_WARNING, (error), __VA_ARGS__)

/* A token bucket for messages a client can trigger: at most burst messages
 * per interval; the rest are counted and summarised once. */
struct ratelimit {
	uint64_t interval_usec;
	unsigned burst;
	uint64_t begin_usec;
	unsigned num;
	unsigned suppressed;
};

#define RATELIMIT_INIT(interval, b) ((struct ratelimit){ .interval_usec = (interval), .burst = (b) })

/* Whether a message may be logged now. */
bool ratelimit_below(struct ratelimit *rl);

uint64_t now_usec(void);

#endif
