/* SPDX-License-Identifier: MIT */
/* Conversion between nibble words and the 3-bit plane's words
 * (tq3-words.h), a group of four nibble words at a time. */
#include "tq3-words.h"

void tq3_words_from_nibbles(const uint32_t *nib, unsigned W, uint32_t *words)
{
	for (unsigned g = 0; g < W / TQ3_GROUP_NIBBLE_WORDS; g++, nib += 4, words += 3) {
		uint32_t d = nib[3];

		/* Index bits {0,1,2} at {0,1,2}, {0,1,3}, {0,2,3}; d's bits
		 * 0, 1, 2 into the spare bits 3, 2, 1 of A, B, C. */
		words[0] = (nib[0] & 0x77777777u) | (d & 0x11111111u) << 3;
		words[1] = (nib[1] & 0x33333333u) | (nib[1] & 0x44444444u) << 1 | (d & 0x22222222u) << 1;
		words[2] = (nib[2] & 0x11111111u) | (nib[2] & 0x66666666u) << 1 | (d & 0x44444444u) >> 1;
	}
}

void tq3_nibbles_from_words(const uint32_t *words, unsigned W, uint32_t *nib)
{
	for (unsigned g = 0; g < W / TQ3_GROUP_NIBBLE_WORDS; g++, nib += 4, words += 3) {
		uint32_t a = words[0], b = words[1], c = words[2];

		nib[0] = a & 0x77777777u;
		nib[1] = (b & 0x33333333u) | (b >> 1 & 0x44444444u);
		nib[2] = (c & 0x11111111u) | (c >> 1 & 0x66666666u);
		nib[3] = (a >> 3 & 0x11111111u) | (b >> 1 & 0x22222222u) | (c << 1 & 0x44444444u);
	}
}
