/* SPDX-License-Identifier: MIT */
#ifndef TQKV_PROTO_CRC32C_H
#define TQKV_PROTO_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C (Castagnoli, reflected 0x82F63B78), the checksum of page headers
 * and snapshot records.  crc32c(0, "123456789", 9) == 0xe3069283. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

#endif
