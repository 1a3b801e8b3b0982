/*
 * The T* commands: the HSM's CA, server certificate, client certificates,
 * revocation, trust anchors and per-port TLS options. Each handler validates
 * everything first and then writes once, in one transaction with its audit
 * entry; a refused request never leaves a partial change behind.
 */
#include "hsm/cmds.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/majorkey.h"
#include "hsm/pki.h"
#include "hsm/tls.h"
#include "common/kh_buf.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#define DAYS_CA 3650
#define DAYS_SERVER 825
#define DAYS_CLIENT 365
#define DAYS_MAX 36500

/* Every handler runs through this wrapper: OpenSSL failures leave entries
 * on the thread's error queue, and a stale entry would make the worker's
 * next SSL_get_error on a connection report a failure that is not there. */
#define TLS_ACT(name)                                                                          \
	static int name##_body(struct kh_ctx *c, const struct kh_frame *req,                   \
			       struct kh_buf *resp);                                            \
	KH_ACT(kh_cmd_##name)                                                                  \
	{                                                                                      \
		int r_ = name##_body(c, req, resp);                                            \
		ERR_clear_error();                                                             \
		return r_;                                                                     \
	}                                                                                      \
	static int name##_body(struct kh_ctx *c, const struct kh_frame *req, struct kh_buf *resp)

/* ---- request helpers ---- */

static int need_pmk(struct kh_ctx *c)
{
	struct kh_mk_info info;
	kh_mk_info(c->hsm, KH_MK_PMK, &info);
	if (info.loaded)
		return KH_OK;
	kh_ctx_detail(c, "load a PMK first");
	return KH_ERR_MAJOR_KEY_NOT_LOADED;
}

/* Name a failure that came from the major-key layer. */
static int key_error(struct kh_ctx *c, int r, const char *what)
{
	if (r == KH_ERR_MAJOR_KEY_NOT_LOADED)
		kh_ctx_detail(c, "load a PMK first");
	else if (r == KH_ERR_NOT_FOUND)
		kh_ctx_detail(c, "no %s", what);
	else if (r == KH_ERR_CRYPTO)
		kh_ctx_detail(c, "%s does not unseal under the loaded PMK", what);
	return r;
}

/* A hex field decoded into a fresh malloc'd buffer of at most max bytes. */
static int hex_field(struct kh_ctx *c, const struct kh_frame *req, const char *tag, size_t max,
		     uint8_t **out, size_t *len)
{
	const struct kh_field *f = kh_frame_get(req, tag);
	uint8_t *buf;
	int n;

	if (f == NULL) {
		kh_ctx_detail(c, "%s", tag);
		return KH_ERR_MISSING_FIELD;
	}
	if (f->len / 2 > max) {
		kh_ctx_detail(c, "%s", tag);
		return KH_ERR_TOO_LARGE;
	}
	if (f->len == 0 || f->len % 2) {
		kh_ctx_detail(c, "%s", tag);
		return KH_ERR_BAD_FIELD;
	}
	if ((buf = malloc(f->len / 2)) == NULL)
		return KH_ERR_NOMEM;
	if ((n = kh_hex_decode(f->val, f->len, buf, f->len / 2)) < 0) {
		free(buf);
		kh_ctx_detail(c, "%s", tag);
		return KH_ERR_BAD_FIELD;
	}
	*out = buf;
	*len = (size_t)n;
	return KH_OK;
}

/* A hex-encoded printable text of 1..max bytes, NUL-terminated into out. */
static int text_field(struct kh_ctx *c, const struct kh_frame *req, const char *tag, size_t max,
		      char *out, size_t outsz)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	int r = hex_field(c, req, tag, max, &buf, &len);
	if (r != KH_OK)
		return r;
	if (len >= outsz || !kh_pki_text_ok(buf, len, max)) {
		kh_ctx_detail(c, "%s: %zu-byte printable text expected (1-%zu)", tag, len, max);
		r = KH_ERR_BAD_FIELD;
	} else {
		memcpy(out, buf, len);
		out[len] = '\0';
	}
	free(buf);
	return r;
}

static int days_field(struct kh_ctx *c, const struct kh_frame *req, int dflt, int *out)
{
	uint64_t v;
	if (!kh_frame_has(req, "DY")) {
		*out = dflt;
		return KH_OK;
	}
	if (kh_frame_u64(req, "DY", 1, DAYS_MAX, &v) != KH_OK) {
		kh_ctx_detail(c, "DY");
		return KH_ERR_BAD_FIELD;
	}
	*out = (int)v;
	return KH_OK;
}

/* KT (RSA|EC) and, when allowed, KB (bits or curve). dflt is used when KT
 * is absent; a KT equal to dflt's algorithm keeps dflt's size. */
