/* Roles: the field codecs (permissions, ranges, commands, ports, sources,
 * dual factor), the built-in roles, and RLAD/RLMD/RLLS/RLSH/RLDL through the
 * real dispatcher, including the rules on who may grant what and that bad
 * input leaves a role unchanged. */
#include "kh_testutil.h"
#include "hsm/dispatch.h"
#include "hsm/roles.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S(lit) (lit), strlen(lit)

/* ---- codecs (no device needed) ---- */

static void test_perms_codec(void **state)
{
	uint64_t p = 99;
	char out[KH_PERMS_TEXT_MAX];
	(void)state;
	assert_int_equal(kh_perms_parse(S(""), &p), KH_OK);
	assert_int_equal(p, 0);
	assert_int_equal(kh_perms_parse(S("keys, Keys:All Slots,ROLE:ASSIGN ALL PERMISSIONS"), &p),
			 KH_OK);
	assert_int_equal(p, KH_PERM(KH_P_KEYS) | KH_PERM(KH_P_KEYS_ALL_SLOTS) |
				    KH_PERM(KH_P_ROLE_ASSIGN_ALL));
	kh_perms_format(p, out, sizeof(out));
	assert_string_equal(out, "keys,keys.all_slots,role.assign_all");
	p = 7;
	assert_int_equal(kh_perms_parse(S("keys,nonsense"), &p), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_perms_parse(S("keys,"), &p), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_perms_parse(S("keys,,audit.view"), &p), KH_ERR_BAD_FIELD);
	assert_int_equal(p, 7); /* untouched on failure */
	/* every table entry round-trips by id and by name */
	for (int i = 0; i < KH_P_COUNT; i++) {
		assert_int_equal(kh_perm_table[i].bit, i);
		assert_int_equal(kh_perms_parse(S(kh_perm_table[i].id), &p), KH_OK);
		assert_int_equal(p, KH_PERM(i));
		assert_int_equal(kh_perms_parse(S(kh_perm_table[i].name), &p), KH_OK);
		assert_int_equal(p, KH_PERM(i));
	}
	assert_int_equal(kh_perms_parse(S("Keys:PKCS#1 v1.5 Decrypt"), &p), KH_OK);
	assert_int_equal(p, KH_PERM(KH_P_KEYS_PKCS1_DECRYPT));
}

static void test_ranges_codec(void **state)
{
	struct kh_range r[KH_MAX_RANGES];
	size_t n = 42;
	char out[KH_RANGES_TEXT_MAX], big[1024];
	(void)state;
	assert_int_equal(kh_ranges_parse(S(""), r, &n), KH_OK);
	assert_int_equal(n, 0);
	assert_int_equal(kh_ranges_parse(S("S:1000-1499,a:1500-1999,M:0-0"), r, &n), KH_OK);
	assert_int_equal(n, 3);
	assert_int_equal(r[1].kind, 'A');
	assert_int_equal(r[1].lo, 1500);
	assert_int_equal(r[1].hi, 1999);
	kh_ranges_format(r, n, out, sizeof(out));
	assert_string_equal(out, "S:1000-1499,A:1500-1999,M:0-0");
	assert_int_equal(kh_ranges_parse(S("M:0-999999"), r, &n), KH_OK);
	n = 42;
	const char *bad[] = {"X:1-2", "S:2-1", "S:0-1000000", "S:1-", "S:-5", "S1-5", "S:1-5,",
			     "S:1-5,A:5-9", "S:10-20,M:0-10", "S:+1-5", "S:1-5x", "S:a-b", ","};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(kh_ranges_parse(S(bad[i]), r, &n), KH_ERR_BAD_FIELD);
	assert_int_equal(n, 42);
	/* at most KH_MAX_RANGES */
	size_t pos = 0;
	for (int i = 0; i <= KH_MAX_RANGES; i++)
		pos += (size_t)snprintf(big + pos, sizeof(big) - pos, "%sS:%d-%d", i ? "," : "",
					i * 10, i * 10 + 5);
	assert_int_equal(kh_ranges_parse(big, pos, r, &n), KH_ERR_BAD_FIELD);
	big[strrchr(big, ',') - big] = '\0';
	assert_int_equal(kh_ranges_parse(big, strlen(big), r, &n), KH_OK);
	assert_int_equal(n, KH_MAX_RANGES);
}

