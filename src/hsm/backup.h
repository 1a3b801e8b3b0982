/*
 * Backups (BKUP / BKRS): configuration (settings, roles, identities) and/or
 * the key table with each key's material, serialized in a strict
 * length-prefixed format and encrypted with AES-256-GCM under a key derived
 * from the BEK. The header and body decoders are pure and bounds-checked so
 * that fuzz targets can call them; a restore either applies whole or not at all.
 */
#ifndef KH_BACKUP_H
#define KH_BACKUP_H

#include "hsm/hsm.h"
#include "hsm/majorkey.h"

#define KH_BACKUP_CONFIG 0x1
#define KH_BACKUP_KEYS 0x2
#define KH_BACKUP_ALL (KH_BACKUP_CONFIG | KH_BACKUP_KEYS)

/*
 * File: header || nonce(12) || ciphertext || tag(16). The header is the
 * GCM associated data:
 *   "KHBK" | version u8 (=1) | scope u8 | BEK KCV (6 hex digits) |
 *   created (i64, seconds since the epoch, big-endian)
 * Plaintext (all integers big-endian; lpN = N-bit length then bytes):
 *   "KHBP"
 *   config scope: u32 count, settings   { lp16 key, lp32 value }
 *                 u32 count, roles      { i64 id, lp16 name, lp16 perms,
 *                   lp16 ranges, lp16 commands, u32 logins_required,
 *                   u32 ports, u32 sources, u8 dual_factor, u8 builtin }
 *                 u32 count, identities { i64 id, lp16 name, i64 role_id,
 *                   lp16 pw_hash, lp16 pw_salt, lp16 pw_params,
 *                   u8 must_change, u32 failures, i64 locked_until,
 *                   u8 builtin, i64 created, i64 changed }
 *   keys scope:   u32 count, keys { u32 slot, key_id[16], lp8 major,
 *                   lp8 class, lp8 ktype, u32 bits, lp32 attrs,
 *                   lp32 material, lp32 label, lp32 ckaid, lp32 extra,
 *                   i64 created }
 * Every list is in strictly increasing key/id/slot order, and the
 * plaintext must be consumed exactly.
 */
#define KH_BACKUP_VERSION 1
#define KH_BACKUP_HDR_LEN 20
#define KH_BACKUP_MAX (4u * 1024 * 1024 - 4096) /* whole file: its hex fits a frame */

struct kh_backup_hdr {
	unsigned version;
	unsigned scope; /* KH_BACKUP_* bits, non-zero */
	char kcv[7];    /* the BEK's check value */
	int64_t created;
};

/* Items handed to a visitor point into the decoded plaintext. */
struct kh_backup_setting {
	const char *key;
	size_t key_len;
	const uint8_t *val;
	size_t val_len;
};

struct kh_backup_role {
	int64_t id;
	const char *name, *perms, *ranges, *commands;
	size_t name_len, perms_len, ranges_len, commands_len;
	uint32_t logins_required, ports, sources;
	bool dual_factor, builtin;
};

struct kh_backup_identity {
	int64_t id, role_id;
	const char *name, *pw_params;
	size_t name_len, pw_params_len;
	const uint8_t *pw_hash, *pw_salt;
	size_t pw_hash_len, pw_salt_len;
	bool must_change, builtin;
	uint32_t failures;
	int64_t locked_until, created, changed;
};

struct kh_backup_key {
	uint32_t slot;
	const uint8_t *key_id; /* 16 bytes */
	enum kh_mk_id major;   /* FTK or PMK */
	char cls[16], ktype[16];
	uint32_t bits;
	const uint8_t *attrs, *material, *label, *ckaid, *extra;
	size_t attrs_len, material_len, label_len, ckaid_len, extra_len;
	int64_t created;
};

struct kh_backup_visitor {
	int (*setting)(void *arg, const struct kh_backup_setting *s);
	int (*role)(void *arg, const struct kh_backup_role *r);
	int (*identity)(void *arg, const struct kh_backup_identity *i);
	int (*key)(void *arg, const struct kh_backup_key *k);
};

struct kh_backup_counts {
	uint32_t settings, roles, identities, keys;
	bool needs[KH_MK_COUNT]; /* major keys the key rows are wrapped under */
};

/* Parse and check the header (n: the whole file's length, which must leave
 * room for nonce and tag). KH_ERR_BACKUP_INVALID on any deviation. */
KH_MUST_CHECK int kh_backup_parse_header(const uint8_t *p, size_t n, struct kh_backup_hdr *h);
/* Decode a plaintext body for the given scope, calling v's functions (v or
 * any member may be NULL) for each item; a visitor error stops and is
 * returned. Pure apart from the visitor. KH_ERR_BACKUP_INVALID on any
 * deviation from the format; counts (may be NULL) is filled. */
KH_MUST_CHECK int kh_backup_decode(const uint8_t *p, size_t n, unsigned scope,
                                   const struct kh_backup_visitor *v, void *arg,
                                   struct kh_backup_counts *counts);

/* Make a backup of scope under the loaded BEK (audited). *out is malloc'd.
 * KH_ERR_MAJOR_KEY_NOT_LOADED without a BEK (or without a key's major key). */
KH_MUST_CHECK int kh_backup_create(struct kh_hsm *hsm, unsigned scope, const char *actor,
                                   uint8_t **out, size_t *outlen, struct kh_backup_counts *counts);
/* Restore a backup in one transaction (audited). On failure nothing has
 * changed and detail (may be NULL) names the reason without secrets. */
KH_MUST_CHECK int kh_backup_restore(struct kh_hsm *hsm, const uint8_t *data, size_t len,
                                    const char *actor, struct kh_backup_counts *counts,
                                    char *detail, size_t detailsz);

#endif