static int keyspec_field(struct kh_ctx *c, const struct kh_frame *req, bool with_kb,
			 const struct kh_pki_keyspec *dflt, struct kh_pki_keyspec *out)
{
	char kt[8], kb[8];

	*out = *dflt;
	if (kh_frame_has(req, "KT")) {
		if (kh_frame_str(req, "KT", kt, sizeof(kt)) != KH_OK)
			goto bad_kt;
		if (strcmp(kt, "RSA") == 0)
			*out = out->alg == KH_PKI_RSA ? *out : (struct kh_pki_keyspec){KH_PKI_RSA, 2048};
		else if (strcmp(kt, "EC") == 0)
			*out = out->alg == KH_PKI_EC ? *out : (struct kh_pki_keyspec){KH_PKI_EC, 256};
		else
			goto bad_kt;
	}
	if (!with_kb || !kh_frame_has(req, "KB"))
		return KH_OK;
	if (kh_frame_str(req, "KB", kb, sizeof(kb)) != KH_OK)
		goto bad_kb;
	if (out->alg == KH_PKI_RSA) {
		if (strcmp(kb, "2048") == 0)
			out->bits = 2048;
		else if (strcmp(kb, "3072") == 0)
			out->bits = 3072;
		else if (strcmp(kb, "4096") == 0)
			out->bits = 4096;
		else
			goto bad_kb;
	} else {
		if (strcmp(kb, "P-256") == 0)
			out->bits = 256;
		else if (strcmp(kb, "P-384") == 0)
			out->bits = 384;
		else
			goto bad_kb;
	}
	return KH_OK;
bad_kt:
	kh_ctx_detail(c, "KT: RSA or EC");
	return KH_ERR_BAD_FIELD;
bad_kb:
	kh_ctx_detail(c, "KB: %s", out->alg == KH_PKI_RSA ? "2048, 3072 or 4096" : "P-256 or P-384");
	return KH_ERR_BAD_FIELD;
}

static int pem_error(struct kh_ctx *c, const char *tag, int r, const char *why)
{
	kh_ctx_detail(c, "%s: %s", tag, why ? why : kh_strerror(r));
	return r;
}

static void fp_hex(const X509 *x, char out[2 * KH_PKI_FP_LEN + 1])
{
	uint8_t fp[KH_PKI_FP_LEN];
	if (kh_pki_fingerprint(x, fp) == KH_OK)
		kh_hex_encode(fp, sizeof(fp), out);
	else
		snprintf(out, 2 * KH_PKI_FP_LEN + 1, "?");
}

static void spec_text(const struct kh_pki_keyspec *s, char *out, size_t n)
{
	if (s->alg == KH_PKI_RSA)
		snprintf(out, n, "RSA-%d", s->bits);
	else
		snprintf(out, n, "EC-P-%d", s->bits);
}

static int put_pem_hex(struct kh_buf *resp, const char *tag, const uint8_t *pem, size_t len)
{
	if (len == 0)
		return kh_msg_put(resp, tag, "");
	return kh_msg_put_hex(resp, tag, pem, len);
}

/* The HSM's CA and its key; STATE when there is none. */
static int own_ca(struct kh_ctx *c, X509 **ca, EVP_PKEY **key)
{
	int r = kh_tls_cert_get(c->hsm, "ca_cert", ca);
	if (r == KH_ERR_NOT_FOUND) {
		kh_ctx_detail(c, "no HSM CA: generate one with TCAG");
		return KH_ERR_STATE;
	}
	if (r != KH_OK)
		return r;
	if (key && (r = kh_tls_key_get(c->hsm, "ca_key", key)) != KH_OK) {
		X509_free(*ca);
		*ca = NULL;
		return key_error(c, r, "CA key");
	}
	return KH_OK;
}

/* Commit the open transaction after appending the audit entry; roll back
 * on any failure. */
static int commit_with_audit(struct kh_ctx *c, const char *event, const char *detail)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX];
	int r;
	kh_session_actor(c->s, actor, sizeof(actor));
	if ((r = kh_audit_append(c->hsm, actor, event, detail)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		return r;
	}
	return kh_db_commit(c->hsm->db);
}

static void reload(struct kh_hsm *hsm)
{
	int r = kh_tls_reload(hsm);
	if (r != KH_OK)
		log_warnx("TLS: contexts not rebuilt: %s", kh_strerror(r));
}

static int sql_exec1(struct kh_hsm *hsm, const char *sql, const char *text, int64_t num)
{
	sqlite3_stmt *st = NULL;
	int r = sqlite3_prepare_v2(kh_db_sqlite(hsm->db), sql, -1, &st, NULL);
	if (r != SQLITE_OK) {
		r = kh_db_err(hsm->db, r);
		goto out;
	}
	if (text) {
		sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, num);
	}
	r = kh_db_err(hsm->db, sqlite3_step(st));
out:
	sqlite3_finalize(st);
	return r;
}

/* Drop the CRLs whose issuer is no longer among the trusted CAs. */
static void crls_prune(STACK_OF(X509_CRL) *crls, STACK_OF(X509) *trust)
{
	for (int i = sk_X509_CRL_num(crls) - 1; i >= 0; i--) {
		X509_CRL *crl = sk_X509_CRL_value(crls, i);
		bool keep = false;
		for (int j = 0; j < sk_X509_num(trust) && !keep; j++)
			keep = X509_NAME_cmp(X509_CRL_get_issuer(crl),
					     X509_get_subject_name(sk_X509_value(trust, j))) == 0;
		if (!keep) {
			(void)sk_X509_CRL_delete(crls, i);
			X509_CRL_free(crl);
		}
	}
}

static void trust_remove(STACK_OF(X509) *trust, const X509 *x)
{
	for (int i = sk_X509_num(trust) - 1; i >= 0; i--) {
		X509 *t = sk_X509_value(trust, i);
		if (X509_cmp(t, x) == 0) {
			(void)sk_X509_delete(trust, i);
			X509_free(t);
		}
	}
}

