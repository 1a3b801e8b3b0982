/*
 * The module's configuration: an fxpkcs11.cfg-style tag file (path from
 * FXPKCS11_CFG), parsed once by C_Initialize into plain structures. Every
 * error names the file, the line and the tag in one line; a file that does
 * not parse leaves nothing behind. Passwords live on the secure heap.
 */
#ifndef P11_CONFIG_H
#define P11_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include "common/kh_err.h"

#define P11_CFG_MAX_SLOTS 16
#define P11_CFG_MAX_ADDRS 8
#define P11_CFG_PATH_MAX 1024
#define P11_CFG_NAME_MAX 64   /* identity-name buffers; the parser takes 1-63 characters of
                                 A-Z a-z 0-9 _ . -, as the HSM does (KH_NAME_MAX less its NUL) */
#define P11_CFG_LABEL_MAX 32  /* CK_TOKEN_INFO.label is 32 blank-padded bytes */
#define P11_CFG_PASS_MAX 256  /* password bytes; each is allocated P11_CFG_PASS_MAX + 1 bytes
                                 on the secure heap, the size to give kh_secure_free */

enum p11_log_level { P11_LOG_NONE = 0, P11_LOG_ERROR, P11_LOG_WARN, P11_LOG_INFO, P11_LOG_DEBUG };

struct p11_addr {
	char host[256];  /* name or IP literal */
	unsigned port;   /* from host:port, else the block's <PROD-PORT> */
};

struct p11_slot_cfg {
	unsigned long slot_id;                 /* <SLOT> 0-2147483647, unique in the file */
	char label[P11_CFG_LABEL_MAX + 1];     /* <LABEL> */
	char crypto_opr[P11_CFG_NAME_MAX + 1]; /* <CRYPTO-OPR> (required) */
	char *crypto_opr_pass;                 /* <CRYPTO-OPR-PASS>, secure heap, NUL-terminated; NULL if absent */
	char crypto_opr2[P11_CFG_NAME_MAX + 1];/* <CRYPTO-OPR-2>: second identity when the role needs two logins ("" if none) */
	char *crypto_opr2_pass;                /* <CRYPTO-OPR-2-PASS> */
	char so_opr[P11_CFG_NAME_MAX + 1];     /* <SO-OPR>: identity for CKU_SO ("" if none) */
	struct p11_addr addr[P11_CFG_MAX_ADDRS]; /* <ADDRESS>, repeatable, in file order */
	size_t naddr;
	unsigned prod_port;                    /* <PROD-PORT>, default 9100 */
	bool tls;                              /* <PROD-TLS-ENABLED> YES|NO, default YES */
	bool tls_anonymous;                    /* <PROD-TLS-ANONYMOUS> YES|NO, default NO: no client certificate */
	char ca_file[P11_CFG_PATH_MAX];        /* <PROD-TLS-CA> PEM trust anchors */
	char cert_file[P11_CFG_PATH_MAX];      /* <PROD-TLS-CERT> PEM chain, or a PKCS#12 file (.p12/.pfx) */
	char key_file[P11_CFG_PATH_MAX];       /* <PROD-TLS-KEY> PEM key ("" : in cert_file) */
	char *key_pass;                        /* <PROD-TLS-KEY-PASS> for an encrypted PEM key or the PKCS#12 file, secure heap */
	bool load_balance;                     /* <FX-LOAD-BALANCE> YES|NO, default YES when more than one address */
	int connect_timeout_ms;                /* <CONNECT-TIMEOUT> seconds (1-600), default 10 */
	int request_timeout_ms;                /* <REQUEST-TIMEOUT> seconds (1-3600), default 60 */
	unsigned max_connections;              /* <MAX-CONNECTIONS> per address (1-1024), default 64 */
};

struct p11_config {
	struct p11_slot_cfg slots[P11_CFG_MAX_SLOTS];
	size_t nslots;
	enum p11_log_level log_level;          /* <LOG-LEVEL> NONE|ERROR|WARN|INFO|DEBUG, default ERROR */
	char log_file[P11_CFG_PATH_MAX];       /* <LOG-FILE>, "" = stderr */
	char path[P11_CFG_PATH_MAX];           /* the file it was read from */
};

/* Parse text (len bytes, not necessarily NUL-terminated) named name (for
 * messages). *cfg is overwritten first (free a previous configuration
 * before). On success *cfg is filled (the caller owns it: p11_config_free).
 * On failure cfg is left empty and err holds one line such as
 * "/etc/fxpkcs11.cfg:12: <PROD-PORT>: not a port number (1-65535)".
 * Returns KH_OK, KH_ERR_MALFORMED (syntax, unknown tag, bad value, missing
 * required tag) or KH_ERR_NOMEM. */
KH_MUST_CHECK int p11_config_parse(const char *text, size_t len, const char *name,
				   struct p11_config *cfg, char *err, size_t errsz);
/* Read and parse a file (KH_ERR_LOCAL_FILE when it cannot be read: the
 * message names the file and errno's text). */
KH_MUST_CHECK int p11_config_load(const char *path, struct p11_config *cfg, char *err, size_t errsz);
/* Wipes and frees the passwords and zeroes *cfg (which must come from a
 * parse or be zeroed; NULL is ignored); the struct can be parsed into again. */
void p11_config_free(struct p11_config *cfg);

#endif
