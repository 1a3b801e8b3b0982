/*
 * The HSM's TLS state: stored certificates, keys and CRLs (table tls), and
 * the per-port server SSL_CTX built from them. Private keys are unsealed
 * only while a context is built and never leave OpenSSL's key objects; a
 * client certificate is never accepted without OpenSSL's chain verification.
 */
#include "hsm/tls.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/majorkey.h"
#include "hsm/pki.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#define CRL_REFRESH_MARGIN (7 * 86400) /* re-issue our CRL a week before nextUpdate */
#define CRL_RETRY_SECONDS 3600
#define KEY_DER_MAX 16384

struct kh_tlsstate {
	pthread_mutex_t mu;      /* guards ctx, mode, crl_due, crl_retry */
	pthread_mutex_t rebuild; /* one rebuild at a time, taken before the database lock */
	SSL_CTX *ctx[2];
	enum kh_tls_mode mode[2];
	time_t crl_due;          /* our CRL needs re-issuing from then on (0: never) */
	time_t crl_retry;        /* no lazy refresh attempt before then */
	bool need_pmk;           /* the server key waits for a PMK to be loaded */
};

/* What the verify callback needs to know about its port. */
struct port_info {
	const char *name;  /* "Excrypt", "Admin" */
	X509_NAME *own_ca; /* subject of the HSM's own CA, or NULL */
};

static pthread_once_t ex_once = PTHREAD_ONCE_INIT;
static int ex_index = -1;

static void port_info_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
			   void *argp)
{
	struct port_info *pi = ptr;
	if (pi == NULL)
		return;
	X509_NAME_free(pi->own_ca);
	free(pi);
}

static void ex_init(void)
{
	ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, port_info_free);
}

static int port_slot(enum kh_port port)
{
	return port == KH_PORT_ADMIN ? 1 : 0;
}

static const char *port_name(enum kh_port port)
{
	return port == KH_PORT_ADMIN ? "Admin" : "Excrypt";
}

const char *kh_tls_mode_name(enum kh_tls_mode mode)
{
	switch (mode) {
	case KH_TLS_ANON:
		return "anonymous";
	case KH_TLS_CLEAR:
		return "clear";
	case KH_TLS_MUTUAL:
	default:
		return "mutual";
	}
}

/* ---- items ---- */

int kh_tls_item_get(struct kh_hsm *hsm, const char *name, uint8_t **val, size_t *len)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *st = NULL;
	int r;

	kh_db_lock(hsm->db);
	if ((r = sqlite3_prepare_v2(h, "SELECT value FROM tls WHERE name=?", -1, &st, NULL)) !=
	    SQLITE_OK) {
		r = kh_db_err(hsm->db, r);
		goto out;
	}
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	r = sqlite3_step(st);
	if (r == SQLITE_DONE) {
		r = KH_ERR_NOT_FOUND;
	} else if (r == SQLITE_ROW) {
		size_t n = (size_t)sqlite3_column_bytes(st, 0);
		const void *v = sqlite3_column_blob(st, 0);
		uint8_t *buf;
		if (n > KH_TLS_ITEM_MAX) {
			r = KH_ERR_TOO_LARGE;
			goto out;
		}
		if ((buf = malloc(n ? n : 1)) == NULL) {
			r = KH_ERR_NOMEM;
			goto out;
		}
		if (n)
			memcpy(buf, v, n);
		*val = buf;
		*len = n;
		r = KH_OK;
	} else {
		r = kh_db_err(hsm->db, r);
	}
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_tls_item_put(struct kh_hsm *hsm, const char *name, const uint8_t *val, size_t len)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *st = NULL;
	int r;

	if (len > KH_TLS_ITEM_MAX)
		return KH_ERR_TOO_LARGE;
	kh_db_lock(hsm->db);
	if ((r = sqlite3_prepare_v2(h,
				    "INSERT INTO tls(name,value) VALUES(?,?) "
				    "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
				    -1, &st, NULL)) != SQLITE_OK) {
		r = kh_db_err(hsm->db, r);
		goto out;
	}
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (len)
		sqlite3_bind_blob(st, 2, val, (int)len, SQLITE_STATIC);
	else
		sqlite3_bind_zeroblob(st, 2, 0);
	r = kh_db_err(hsm->db, sqlite3_step(st));
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_tls_item_del(struct kh_hsm *hsm, const char *name)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *st = NULL;
	int r;

	kh_db_lock(hsm->db);
	if ((r = sqlite3_prepare_v2(h, "DELETE FROM tls WHERE name=?", -1, &st, NULL)) !=
	    SQLITE_OK) {
		r = kh_db_err(hsm->db, r);
		goto out;
	}
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	r = kh_db_err(hsm->db, sqlite3_step(st));
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