static int push_ref(STACK_OF(X509) *sk, X509 *x)
{
	if (X509_up_ref(x) != 1)
		return KH_ERR_INTERNAL;
	if (sk_X509_push(sk, x) <= 0) {
		X509_free(x);
		return KH_ERR_NOMEM;
	}
	return KH_OK;
}

/* ---- TCAG ---- */

TLS_ACT(tcag)
{
	struct kh_pki_keyspec dflt = {KH_PKI_RSA, 2048}, spec;
	char cn[KH_PKI_CN_MAX + 1], kt[8], sp[16], fp[2 * KH_PKI_FP_LEN + 1], detail[512];
	EVP_PKEY *key = NULL;
	X509 *ca = NULL, *old = NULL;
	X509_CRL *crl = NULL;
	STACK_OF(X509) *trust = NULL;
	STACK_OF(X509_CRL) *crls = NULL;
	uint8_t *pem = NULL;
	size_t pemlen = 0;
	int days, r;
	bool in_tx = false;
	time_t now = kh_hsm_now(c->hsm);

	if ((r = kh_frame_str(req, "KT", kt, sizeof(kt))) != KH_OK) {
		kh_ctx_detail(c, "KT");
		return r == KH_ERR_MISSING_FIELD ? r : KH_ERR_BAD_FIELD;
	}
	if ((r = keyspec_field(c, req, true, &dflt, &spec)) != KH_OK ||
	    (r = text_field(c, req, "CN", KH_PKI_CN_MAX, cn, sizeof(cn))) != KH_OK ||
	    (r = days_field(c, req, DAYS_CA, &days)) != KH_OK || (r = need_pmk(c)) != KH_OK)
		return r;
	if ((r = kh_pki_keygen(&spec, &key)) != KH_OK ||
	    (r = kh_pki_ca_new(key, cn, days, now, &ca)) != KH_OK ||
	    (r = kh_pki_crl_new(ca, key, NULL, 0, now, &crl)) != KH_OK ||
	    (r = kh_pki_cert_pem(ca, &pem, &pemlen)) != KH_OK)
		goto out;

	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	in_tx = true;
	r = kh_tls_cert_get(c->hsm, "ca_cert", &old);
	if (r != KH_OK && r != KH_ERR_NOT_FOUND)
		goto out;
	if ((r = kh_tls_certs_get(c->hsm, "trust", &trust)) != KH_OK ||
	    (r = kh_tls_crls_get(c->hsm, &crls)) != KH_OK)
		goto out;
	/* a new CA replaces ours: the old one, its CRL and its revocations go */
	if (old)
		trust_remove(trust, old);
	if (sk_X509_num(trust) >= (int)KH_PKI_CHAIN_CERTS) {
		kh_ctx_detail(c, "too many trusted CAs");
		r = KH_ERR_TOO_LARGE;
		goto out;
	}
	if ((r = push_ref(trust, ca)) != KH_OK)
		goto out;
	crls_prune(crls, trust);
	if ((r = kh_tls_item_put(c->hsm, "ca_cert", pem, pemlen)) != KH_OK ||
	    (r = kh_tls_key_put(c->hsm, "ca_key", key)) != KH_OK ||
	    (r = kh_tls_certs_put(c->hsm, "trust", trust)) != KH_OK ||
	    (r = kh_tls_crls_put(c->hsm, crls)) != KH_OK ||
	    (r = sql_exec1(c->hsm, "DELETE FROM revoked", NULL, 0)) != KH_OK ||
	    (r = kh_tls_crl_install(c->hsm, crl)) != KH_OK) {
		key_error(c, r, "key");
		goto out;
	}
	spec_text(&spec, sp, sizeof(sp));
	fp_hex(ca, fp);
	snprintf(detail, sizeof(detail), "%s CN=%s FP=%s", sp, cn, fp);
	in_tx = false; /* committed or rolled back below */
	if ((r = commit_with_audit(c, "tls.ca.generate", detail)) != KH_OK)
		goto out;
	reload(c->hsm);
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK)
		r = put_pem_hex(resp, "CE", pem, pemlen);
out:
	if (in_tx)
		kh_db_rollback(c->hsm->db);
	free(pem);
	sk_X509_CRL_pop_free(crls, X509_CRL_free);
	sk_X509_pop_free(trust, X509_free);
	X509_CRL_free(crl);
	X509_free(old);
	X509_free(ca);
	EVP_PKEY_free(key);
	return r;
}

/* ---- TCAI ---- */

