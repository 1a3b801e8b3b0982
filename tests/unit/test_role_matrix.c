/* Every (role x command) pair of the reference's two roles, sent through the
 * real dispatcher on an Excrypt session and compared with a statement of the
 * policy written here from docs/PROTOCOL.md and the reference (never read
 * back from the role rows or the command table's flags and permissions).
 * It walks kh_cmd_table, so commands and handlers added later are covered;
 * a catalogue entry without a handler counts as granted when the dispatcher
 * answers "not implemented" after deciding access. KH_MATRIX_VERBOSE=1 in
 * the environment prints every answer. */
#include "kh_testutil.h"
#include "hsm/dispatch.h"
#include "common/kh_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* ---- the policy, as documented ---- */

/* Permissions, as this test names them (not the firmware's bits). */
#define N_KEYS 0x01u
#define N_AUTHORIZED 0x02u
#define N_IMPORT_PKI 0x04u
#define N_NO_USAGE_WRAP 0x08u
#define N_REPLICATION 0x10u

/* The commands docs/PROTOCOL.md gives "port: prod" (or "session command",
 * any port) and the permissions their "perm:" line names. Every other
 * command of the table is an Admin-port command. */
struct cmd_policy {
	const char *name;
	bool session; /* LOGN, LOGO, CHPW: outside roles */
	unsigned needs;
};
static const struct cmd_policy prod_cmds[] = {
    /* communication commands */
    {"ECHO", false, 0},
    {"PRMD", false, 0},
    {"RAND", false, 0},
    {"HASH", false, 0},
    {"STAT", false, 0},
    {"TIME", false, 0}, /* setting the clock needs time.set: a request mode */
    {"GPKM", false, N_KEYS},
    {"GPKS", false, N_KEYS},
    {"GPKR", false, N_KEYS},
    /* key operations */
    {"GRSA", false, N_KEYS},
    {"GECC", false, N_KEYS},
    {"GPGS", false, N_KEYS},
    {"GPKA", false, N_KEYS},
    {"GPKD", false, N_KEYS},
    {"ASYL", false, N_KEYS},
    {"LRSA", false, N_KEYS},
    {"APFP", false, N_KEYS},
    {"RPFP", false, N_KEYS},
    {"GPCA", false, N_KEYS | N_IMPORT_PKI},
    /* interoperable key wrapping and derivation */
    {"GPKW", false, N_KEYS | N_NO_USAGE_WRAP},
    {"GPWK", false, N_KEYS},
    {"GPKU", false, N_KEYS | N_NO_USAGE_WRAP},
    {"GPUK", false, N_KEYS},
    {"GPDK", false, N_KEYS},
    /* data */
    {"GPSE", false, N_KEYS},
    {"GPSD", false, N_KEYS},
    {"GPMC", false, N_KEYS},
    {"HMAC", false, N_KEYS},
    {"GHSH", false, 0},
    {"GPGC", false, N_KEYS},
    {"GPSR", false, N_KEYS},
    {"RDPK", false, N_KEYS},
    {"ADPK", false, N_KEYS},
    /* signing */
    {"ASYS", false, N_KEYS},
    {"RSAS", false, N_KEYS},
    {"ASYV", false, N_KEYS},
    {"GPSV", false, N_KEYS},
    /* replication (a group's guardian): in neither reference role */
    {"KTEX", false, N_REPLICATION},
    {"KTIM", false, N_REPLICATION},
    {"KTCK", false, N_REPLICATION},
    {"CFEX", false, N_REPLICATION},
    {"CFIM", false, N_REPLICATION},
    /* session */
    {"LOGN", true, 0},
    {"LOGO", true, 0},
    {"CHPW", true, 0},
};

/* The reference's two roles, as scripts/lib/reference-setup.sh makes them. */
struct role_policy {
	const char *name;
	const char *cmds; /* comma list, the reference's */
	unsigned perms;
	bool ranges; /* S:1000-1499, A:1500-1999; else none */
};
static const struct role_policy tp_role = {
    "Transaction Processing", "ASYS,ECHO,GPKM,GPKR,GPKS,HASH,PRMD,RAND,STAT,TIME", N_KEYS, false};
