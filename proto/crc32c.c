/* SPDX-License-Identifier: MIT */
#include "crc32c.h"

/* Bitwise, table-free: it checks 60-byte headers, not bulk data. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
	const uint8_t *p = data;

	crc = ~crc;
	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
	}
	return ~crc;
}
