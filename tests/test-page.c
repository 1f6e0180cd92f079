/* SPDX-License-Identifier: MIT */
/* Page format: header fields, section offsets, validation of untrusted
 * pages, reproducible bytes, and a golden checksum of the whole format. */
#include <errno.h>
#include <string.h>

#include <tqkv/page.h>

#include "crc32c.h"
#include "test-util.h"

Test(page, crc32c_check_value)
{
	cr_assert_eq(crc32c(0, "123456789", 9), 0xe3069283u);
}

Test(page, header_describes_the_page)
{
	struct tqkv_codec *c = test_codec(TQKV_KIND_TQ3_5, 96, 0, 11);
	float *x = test_gaussian(5, 70, 96);
	size_t size;
	struct tqkv_page_header *h = test_encode(c, x, 70, 96, NULL, &size);

	cr_assert_eq(h->magic, TQKV_PAGE_MAGIC);
	cr_assert_eq(h->version, TQKV_PAGE_VERSION);
	cr_assert_eq(h->kind, TQKV_KIND_TQ3_5);
	cr_assert_eq(h->head_dim, 96);
	cr_assert_eq(h->padded_dim, 128);
	cr_assert_eq(h->n_tokens, 70);
	cr_assert_eq(h->n_tiles, 5);
	cr_assert_eq(h->tile_bytes, 16 * 128 * 7 / 2 / 8);
	cr_assert_eq(h->tiles_offset, 64);
	cr_assert_eq(h->norms_offset % 64, 0);
	cr_assert_geq(h->norms_offset, 64 + 5 * h->tile_bytes);
	cr_assert_eq(h->rnorms_offset, 0);
	cr_assert_eq(h->page_bytes, size);
	cr_assert_eq(size % 64, 0);
	cr_assert_eq(h->layer, 1);
	cr_assert_eq(h->kv_head, 2);
	cr_assert_eq(h->model_seed, 11);
	free(h);
	free(x);
	tqkv_codec_free(c);
}

/* Any damaged header byte is caught (CRC); crafted headers with a valid
 * CRC are the next test's business. */
Test(page, damaged_header_is_rejected)
{
	struct tqkv_codec *c = test_codec(TQKV_KIND_TQ4, 128, 0, 11);
	float *x = test_gaussian(5, 16, 128), y[128];
	size_t size;
	uint8_t *page = test_encode(c, x, 16, 128, NULL, &size);

	for (size_t i = 0; i < sizeof(struct tqkv_page_header); i++) {
		page[i] ^= 0x10;
		cr_assert_eq(tqkv_page_decode_f32(c, page, size, 0, 1, NULL, y, 128), -EBADMSG, "byte %zu", i);
		page[i] ^= 0x10;
	}
	cr_assert_eq(tqkv_page_decode_f32(c, page, size, 0, 1, NULL, y, 128), 0);
	cr_assert_eq(tqkv_page_decode_f32(c, page, size - 1, 0, 1, NULL, y, 128), -EBADMSG);
	cr_assert_eq(tqkv_page_decode_f32(c, page, 10, 0, 1, NULL, y, 128), -EBADMSG);
	cr_assert_eq(tqkv_page_decode_f32(c, page, size, 16, 1, NULL, y, 128), -EINVAL);
	cr_assert_eq(tqkv_page_decode_f32(c, page, size, 15, 2, NULL, y, 128), -EINVAL);
	free(page);
	free(x);
	tqkv_codec_free(c);
}

static void reseal(struct tqkv_page_header *h)
{
	h->header_crc = crc32c(0, h, offsetof(struct tqkv_page_header, header_crc));
}

/* A writer that can recompute the CRC still cannot move a reader outside
 * the page: offsets must equal the geometry the reader's codec computes,
 * and reserved fields and unknown flags are refused. */
Test(page, crafted_header_with_valid_crc_is_rejected)
{
	struct tqkv_codec *c = test_codec(TQKV_KIND_TQ4, 128, 0, 11);
	float *x = test_gaussian(5, 32, 128), y[128];
	size_t size;
	struct tqkv_page_header *h = test_encode(c, x, 32, 128, NULL, &size), saved = *h;

	h->tiles_offset = 0x10000000;
	reseal(h);
	cr_assert_eq(tqkv_page_decode_f32(c, h, size, 0, 1, NULL, y, 128), -EBADMSG);
	*h = saved;
	h->norms_offset = 64;
	reseal(h);
	cr_assert_eq(tqkv_page_decode_f32(c, h, size, 0, 1, NULL, y, 128), -EBADMSG);
	*h = saved;
	h->n_tokens = 1000;  /* more tokens than the buffer holds */
	reseal(h);
	cr_assert_eq(tqkv_page_decode_f32(c, h, size, 0, 1, NULL, y, 128), -EBADMSG);
	*h = saved;
	h->flags |= 0x80;
	reseal(h);
	cr_assert_eq(tqkv_page_decode_f32(c, h, size, 0, 1, NULL, y, 128), -EBADMSG);
	*h = saved;
	h->reserved2 = 1;
	reseal(h);
	cr_assert_eq(tqkv_page_decode_f32(c, h, size, 0, 1, NULL, y, 128), -EBADMSG);
	*h = saved;
	cr_assert_eq(tqkv_page_decode_f32(c, h, size, 0, 1, NULL, y, 128), 0);
	free(h);
	free(x);
	tqkv_codec_free(c);
}