static const struct role_policy app_role = {"PKCS11 App",
                                            "ECHO,PRMD,RAND,HASH,GPKM,GPKS,GPKR,"
                                            "APFP,ASYL,GECC,GPCA,GPGS,GPKA,GPKD,GRSA,LRSA,RPFP,"
                                            "GPKU,GPUK,GPKW,GPWK,"
                                            "ADPK,GHSH,GPSE,GPSD,GPGC,GPMC,GPSR,HMAC,RDPK,"
                                            "ASYS,ASYV,GPSV,RSAS",
                                            N_KEYS | N_AUTHORIZED | N_IMPORT_PKI | N_NO_USAGE_WRAP,
                                            true};
/* Two variants that make the permission rule bite: the reference's FXCLI
 * text removes every permission of Transaction Processing (its Excrypt
 * Manager text keeps Keys, as reference-setup.sh does), and an application
 * partition without No Usage Wrap (which the reference calls optional). */
static const struct role_policy tp_noperm_role = {
    "Transaction Processing, no permissions", "ASYS,ECHO,GPKM,GPKR,GPKS,HASH,PRMD,RAND,STAT,TIME",
    0, false};
static const struct role_policy app_nowrap_role = {"PKCS11 App without No Usage Wrap", NULL,
                                                   N_KEYS | N_AUTHORIZED | N_IMPORT_PKI, true};

#define APP_PM_NOWRAP "keys,keys.authorized,keys.import_pki"
#define APP_PM APP_PM_NOWRAP ",keys.no_usage_wrap"
#define APP_KR "S:1000-1499,A:1500-1999"
#define SLOT_OUTSIDE 5u

static const struct cmd_policy *policy_of(const char *name)
{
	for (size_t i = 0; i < sizeof(prod_cmds) / sizeof(prod_cmds[0]); i++)
		if (strcmp(prod_cmds[i].name, name) == 0)
			return &prod_cmds[i];
	return NULL;
}

static bool in_list(const char *list, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = list; *p;) {
		size_t w = strcspn(p, ",");
		if (w == n && strncmp(p, name, n) == 0)
			return true;
		p += w + (p[w] == ',');
	}
	return false;
}

/* ---- what a request may get ---- */

enum expect {
	E_GRANTED,     /* anything but a refusal of access */
	E_SESSION,     /* session command: outside roles, granted */
	E_NOT_PROD,    /* COMMAND_NOT_ALLOWED, not available on the Excrypt port */
	E_NOT_IN_LIST, /* COMMAND_NOT_ALLOWED, not enabled for the role */
	E_PERM,        /* PERMISSION_DENIED */
	E_COUNT
};
static const char *const expect_name[E_COUNT] = {
    "granted", "session (outside roles)", "COMMAND_NOT_ALLOWED (port)",
    "COMMAND_NOT_ALLOWED (role list)", "PERMISSION_DENIED"};

static const char *role_cmds(const struct role_policy *rp)
{
	return rp->cmds ? rp->cmds : app_role.cmds;
}

static enum expect expected(const struct role_policy *rp, const char *name)
{
	const struct cmd_policy *cp = policy_of(name);
	if (cp == NULL)
		return E_NOT_PROD;
	if (cp->session)
		return E_SESSION;
	if (!in_list(role_cmds(rp), name))
		return E_NOT_IN_LIST;
	if (cp->needs & ~rp->perms)
		return E_PERM;
	return E_GRANTED;
}

/* The columns of the matrix: which session and which rights it should have. */
enum column { C_TP, C_PRE, C_APP, C_APP_NOWRAP, C_POST, C_TP_NOPERM, C_COUNT };
static const char *const column_name[C_COUNT] = {
    "TP (fresh Excrypt session)", "pre-login (app conn, failed LOGN)",
    "PKCS11 App (logged in)",     "PKCS11 App without keys.no_usage_wrap",
    "after LOGO (app conn)",      "TP without permissions (FXCLI)"};