/* ---- sealed keys ---- */

static void key_aad(const char *name, char *aad, size_t n)
{
	snprintf(aad, n, "keyhold tls key %s", name);
}

int kh_tls_key_put(struct kh_hsm *hsm, const char *name, EVP_PKEY *key)
{
	uint8_t *der = NULL, *sealed = NULL;
	size_t len = 0, slen = 0;
	char aad[64];
	int r;

	key_aad(name, aad, sizeof(aad));
	if ((r = kh_pki_key_der(key, &der, &len)) != KH_OK)
		return r;
	if ((sealed = malloc(len + KH_MK_SEAL_OVERHEAD)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	/* seal and store under one hold of the database lock, as the key table
	 * does: a PMK rotation (which re-wraps these rows in its transaction)
	 * then comes wholly before or after, never between, and the key can
	 * never land under the rotated-out PMK */
	kh_db_lock(hsm->db);
	r = kh_mk_seal(hsm, KH_MK_PMK, (const uint8_t *)aad, strlen(aad), der, len, sealed, &slen);
	if (r == KH_OK)
		r = kh_tls_item_put(hsm, name, sealed, slen);
	kh_db_unlock(hsm->db);
out:
	free(sealed);
	kh_secure_free(der, len);
	return r;
}

int kh_tls_key_get(struct kh_hsm *hsm, const char *name, EVP_PKEY **key)
{
	uint8_t *sealed = NULL, *der = NULL;
	size_t slen = 0, len = 0;
	char aad[64];
	int r;

	key_aad(name, aad, sizeof(aad));
	if ((r = kh_tls_item_get(hsm, name, &sealed, &slen)) != KH_OK)
		return r;
	if (slen <= KH_MK_SEAL_OVERHEAD || slen > KEY_DER_MAX + KH_MK_SEAL_OVERHEAD) {
		r = KH_ERR_CRYPTO;
		goto out;
	}
	if ((der = kh_secure_alloc(slen)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if ((r = kh_mk_open(hsm, KH_MK_PMK, (const uint8_t *)aad, strlen(aad), sealed, slen, der,
			    &len)) != KH_OK)
		goto out;
	r = kh_pki_key_from_der(der, len, key);
out:
	kh_secure_free(der, slen);
	free(sealed);
	return r;
}

/* ---- certificates and CRLs ---- */

int kh_tls_cert_get(struct kh_hsm *hsm, const char *name, X509 **out)
{
	uint8_t *pem = NULL;
	size_t len = 0;
	const char *why = NULL;
	int r = kh_tls_item_get(hsm, name, &pem, &len);
	if (r != KH_OK)
		return r;
	r = kh_pki_cert_from_pem(pem, len, out, &why);
	if (r != KH_OK) {
		log_warnx("stored TLS item %s: %s", name, why ? why : kh_strerror(r));
		r = KH_ERR_TLS;
	}
	free(pem);
	return r;
}

int kh_tls_certs_get(struct kh_hsm *hsm, const char *name, STACK_OF(X509) **out)
{
	uint8_t *pem = NULL;
	size_t len = 0;
	const char *why = NULL;
	int r = kh_tls_item_get(hsm, name, &pem, &len);
	if (r == KH_ERR_NOT_FOUND) {
		*out = sk_X509_new_null();
		return *out ? KH_OK : KH_ERR_NOMEM;
	}
	if (r != KH_OK)
		return r;
	r = kh_pki_certs_from_pem(pem, len, 0, KH_PKI_CHAIN_CERTS, out, &why);
	if (r != KH_OK) {
		log_warnx("stored TLS item %s: %s", name, why ? why : kh_strerror(r));
		r = KH_ERR_TLS;
	}
	free(pem);
	return r;
}

int kh_tls_certs_put(struct kh_hsm *hsm, const char *name, STACK_OF(X509) *sk)
{
	uint8_t *pem = NULL;
	size_t len = 0;
	int r = kh_pki_certs_pem(sk, &pem, &len);
	if (r == KH_OK)
		r = kh_tls_item_put(hsm, name, pem, len);
	free(pem);
	return r;
}

int kh_tls_crls_get(struct kh_hsm *hsm, STACK_OF(X509_CRL) **out)
{
	uint8_t *pem = NULL;
	size_t len = 0;
	const char *why = NULL;
	int r = kh_tls_item_get(hsm, "crl", &pem, &len);
	if (r == KH_ERR_NOT_FOUND) {
		*out = sk_X509_CRL_new_null();
		return *out ? KH_OK : KH_ERR_NOMEM;
	}
	if (r != KH_OK)
		return r;
	r = kh_pki_crls_from_pem(pem, len, KH_PKI_CRLS, out, &why);
	if (r != KH_OK) {
		log_warnx("stored TLS item crl: %s", why ? why : kh_strerror(r));
		r = KH_ERR_TLS;
	}
	free(pem);
	return r;
}

int kh_tls_crls_put(struct kh_hsm *hsm, STACK_OF(X509_CRL) *sk)
{
	uint8_t *pem = NULL;
	size_t len = 0;
	int r;
	if (sk_X509_CRL_num(sk) == 0)
		return kh_tls_item_del(hsm, "crl");
	if ((r = kh_pki_crls_pem(sk, &pem, &len)) == KH_OK)
		r = kh_tls_item_put(hsm, "crl", pem, len);
	free(pem);
	return r;
}

int kh_tls_crl_install(struct kh_hsm *hsm, X509_CRL *crl)
{
	STACK_OF(X509_CRL) *sk = NULL;
	int r;

	if ((r = kh_tls_crls_get(hsm, &sk)) != KH_OK)
		return r;
	for (int i = sk_X509_CRL_num(sk) - 1; i >= 0; i--) {
		X509_CRL *old = sk_X509_CRL_value(sk, i);
		if (X509_NAME_cmp(X509_CRL_get_issuer(old), X509_CRL_get_issuer(crl)) == 0) {
			(void)sk_X509_CRL_delete(sk, i);
			X509_CRL_free(old);
		}
	}
	if (sk_X509_CRL_num(sk) >= (int)KH_PKI_CRLS) {
		r = KH_ERR_TOO_LARGE;
		goto out;
	}
	if (!X509_CRL_up_ref(crl)) {
		r = KH_ERR_INTERNAL;
		goto out;
	}
	if (sk_X509_CRL_push(sk, crl) <= 0) {
		X509_CRL_free(crl);
		r = KH_ERR_NOMEM;
		goto out;
	}
	r = kh_tls_crls_put(hsm, sk);
out:
	sk_X509_CRL_pop_free(sk, X509_CRL_free);
	return r;
}

/* The revoked table as a list (malloc'd). */
static int revoked_list(struct kh_hsm *hsm, struct kh_pki_revoked **out, size_t *count)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *st = NULL;
	struct kh_pki_revoked *list = NULL;
	size_t n = 0, cap = 0;
	int r;

	kh_db_lock(hsm->db);
	if ((r = sqlite3_prepare_v2(h, "SELECT serial, revoked_at FROM revoked ORDER BY serial", -1,
				    &st, NULL)) != SQLITE_OK) {
		r = kh_db_err(hsm->db, r);
		goto out;
	}
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		const unsigned char *s = sqlite3_column_text(st, 0);
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			struct kh_pki_revoked *nl = realloc(list, ncap * sizeof(*nl));
			if (nl == NULL) {
				r = KH_ERR_NOMEM;
				goto out;
			}
			list = nl;
			cap = ncap;
		}
		if (s == NULL || kh_pki_serial_norm((const char *)s, strlen((const char *)s),
						    list[n].serial) != KH_OK) {
			log_warnx("revoked table: skipping a malformed serial");
			continue;
		}
		list[n].when = sqlite3_column_int64(st, 1);
		n++;
	}
	if (r != SQLITE_DONE) {
		r = kh_db_err(hsm->db, r);
		goto out;
	}
	*out = list;
	*count = n;
	list = NULL;
	r = KH_OK;
out:
	free(list);
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_tls_own_crl_issue(struct kh_hsm *hsm, X509 *ca, EVP_PKEY *cakey, time_t now)
{
	struct kh_pki_revoked *list = NULL;
	size_t n = 0;
	X509_CRL *crl = NULL;
	int r;

	if ((r = revoked_list(hsm, &list, &n)) != KH_OK)
		return r;
	if ((r = kh_pki_crl_new(ca, cakey, list, n, now, &crl)) == KH_OK)
		r = kh_tls_crl_install(hsm, crl);
	X509_CRL_free(crl);
	free(list);
	return r;
}

/* ---- port settings ---- */

static const char *port_item(enum kh_port port)
{
	return port == KH_PORT_ADMIN ? "port.admin" : "port.excrypt";
}

static bool text_is(const uint8_t *p, size_t n, const char *lit)
{
	return n == strlen(lit) && memcmp(p, lit, n) == 0;
}

int kh_tls_port_get(struct kh_hsm *hsm, enum kh_port port, struct kh_tls_port *out)
{
	uint8_t *v = NULL;
	size_t n = 0, slash = 0;
	int r;

	out->mode = KH_TLS_MUTUAL;
	out->minver = 12;
	r = kh_tls_item_get(hsm, port_item(port), &v, &n);
	if (r == KH_ERR_NOT_FOUND)
		return KH_OK;
	if (r != KH_OK)
		return r;
	while (slash < n && v[slash] != '/')
		slash++;
	r = KH_ERR_TLS;
	if (text_is(v, slash, "mutual"))
		out->mode = KH_TLS_MUTUAL;
	else if (text_is(v, slash, "anonymous"))
		out->mode = KH_TLS_ANON;
	else if (text_is(v, slash, "clear"))
		out->mode = KH_TLS_CLEAR;
	else
		goto out;
	if (slash < n && text_is(v + slash + 1, n - slash - 1, "1.3"))
		out->minver = 13;
	else if (slash < n && text_is(v + slash + 1, n - slash - 1, "1.2"))
		out->minver = 12;
	else
		goto out;
	r = KH_OK;
out:
	if (r != KH_OK)
		log_warnx("stored TLS item %s is malformed", port_item(port));
	free(v);
	return r;
}

int kh_tls_port_put(struct kh_hsm *hsm, enum kh_port port, const struct kh_tls_port *ps)
{
	char text[32];
	int n = snprintf(text, sizeof(text), "%s/%s", kh_tls_mode_name(ps->mode),
			 ps->minver == 13 ? "1.3" : "1.2");
	return kh_tls_item_put(hsm, port_item(port), (const uint8_t *)text, (size_t)n);
}

/* ---- contexts ---- */

/* Why a client certificate was refused, in the log, naming the port. The
 * alert OpenSSL sends for the error (certificate_expired, unknown_ca,
 * certificate_revoked) is left as it is: it tells the client the same. */
static int verify_cb(int ok, X509_STORE_CTX *xs)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	const struct port_info *pi =
		ssl ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_index) : NULL;
	const char *name = pi ? pi->name : "TLS";
	int err = X509_STORE_CTX_get_error(xs);
	const char *hint = "";

	if (ok)
		return 1;
	if (err == X509_V_ERR_UNABLE_TO_GET_CRL && X509_STORE_CTX_get_error_depth(xs) == 0) {
		/* A trusted external CA for which no CRL was imported: its
		 * certificates are not revocation-checked. The HSM's own CA
		 * always has a CRL, so there this stays fatal. */
		X509 *cur = X509_STORE_CTX_get_current_cert(xs);
		if (cur && pi && (pi->own_ca == NULL ||
				  X509_NAME_cmp(X509_get_issuer_name(cur), pi->own_ca) != 0)) {
			log_debug("%s port: no CRL imported for the client certificate's CA", name);
			X509_STORE_CTX_set_error(xs, X509_V_OK); /* so the verify result reads OK */
			return 1;
		}
	}
	switch (err) {
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
		hint = " (another CA tree?)";
		break;
	case X509_V_ERR_UNABLE_TO_GET_CRL:
		hint = " (the HSM's CRL is missing: revoke or refresh to re-issue it)";
		break;
	default:
		break;
	}
	log_warnx("%s port: client certificate refused: %s%s", name,
		  X509_verify_cert_error_string(err), hint);
	return 0;
}

