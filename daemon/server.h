/* SPDX-License-Identifier: MIT */
/* The daemon's event loop side: clients, requests, sequences, stats. */
#ifndef TQKVD_SERVER_H
#define TQKVD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
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

/* Parks every tenant's arena and block directory in systemd's fd store
 * (FDSTORE=1) from now on, so a crash loses no published block. */
void server_set_fdstore(struct server *s, bool on);
/* Takes back what a crashed daemon parked (LISTEN_FDS with names
 * "arena-TENANT-GEN" and "dir-TENANT-GEN"): copies every block its
 * directory lists and its arena holds intact into this daemon's arenas,
 * then drops the old fds from the store.  Closes every fd it is given. */
void server_adopt_fds(struct server *s, const int *fds, char *const *names, size_t n);

#endif
