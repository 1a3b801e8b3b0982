/*
 * Every command handler, by subsystem, and the request readers they share.
 * The table in commands.c maps wire names to the handlers; docs/PROTOCOL.md
 * describes each one.
 */
#ifndef KH_CMDS_H
#define KH_CMDS_H

#include "hsm/hsm.h"

#define KH_ACT(fn) int fn(struct kh_ctx *c, const struct kh_frame *req, struct kh_buf *resp)

/* cmd_info.c: PKCS#11 communication commands */
KH_ACT(kh_cmd_echo);
KH_ACT(kh_cmd_prmd);
KH_ACT(kh_cmd_rand);
KH_ACT(kh_cmd_hash);
KH_ACT(kh_cmd_stat);
KH_ACT(kh_cmd_time);
KH_ACT(kh_cmd_gpkm);
KH_ACT(kh_cmd_gpks);
KH_ACT(kh_cmd_gpkr);
KH_ACT(kh_cmd_setg);
KH_ACT(kh_cmd_sets);

/* cmd_session.c: login, logout, password change */
KH_ACT(kh_cmd_logn);
KH_ACT(kh_cmd_logo);
KH_ACT(kh_cmd_chpw);

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

#endif
