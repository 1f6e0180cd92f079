/* SPDX-License-Identifier: MIT */
/*
 * The daemon's stats text ("# Section" lines, "key:value" lines) in the
 * formats tools read.  Pure functions of the text.
 */
#ifndef TQKV_CLIENT_STATS_FORMAT_H
#define TQKV_CLIENT_STATS_FORMAT_H

#include <stdio.h>

/* One JSON object: every key of the plain sections as a member, and
 * "tenants": {NAME: {...}} from the "# Tenant NAME" sections. */
void stats_print_json(const char *text, FILE *out);

/* The Prometheus text exposition format (version 0.0.4): "tqkv_" metrics in
 * base units (bytes, seconds), counters ending in _total, per-tenant
 * metrics with a tenant label. */
void stats_print_prometheus(const char *text, FILE *out);

/* The value of key in the section called section (NULL: the first
 * occurrence anywhere), or def. */
double stats_number(const char *text, const char *section, const char *key, double def);

#endif
