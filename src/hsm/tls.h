/*
 * TLS on the HSM's ports: per-port mode (mutual, anonymous, clear), the
 * server context built from the stored certificate and trust anchors, and
 * refusal reasons that name what was wrong with a client's certificate.
 */
#ifndef KH_TLS_H
#define KH_TLS_H

#include <openssl/ssl.h>
#include "hsm/hsm.h"

enum kh_tls_mode { KH_TLS_MUTUAL = 0, KH_TLS_ANON = 1, KH_TLS_CLEAR = 2 };

KH_MUST_CHECK int kh_tls_init(struct kh_hsm *hsm);
void kh_tls_free(struct kh_hsm *hsm);
/* The context for a new connection on port (up-referenced: SSL_CTX_free it),
 * or NULL with *mode set. NULL with a TLS mode means no server certificate
 * is installed yet, and the connection must be refused. */
SSL_CTX *kh_tls_server_ctx(struct kh_hsm *hsm, enum kh_port port, enum kh_tls_mode *mode);

/* Rebuild both ports' contexts from storage: new connections use the new
 * material at once, open connections keep theirs. Called after every change
 * that affects TLS (cmd_tls.c does); a port whose material cannot be used
 * (no certificate yet, no PMK to unseal the key) is left without a context. */
KH_MUST_CHECK int kh_tls_reload(struct kh_hsm *hsm);
/* Re-issue the HSM's own CRL when it is missing or expires within a week
 * (needs the PMK). kh_tls_server_ctx also does it lazily, at most hourly. */
KH_MUST_CHECK int kh_tls_refresh_crl(struct kh_hsm *hsm);

/* ---- Stored material, for cmd_tls.c ----
 * Table tls (name -> blob): ca_cert, ca_key, trust, server_cert, server_key,
 * pending_key, crl, port.excrypt, port.admin. Writers call these inside
 * their own kh_db_begin/kh_db_commit. */
#define KH_TLS_ITEM_MAX (8u << 20)

/* Fresh malloc'd copy (free()); KH_ERR_NOT_FOUND when absent. */
KH_MUST_CHECK int kh_tls_item_get(struct kh_hsm *hsm, const char *name, uint8_t **val,
				  size_t *len);
KH_MUST_CHECK int kh_tls_item_put(struct kh_hsm *hsm, const char *name, const uint8_t *val,
				  size_t len);
KH_MUST_CHECK int kh_tls_item_del(struct kh_hsm *hsm, const char *name);

/* Private keys: DER sealed under the PMK, the item name bound as AAD.
 * KH_ERR_MAJOR_KEY_NOT_LOADED without a PMK. */
KH_MUST_CHECK int kh_tls_key_put(struct kh_hsm *hsm, const char *name, EVP_PKEY *key);
KH_MUST_CHECK int kh_tls_key_get(struct kh_hsm *hsm, const char *name, EVP_PKEY **key);

/* Certificates and CRLs in PEM items. The list forms give an empty stack
 * when the item is absent; kh_tls_cert_get answers KH_ERR_NOT_FOUND. */
KH_MUST_CHECK int kh_tls_cert_get(struct kh_hsm *hsm, const char *name, X509 **out);
KH_MUST_CHECK int kh_tls_certs_get(struct kh_hsm *hsm, const char *name, STACK_OF(X509) **out);
KH_MUST_CHECK int kh_tls_certs_put(struct kh_hsm *hsm, const char *name, STACK_OF(X509) *sk);
KH_MUST_CHECK int kh_tls_crls_get(struct kh_hsm *hsm, STACK_OF(X509_CRL) **out);
KH_MUST_CHECK int kh_tls_crls_put(struct kh_hsm *hsm, STACK_OF(X509_CRL) *sk);
/* Put crl in the stored set in place of any CRL of the same issuer. */
KH_MUST_CHECK int kh_tls_crl_install(struct kh_hsm *hsm, X509_CRL *crl);
/* Make the HSM's own CRL from the revoked table and install it. */
KH_MUST_CHECK int kh_tls_own_crl_issue(struct kh_hsm *hsm, X509 *ca, EVP_PKEY *cakey,
				       time_t now);

/* Port settings ("mutual/1.2"). Absent: mutual, TLS 1.2. */
struct kh_tls_port {
	enum kh_tls_mode mode;
	int minver; /* 12 or 13 */
};
KH_MUST_CHECK int kh_tls_port_get(struct kh_hsm *hsm, enum kh_port port, struct kh_tls_port *out);
KH_MUST_CHECK int kh_tls_port_put(struct kh_hsm *hsm, enum kh_port port,
				  const struct kh_tls_port *ps);
const char *kh_tls_mode_name(enum kh_tls_mode mode); /* "mutual", "anonymous", "clear" */

#endif