static void test_small_codecs(void **state)
{
	uint8_t bm[KH_MAX_COMMANDS / 8];
	unsigned v = 0;
	bool df = true;
	char out[KH_CMDS_TEXT_MAX];
	(void)state;
	assert_int_equal(kh_cmds_parse(S("echo,RAND, GPKM"), bm), KH_OK);
	kh_cmds_format(bm, out, sizeof(out));
	assert_string_equal(out, "ECHO,RAND,GPKM");
	assert_int_equal(kh_cmds_parse(S("ECHO,RLAD"), bm), KH_ERR_BAD_FIELD); /* not Excrypt */
	assert_int_equal(kh_cmds_parse(S("ECHO,NOPE"), bm), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_cmds_parse(S("ECHOX"), bm), KH_ERR_BAD_FIELD);
	kh_cmds_format(bm, out, sizeof(out));
	assert_string_equal(out, "ECHO,RAND,GPKM");
	assert_int_equal(kh_cmds_parse(S(""), bm), KH_OK);
	kh_cmds_format(bm, out, sizeof(out));
	assert_string_equal(out, "");

	assert_int_equal(kh_ports_parse(S("prod,ADMIN"), &v), KH_OK);
	assert_int_equal(v, KH_PORT_PROD | KH_PORT_ADMIN);
	kh_ports_format(v, out, sizeof(out));
	assert_string_equal(out, "prod,admin");
	assert_int_equal(kh_ports_parse(S("prod,web"), &v), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_sources_parse(S("usb"), &v), KH_OK);
	assert_int_equal(v, KH_SRC_USB);
	kh_sources_format(KH_SRC_ETHERNET | KH_SRC_USB, out, sizeof(out));
	assert_string_equal(out, "ethernet,usb");
	assert_int_equal(kh_sources_parse(S("serial"), &v), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_df_parse(S("Never"), &df), KH_OK);
	assert_false(df);
	assert_int_equal(kh_df_parse(S("always"), &df), KH_ERR_UNSUPPORTED);

	assert_true(kh_role_name_valid("Ops team_1.a-b"));
	assert_false(kh_role_name_valid(""));
	assert_false(kh_role_name_valid("a,b"));
	assert_false(kh_role_name_valid("a:b"));
}

/* ---- built-in roles ---- */

static void test_builtin_roles(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_role tp, anon, adm;
	char cmds[KH_CMDS_TEXT_MAX];

	assert_int_equal(kh_role_load(&x->hsm, "transaction processing", &tp), KH_OK);
	assert_int_equal(kh_role_load(&x->hsm, "ANONYMOUS", &anon), KH_OK);
	assert_int_equal(tp.id, anon.id);
	assert_string_equal(tp.name, KH_ROLE_TP);
	assert_int_equal(tp.perms, KH_PERM(KH_P_KEYS) | KH_PERM(KH_P_KEYS_ALL_SLOTS));
	assert_int_equal(tp.logins_required, 0);
	assert_int_equal(tp.ports, KH_PORT_PROD);
	assert_int_equal(tp.sources, KH_SRC_ETHERNET);
	assert_true(tp.builtin);
	assert_int_equal(tp.nranges, 1);
	assert_true(kh_role_has_slot(&tp, 999999));
	for (size_t i = 0; i < kh_cmd_count; i++)
		assert_int_equal(kh_role_has_cmd(&tp, (int)i),
				 (kh_cmd_table[i].flags & KH_CF_EXCRYPT) != 0);

	assert_int_equal(kh_role_load(&x->hsm, KH_ROLE_ADMIN, &adm), KH_OK);
	assert_int_equal(adm.perms, (UINT64_C(1) << KH_P_COUNT) - 1);
	assert_int_equal(adm.logins_required, 2);
	assert_int_equal(adm.ports, KH_PORT_ADMIN);
	assert_int_equal(adm.sources, KH_SRC_ETHERNET | KH_SRC_USB);
	kh_cmds_format(adm.cmds, cmds, sizeof(cmds));
	assert_string_equal(cmds, "ECHO,PRMD,RAND,HASH,STAT,TIME,GPKM,GPKS,GPKR");
	assert_int_equal(kh_role_load_by_id(&x->hsm, adm.id, &tp), KH_OK);
	assert_string_equal(tp.name, KH_ROLE_ADMIN);
	assert_int_equal(kh_role_load(&x->hsm, "Nope", &tp), KH_ERR_NOT_FOUND);
	assert_int_equal(kh_role_load_by_id(&x->hsm, 12345, &tp), KH_ERR_NOT_FOUND);

	/* a second bootstrap on a populated device changes nothing */
	assert_int_equal(kh_roles_bootstrap(&x->hsm), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLLS;]"), KH_OK);
	assert_non_null(strstr(x->out, "RLAdministrator,Transaction Processing;"));
}

