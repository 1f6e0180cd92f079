/* SPDX-License-Identifier: MIT */
/*
 * tqkvd's configuration: defaults, the config file (/etc/tqkv/tqkvd.conf,
 * documented in systemd/tqkvd.conf) and command-line overrides.  Pure code:
 * it reads the file it is given and nothing else, never logs, and reports
 * every problem as one line in the caller's buffer.
 */
#ifndef TQKVD_CONFIG_H
#define TQKVD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Per-client limits the daemon enforces and announces in the HELLO reply. */
struct tqkvd_limits {
	uint32_t max_message_bytes;        /* default 65536 */
	uint32_t max_fds_per_message;      /* default 8 */
	uint32_t max_layers;               /* default 256 */
	uint32_t max_kv_heads;             /* default 128 (per layer) */
	uint32_t max_head_dim;             /* default 512, at most 512 */
	uint32_t max_clients;              /* default 256 */
	uint32_t max_sequences_per_client; /* default 1024 */
	uint32_t max_tokens_per_sequence;  /* default 1048576 */
};

/* Clients share cached blocks, and an arena, with the clients of their
 * tenant: those of the same user, or of the same primary group. */
enum tqkvd_tenancy {
	TENANCY_UID,
	TENANCY_GID,
};

struct tqkvd_config {
	char *socket_path;        /* NULL: resolved by the caller (socket activation, $RUNTIME_DIRECTORY, ...) */
	char *state_dir;          /* default $STATE_DIRECTORY (systemd), else "/var/lib/tqkv" as root,
	                           * else NULL (no persistence) */
	uint64_t memory_budget;   /* bytes; default 1 GiB */
	uint32_t block_tokens;    /* tokens per block; default 64; a multiple of 16 in 16..4096 */
	uint32_t worker_threads;  /* default 1; 1..64 */
	int log_level;            /* syslog LOG_ERR..LOG_DEBUG, default LOG_INFO */
	uint32_t tenancy;         /* enum tqkvd_tenancy: who shares a cache, default by uid */
	uint64_t tenant_quota;    /* bytes one tenant may hold; 0 (default): the budget only */
	uint32_t snapshot_interval; /* seconds between cache snapshots, 0: only on stop; default 300 */
	char *preset;             /* policy for TQKV_LAYER_DAEMON_POLICY layers (a tqkv_preset_find()
	                           * name), NULL (default): such layers are refused */
	struct tqkvd_limits limits;
};

/* The largest memory_budget, 32 TiB: each tenant's arena is one mapping
 * of the budget's size, in the daemon and in every client of the tenant.
 * x86-64 gives a process 128 TiB of address space, which its mappings
 * split (a PIE executable sits at two thirds of it): a quarter of it
 * still fits in one piece. */
#define TQKVD_MEMORY_BUDGET_MAX (UINT64_C(1) << 45)

#define TQKVD_CONFIG_FILE "/etc/tqkv/tqkvd.conf"
#define TQKVD_STATE_DIR "/var/lib/tqkv"

/* Fills c with the defaults listed above.  c holds no allocations before. */
void config_init_defaults(struct tqkvd_config *c);

/* Frees the strings in c and leaves them NULL; accepts a zeroed struct. */
void config_free(struct tqkvd_config *c);

/*
 * Parses the config file at path into c: "key = value" lines, '#' or ';'
 * comment lines, blank lines and an optional "[tqkvd]" header before the
 * first setting.  With must_exist false a missing file is not an error
 * (returns 0, c untouched).  On failure returns -EINVAL for bad content,
 * -ENOENT/-errno for I/O, -ENOMEM, and writes one line into err naming the
 * file, line and key, e.g.
 *   "/etc/tqkv/tqkvd.conf:7: memory_budget: invalid size 'lots' (expected e.g. 512M, 4G)"
 * Settings before the failing line stay applied; callers exit on failure.
 */
int config_load_file(struct tqkvd_config *c, const char *path, bool must_exist, char *err, size_t errlen);

/*
 * Applies one setting with the same keys and syntax as the file (used for
 * command-line overrides).  Returns 0, -EINVAL (err: "key: problem") or
 * -ENOMEM.
 */
int config_set(struct tqkvd_config *c, const char *key, const char *value, char *err, size_t errlen);

/* Checks every range and the constraints between fields once everything is
 * applied.  Returns 0 or -EINVAL with err naming the key. */
int config_validate(const struct tqkvd_config *c, char *err, size_t errlen);

/* The canonical name of a syslog level 3..7 ("err" ... "debug"), or NULL. */
const char *config_log_level_to_string(int level);

#endif
