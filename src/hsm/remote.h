/*
 * The sealed admin channel (RMKX, RMSG): an ECDH P-256 key exchange signed
 * by the HSM's TLS server key, then Excrypt frames sealed with AES-256-GCM
 * end to end between a client (the web console) and this connection, so
 * that whatever relays them (the guardian) sees only ciphertext. The keys
 * live on the secure heap and never leave this module.
 */
#ifndef KH_REMOTE_H
#define KH_REMOTE_H

#include "hsm/hsm.h"

#define KH_RM_LABEL "keyhold remote manage v1" /* signed message's prefix */
#define KH_RM_INFO_C2S "keyhold rm c2s v1"
#define KH_RM_INFO_S2C "keyhold rm s2c v1"
#define KH_RM_AAD "RMSG"
#define KH_RM_POINT_LEN 65 /* an uncompressed P-256 point */
#define KH_RM_KEY_LEN 32
#define KH_RM_TAG_LEN 16
#define KH_RM_NONCE_LEN 12

/* Wipe and drop the session's channel, if any (a replacing RMKX, a frame
 * that does not open, the end of the connection). */
void kh_remote_end(struct kh_session *s);

#endif