TLS_ACT(tcai)
{
	uint8_t *pem = NULL;
	size_t len = 0;
	X509 *x = NULL, *own = NULL;
	STACK_OF(X509) *trust = NULL;
	STACK_OF(X509_CRL) *crls = NULL;
	const char *why = NULL;
	char fp[2 * KH_PKI_FP_LEN + 1], subj[160], detail[512];
	bool replace = false, present = false, has_crl = false, in_tx = false;
	time_t now = kh_hsm_now(c->hsm);
	int r;

	if (kh_frame_has(req, "RP") && kh_frame_yn(req, "RP", &replace) != KH_OK) {
		kh_ctx_detail(c, "RP");
		return KH_ERR_BAD_FIELD;
	}
	if ((r = hex_field(c, req, "CE", KH_PKI_PEM_MAX, &pem, &len)) != KH_OK)
		return r;
	if ((r = kh_pki_cert_from_pem(pem, len, &x, &why)) != KH_OK) {
		pem_error(c, "CE", r, why);
		goto out;
	}
	r = KH_ERR_TLS;
	if (X509_check_ca(x) < 1) {
		kh_ctx_detail(c, "CE: not a CA certificate");
		goto out;
	}
	if (X509_cmp_time(X509_get0_notAfter(x), &now) <= 0) {
		kh_ctx_detail(c, "CE: the CA certificate has expired");
		goto out;
	}
	if (X509_check_issued(x, x) == X509_V_OK && X509_verify(x, X509_get0_pubkey(x)) != 1) {
		kh_ctx_detail(c, "CE: self-signature does not verify");
		goto out;
	}
	ERR_clear_error();
	fp_hex(x, fp);
	X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof(subj));

	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	in_tx = true;
	r = kh_tls_cert_get(c->hsm, "ca_cert", &own);
	if (r != KH_OK && r != KH_ERR_NOT_FOUND)
		goto out;
	if ((r = kh_tls_certs_get(c->hsm, "trust", &trust)) != KH_OK ||
	    (r = kh_tls_crls_get(c->hsm, &crls)) != KH_OK)
		goto out;
	if (replace) {
		/* replace the imported anchors; the HSM's own CA stays */
		for (int i = sk_X509_num(trust) - 1; i >= 0; i--) {
			X509 *t = sk_X509_value(trust, i);
			if (own == NULL || X509_cmp(t, own) != 0) {
				(void)sk_X509_delete(trust, i);
				X509_free(t);
			}
		}
	}
	for (int i = 0; i < sk_X509_num(trust); i++)
		present = present || X509_cmp(sk_X509_value(trust, i), x) == 0;
	if (!present) {
		if (sk_X509_num(trust) >= (int)KH_PKI_CHAIN_CERTS) {
			kh_ctx_detail(c, "too many trusted CAs");
			r = KH_ERR_TOO_LARGE;
			goto out;
		}
		if ((r = push_ref(trust, x)) != KH_OK)
			goto out;
	}
	crls_prune(crls, trust);
	for (int i = 0; i < sk_X509_CRL_num(crls); i++)
		has_crl = has_crl || X509_NAME_cmp(X509_CRL_get_issuer(sk_X509_CRL_value(crls, i)),
						   X509_get_subject_name(x)) == 0;
	if ((r = kh_tls_certs_put(c->hsm, "trust", trust)) != KH_OK ||
	    (r = kh_tls_crls_put(c->hsm, crls)) != KH_OK)
		goto out;
	snprintf(detail, sizeof(detail), "%s FP=%s %s", replace ? "replace" : "add", fp, subj);
	in_tx = false; /* committed or rolled back below */
	if ((r = commit_with_audit(c, "tls.ca.import", detail)) != KH_OK)
		goto out;
	if (!has_crl)
		log_info("TLS: trusted CA %s has no CRL: its client certificates are not "
			 "revocation-checked until one is imported with TCRL", subj);
	reload(c->hsm);
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK)
		r = kh_msg_put(resp, "FP", fp);
out:
	if (in_tx)
		kh_db_rollback(c->hsm->db);
	sk_X509_CRL_pop_free(crls, X509_CRL_free);
	sk_X509_pop_free(trust, X509_free);
	X509_free(own);
	X509_free(x);
	free(pem);
	return r;
}

/* ---- TCAX ---- */

TLS_ACT(tcax)
{
	uint8_t *pem = NULL;
	size_t len = 0;
	int r = kh_tls_item_get(c->hsm, "trust", &pem, &len);
	if (r == KH_ERR_NOT_FOUND)
		return kh_msg_put(resp, "CE", "");
	if (r != KH_OK)
		return r;
	r = put_pem_hex(resp, "CE", pem, len);
	free(pem);
	return r;
}

/* ---- TSRV ---- */