static const char *const column_short[C_COUNT] = {"TP",         "pre-login",  "app",
                                                  "app-nowrap", "after-LOGO", "TP-noperm"};

/* What came back, for the summary. */
enum got {
	G_OK,
	G_FIELD,    /* MISSING_FIELD / BAD_FIELD: granted, the request is empty */
	G_NOT_IMPL, /* granted, "not implemented by this firmware" */
	G_OTHER,    /* granted, another answer (NOT_FOUND, ...) */
	G_NOT_PROD,
	G_NOT_IN_LIST,
	G_PERM,
	G_NOT_LOGGED_IN,
	G_SLOT,
	G_COUNT
};
static const char *const got_name[G_COUNT] = {"granted: OK",
                                              "granted: MISSING/BAD_FIELD",
                                              "granted: not implemented yet",
                                              "granted: other answer",
                                              "COMMAND_NOT_ALLOWED (port)",
                                              "COMMAND_NOT_ALLOWED (role list)",
                                              "PERMISSION_DENIED",
                                              "NOT_LOGGED_IN",
                                              "SLOT_OUT_OF_RANGE"};

/* The slot probes: requests naming a slot, filled so that a conforming plan
 * reaches the slot check (mode fields from PROTOCOL.md). */
enum material { M_NONE, M_AES, M_EC, M_RSA, M_CERT };
enum slot_kind {
	K_KEY,  /* SL names a key to use */
	K_DEST, /* SL is where a new key goes */
	K_LIST, /* GPKM: SL is where a listing starts, not a key's slot */
};
struct slot_probe {
	const char *cmd;
	const char *fields;  /* besides SL and the material */
	const char *mat_tag; /* tag for the material, or NULL */
	enum material mat;
	enum slot_kind kind;
	uint32_t in_slot;    /* in the app role's ranges, of the right kind */
	uint32_t wrong_kind; /* in range, of the other kind (destinations), or 0 */
};
static const struct slot_probe slot_probes[] = {
    {"GPKM", "", NULL, M_NONE, K_LIST, 1000, 0},
    {"GPKS", "", NULL, M_NONE, K_KEY, 1000, 0},
    {"GPKR", "", NULL, M_NONE, K_KEY, 1000, 0},
    {"GPKD", "", NULL, M_NONE, K_KEY, 1499, 0}, /* an empty slot: nothing deleted */
    {"GPGS", "CT6;", NULL, M_NONE, K_DEST, 1001, 1510},
    {"GPKA", "CLsecret;KTAES;", "KV", M_AES, K_DEST, 1002, 1511},
    {"GPGC", "", NULL, M_NONE, K_KEY, 1000, 0},
    {"GRSA", "RB2048;", NULL, M_NONE, K_DEST, 1502, 1003},
    {"GECC", "RA2;", NULL, M_NONE, K_DEST, 1503, 1004},
    {"ASYL", "", "KV", M_EC, K_DEST, 1504, 1005},
    {"LRSA", "", "KV", M_RSA, K_DEST, 1505, 1006},
    {"APFP", "", NULL, M_NONE, K_KEY, 1500, 0},
    {"RPFP", "", NULL, M_NONE, K_KEY, 1501, 0},
    {"GPCA", "", "CE", M_CERT, K_DEST, 1506, 1007},
    {"GPKW", "S21000;ALKWP;", NULL, M_NONE, K_KEY, 1000, 0},
    {"GPWK", "S21000;ALKWP;", NULL, M_NONE, K_KEY, 1000, 0},
    {"GPKU", "ALKWP;WK000102030405060708090A0B0C0D0E0F1011121314151617;", NULL, M_NONE, K_KEY, 1000,
     0},
    {"GPUK", "ALKWP;WK000102030405060708090A0B0C0D0E0F1011121314151617;", NULL, M_NONE, K_KEY, 1000,
     0},
    {"GPSE", "ALCBC;DT000102030405060708090A0B0C0D0E0F;IV000102030405060708090A0B0C0D0E0F;", NULL,
     M_NONE, K_KEY, 1000, 0},
    {"GPSD", "ALCBC;DT000102030405060708090A0B0C0D0E0F;IV000102030405060708090A0B0C0D0E0F;", NULL,
     M_NONE, K_KEY, 1000, 0},
    {"GPMC", "DT00112233;", NULL, M_NONE, K_KEY, 1000, 0},
    {"HMAC", "DT00112233;", NULL, M_NONE, K_KEY, 1000, 0},
    {"GPSR", "OPE;DT00112233;", NULL, M_NONE, K_KEY, 1501, 0},
    {"ASYS", "DT00112233;", NULL, M_NONE, K_KEY, 1500, 0},
    {"RSAS", "DT00112233;", NULL, M_NONE, K_KEY, 1501, 0},
    {"ASYV", "SG00;DT00112233;", NULL, M_NONE, K_KEY, 1500, 0},
    {"GPSV", "OPS;DT00112233;", NULL, M_NONE, K_KEY, 1500, 0},
};
/* Commands of the two lists whose sections name no slot. */
static const char *const slotless = "ECHO,PRMD,RAND,HASH,STAT,TIME,RDPK,ADPK,GHSH";

