/* TEMPORARY placeholders so the tree links while TLS is written. Owned by
 * the TLS helper: delete this file when done. */
#include "hsm/cmds.h"
#include "hsm/tls.h"

int kh_tls_init(struct kh_hsm *hsm) { return KH_OK; }
void kh_tls_free(struct kh_hsm *hsm) { }
SSL_CTX *kh_tls_server_ctx(struct kh_hsm *hsm, enum kh_port port, enum kh_tls_mode *mode) { *mode = KH_TLS_CLEAR; return NULL; }
#define U(fn) KH_ACT(fn) { return KH_ERR_UNSUPPORTED; }
U(kh_cmd_tcag) U(kh_cmd_tcai) U(kh_cmd_tcax) U(kh_cmd_tsrv) U(kh_cmd_tcsr) U(kh_cmd_tsci)
U(kh_cmd_tsgn) U(kh_cmd_trvk) U(kh_cmd_tcrl) U(kh_cmd_tprt) U(kh_cmd_tprs)