/* A centered page needs its mean to decode, and an uncentered one must not
 * get one: either mistake would silently shift every value. */
Test(page, centering_must_match)
{
	struct tqkv_codec *c = test_codec(TQKV_KIND_TQ4, 64, 0, 11);
	float *x = test_gaussian(5, 16, 64), mean[64] = { 0 }, y[64];
	size_t size;
	void *plain = test_encode(c, x, 16, 64, NULL, &size), *centered = test_encode(c, x, 16, 64, mean, &size);

	cr_assert_eq(tqkv_page_decode_f32(c, plain, size, 0, 1, mean, y, 64), -EINVAL);
	cr_assert_eq(tqkv_page_decode_f32(c, centered, size, 0, 1, NULL, y, 64), -EINVAL);
	cr_assert_eq(tqkv_page_decode_f32(c, centered, size, 0, 1, mean, y, 64), 0);
	free(plain);
	free(centered);
	free(x);
	tqkv_codec_free(c);
}

/* A page from another stream (other layer, head, kind or seed) is refused:
 * decoding it with the wrong rotation would return garbage silently. */
Test(page, other_stream_is_rejected)
{
	struct tqkv_codec *c = test_codec(TQKV_KIND_TQ4, 128, 0, 11);
	struct tqkv_codec *other_seed = test_codec(TQKV_KIND_TQ4, 128, 0, 12);
	struct tqkv_codec *other_kind = test_codec(TQKV_KIND_TQ3, 128, 0, 11);
	float *x = test_gaussian(5, 16, 128), y[128];
	size_t size;
	void *page = test_encode(c, x, 16, 128, NULL, &size);

	cr_assert_eq(tqkv_page_decode_f32(other_seed, page, size, 0, 1, NULL, y, 128), -EBADMSG);
	cr_assert_eq(tqkv_page_decode_f32(other_kind, page, size, 0, 1, NULL, y, 128), -EBADMSG);
	free(page);
	free(x);
	tqkv_codec_free(c);
	tqkv_codec_free(other_seed);
	tqkv_codec_free(other_kind);
}

Test(page, encode_rejects_bad_arguments)
{
	struct tqkv_codec *c = test_codec(TQKV_KIND_TQ4, 128, 0, 11);
	float x[128] = { 0 };
	uint8_t page[4096];

	cr_assert_eq(tqkv_page_size(c, 0), 0);
	cr_assert_eq(tqkv_page_size(c, 70000), 0);
	cr_assert_eq(tqkv_page_encode_f32(c, x, 128, 0, NULL, page, sizeof(page)), -EINVAL);
	cr_assert_eq(tqkv_page_encode_f32(c, x, 128, 1, NULL, page, 100), -EINVAL);
	cr_assert_eq(tqkv_page_encode_f32(c, x, 64, 1, NULL, page, sizeof(page)), -EINVAL);
	cr_assert_eq(tqkv_page_encode_f32(c, NULL, 128, 1, NULL, page, sizeof(page)), -EINVAL);
	tqkv_codec_free(c);
}

/* The whole format is pinned: codebooks, rotation, layout and header.  If
 * this changes, TQKV_PAGE_VERSION must change with it. */
Test(page, golden_page_checksum)
{
	static const struct {
		enum tqkv_kind kind;
		uint32_t crc;
	} golden[] = {
		{ TQKV_KIND_FP16, 0x867f36bu },
		{ TQKV_KIND_INT8, 0x452a032bu },
		{ TQKV_KIND_TQ1, 0x37db7969u },
		{ TQKV_KIND_TQ2, 0x69bf60cdu },
		{ TQKV_KIND_TQ2_5, 0xb90cc2f2u },
		{ TQKV_KIND_TQ3, 0x72a3dedeu },
		{ TQKV_KIND_TQ3_5, 0xdb3f6936u },
		{ TQKV_KIND_TQ4, 0xda90e124u },
	};
	float *x = test_gaussian(0x601d, 40, 128);

	for (size_t i = 0; i < sizeof(golden) / sizeof(golden[0]); i++) {
		struct tqkv_codec *c = test_codec(golden[i].kind, 128, 0, 0x0123456789abcdefull);
		size_t size;
		void *page = test_encode(c, x, 40, 128, NULL, &size);
		/* Not the header's own CRC: a CRC over a message and its CRC is
		 * the same for every message, which would hide header changes. */
		uint32_t crc = crc32c(crc32c(0, page, 60), (const uint8_t *)page + 64, size - 64);

		cr_assert_eq(crc, golden[i].crc, "%s: crc %#x", tqkv_kind_to_string(golden[i].kind), crc);
		free(page);
		tqkv_codec_free(c);
	}
	free(x);
}