enum probe_got { P_PASS, P_PENDING, P_COUNT };

/* ---- the run ---- */

struct matrix {
	struct kh_test_fx *x;
	char *mat[M_CERT + 1]; /* hex of each material */
	unsigned counts[C_COUNT][G_COUNT];
	unsigned slot_pass[C_COUNT], slot_pending[C_COUNT];
	unsigned mismatches;
	char first[512];
	bool verbose; /* KH_MATRIX_VERBOSE set: every answer */
};

static void mismatch(struct matrix *m, enum column col, const char *cmd, const char *exp, int r,
                     const char *resp)
{
	char line[512];
	snprintf(line, sizeof(line), "(%s, %s): expected %s, got %s: %.200s", column_name[col], cmd,
	         exp, kh_errname(r), resp);
	print_error("MISMATCH %s\n", line);
	if (m->mismatches++ == 0)
		snprintf(m->first, sizeof(m->first), "%s", line);
}

static bool refused(int r)
{
	return r == KH_ERR_COMMAND_NOT_ALLOWED || r == KH_ERR_PERMISSION_DENIED ||
	       r == KH_ERR_NOT_LOGGED_IN;
}

static bool not_implemented(int r, const char *resp)
{
	return r == KH_ERR_UNKNOWN_COMMAND && strstr(resp, "not implemented by this firmware");
}

static enum got classify(int r, const char *resp)
{
	switch (r) {
	case KH_OK:
		return G_OK;
	case KH_ERR_MISSING_FIELD:
	case KH_ERR_BAD_FIELD:
		return G_FIELD;
	case KH_ERR_COMMAND_NOT_ALLOWED:
		return strstr(resp, "not available on the Excrypt port") ? G_NOT_PROD
		                                                         : G_NOT_IN_LIST;
	case KH_ERR_PERMISSION_DENIED:
		return G_PERM;
	case KH_ERR_NOT_LOGGED_IN:
		return G_NOT_LOGGED_IN;
	case KH_ERR_SLOT_OUT_OF_RANGE:
		return G_SLOT;
	default:
		return not_implemented(r, resp) ? G_NOT_IMPL : G_OTHER;
	}
}