/* Material read from storage for one rebuild. */
struct material {
	STACK_OF(X509) *chain;   /* leaf first */
	EVP_PKEY *key;
	STACK_OF(X509) *trust;
	STACK_OF(X509_CRL) *crls;
	X509 *own_ca;
	bool need_pmk;           /* the key is there but no PMK is loaded */
};

static void material_free(struct material *m)
{
	sk_X509_pop_free(m->chain, X509_free);
	EVP_PKEY_free(m->key);
	sk_X509_pop_free(m->trust, X509_free);
	sk_X509_CRL_pop_free(m->crls, X509_CRL_free);
	X509_free(m->own_ca);
	memset(m, 0, sizeof(*m));
}

/* Read everything under the database lock so that one rebuild sees one
 * state. A key that cannot be unsealed leaves m->key NULL. */
static int material_load(struct kh_hsm *hsm, struct material *m)
{
	int r;

	kh_db_lock(hsm->db);
	if ((r = kh_tls_certs_get(hsm, "server_cert", &m->chain)) != KH_OK ||
	    (r = kh_tls_certs_get(hsm, "trust", &m->trust)) != KH_OK ||
	    (r = kh_tls_crls_get(hsm, &m->crls)) != KH_OK)
		goto out;
	r = kh_tls_cert_get(hsm, "ca_cert", &m->own_ca);
	if (r != KH_OK && r != KH_ERR_NOT_FOUND)
		goto out;
	r = KH_OK;
	if (sk_X509_num(m->chain) > 0) {
		int kr = kh_tls_key_get(hsm, "server_key", &m->key);
		m->need_pmk = kr == KH_ERR_MAJOR_KEY_NOT_LOADED;
		if (kr == KH_ERR_MAJOR_KEY_NOT_LOADED)
			log_warnx("TLS: the server key cannot be unsealed: load a PMK first; "
				  "TLS ports refuse connections until then");
		else if (kr != KH_OK)
			log_warnx("TLS: the server key cannot be used: %s", kh_strerror(kr));
	}
out:
	kh_db_unlock(hsm->db);
	return r;
}