/* ---- commands ---- */

static void test_role_add_show_list(void **state)
{
	struct kh_test_fx *x = *state;
	uint64_t gen = atomic_load(&x->hsm.role_gen);

	assert_int_equal(KH_CALL(x, &x->admin,
	                         "[AORLAD;RNApp One;PMkeys,Keys:Authorized;"
	                         "KRS:1000-1499,A:1500-1999;CMECHO,RAND;LQ1;"
	                         "PTprod;CSethernet;DFnever;]"),
	                 KH_OK);
	assert_non_null(strstr(x->out, "[AORLAD;BBY;]"));
	assert_true(atomic_load(&x->hsm.role_gen) > gen);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNapp one;]"), KH_OK);
	assert_string_equal(x->out, "[AORLSH;RNApp One;PMkeys,keys.authorized;"
				    "KRS:1000-1499,A:1500-1999;CMECHO,RAND;LQ1;PTprod;CSethernet;"
				    "DFnever;BIN;IC0;]");
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLLS;]"), KH_OK);
	assert_non_null(strstr(x->out, "RLAdministrator,Transaction Processing,App One;"));

	/* defaults */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNBare;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNBare;]"), KH_OK);
	assert_string_equal(x->out, "[AORLSH;RNBare;PM;KR;CM;LQ1;PTprod;CSethernet;DFnever;BIN;IC0;]");

	/* duplicates and the reserved alias */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNbare;]"), KH_ERR_EXISTS);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNAnonymous;]"), KH_ERR_EXISTS);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNTransaction Processing;]"),
	                 KH_ERR_EXISTS);
	/* bad names */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RN;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNa,b;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;PMkeys;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNMissing;]"), KH_ERR_NOT_FOUND);
	/* the built-in roles show their flags; Anonymous shows Transaction Processing */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNAnonymous;]"), KH_OK);
	assert_non_null(strstr(x->out, "RNTransaction Processing;PMkeys,keys.all_slots;KRM:0-999999;"));
	assert_non_null(strstr(x->out, "LQ0;PTprod;CSethernet;DFnever;BIY;IC0;]"));
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNAdministrator;]"), KH_OK);
	assert_non_null(strstr(x->out, "BIY;IC2;]"));
}

static void test_bad_input_leaves_role_unchanged(void **state)
{
	struct kh_test_fx *x = *state;
	char before[4096];
	const char *bad[] = {
		"[AORLMD;RNApp;PMkeys,unknown.perm;]",
		"[AORLMD;RNApp;KRS:5-1;]",
		"[AORLMD;RNApp;KRS:0-10,A:10-20;]",
		"[AORLMD;RNApp;KRS:0-1000000;]",
		"[AORLMD;RNApp;CMECHO,FAKE;]",
		"[AORLMD;RNApp;CMECHO,LOGN;]",
		"[AORLMD;RNApp;LQ0;]",
		"[AORLMD;RNApp;LQ4;]",
		"[AORLMD;RNApp;PTprod,serial;]",
		"[AORLMD;RNApp;CSwifi;]",
		"[AORLMD;RNApp;DFalways;]",
		/* a good field with a bad one: nothing of it applies */
		"[AORLMD;RNApp;PMaudit.view;KRX:1-2;]",
		"[AORLMD;RNApp;NNApp Renamed;DFsometimes;]",
	};
	const int want[] = {KH_ERR_BAD_FIELD, KH_ERR_BAD_FIELD, KH_ERR_BAD_FIELD, KH_ERR_BAD_FIELD,
			    KH_ERR_BAD_FIELD, KH_ERR_BAD_FIELD, KH_ERR_BAD_FIELD, KH_ERR_BAD_FIELD,
			    KH_ERR_BAD_FIELD, KH_ERR_BAD_FIELD, KH_ERR_UNSUPPORTED, KH_ERR_BAD_FIELD,
			    KH_ERR_UNSUPPORTED};

	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNApp;PMkeys;KRS:1000-1999;CMECHO;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNApp;]"), KH_OK);
	assert_true(strlen(x->out) < sizeof(before));
	memcpy(before, x->out, strlen(x->out) + 1);
	uint64_t gen = atomic_load(&x->hsm.role_gen);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(KH_CALL(x, &x->admin, bad[i]), want[i]);
		/* the reply names the tag, never echoes the value */
		assert_null(strstr(x->out, "unknown.perm"));
		assert_null(strstr(x->out, "FAKE"));
		assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNApp;]"), KH_OK);
		assert_string_equal(x->out, before);
	}
	assert_int_equal(atomic_load(&x->hsm.role_gen), gen);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNApp Renamed;]"), KH_ERR_NOT_FOUND);
	/* bad RLAD input creates nothing */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNNew;KRS:1-2,S:2-3;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNNew;]"), KH_ERR_NOT_FOUND);
}