/* One field-less request per command of the table. */
static void run_column(struct matrix *m, struct kh_session *s, enum column col,
                       const struct role_policy *rp)
{
	struct kh_test_fx *x = m->x;
	char req[64];
	for (size_t i = 0; i < kh_cmd_count; i++) {
		const char *name = kh_cmd_table[i].name;
		enum expect e = expected(rp, name);
		/* LOGO without ID would end the login the next rows rely on */
		if (strcmp(name, "LOGO") == 0)
			snprintf(req, sizeof(req), "[AOLOGO;IDnobody;]");
		else
			snprintf(req, sizeof(req), "[AO%s;]", name);
		int r = KH_CALL(x, s, req);
		enum got g = classify(r, x->out);
		m->counts[col][g]++;
		if (m->verbose)
			print_message("  %-36s %s %-22s %.160s\n", column_name[col], name,
			              got_name[g], x->out);
		bool ok;
		switch (e) {
		case E_GRANTED:
		case E_SESSION:
			/* no slot in the request: no slot refusal either */
			ok = !refused(r) && r != KH_ERR_SLOT_OUT_OF_RANGE &&
			     (r != KH_ERR_UNKNOWN_COMMAND || not_implemented(r, x->out));
			break;
		case E_NOT_PROD:
			ok = g == G_NOT_PROD;
			break;
		case E_NOT_IN_LIST:
			ok = g == G_NOT_IN_LIST;
			break;
		case E_PERM:
			ok = g == G_PERM;
			break;
		default:
			ok = false;
		}
		if (!ok)
			mismatch(m, col, name, expect_name[e], r, x->out);
	}
}

static void probe_request(struct matrix *m, const struct slot_probe *p, uint32_t slot, char *req,
                          size_t n)
{
	int w = snprintf(req, n, "[AO%s;%s", p->cmd, p->fields);
	if (p->mat_tag)
		w += snprintf(req + w, n - (size_t)w, "%s%s;", p->mat_tag, m->mat[p->mat]);
	snprintf(req + w, n - (size_t)w, "SL%u;]", (unsigned)slot);
	assert_true((size_t)w + 16 < n);
}

/* A probe whose slot the role may not use: SLOT_OUT_OF_RANGE, or (a
 * catalogue entry without a handler: the dispatcher stops before the plan
 * that names the slot) "not implemented". */
static void probe_out_of_range(struct matrix *m, struct kh_session *s, enum column col,
                               const struct slot_probe *p, uint32_t slot, const char *why)
{
	struct kh_test_fx *x = m->x;
	char req[8192], exp[96];
	probe_request(m, p, slot, req, sizeof(req));
	int r = KH_CALL(x, s, req);
	if (m->verbose)
		print_message("  %-36s %s SL%u (%s): %.160s\n", column_name[col], p->cmd,
		              (unsigned)slot, why, x->out);
	const struct kh_cmd *cmd = kh_cmd_find(p->cmd);
	if (r == KH_ERR_SLOT_OUT_OF_RANGE) {
		m->slot_pass[col]++;
		return;
	}
	if (cmd != NULL && cmd->act == NULL && not_implemented(r, x->out)) {
		m->slot_pending[col]++;
		return;
	}
	snprintf(exp, sizeof(exp), "SLOT_OUT_OF_RANGE for SL%u (%s)", (unsigned)slot, why);
	mismatch(m, col, p->cmd, exp, r, x->out);
}

static void probe_in_range(struct matrix *m, struct kh_session *s, enum column col,
                           const struct slot_probe *p, uint32_t slot, const char *why)
{
	struct kh_test_fx *x = m->x;
	char req[8192], exp[96];
	probe_request(m, p, slot, req, sizeof(req));
	int r = KH_CALL(x, s, req);
	if (m->verbose)
		print_message("  %-36s %s SL%u (%s): %.160s\n", column_name[col], p->cmd,
		              (unsigned)slot, why, x->out);
	if (!refused(r) && r != KH_ERR_SLOT_OUT_OF_RANGE) {
		if (not_implemented(r, x->out))
			m->slot_pending[col]++;
		else
			m->slot_pass[col]++;
		return;
	}
	snprintf(exp, sizeof(exp), "access with SL%u (%s)", (unsigned)slot, why);
	mismatch(m, col, p->cmd, exp, r, x->out);
}