static int store_build(const struct material *m, X509_STORE **out)
{
	X509_STORE *st = X509_STORE_new();
	unsigned long flags = X509_V_FLAG_PARTIAL_CHAIN; /* an imported intermediate is an anchor */

	if (st == NULL)
		return KH_ERR_NOMEM;
	for (int i = 0; i < sk_X509_num(m->trust); i++)
		if (X509_STORE_add_cert(st, sk_X509_value(m->trust, i)) != 1)
			goto fail;
	for (int i = 0; i < sk_X509_CRL_num(m->crls); i++)
		if (X509_STORE_add_crl(st, sk_X509_CRL_value(m->crls, i)) != 1)
			goto fail;
	if (sk_X509_CRL_num(m->crls) > 0)
		flags |= X509_V_FLAG_CRL_CHECK; /* the leaf only: our CAs are roots */
	if (X509_STORE_set_flags(st, flags) != 1)
		goto fail;
	*out = st;
	return KH_OK;
fail:
	X509_STORE_free(st);
	return KH_ERR_CRYPTO;
}

static int ctx_build(const struct material *m, enum kh_port port, const struct kh_tls_port *ps,
		     SSL_CTX **out)
{
	static const unsigned char sid_excrypt[] = "keyhold-excrypt";
	static const unsigned char sid_admin[] = "keyhold-admin";
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	X509_STORE *st = NULL;
	struct port_info *pi = NULL;
	int r = KH_ERR_CRYPTO;

	if (ctx == NULL)
		return KH_ERR_NOMEM;
	if (SSL_CTX_set_min_proto_version(ctx, ps->minver == 13 ? TLS1_3_VERSION : TLS1_2_VERSION) !=
		    1 ||
	    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1)
		goto out;
	/* No resumption: every connection runs the full client-certificate
	 * check, so a revocation applies to the very next connection. */
	SSL_CTX_set_options(ctx, SSL_OP_CLEANSE_PLAINTEXT | SSL_OP_NO_RENEGOTIATION |
					 SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET |
					 SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	if (SSL_CTX_set_num_tickets(ctx, 0) != 1)
		goto out;
	SSL_CTX_set_security_level(ctx, 2);
	if ((port == KH_PORT_ADMIN
		     ? SSL_CTX_set_session_id_context(ctx, sid_admin, sizeof(sid_admin) - 1)
		     : SSL_CTX_set_session_id_context(ctx, sid_excrypt, sizeof(sid_excrypt) - 1)) != 1)
		goto out;
	r = KH_ERR_TLS;
	if (SSL_CTX_use_certificate(ctx, sk_X509_value(m->chain, 0)) != 1)
		goto out;
	for (int i = 1; i < sk_X509_num(m->chain); i++)
		if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(m->chain, i)) != 1)
			goto out;
	if (SSL_CTX_use_PrivateKey(ctx, m->key) != 1 || SSL_CTX_check_private_key(ctx) != 1)
		goto out;
	if ((r = store_build(m, &st)) != KH_OK)
		goto out;
	SSL_CTX_set_cert_store(ctx, st); /* the context owns it now */
	st = NULL;
	r = KH_ERR_CRYPTO;
	for (int i = 0; i < sk_X509_num(m->trust); i++)
		if (SSL_CTX_add_client_CA(ctx, sk_X509_value(m->trust, i)) != 1)
			goto out;
	if ((pi = calloc(1, sizeof(*pi))) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	pi->name = port_name(port);
	if (m->own_ca && (pi->own_ca = X509_NAME_dup(X509_get_subject_name(m->own_ca))) == NULL)
		goto out;
	if (ex_index < 0 || SSL_CTX_set_ex_data(ctx, ex_index, pi) != 1)
		goto out;
	pi = NULL;
	SSL_CTX_set_verify(ctx,
			   ps->mode == KH_TLS_ANON
				   ? SSL_VERIFY_PEER
				   : SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
			   verify_cb);
	*out = ctx;
	ctx = NULL;
	r = KH_OK;
out:
	if (pi) {
		X509_NAME_free(pi->own_ca);
		free(pi);
	}
	X509_STORE_free(st);
	SSL_CTX_free(ctx);
	if (r != KH_OK)
		ERR_clear_error();
	return r;
}

