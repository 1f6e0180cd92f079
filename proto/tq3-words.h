/* SPDX-License-Identifier: MIT */
/*
 * The 3-bit plane (docs/PAGE-FORMAT.md): n coordinates at 3 bits, read by
 * the attention kernels as n / 8 nibble words like a 4-bit plane, at the
 * cost of two ternary-logic operations per four nibble words instead of
 * the plane merging of a 2 + 1 bit split.
 *
 * Nibble word w (W = n / 8 of them) holds coordinates w + W k in nibble k,
 * as in a 4-bit plane.  Nibble words 4g .. 4g + 3 (a group, 32
 * coordinates) are stored in words 3g .. 3g + 2, called A, B and C.  Words
 * of type T < 3 (T = w mod 4) are stored as they are, in word 3g + T: each
 * nibble holds its index's bits (tq3_nibble_index says where) and one
 * spare bit.  The spare bits (bit 3 of A's nibbles, 2 of B's, 1 of C's)
 * hold the index bits 0, 1, 2 of the type-3 word, so that nibble word is
 * (A & 8) | (B & 4) | (C & 3) per nibble: its index bits sit at nibble bits
 * 3, 2, 1.  A reader looks nibbles up in tables permuted per type
 * (tq3_nibble_index); bits that are not the index's do not matter.
 */
#ifndef TQKV_PROTO_TQ3_WORDS_H
#define TQKV_PROTO_TQ3_WORDS_H

#include <stdint.h>

/* Nibble words per group and the words that store them. */
#define TQ3_GROUP_NIBBLE_WORDS 4u
#define TQ3_GROUP_WORDS 3u

/* The 3-bit index a nibble of a type-T word stands for: index bit j sits
 * at nibble bit {0,1,2}, {0,1,3}, {0,2,3} or {3,2,1} for types 0-3. */
static inline unsigned tq3_nibble_index(unsigned type, unsigned nibble)
{
	static const uint8_t bit_of[4][3] = { { 0, 1, 2 }, { 0, 1, 3 }, { 0, 2, 3 }, { 3, 2, 1 } };
	unsigned index = 0;

	for (unsigned j = 0; j < 3; j++)
		index |= ((nibble >> bit_of[type][j]) & 1u) << j;
	return index;
}

/* Stores W nibble words (nibble k of nib[w]: the index of coordinate
 * w + W k, in bits 0-2) as 3W/4 words of the plane's layout. */
void tq3_words_from_nibbles(const uint32_t *nib, unsigned W, uint32_t *words);

/* The inverse: the W nibble words, each index in bits 0-2 of its nibble. */
void tq3_nibbles_from_words(const uint32_t *words, unsigned W, uint32_t *nib);

#endif