/* A probe of a command the role may run, but without a permission it needs:
 * the permission is checked before the slot. */
static void probe_denied(struct matrix *m, struct kh_session *s, enum column col,
                         const struct slot_probe *p, uint32_t slot)
{
	struct kh_test_fx *x = m->x;
	char req[8192], exp[96];
	probe_request(m, p, slot, req, sizeof(req));
	int r = KH_CALL(x, s, req);
	if (m->verbose)
		print_message("  %-36s %s SL%u (permission first): %.160s\n", column_name[col],
		              p->cmd, (unsigned)slot, x->out);
	if (r == KH_ERR_PERMISSION_DENIED) {
		m->slot_pass[col]++;
		return;
	}
	snprintf(exp, sizeof(exp), "PERMISSION_DENIED before the slot (SL%u)", (unsigned)slot);
	mismatch(m, col, p->cmd, exp, r, x->out);
}

static void run_slots(struct matrix *m, struct kh_session *s, enum column col,
                      const struct role_policy *rp)
{
	for (size_t i = 0; i < sizeof(slot_probes) / sizeof(slot_probes[0]); i++) {
		const struct slot_probe *p = &slot_probes[i];
		enum expect e = expected(rp, p->cmd);
		if (e == E_NOT_IN_LIST || e == E_NOT_PROD)
			continue; /* the field-less row has shown the refusal */
		if (e == E_PERM) {
			probe_denied(m, s, col, p, SLOT_OUTSIDE);
			probe_denied(m, s, col, p, p->in_slot);
			continue;
		}
		if (p->kind == K_LIST) {
			/* a listing may start anywhere; it shows the role's slots only */
			probe_in_range(m, s, col, p, SLOT_OUTSIDE, "listing start");
			probe_in_range(m, s, col, p, p->in_slot, "listing start");
			/* without ranges (nor keys.all_slots) no key is visible,
			 * though the app's keys exist by the later columns */
			if (!rp->ranges && strstr(m->x->out, "[AOGPKM;KC0;") == NULL)
				mismatch(m, col, p->cmd, "KC0 (a role without ranges sees no key)",
				         KH_OK, m->x->out);
			continue;
		}
		probe_out_of_range(m, s, col, p, SLOT_OUTSIDE, "outside the ranges");
		if (!rp->ranges) {
			probe_out_of_range(m, s, col, p, p->in_slot, "the role has no ranges");
			continue;
		}
		probe_in_range(m, s, col, p, p->in_slot, "in the role's range");
		if (p->wrong_kind)
			probe_out_of_range(m, s, col, p, p->wrong_kind, "range kind");
	}
}

/* ---- set-up: the reference's roles, an identity, keys in the ranges ---- */

static char *self_signed_hex(EVP_PKEY *k)
{
	X509 *c = X509_new();
	unsigned char *der = NULL;
	assert_non_null(c);
	assert_int_equal(X509_set_version(c, 2), 1);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(c), 1), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(c), 0));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(c), 86400));
	assert_int_equal(X509_set_pubkey(c, k), 1);
	X509_NAME *nm = X509_get_subject_name(c);
	assert_int_equal(X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC,
	                                            (const unsigned char *)"role matrix", -1, -1,
	                                            0),
	                 1);
	assert_int_equal(X509_set_issuer_name(c, nm), 1);
	assert_true(X509_sign(c, k, EVP_sha256()) > 0);
	char *h = kh_test_der_hex(i2d_X509(c, &der), &der);
	X509_free(c);
	return h;
}

static void call_ok(struct kh_test_fx *x, struct kh_session *s, const char *req)
{
	int r = KH_CALL(x, s, req);
	if (r != KH_OK)
		fail_msg("set-up %.60s: %s: %s", req, kh_errname(r), x->out);
}