/* When our CRL needs re-issuing (0: no CA of ours, nothing to do). */
static time_t own_crl_due(const struct material *m)
{
	if (m->own_ca == NULL)
		return 0;
	for (int i = 0; i < sk_X509_CRL_num(m->crls); i++) {
		X509_CRL *c = sk_X509_CRL_value(m->crls, i);
		const ASN1_TIME *next = X509_CRL_get0_nextUpdate(c);
		struct tm tm;
		if (X509_NAME_cmp(X509_CRL_get_issuer(c), X509_get_subject_name(m->own_ca)) != 0)
			continue;
		if (next == NULL || ASN1_TIME_to_tm(next, &tm) != 1)
			return 1;
		return timegm(&tm) - CRL_REFRESH_MARGIN;
	}
	return 1; /* missing: due now */
}

int kh_tls_reload(struct kh_hsm *hsm)
{
	struct kh_tlsstate *t = hsm->tls;
	struct material m = {0};
	SSL_CTX *fresh[2] = {NULL, NULL}, *old[2];
	enum kh_tls_mode mode[2];
	int r;

	if (t == NULL)
		return KH_ERR_STATE;
	pthread_mutex_lock(&t->rebuild);
	if ((r = material_load(hsm, &m)) != KH_OK) {
		log_warnx("TLS: stored material unreadable: %s", kh_strerror(r));
		/* fall through with what could be read: ports without material refuse */
	}
	for (int i = 0; i < 2; i++) {
		enum kh_port port = i ? KH_PORT_ADMIN : KH_PORT_PROD;
		struct kh_tls_port ps;
		if (kh_tls_port_get(hsm, port, &ps) != KH_OK)
			ps = (struct kh_tls_port){KH_TLS_MUTUAL, 12}; /* fail safe */
		mode[i] = ps.mode;
		if (ps.mode == KH_TLS_CLEAR)
			continue;
		if (sk_X509_num(m.chain) == 0) {
			log_info("%s port: no server certificate installed: TLS connections "
				 "are refused until one is (TSRV, or TCSR and TSCI)",
				 port_name(port));
			continue;
		}
		if (m.key == NULL)
			continue;
		int br = ctx_build(&m, port, &ps, &fresh[i]);
		if (br != KH_OK)
			log_warnx("%s port: cannot build the TLS context: %s", port_name(port),
				  kh_strerror(br));
	}
	time_t due = own_crl_due(&m);
	pthread_mutex_lock(&t->mu);
	for (int i = 0; i < 2; i++) {
		old[i] = t->ctx[i];
		t->ctx[i] = fresh[i];
		t->mode[i] = mode[i];
	}
	t->crl_due = due;
	t->need_pmk = m.need_pmk;
	pthread_mutex_unlock(&t->mu);
	for (int i = 0; i < 2; i++)
		SSL_CTX_free(old[i]); /* open connections hold their own reference */
	material_free(&m);
	pthread_mutex_unlock(&t->rebuild);
	ERR_clear_error(); /* never leave stale entries for the caller's next SSL call */
	return r;
}

