/* SPDX-License-Identifier: MIT */
/* The daemon's event loop side: clients, requests, sequences, stats. */
#ifndef TQKVD_SERVER_H
#define TQKVD_SERVER_H

#include <uv.h>

#include "config.h"

struct server;

/* Takes ownership of listen_fd (a listening AF_UNIX stream socket). */
int server_new(uv_loop_t *loop, const struct tqkvd_config *cfg, int listen_fd, struct server **ret);
/* Disconnects every client, stops the workers, closes the handles; run the
 * loop afterwards so libuv can finish closing, then call server_free(). */
void server_stop(struct server *s);
void server_free(struct server *s);

/* Writes the cached blocks to the state directory (after server_stop(),
 * when every block is unheld); logs the outcome.  0 without a state
 * directory. */
int server_save(struct server *s);
/* Loads the saved cache, if any, before clients come: a damaged or
 * truncated file is reported in one log line and what is intact is kept. */
int server_load(struct server *s);

#endif
