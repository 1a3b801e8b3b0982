/*
 * Backups (BKUP / BKRS): configuration (settings, roles, identities) and/or
 * the key table with each key's material, serialized in a strict
 * length-prefixed format and encrypted with AES-256-GCM under a key derived
 * from the BEK. The header and body decoders are pure and bounds-checked so
 * that fuzz targets can call them; a restore either applies whole or not at all.
 * Backups larger than a frame travel in pages: an export kept per connection
 * (BKUP) and a staged upload (BKRS), both ciphertext, bounded and dropped
 * with the connection.
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
/* Whole file. A backup larger than one frame travels in pages (BKUP PS,
 * BKRS OF/BZ: docs/PROTOCOL.md); KH_BACKUP_FRAME_MAX is what still fits
 * the single-frame forms (its hex within an 8 MiB frame). */
#define KH_BACKUP_MAX (1024u * 1024 * 1024)
#define KH_BACKUP_FRAME_MAX (4u * 1024 * 1024 - 4096)
/* Pages: PS bytes per BKUP answer; a BKRS page is at most the same. */
#define KH_BACKUP_PAGE_MIN 512u
#define KH_BACKUP_PAGE_MAX (3u * 1024 * 1024)
/* Bytes all paged transfers of the daemon may hold at once (ciphertext,
 * normal heap), and how long one transfer lives after it started. */
#define KH_BACKUP_STAGED_MAX (2ull * 1024 * 1024 * 1024)
#define KH_BACKUP_XFER_TTL 900

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

/* ---- paged transfers -------------------------------------------------------
 * A backup file being assembled from BKRS pages. Pure apart from malloc:
 * pages must come in order, each starting where the previous one ended,
 * and never past the declared total; the first page must hold the whole
 * header, which is parsed then. */
struct kh_backup_stage {
	uint8_t *data; /* total bytes, normal heap: the file is ciphertext */
	size_t total, have;
	struct kh_backup_hdr hdr;
};

/* Start staging a file of total bytes with its first page (at least
 * KH_BACKUP_HDR_LEN bytes, at most total). KH_ERR_TOO_LARGE beyond
 * KH_BACKUP_MAX, KH_ERR_BACKUP_INVALID for a bad header or a total that
 * cannot be a backup, KH_ERR_BAD_FIELD for a first page too short or too
 * long. On failure st is empty. */
KH_MUST_CHECK int kh_backup_stage_begin(struct kh_backup_stage *st, uint64_t total,
                                        const uint8_t *page, size_t n);
/* Append the page that starts at off (which must be st->have) and holds
 * 1..total-have bytes. KH_ERR_BAD_FIELD otherwise, st unchanged. */
KH_MUST_CHECK int kh_backup_stage_add(struct kh_backup_stage *st, uint64_t off,
                                      const uint8_t *page, size_t n);
static inline bool kh_backup_stage_done(const struct kh_backup_stage *st)
{
	return st->data != NULL && st->have == st->total;
}
void kh_backup_stage_free(struct kh_backup_stage *st);

/* A connection's paged transfer (export for BKUP, upload for BKRS): opaque,
 * bound to the identities that started it, counted against
 * KH_BACKUP_STAGED_MAX and expired after KH_BACKUP_XFER_TTL seconds. */
struct kh_backup_xfer;

/* Make a backup as kh_backup_create and keep it as s's export (replacing
 * any earlier one), pages of page bytes. KH_ERR_BUSY when the daemon's
 * transfers already hold too much. */
KH_MUST_CHECK int kh_backup_export_start(struct kh_hsm *hsm, struct kh_session *s,
                                         unsigned scope, size_t page, const char *actor,
                                         struct kh_backup_counts *counts);
/* The page of s's export at off, for the export named id (16 hex digits).
 * *p and *n point into the export; *next is the offset of the next page, 0
 * after the last. Fetching the last page ends the export, so *p is only
 * valid until the next call; the caller copies it out first. */
struct kh_backup_page {
	char id[17];
	char kcv[7];
	uint8_t sha256[32];
	size_t total, off, n, next;
	const uint8_t *p;
};
KH_MUST_CHECK int kh_backup_export_page(struct kh_hsm *hsm, struct kh_session *s,
                                        const char *id, uint64_t off, const char *actor,
                                        struct kh_backup_page *pg, char *detail,
                                        size_t detailsz);