static void test_role_modify_rename_delete(void **state)
{
	struct kh_test_fx *x = *state;
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNApp;PMkeys;]"), KH_OK);
	assert_int_equal(
	    KH_CALL(x, &x->admin, "[AORLMD;RNApp;NNApp2;KRA:5-9;LQ2;PTprod,admin;CSusb;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNApp2;]"), KH_OK);
	assert_string_equal(x->out,
			    "[AORLSH;RNApp2;PMkeys;KRA:5-9;CM;LQ2;PTprod,admin;CSusb;DFnever;BIN;IC0;]");
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNApp;PM;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNApp2;NNAdministrator;]"), KH_ERR_EXISTS);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNApp2;NNAnonymous;]"), KH_ERR_EXISTS);
	/* built-ins cannot be renamed or deleted, but can be modified */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAdministrator;NNBoss;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;NNOpen;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLDL;RNAdministrator;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLDL;RNAnonymous;]"), KH_ERR_STATE);
	/* the reference's set-up: strip Anonymous down to the communication commands */
	assert_int_equal(
	    KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PM;KR;CMECHO,PRMD,RAND,HASH,STAT,TIME;]"),
	    KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNTransaction Processing;]"), KH_OK);
	assert_non_null(strstr(x->out, "PM;KR;CMECHO,PRMD,RAND,HASH,STAT,TIME;LQ0;"));
	/* the dispatcher's cached pre-login role follows */
	struct kh_session prod;
	kh_test_session(&prod, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &prod, "[AOGPKM;]"), KH_ERR_COMMAND_NOT_ALLOWED);

	/* in use while identities belong to it */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDAD;IDU1;RNApp2;PW6F702D70617373776F7264;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLDL;RNApp2;]"), KH_ERR_IN_USE);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNApp2;]"), KH_OK);
	assert_non_null(strstr(x->out, "IC1;"));
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDDL;IDU1;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLDL;RNapp2;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNApp2;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLDL;RNApp2;]"), KH_ERR_NOT_FOUND);
}

/* A role with only some admin permissions, logged in on the admin port. */
static void limited_session(struct kh_test_fx *x, struct kh_session *s, const char *perms)
{
	char req[512];
	snprintf(req, sizeof(req), "[AORLAD;RNLimited;PM%s;PTadmin;CSethernet;LQ1;KRM:0-99;]", perms);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	assert_int_equal(
	    KH_CALL(x, &x->admin, "[AOIDAD;IDLim1;RNLimited;PW6F702D70617373776F7264;]"), KH_OK);
	kh_test_session(s, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, s, "Lim1", "op-password", NULL), KH_OK);
	assert_true(s->active);
}