static void test_role_matrix(void **state)
{
	struct kh_test_fx *x = *state;
	struct matrix m = {.x = x, .verbose = getenv("KH_MATRIX_VERBOSE") != NULL};
	struct kh_session tp, app;
	char req[16384], pw[64];

	/* the policy table covers both lists, and every one of their commands
	 * is either probed with a slot or has none */
	for (int k = 0; k < 2; k++) {
		const char *list = k ? app_role.cmds : tp_role.cmds;
		for (const char *p = list; *p;) {
			char name[5] = {0};
			size_t w = strcspn(p, ",");
			assert_int_equal(w, 4);
			memcpy(name, p, 4);
			if (policy_of(name) == NULL)
				fail_msg("%s of the reference's list has no policy row", name);
			if (kh_cmd_find(name) == NULL)
				fail_msg("%s of the reference's list is not in the command table",
				         name);
			bool probed = false;
			for (size_t i = 0; i < sizeof(slot_probes) / sizeof(slot_probes[0]); i++)
				probed |= strcmp(slot_probes[i].cmd, name) == 0;
			if (!probed && !in_list(slotless, name))
				fail_msg("%s: no slot probe and not known slot-less", name);
			p += w + (p[w] == ',');
		}
	}

	/* materials for the probes */
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	assert_non_null(ec);
	assert_non_null(rsa);
	m.mat[M_NONE] = strdup("");
	m.mat[M_AES] = strdup("00112233445566778899AABBCCDDEEFF");
	m.mat[M_EC] = kh_test_pkcs8_hex(ec);
	m.mat[M_RSA] = kh_test_pkcs8_hex(rsa);
	m.mat[M_CERT] = self_signed_hex(ec);
	EVP_PKEY_free(ec);
	EVP_PKEY_free(rsa);

	/* the reference's set-up (scripts/lib/reference-setup.sh; the fixture
	 * loaded the PMK) */
	snprintf(req, sizeof(req), "[AORLMD;RNAnonymous;PMkeys;KR;CM%s;]", tp_role.cmds);
	call_ok(x, &x->admin, req);
	snprintf(req, sizeof(req),
	         "[AORLAD;RN%s;LQ1;PTprod;CSethernet;DFnever;PM" APP_PM ";KR" APP_KR ";CM%s;]",
	         app_role.name, app_role.cmds);
	call_ok(x, &x->admin, req);
	kh_test_hexstr("PKCS11-User-Secret-5519", pw);
	snprintf(req, sizeof(req), "[AOIDAD;IDpkcs11user;RN%s;PW%s;]", app_role.name, pw);
	call_ok(x, &x->admin, req);

	/* column 1: a fresh Excrypt session under Transaction Processing */
	kh_test_session(&tp, KH_PORT_PROD);
	run_column(&m, &tp, C_TP, &tp_role);
	run_slots(&m, &tp, C_TP, &tp_role);

	/* column 2: the application's connection before its login (a failed
	 * attempt grants nothing): still Transaction Processing's rights */
	kh_test_session(&app, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(x, &app, "pkcs11user", "wrong-password", NULL),
	                 KH_ERR_AUTH_FAILED);
	assert_int_equal(app.nident, 0);
	run_column(&m, &app, C_PRE, &tp_role);
	run_slots(&m, &app, C_PRE, &tp_role);

	/* column 3: logged in, the app role replaces TP's rights */
	assert_int_equal(KH_LOGN(x, &app, "pkcs11user", "PKCS11-User-Secret-5519", NULL), KH_OK);
	assert_true(app.active);
	/* keys in both ranges, so that a request naming two keys or a key and
	 * a destination reaches the slot check whatever order it checks in */
	snprintf(req, sizeof(req), "[AOGPKA;CLsecret;KTAES;KV%s;CZEDGVWU;KFX;SL1000;]",
	         m.mat[M_AES]);
	call_ok(x, &app, req);
	snprintf(req, sizeof(req), "[AOGPKA;CLprivate;KTEC;KV%s;CZGV;SL1500;]", m.mat[M_EC]);
	call_ok(x, &app, req);
	snprintf(req, sizeof(req), "[AOGPKA;CLprivate;KTRSA;KV%s;CZGD;SL1501;]", m.mat[M_RSA]);
	call_ok(x, &app, req);
	run_column(&m, &app, C_APP, &app_role);
	run_slots(&m, &app, C_APP, &app_role);
	assert_true(app.active); /* nothing in the matrix logged it out */

	/* column 4: the partition loses No Usage Wrap; the open session
	 * follows at its next command and stays logged in */
	snprintf(req, sizeof(req), "[AORLMD;RN%s;PM" APP_PM_NOWRAP ";]", app_role.name);
	call_ok(x, &x->admin, req);
	run_column(&m, &app, C_APP_NOWRAP, &app_nowrap_role);
	run_slots(&m, &app, C_APP_NOWRAP, &app_nowrap_role);
	assert_true(app.active);

	/* GPCA also needs keys.import_pki: without it, a complete request is
	 * refused, before its slot is looked at (counted in the app-nowrap
	 * column). The field-less request is only shown: the permission is the
	 * plan's, which first asks for SL. */
	snprintf(req, sizeof(req), "[AORLMD;RN%s;PMkeys,keys.authorized;]", app_role.name);
	call_ok(x, &x->admin, req);
	for (size_t i = 0; i < sizeof(slot_probes) / sizeof(slot_probes[0]); i++)
		if (strcmp(slot_probes[i].cmd, "GPCA") == 0) {
			probe_denied(&m, &app, C_APP_NOWRAP, &slot_probes[i], SLOT_OUTSIDE);
			probe_denied(&m, &app, C_APP_NOWRAP, &slot_probes[i],
			             slot_probes[i].in_slot);
		}
	int gpca_bare = KH_CALL(x, &app, "[AOGPCA;]");
	assert_true(app.active);

	/* column 5: logged out, back to Transaction Processing */
	call_ok(x, &app, "[AOLOGO;]");
	assert_int_equal(app.nident, 0);
	run_column(&m, &app, C_POST, &tp_role);
	run_slots(&m, &app, C_POST, &tp_role);

	/* column 6: Transaction Processing as the reference's FXCLI text
	 * leaves it, without any permission */
	call_ok(x, &x->admin, "[AORLMD;RNAnonymous;PM;]");
	kh_test_session(&tp, KH_PORT_PROD);
	run_column(&m, &tp, C_TP_NOPERM, &tp_noperm_role);
	run_slots(&m, &tp, C_TP_NOPERM, &tp_noperm_role);

	/* the summary */
	print_message("role x command matrix over %zu commands of kh_cmd_table\n", kh_cmd_count);
	print_message("%-32s", "outcome");
	for (int c = 0; c < C_COUNT; c++)
		print_message(" %10s", column_short[c]);
	print_message("\n");
	for (int g = 0; g < G_COUNT; g++) {
		print_message("%-32s", got_name[g]);
		for (int c = 0; c < C_COUNT; c++)
			print_message(" %10u", m.counts[c][g]);
		print_message("\n");
	}
	print_message("%-32s", "slot probes as expected");
	for (int c = 0; c < C_COUNT; c++)
		print_message(" %10u", m.slot_pass[c]);
	print_message("\n%-32s", "slot probes pending (no handler)");
	for (int c = 0; c < C_COUNT; c++)
		print_message(" %10u", m.slot_pending[c]);
	print_message("\n");
	print_message("GPCA without keys.import_pki, no fields: %s\n", kh_errname(gpca_bare));
	for (int i = 0; i <= M_CERT; i++)
		free(m.mat[i]);
	if (m.mismatches)
		fail_msg("%u policy mismatch(es); first: %s", m.mismatches, m.first);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    KH_FX_TEST(test_role_matrix, kh_test_fx_setup_pmk),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