TLS_ACT(tsrv)
{
	char cn[KH_PKI_CN_MAX + 1], san[KH_PKI_SAN_MAX + 1], sp[16], detail[512],
		fp[2 * KH_PKI_FP_LEN + 1];
	struct kh_pki_keyspec dflt, spec;
	X509 *ca = NULL, *x = NULL;
	EVP_PKEY *cakey = NULL, *key = NULL;
	STACK_OF(X509) *chain = NULL;
	uint8_t *pem = NULL;
	size_t pemlen = 0;
	const char *why = NULL;
	bool has_san = kh_frame_has(req, "SA");
	time_t now = kh_hsm_now(c->hsm);
	int days, r;

	if ((r = text_field(c, req, "CN", KH_PKI_CN_MAX, cn, sizeof(cn))) != KH_OK ||
	    (has_san && (r = text_field(c, req, "SA", KH_PKI_SAN_MAX, san, sizeof(san))) != KH_OK) ||
	    (r = days_field(c, req, DAYS_SERVER, &days)) != KH_OK)
		return r;
	if (days > 3650) {
		kh_ctx_detail(c, "DY: at most 3650 for a server certificate");
		return KH_ERR_BAD_FIELD;
	}
	if ((r = need_pmk(c)) != KH_OK || (r = own_ca(c, &ca, &cakey)) != KH_OK)
		return r;
	if ((r = kh_pki_keyspec_of(cakey, &dflt)) != KH_OK ||
	    (r = keyspec_field(c, req, false, &dflt, &spec)) != KH_OK ||
	    (r = kh_pki_keygen(&spec, &key)) != KH_OK)
		goto out;
	if ((r = kh_pki_server_cert(ca, cakey, key, cn, has_san ? san : NULL, days, now, &x,
				    &why)) != KH_OK) {
		pem_error(c, has_san ? "SA" : "CN", r, why);
		goto out;
	}
	if ((chain = sk_X509_new_null()) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if ((r = push_ref(chain, x)) != KH_OK || (r = push_ref(chain, ca)) != KH_OK ||
	    (r = kh_pki_cert_pem(x, &pem, &pemlen)) != KH_OK)
		goto out;
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	if ((r = kh_tls_certs_put(c->hsm, "server_cert", chain)) != KH_OK ||
	    (r = kh_tls_key_put(c->hsm, "server_key", key)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		key_error(c, r, "key");
		goto out;
	}
	spec_text(&spec, sp, sizeof(sp));
	fp_hex(x, fp);
	snprintf(detail, sizeof(detail), "%s CN=%s SAN=%.200s FP=%.16s", sp, cn,
		 has_san ? san : KH_PKI_DEFAULT_SAN, fp);
	if ((r = commit_with_audit(c, "tls.server.issue", detail)) != KH_OK)
		goto out;
	reload(c->hsm);
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK)
		goto out;
	r = put_pem_hex(resp, "CE", pem, pemlen);
out:
	free(pem);
	sk_X509_pop_free(chain, X509_free);
	X509_free(x);
	X509_free(ca);
	EVP_PKEY_free(key);
	EVP_PKEY_free(cakey);
	return r;
}

/* ---- TCSR ---- */

TLS_ACT(tcsr)
{
	char cn[KH_PKI_CN_MAX + 1], san[KH_PKI_SAN_MAX + 1], sp[16], detail[512];
	struct kh_pki_keyspec dflt = {KH_PKI_RSA, 2048}, spec;
	X509 *ca = NULL;
	EVP_PKEY *key = NULL;
	X509_REQ *csr = NULL;
	uint8_t *pem = NULL;
	size_t pemlen = 0;
	const char *why = NULL;
	bool has_san = kh_frame_has(req, "SA");
	int r;

	if ((r = text_field(c, req, "CN", KH_PKI_CN_MAX, cn, sizeof(cn))) != KH_OK ||
	    (has_san && (r = text_field(c, req, "SA", KH_PKI_SAN_MAX, san, sizeof(san))) != KH_OK))
		return r;
	/* default to the type of our CA's key, if we have one */
	if (kh_tls_cert_get(c->hsm, "ca_cert", &ca) == KH_OK) {
		struct kh_pki_keyspec cs;
		if (kh_pki_keyspec_of(X509_get0_pubkey(ca), &cs) == KH_OK)
			dflt = cs;
		X509_free(ca);
	}
	if ((r = keyspec_field(c, req, false, &dflt, &spec)) != KH_OK || (r = need_pmk(c)) != KH_OK)
		return r;
	if ((r = kh_pki_keygen(&spec, &key)) != KH_OK)
		goto out;
	if ((r = kh_pki_csr_new(key, cn, has_san ? san : NULL, &csr, &why)) != KH_OK) {
		pem_error(c, has_san ? "SA" : "CN", r, why);
		goto out;
	}
	if ((r = kh_pki_csr_pem(csr, &pem, &pemlen)) != KH_OK)
		goto out;
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	if ((r = kh_tls_key_put(c->hsm, "pending_key", key)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		key_error(c, r, "key");
		goto out;
	}
	spec_text(&spec, sp, sizeof(sp));
	snprintf(detail, sizeof(detail), "%s CN=%s", sp, cn);
	if ((r = commit_with_audit(c, "tls.csr", detail)) != KH_OK)
		goto out;
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK)
		goto out;
	r = put_pem_hex(resp, "CR", pem, pemlen);
out:
	free(pem);
	X509_REQ_free(csr);
	EVP_PKEY_free(key);
	return r;
}

/* ---- TSCI ---- */

/* Verify chain[0] against the trusted CAs at the HSM's time; *built gets
 * the verified chain (leaf to anchor). */
static int verify_server_chain(struct kh_ctx *c, STACK_OF(X509) *chain, STACK_OF(X509) *trust,
			       time_t now, STACK_OF(X509) **built)
{
	X509_STORE *st = X509_STORE_new();
	X509_STORE_CTX *xs = X509_STORE_CTX_new();
	STACK_OF(X509) *untrusted = sk_X509_dup(chain);
	int r = KH_ERR_NOMEM;

	if (st == NULL || xs == NULL || untrusted == NULL)
		goto out;
	(void)sk_X509_shift(untrusted); /* the leaf itself */
	r = KH_ERR_CRYPTO;
	for (int i = 0; i < sk_X509_num(trust); i++)
		if (X509_STORE_add_cert(st, sk_X509_value(trust, i)) != 1)
			goto out;
	X509_STORE_set_flags(st, X509_V_FLAG_PARTIAL_CHAIN);
	if (X509_STORE_CTX_init(xs, st, sk_X509_value(chain, 0), untrusted) != 1)
		goto out;
	X509_STORE_CTX_set_purpose(xs, X509_PURPOSE_SSL_SERVER);
	X509_STORE_CTX_set_time(xs, 0, now);
	if (X509_verify_cert(xs) != 1) {
		kh_ctx_detail(c, "CE: does not chain to a trusted CA: %s",
			      X509_verify_cert_error_string(X509_STORE_CTX_get_error(xs)));
		r = KH_ERR_TLS;
		goto out;
	}
	if ((*built = X509_STORE_CTX_get1_chain(xs)) == NULL)
		goto out;
	r = KH_OK;
out:
	ERR_clear_error();
	sk_X509_free(untrusted);
	X509_STORE_CTX_free(xs);
	X509_STORE_free(st);
	return r;
}

TLS_ACT(tsci)
{
	uint8_t *pem = NULL;
	size_t len = 0;
	STACK_OF(X509) *chain = NULL, *trust = NULL, *built = NULL;
	EVP_PKEY *pending = NULL, *current = NULL;
	const char *why = NULL;
	char fp[2 * KH_PKI_FP_LEN + 1], detail[512];
	time_t now = kh_hsm_now(c->hsm);
	bool use_pending;
	int r;

	if ((r = hex_field(c, req, "CE", KH_PKI_CHAIN_MAX, &pem, &len)) != KH_OK)
		return r;
	if ((r = kh_pki_certs_from_pem(pem, len, 1, KH_PKI_CHAIN_CERTS, &chain, &why)) != KH_OK) {
		pem_error(c, "CE", r, why);
		goto out;
	}
	if ((r = need_pmk(c)) != KH_OK)
		goto out;
	r = kh_tls_key_get(c->hsm, "pending_key", &pending);
	if (r != KH_OK && r != KH_ERR_NOT_FOUND) {
		key_error(c, r, "pending key");
		goto out;
	}
	r = kh_tls_key_get(c->hsm, "server_key", &current);
	if (r != KH_OK && r != KH_ERR_NOT_FOUND) {
		key_error(c, r, "server key");
		goto out;
	}
	EVP_PKEY *pub = X509_get0_pubkey(sk_X509_value(chain, 0));
	use_pending = pending && pub && EVP_PKEY_eq(pub, pending) == 1;
	if (!use_pending && !(current && pub && EVP_PKEY_eq(pub, current) == 1)) {
		kh_ctx_detail(c, "CE: matches neither the pending key (TCSR) nor the current key");
		r = KH_ERR_TLS;
		goto out;
	}
	if ((r = kh_tls_certs_get(c->hsm, "trust", &trust)) != KH_OK ||
	    (r = verify_server_chain(c, chain, trust, now, &built)) != KH_OK)
		goto out;
	fp_hex(sk_X509_value(chain, 0), fp);
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	if ((r = kh_tls_certs_put(c->hsm, "server_cert", built)) != KH_OK ||
	    (use_pending && ((r = kh_tls_key_put(c->hsm, "server_key", pending)) != KH_OK ||
			     (r = kh_tls_item_del(c->hsm, "pending_key")) != KH_OK))) {
		kh_db_rollback(c->hsm->db);
		key_error(c, r, "key");
		goto out;
	}
	snprintf(detail, sizeof(detail), "%s key FP=%s", use_pending ? "pending" : "current", fp);
	if ((r = commit_with_audit(c, "tls.server.install", detail)) != KH_OK)
		goto out;
	reload(c->hsm);
	r = kh_msg_put(resp, "BB", "Y");
out:
	sk_X509_pop_free(built, X509_free);
	sk_X509_pop_free(trust, X509_free);
	sk_X509_pop_free(chain, X509_free);
	EVP_PKEY_free(pending);
	EVP_PKEY_free(current);
	free(pem);
	return r;
}

/* ---- TSGN ---- */

TLS_ACT(tsgn)
{
	uint8_t *pem = NULL, *out_pem = NULL;
	size_t len = 0, outlen = 0;
	X509_REQ *csr = NULL;
	X509 *ca = NULL, *x = NULL;
	EVP_PKEY *cakey = NULL;
	const char *why = NULL;
	char serial[KH_PKI_SERIAL_HEX], subj[160], detail[512];
	time_t now = kh_hsm_now(c->hsm);
	int days, r;

	if ((r = days_field(c, req, DAYS_CLIENT, &days)) != KH_OK)
		return r;
	if (days > 3650) {
		kh_ctx_detail(c, "DY: at most 3650 for a client certificate");
		return KH_ERR_BAD_FIELD;
	}
	if ((r = hex_field(c, req, "CR", KH_PKI_PEM_MAX, &pem, &len)) != KH_OK)
		return r;
	if ((r = kh_pki_csr_from_pem(pem, len, &csr, &why)) != KH_OK) {
		pem_error(c, "CR", r, why);
		goto out;
	}
	if ((r = need_pmk(c)) != KH_OK || (r = own_ca(c, &ca, &cakey)) != KH_OK)
		goto out;
	if ((r = kh_pki_client_cert(ca, cakey, csr, days, now, &x, &why)) != KH_OK) {
		pem_error(c, "CR", r, why);
		goto out;
	}
	if ((r = kh_pki_serial_hex(x, serial)) != KH_OK ||
	    (r = kh_pki_cert_pem(x, &out_pem, &outlen)) != KH_OK)
		goto out;
	X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof(subj));
	snprintf(detail, sizeof(detail), "SN=%s %s days=%d", serial, subj, days);
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK ||
	    (r = commit_with_audit(c, "tls.client.sign", detail)) != KH_OK)
		goto out;
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK ||
	    (r = put_pem_hex(resp, "CE", out_pem, outlen)) != KH_OK)
		goto out;
	r = kh_msg_put(resp, "SN", serial);