static void test_permission_denied(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	limited_session(x, &s, "role.add,role.modify");
	/* lacks role.delete, identity.add, audit.view */
	assert_int_equal(KH_CALL(x, &s, "[AORLDL;RNLimited;]"), KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "EC10;"));
	assert_non_null(strstr(x->out, "role.delete"));
	assert_int_equal(KH_CALL(x, &s, "[AOIDAD;IDX1;RNLimited;PW6F702D70617373776F7264;]"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &s, "[AOAUDV;]"), KH_ERR_PERMISSION_DENIED);
	/* has role.add / role.modify */
	assert_int_equal(KH_CALL(x, &s, "[AORLLS;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &s, "[AORLAD;RNSmall;PMrole.add;]"), KH_OK);
}

/* Without role.assign_all a role cannot widen its own reach, nor give
 * another role slots or commands it lacks, nor weaken its dual control
 * (the review's Helper/Vault case). */
static void test_reach_beyond_permissions(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNVault;PMkeys;KRS:50-59;LQ2;CMECHO;]"), KH_OK);
	limited_session(x, &s, "role.modify,role.add,keys");
	/* its own role: not at all */
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNLimited;KRM:0-999999;]"), KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "cannot change itself"));
	/* Vault enables ECHO, which Limited lacks: out of reach */
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNVault;LQ1;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNLimited;CMECHO;]"), KH_OK);
	/* now Vault is within reach: but lowering its LQ is refused */
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNVault;LQ1;]"), KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "lowering LQ"));
	/* widening its slots beyond Limited's is refused, within them allowed */
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNVault;KRA:0-999999;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNVault;KRS:50-59,A:60-69;]"), KH_OK);
	/* new roles likewise stay within the caller's slots */
	assert_int_equal(KH_CALL(x, &s, "[AORLAD;RNWide;PMkeys;KRM:0-999999;]"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &s, "[AORLAD;RNNarrow;PMkeys;KRS:0-9;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNVault;]"), KH_OK);
	assert_non_null(strstr(x->out, "LQ2;"));
}

static void test_assign_all_rule(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	limited_session(x, &s, "role.add,role.modify,keys");

	/* granting what the caller's role holds is fine */
	assert_int_equal(KH_CALL(x, &s, "[AORLAD;RNSub;PMkeys,role.add;]"), KH_OK);
	/* granting anything else needs role.assign_all */
	assert_int_equal(KH_CALL(x, &s, "[AORLAD;RNSub2;PMkeys,major_keys.load;]"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "role.assign_all"));
	assert_int_equal(KH_CALL(x, &s, "[AORLSH;RNSub2;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNSub;PMkeys,audit.view;]"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &s, "[AORLSH;RNSub;]"), KH_OK);
	assert_non_null(strstr(x->out, "PMkeys,role.add;"));
	/* a role holding a permission the caller lacks is out of its reach:
	 * it may not be changed at all, not even to remove that permission */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNSub;PMkeys,role.add,audit.view;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNSub;PMkeys;KRS:1-2;]"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "role Sub holds permissions yours lacks"));
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNSub;PMkeys,role.add;]"), KH_OK);
	/* within reach, permissions may be removed */
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNSub;PMkeys;KRS:1-2;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &s, "[AORLSH;RNSub;]"), KH_OK);
	assert_non_null(strstr(x->out, "PMkeys;KRS:1-2;"));
	/* CM needs command_settings.excrypt */
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNSub;CMECHO;]"), KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "command_settings.excrypt"));
	assert_int_equal(KH_CALL(x, &s, "[AORLAD;RNSub3;CMECHO;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &s, "[AORLAD;RNSub3;CM;]"), KH_OK);
	/* the Administrator holds both */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNSub;CMECHO;PMmajor_keys.load;]"), KH_OK);
}

static void test_fips_logins_required(void **state)
{
	struct kh_test_fx *x = *state;
	pthread_mutex_lock(&x->hsm.mu);
	x->hsm.fips = true;
	pthread_mutex_unlock(&x->hsm.mu);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNF1;LQ1;]"), KH_ERR_FIPS);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNF1;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNF1;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNF1;]"), KH_OK);
	assert_non_null(strstr(x->out, "LQ2;"));
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNF1;LQ1;]"), KH_ERR_FIPS);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNF1;LQ3;]"), KH_OK);
	/* Transaction Processing is excepted from the FIPS rule: it has no
	 * identities and keeps Logins Required 0 (any LQ is refused) */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;LQ1;]"), KH_ERR_STATE);
	/* the Administrator: at least 2 in FIPS mode */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAdministrator;LQ1;]"), KH_ERR_FIPS);
}

/* ---- H1: who may change which role; what the built-in roles keep ---- */