int kh_tls_refresh_crl(struct kh_hsm *hsm)
{
	X509 *ca = NULL;
	EVP_PKEY *cakey = NULL;
	STACK_OF(X509_CRL) *crls = NULL;
	time_t now = kh_hsm_now(hsm);
	int r;
	bool due = true;

	if ((r = kh_tls_cert_get(hsm, "ca_cert", &ca)) == KH_ERR_NOT_FOUND)
		return KH_OK;
	if (r != KH_OK)
		return r;
	if ((r = kh_tls_crls_get(hsm, &crls)) != KH_OK)
		goto out;
	for (int i = 0; i < sk_X509_CRL_num(crls); i++) {
		X509_CRL *c = sk_X509_CRL_value(crls, i);
		const ASN1_TIME *next = X509_CRL_get0_nextUpdate(c);
		if (X509_NAME_cmp(X509_CRL_get_issuer(c), X509_get_subject_name(ca)) == 0 && next &&
		    X509_cmp_time(next, &(time_t){now + CRL_REFRESH_MARGIN}) > 0)
			due = false;
	}
	if (!due)
		goto out;
	if ((r = kh_tls_key_get(hsm, "ca_key", &cakey)) != KH_OK) {
		if (r == KH_ERR_MAJOR_KEY_NOT_LOADED)
			log_warnx("TLS: the HSM's CRL is due for re-issue but the CA key "
				  "cannot be unsealed: load a PMK first");
		goto out;
	}
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		goto out;
	if ((r = kh_tls_own_crl_issue(hsm, ca, cakey, now)) != KH_OK ||
	    (r = kh_audit_append(hsm, "-", "tls.crl.refresh", "CRL re-issued before nextUpdate")) !=
		    KH_OK) {
		kh_db_rollback(hsm->db);
		goto out;
	}
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		goto out;
	log_info("TLS: the HSM's CRL was re-issued");
	r = kh_tls_reload(hsm);
out:
	sk_X509_CRL_pop_free(crls, X509_CRL_free);
	EVP_PKEY_free(cakey);
	X509_free(ca);
	ERR_clear_error();
	return r;
}

