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

#endif
