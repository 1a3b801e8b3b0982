/*
 * Every command handler, by subsystem, and the request readers they share.
 * The table in commands.c maps wire names to the handlers; docs/PROTOCOL.md
 * describes each one.
 */
#ifndef KH_CMDS_H
#define KH_CMDS_H

#include "hsm/hsm.h"

#define KH_ACT(fn) int fn(struct kh_ctx *c, const struct kh_frame *req, struct kh_buf *resp)
/* A command's plan (keyobj.h): what keys and rights the request needs. */
struct kh_op;
#define KH_PLAN(fn) int fn(struct kh_ctx *c, const struct kh_frame *req, struct kh_op *op)

/* cmd_info.c: PKCS#11 communication commands */
KH_ACT(kh_cmd_echo);
KH_ACT(kh_cmd_prmd);
KH_ACT(kh_cmd_rand);
KH_ACT(kh_cmd_hash);
KH_ACT(kh_cmd_stat);
KH_ACT(kh_cmd_time);
KH_ACT(kh_cmd_gpkm);
KH_ACT(kh_cmd_gpks);
KH_PLAN(kh_plan_gpks);
KH_ACT(kh_cmd_gpkr);
KH_PLAN(kh_plan_gpkr);
KH_ACT(kh_cmd_setg);
KH_ACT(kh_cmd_sets);
KH_ACT(kh_cmd_slft);

/* cmd_session.c: login, logout, password change */
KH_ACT(kh_cmd_logn);
KH_ACT(kh_cmd_logo);
KH_ACT(kh_cmd_chpw);

/* cmd_remote.c: the sealed admin channel (remote.h) */
KH_ACT(kh_cmd_rmkx);
KH_ACT(kh_cmd_rmsg);

/* cmd_role.c / cmd_identity.c */
KH_ACT(kh_cmd_rlad);
KH_ACT(kh_cmd_rlmd);
KH_ACT(kh_cmd_rlls);
KH_ACT(kh_cmd_rlsh);
KH_ACT(kh_cmd_rldl);
KH_ACT(kh_cmd_idad);
KH_ACT(kh_cmd_idmd);
KH_ACT(kh_cmd_iddl);
KH_ACT(kh_cmd_idls);

/* The request's ID field as a valid identity name; on error the reply's
 * detail names the field. Also used by the session commands. */
KH_MUST_CHECK int kh_cmd_ident_name(struct kh_ctx *c, const struct kh_frame *req,
                                    char name[KH_NAME_MAX]);

/* cmd_audit.c */
KH_ACT(kh_cmd_auds);
KH_ACT(kh_cmd_audv);

/* cmd_majorkey.c */
KH_ACT(kh_cmd_mkst);
KH_ACT(kh_cmd_mklb);
KH_ACT(kh_cmd_mklc);
KH_ACT(kh_cmd_mkla);
KH_ACT(kh_cmd_mkgn);
KH_ACT(kh_cmd_mker);

/* cmd_tls.c */
KH_ACT(kh_cmd_tcag);
KH_ACT(kh_cmd_tcai);
KH_ACT(kh_cmd_tcax);
KH_ACT(kh_cmd_tsrv);
KH_ACT(kh_cmd_tcsr);
KH_ACT(kh_cmd_tsci);
KH_ACT(kh_cmd_tsgn);
KH_ACT(kh_cmd_trvk);
KH_ACT(kh_cmd_tcrl);
KH_ACT(kh_cmd_tprt);
KH_ACT(kh_cmd_tprs);

/* cmd_backup.c */
KH_ACT(kh_cmd_bkup);
KH_ACT(kh_cmd_bkrs);

/* cmd_replica.c: key table and configuration replication (group members) */
KH_ACT(kh_cmd_ktex);
KH_ACT(kh_cmd_ktim);
KH_ACT(kh_cmd_ktck);
KH_ACT(kh_cmd_cfex);
KH_ACT(kh_cmd_cfim);

/* The crypto service. Each command's plan runs first (the dispatcher
 * resolves and checks the keys it names), then its handler. */