int kh_tls_init(struct kh_hsm *hsm)
{
	struct kh_tlsstate *t;
	int r;

	pthread_once(&ex_once, ex_init);
	if (ex_index < 0)
		return KH_ERR_CRYPTO;
	if ((t = calloc(1, sizeof(*t))) == NULL)
		return KH_ERR_NOMEM;
	pthread_mutex_init(&t->mu, NULL);
	pthread_mutex_init(&t->rebuild, NULL);
	hsm->tls = t;
	/* Neither a missing PMK nor unusable material stops the start: the
	 * affected ports refuse connections and the log says why. */
	if ((r = kh_tls_refresh_crl(hsm)) != KH_OK && r != KH_ERR_MAJOR_KEY_NOT_LOADED)
		log_warnx("TLS: CRL refresh failed: %s", kh_strerror(r));
	if ((r = kh_tls_reload(hsm)) != KH_OK)
		log_warnx("TLS: %s", kh_strerror(r));
	return KH_OK;
}

void kh_tls_free(struct kh_hsm *hsm)
{
	struct kh_tlsstate *t = hsm->tls;
	if (t == NULL)
		return;
	for (int i = 0; i < 2; i++)
		SSL_CTX_free(t->ctx[i]);
	pthread_mutex_destroy(&t->mu);
	pthread_mutex_destroy(&t->rebuild);
	free(t);
	hsm->tls = NULL;
}