/* Call when the page handed out by kh_backup_export_page has been copied:
 * ends the export if that was its last page. */
void kh_backup_export_served(struct kh_hsm *hsm, struct kh_session *s, const struct kh_backup_page *pg);

/* The upload of s, created by kh_backup_upload_start (replacing any earlier
 * one). NULL when none is in progress, or after it expired or was started
 * by other identities (it is then dropped; detail says why). */
KH_MUST_CHECK int kh_backup_upload_start(struct kh_hsm *hsm, struct kh_session *s,
                                         uint64_t total, const uint8_t *page, size_t n,
                                         const char *actor, struct kh_backup_hdr *hdr,
                                         char *detail, size_t detailsz);
struct kh_backup_stage *kh_backup_upload(struct kh_hsm *hsm, struct kh_session *s,
                                         const char *actor, char *detail, size_t detailsz);
/* Drop s's upload (if any): the staging memory is wiped and freed. */
void kh_backup_upload_drop(struct kh_hsm *hsm, struct kh_session *s);
/* Drop both of s's transfers: called when the connection ends. */
void kh_backup_session_end(struct kh_hsm *hsm, struct kh_session *s);

/*
 * Configuration replication between group members that share the PMK
 * (CFEX / CFIM). Blob: header || nonce(12) || ciphertext || tag(16); the
 * header is the GCM associated data:
 *   "KHCF" | version u8 (=1) | PMK KCV (6 hex digits) | created (i64)
 * under a key derived from the PMK (HKDF-SHA256, info "keyhold config v1",
 * a label no other use of the PMK shares). Plaintext: the config scope of a
 * backup body above ("KHBP", settings, roles, identities), with every
 * identity's failures and locked_until zero: lockout is each device's own.
 */
#define KH_CONFIG_VERSION 1
#define KH_CONFIG_HDR_LEN 19
#define KH_CONFIG_MAX KH_BACKUP_MAX

/* Who imports: the identities logged in on the importing connection, and
 * that connection's port and source. */
struct kh_config_importer {
	const char (*names)[KH_NAME_MAX];
	size_t n;
	enum kh_port port;
	enum kh_source source;
};

/* Parse a configuration blob's header (scope is set to KH_BACKUP_CONFIG);
 * KH_ERR_BAD_FIELD on any deviation. Pure. */
KH_MUST_CHECK int kh_config_parse_header(const uint8_t *p, size_t n, struct kh_backup_hdr *h);
/* Seal roles, identities and the settings that replicate under the PMK
 * (audited config.export). *out is malloc'd. */
KH_MUST_CHECK int kh_config_export(struct kh_hsm *hsm, const char *actor, uint8_t **out,
                                   size_t *outlen, struct kh_backup_counts *counts);
/* Replace roles, identities and settings with the blob's, in one
 * transaction (audited config.import). Refused, changing nothing: a header
 * that is not one (BAD_FIELD), another PMK's KCV (BAD_KCV), a blob that
 * does not open (CRYPTO), contents this firmware cannot use (BAD_FIELD), a
 * result that breaks the role rules or locks out an importer (STATE; see
 * docs/PROTOCOL.md, CFIM). Identities keep their lockout state by name;
 * the importers keep their password and must-change as well. */
KH_MUST_CHECK int kh_config_import(struct kh_hsm *hsm, const uint8_t *data, size_t len,
                                   const char *actor, const struct kh_config_importer *who,
                                   struct kh_backup_counts *counts, char *detail,
                                   size_t detailsz);

/* SHA-256 over "keyhold config digest v1" and the plaintext CFEX would seal
 * (lockout state zeroed), for a group manager to see that the configuration
 * changed without exporting it (KTCK CF). It reveals no more than that:
 * password hashes inside it are salted scrypt. Needs no major key. */
#define KH_CONFIG_DIGEST_LEN 32
KH_MUST_CHECK int kh_config_digest(struct kh_hsm *hsm, uint8_t out[static KH_CONFIG_DIGEST_LEN]);

#endif
