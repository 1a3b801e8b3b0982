/* placeholder until written below */
#include "hsm/cmds.h"
#define U(fn) KH_ACT(fn) { return KH_ERR_UNSUPPORTED; }
U(kh_cmd_echo) U(kh_cmd_prmd) U(kh_cmd_rand) U(kh_cmd_hash) U(kh_cmd_stat) U(kh_cmd_time)
U(kh_cmd_gpkm) U(kh_cmd_gpks) U(kh_cmd_gpkr) U(kh_cmd_setg) U(kh_cmd_sets)