/* cmd_keys.c: symmetric keys, adding, deleting, cryptograms of slots */
KH_ACT(kh_cmd_gpgs);
KH_PLAN(kh_plan_gpgs);
KH_ACT(kh_cmd_gpka);
KH_PLAN(kh_plan_gpka);
KH_ACT(kh_cmd_gpkd);
KH_ACT(kh_cmd_gpgc);
KH_PLAN(kh_plan_gpgc);

/* cmd_asym.c: key pairs, loading asymmetric keys, public keys, certificates */
KH_ACT(kh_cmd_grsa);
KH_PLAN(kh_plan_grsa);
KH_ACT(kh_cmd_gecc);
KH_PLAN(kh_plan_gecc);
KH_ACT(kh_cmd_asyl);
KH_PLAN(kh_plan_asyl);
KH_ACT(kh_cmd_lrsa);
KH_PLAN(kh_plan_lrsa);
KH_ACT(kh_cmd_apfp);
KH_PLAN(kh_plan_apfp);
KH_ACT(kh_cmd_rpfp);
KH_PLAN(kh_plan_rpfp);
KH_ACT(kh_cmd_gpca);
KH_PLAN(kh_plan_gpca);
KH_ACT(kh_cmd_rdpk);
KH_PLAN(kh_plan_rdpk);
KH_ACT(kh_cmd_adpk);
KH_PLAN(kh_plan_adpk);

/* cmd_wrap.c: key wrapping and derivation */
KH_ACT(kh_cmd_gpkw);
KH_PLAN(kh_plan_gpkw);
KH_ACT(kh_cmd_gpwk);
KH_PLAN(kh_plan_gpwk);
KH_ACT(kh_cmd_gpku);
KH_PLAN(kh_plan_gpku);
KH_ACT(kh_cmd_gpuk);
KH_PLAN(kh_plan_gpuk);
KH_ACT(kh_cmd_gpdk);
KH_PLAN(kh_plan_gpdk);

/* cmd_data.c: data encryption, MACs, digests, raw RSA */
KH_ACT(kh_cmd_gpse);
KH_PLAN(kh_plan_gpse);
KH_ACT(kh_cmd_gpsd);
KH_PLAN(kh_plan_gpsd);
KH_ACT(kh_cmd_gpmc);
KH_PLAN(kh_plan_gpmc);
KH_ACT(kh_cmd_hmac);
KH_PLAN(kh_plan_hmac);
KH_ACT(kh_cmd_ghsh);
KH_ACT(kh_cmd_gpsr);
KH_PLAN(kh_plan_gpsr);
/* A MAC of DT under the resolved key k: HMAC for generic secret keys (HA,
 * default SHA-256), CMAC for AES keys; ML truncates. Generating writes the
 * MAC under out_tag; verifying compares MC (exactly ML bytes) in constant
 * time: KH_OK or KH_ERR_VERIFY_FAILED. The caller writes BBY. */
struct kh_key;
KH_MUST_CHECK int kh_data_mac(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k,
                              bool verify, const char *out_tag, struct kh_buf *resp);

/* cmd_sign.c: signatures */
KH_ACT(kh_cmd_asys);
KH_PLAN(kh_plan_asys);
KH_ACT(kh_cmd_rsas);
KH_PLAN(kh_plan_rsas);
KH_ACT(kh_cmd_asyv);
KH_PLAN(kh_plan_asyv);
KH_ACT(kh_cmd_gpsv);
KH_PLAN(kh_plan_gpsv);
/* Sign (adds SG) or verify (adds nothing; KH_ERR_VERIFY_FAILED for a
 * signature that does not verify or is malformed) with an RSA, EC or
 * Ed25519 key, reading HA, PD, SA, MG, SF, DT or HS, and SG to verify. */
struct kh_key;
KH_MUST_CHECK int kh_sign_run(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k,
                              bool verify, struct kh_buf *resp);
/* A signing plan's op->fips_refusal: non-NULL when HA or MG is SHA-1. */
const char *kh_sign_fips_refusal(const struct kh_frame *req);

#endif