out:
	free(out_pem);
	X509_free(x);
	X509_free(ca);
	EVP_PKEY_free(cakey);
	X509_REQ_free(csr);
	free(pem);
	return r;
}

/* ---- TRVK ---- */

TLS_ACT(trvk)
{
	const struct kh_field *f = kh_frame_get(req, "SN");
	char serial[KH_PKI_SERIAL_HEX], detail[64];
	X509 *ca = NULL;
	EVP_PKEY *cakey = NULL;
	time_t now = kh_hsm_now(c->hsm);
	int r;

	if (f == NULL) {
		kh_ctx_detail(c, "SN");
		return KH_ERR_MISSING_FIELD;
	}
	if (kh_pki_serial_norm(f->val, f->len, serial) != KH_OK) {
		kh_ctx_detail(c, "SN: 1-40 hex digits, not zero");
		return KH_ERR_BAD_FIELD;
	}
	if ((r = need_pmk(c)) != KH_OK || (r = own_ca(c, &ca, &cakey)) != KH_OK)
		return r;
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	if ((r = sql_exec1(c->hsm, "INSERT OR IGNORE INTO revoked(serial, revoked_at) VALUES(?,?)",
			   serial, (int64_t)now)) != KH_OK ||
	    (r = kh_tls_own_crl_issue(c->hsm, ca, cakey, now)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		goto out;
	}
	snprintf(detail, sizeof(detail), "SN=%s", serial);
	if ((r = commit_with_audit(c, "tls.revoke", detail)) != KH_OK)
		goto out;
	reload(c->hsm);
	r = kh_msg_put(resp, "BB", "Y");
out:
	X509_free(ca);
	EVP_PKEY_free(cakey);
	return r;
}

/* ---- TCRL ---- */

/* An imported CRL must be signed by a trusted CA, be current, and not be
 * older than the one it replaces (no rollback to a CRL missing entries). */
static int crl_check(struct kh_ctx *c, X509_CRL *crl, time_t now)
{
	STACK_OF(X509) *trust = NULL;
	STACK_OF(X509_CRL) *crls = NULL;
	const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
	time_t later = now + 300;
	bool named = false, signed_ok = false;
	int r;

	if ((r = kh_tls_certs_get(c->hsm, "trust", &trust)) != KH_OK ||
	    (r = kh_tls_crls_get(c->hsm, &crls)) != KH_OK)
		goto out;
	r = KH_ERR_TLS;
	for (int i = 0; i < sk_X509_num(trust) && !signed_ok; i++) {
		X509 *ca = sk_X509_value(trust, i);
		if (X509_NAME_cmp(X509_get_subject_name(ca), X509_CRL_get_issuer(crl)) != 0)
			continue;
		named = true;
		signed_ok = X509_CRL_verify(crl, X509_get0_pubkey(ca)) == 1;
	}
	ERR_clear_error();
	if (!named) {
		kh_ctx_detail(c, "CL: the issuer is not a trusted CA");
		goto out;
	}
	if (!signed_ok) {
		kh_ctx_detail(c, "CL: signature does not verify");
		goto out;
	}
	if (next == NULL || X509_cmp_time(next, &now) <= 0) {
		kh_ctx_detail(c, "CL: the CRL has expired");
		goto out;
	}
	if (X509_cmp_time(X509_CRL_get0_lastUpdate(crl), &later) > 0) {
		kh_ctx_detail(c, "CL: the CRL is not valid yet");
		goto out;
	}
	for (int i = 0; i < sk_X509_CRL_num(crls); i++) {
		X509_CRL *old = sk_X509_CRL_value(crls, i);
		if (X509_NAME_cmp(X509_CRL_get_issuer(old), X509_CRL_get_issuer(crl)) == 0 &&
		    ASN1_TIME_compare(X509_CRL_get0_lastUpdate(old), X509_CRL_get0_lastUpdate(crl)) > 0) {
			kh_ctx_detail(c, "CL: older than the CRL in force for that CA");
			goto out;
		}
	}
	r = KH_OK;
out:
	sk_X509_CRL_pop_free(crls, X509_CRL_free);
	sk_X509_pop_free(trust, X509_free);
	return r;
}

TLS_ACT(tcrl)
{
	uint8_t *pem = NULL, *cur = NULL;
	size_t len = 0, curlen = 0;
	X509_CRL *crl = NULL;
	const char *why = NULL;
	char issuer[160], detail[512];
	time_t now = kh_hsm_now(c->hsm);
	int r;

	if (kh_frame_has(req, "CL")) {
		if ((r = hex_field(c, req, "CL", KH_PKI_CRL_MAX, &pem, &len)) != KH_OK)
			return r;
		if ((r = kh_pki_crl_from_pem(pem, len, &crl, &why)) != KH_OK) {
			pem_error(c, "CL", r, why);
			goto out;
		}
		if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
			goto out;
		if ((r = crl_check(c, crl, now)) != KH_OK ||
		    (r = kh_tls_crl_install(c->hsm, crl)) != KH_OK) {
			kh_db_rollback(c->hsm->db);
			goto out;
		}
		X509_NAME_oneline(X509_CRL_get_issuer(crl), issuer, sizeof(issuer));
		snprintf(detail, sizeof(detail), "issuer %s, %d entries", issuer,
			 sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)));
		if ((r = commit_with_audit(c, "tls.crl.import", detail)) != KH_OK)
			goto out;
		reload(c->hsm);
	}
	r = kh_tls_item_get(c->hsm, "crl", &cur, &curlen);
	if (r == KH_ERR_NOT_FOUND) {
		curlen = 0;
		r = KH_OK;
	}
	if (r == KH_OK)
		r = put_pem_hex(resp, "CL", cur, curlen);
