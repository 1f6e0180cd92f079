/* SPDX-License-Identifier: MIT */
#ifndef TQKV_EXPORT_H
#define TQKV_EXPORT_H

/* Symbols are hidden by default (-fvisibility=hidden); the public API is
 * exported explicitly. */
#define TQKV_EXPORT __attribute__((visibility("default")))

#endif