SSL_CTX *kh_tls_server_ctx(struct kh_hsm *hsm, enum kh_port port, enum kh_tls_mode *mode)
{
	struct kh_tlsstate *t = hsm->tls;
	SSL_CTX *ctx = NULL;
	bool refresh = false, rebuild = false;
	time_t now = time(NULL);
	int i = port_slot(port);

	*mode = KH_TLS_MUTUAL;
	if (t == NULL)
		return NULL;
	pthread_mutex_lock(&t->mu);
	if (t->crl_due != 0 && now >= t->crl_due && now >= t->crl_retry) {
		t->crl_retry = now + CRL_RETRY_SECONDS;
		refresh = true;
	}
	rebuild = t->need_pmk;
	pthread_mutex_unlock(&t->mu);
	if (rebuild) {
		/* the server key was sealed away at start-up; a PMK loaded since
		 * then brings the ports up without a restart */
		struct kh_mk_info info;
		kh_mk_info(hsm, KH_MK_PMK, &info);
		if (info.loaded && kh_tls_reload(hsm) == KH_OK)
			log_info("TLS: PMK loaded: the server key is unsealed, TLS ports serve");
	}
	if (refresh) {
		int r = kh_tls_refresh_crl(hsm);
		if (r != KH_OK)
			log_warnx("TLS: CRL refresh failed: %s", kh_strerror(r));
	}
	pthread_mutex_lock(&t->mu);
	*mode = t->mode[i];
	if (t->ctx[i] && SSL_CTX_up_ref(t->ctx[i]) == 1)
		ctx = t->ctx[i];
	pthread_mutex_unlock(&t->mu);
	return ctx;
}