static void test_role_reach(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	char before[4096];
	limited_session(x, &s, "role.add,role.modify,role.delete,keys");
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNAdministrator;]"), KH_OK);
	memcpy(before, x->out, strlen(x->out) + 1);
	/* role.modify without role.assign_all cannot touch the Administrator:
	 * not weaken its dual control, nor brick it */
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAdministrator;LQ1;]"), KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "role Administrator holds permissions yours lacks"));
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAdministrator;PTprod;]"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAdministrator;KR;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNAdministrator;]"), KH_OK);
	assert_string_equal(x->out, before);
	/* nor any more privileged role, to change or delete */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNAuditors;PMaudit.view;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAuditors;PM;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &s, "[AORLDL;RNAuditors;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &s, "[AORLSH;RNAuditors;]"), KH_OK);
	assert_non_null(strstr(x->out, "PMaudit.view;"));
	/* roles within its own permissions: yes */
	assert_int_equal(KH_CALL(x, &s, "[AORLAD;RNSub;PMkeys;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNSub;KRS:1-9;LQ2;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAnonymous;KR;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &s, "[AORLDL;RNSub;]"), KH_OK);
	/* with role.assign_all the Administrator is reachable, within its rules */
	assert_int_equal(KH_CALL(x, &x->admin,
	                         "[AORLMD;RNLimited;PMrole.add,role.modify,role.delete,keys,"
	                         "role.assign_all;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAuditors;PMkeys;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAdministrator;LQ3;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAdministrator;PTprod;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAdministrator;KRS:0-9;]"), KH_OK);
}

static void test_admin_role_invariants(void **state)
{
	struct kh_test_fx *x = *state;
	char before[4096];
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNAdministrator;]"), KH_OK);
	memcpy(before, x->out, strlen(x->out) + 1);
	uint64_t gen = atomic_load(&x->hsm.role_gen);
	const char *bad[] = {
		/* more logins than identities: nobody could ever log in again */
		"[AORLMD;RNAdministrator;LQ3;]",
		/* (LQ below 1 is not a value at all) */
		/* a permission removed */
		"[AORLMD;RNAdministrator;PMkeys;]",
		"[AORLMD;RNAdministrator;PM;]",
		/* the admin port removed */
		"[AORLMD;RNAdministrator;PTprod;]",
		/* no source */
		"[AORLMD;RNAdministrator;CS;]",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(KH_CALL(x, &x->admin, bad[i]), KH_ERR_STATE);
		assert_non_null(strstr(x->out, "Administrator"));
		assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNAdministrator;]"), KH_OK);
		assert_string_equal(x->out, before);
	}
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAdministrator;LQ0;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(atomic_load(&x->hsm.role_gen), gen);
	/* what may change: LQ within 1..identities, ports beside admin, sources */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAdministrator;PTadmin,prod;CSethernet;LQ1;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAdministrator;PTadmin;CSethernet,usb;LQ2;]"),
	                 KH_OK);
	/* a third identity allows LQ3 */
	assert_int_equal(KH_CALL(x, &x->admin,
	                         "[AOIDAD;IDAdmin3;RNAdministrator;PW61646D696E2D70617373776F72642D33;]"),
	                 KH_OK);
	assert_int_equal(KH_LOGN(x, &x->admin, "Admin3", "admin-password-3", NULL), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAdministrator;LQ3;]"), KH_OK);
	assert_true(x->admin.active);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAdministrator;LQ2;]"), KH_OK);
	/* the full set, spelled out, is accepted */
	char req[KH_PERMS_TEXT_MAX + 64], perms[KH_PERMS_TEXT_MAX];
	kh_perms_format(KH_PERMS_ALL, perms, sizeof(perms));
	snprintf(req, sizeof(req), "[AORLMD;RNAdministrator;PM%s;]", perms);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
}

static void test_tp_role_invariants(void **state)
{
	struct kh_test_fx *x = *state;
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;LQ1;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PTprod,admin;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PTadmin;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PTprod;PM;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLSH;RNAnonymous;]"), KH_OK);
	assert_non_null(strstr(x->out, "LQ0;PTprod;"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_perms_codec),
	    cmocka_unit_test(test_ranges_codec),
	    cmocka_unit_test(test_small_codecs),
	    cmocka_unit_test_setup_teardown(test_builtin_roles, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_role_add_show_list, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_bad_input_leaves_role_unchanged,
	                                    kh_test_fx_setup_admin, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_role_modify_rename_delete, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_permission_denied, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_reach_beyond_permissions, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_assign_all_rule, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_fips_logins_required, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_role_reach, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_admin_role_invariants, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_tp_role_invariants, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