out:
	free(cur);
	X509_CRL_free(crl);
	free(pem);
	return r;
}

/* ---- TPRT / TPRS ---- */

TLS_ACT(tprt)
{
	char pt[16], mo[16], tv[8], detail[64];
	struct kh_tls_port ps = {KH_TLS_MUTUAL, 12};
	enum kh_port port;
	int r;

	if ((r = kh_frame_str(req, "PT", pt, sizeof(pt))) != KH_OK ||
	    (strcmp(pt, "excrypt") != 0 && strcmp(pt, "admin") != 0)) {
		kh_ctx_detail(c, "PT: excrypt or admin");
		return r == KH_ERR_MISSING_FIELD ? r : KH_ERR_BAD_FIELD;
	}
	port = strcmp(pt, "admin") == 0 ? KH_PORT_ADMIN : KH_PORT_PROD;
	if ((r = kh_frame_str(req, "MO", mo, sizeof(mo))) != KH_OK)
		goto bad_mo;
	if (strcmp(mo, "mutual") == 0)
		ps.mode = KH_TLS_MUTUAL;
	else if (strcmp(mo, "anonymous") == 0)
		ps.mode = KH_TLS_ANON;
	else if (strcmp(mo, "clear") == 0)
		ps.mode = KH_TLS_CLEAR;
	else
		goto bad_mo;
	if (kh_frame_has(req, "TV")) {
		if (kh_frame_str(req, "TV", tv, sizeof(tv)) != KH_OK ||
		    (strcmp(tv, "1.2") != 0 && strcmp(tv, "1.3") != 0)) {
			kh_ctx_detail(c, "TV: 1.2 or 1.3");
			return KH_ERR_BAD_FIELD;
		}
		ps.minver = strcmp(tv, "1.3") == 0 ? 13 : 12;
	}
	/* FIPS mode keeps every port encrypted and the Admin port mutual:
	 * passwords and key components cross it */
	pthread_mutex_lock(&c->hsm->mu);
	bool fips = c->hsm->fips;
	pthread_mutex_unlock(&c->hsm->mu);
	if (fips && (ps.mode == KH_TLS_CLEAR || (port == KH_PORT_ADMIN && ps.mode != KH_TLS_MUTUAL))) {
		kh_ctx_detail(c, "%s mode on the %s port", kh_tls_mode_name(ps.mode), pt);
		return KH_ERR_FIPS;
	}
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		return r;
	if ((r = kh_tls_port_put(c->hsm, port, &ps)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		return r;
	}
	snprintf(detail, sizeof(detail), "%s %s/%s", pt, kh_tls_mode_name(ps.mode),
		 ps.minver == 13 ? "1.3" : "1.2");
	if ((r = commit_with_audit(c, "tls.port", detail)) != KH_OK)
		return r;
	if (port == KH_PORT_ADMIN && ps.mode != KH_TLS_MUTUAL)
		log_warnx("Admin port set to %s: administrative sessions no longer require a "
			  "client certificate",
			  kh_tls_mode_name(ps.mode));
	reload(c->hsm);
	return kh_msg_put(resp, "BB", "Y");
bad_mo:
	kh_ctx_detail(c, "MO: mutual, anonymous or clear");
	return r == KH_ERR_MISSING_FIELD ? r : KH_ERR_BAD_FIELD;
}

TLS_ACT(tprs)
{
	static const struct {
		enum kh_port port;
		const char *tag;
	} ports[] = {{KH_PORT_PROD, "EX"}, {KH_PORT_ADMIN, "AD"}};
	uint8_t *v = NULL;
	size_t n = 0;
	bool cert;
	int r = kh_tls_item_get(c->hsm, "server_cert", &v, &n);

	if (r != KH_OK && r != KH_ERR_NOT_FOUND)
		return r;
	cert = r == KH_OK && n > 0;
	free(v);
	for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
		struct kh_tls_port ps;
		char text[32];
		if ((r = kh_tls_port_get(c->hsm, ports[i].port, &ps)) != KH_OK)
			return r;
		snprintf(text, sizeof(text), "%s/%s/%s", kh_tls_mode_name(ps.mode),
			 ps.minver == 13 ? "1.3" : "1.2", cert ? "Y" : "N");
		if ((r = kh_msg_put(resp, ports[i].tag, text)) != KH_OK)
			return r;
	}
	return KH_OK;
}
