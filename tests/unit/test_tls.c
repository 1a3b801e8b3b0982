/* The T* commands through the real dispatcher, then real TLS handshakes
 * over a socketpair against the context the HSM builds: who is let in, who
 * is refused and with which alert, and that bad input changes nothing. */
#include "kh_testutil.h"
#include "hsm/db.h"
#include "hsm/hsm_core.h"
#include "hsm/pki.h"
#include "hsm/tls.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#define RESP_MAX (1u << 20)

/* TLS alert descriptions a refused client sees */
#define AL_BAD_CERT 42
#define AL_CERT_REVOKED 44
#define AL_CERT_EXPIRED 45
#define AL_UNKNOWN_CA 48
#define AL_PROTOCOL_VERSION 70
#define AL_CERT_REQUIRED 116

struct fx {
	struct kh_hsm hsm;
	char dir[256];
	struct kh_session s;
	char *resp;
};

static void admin_session(struct fx *f)
{
	kh_test_session(&f->s, KH_PORT_ADMIN);
	f->s.nident = 2;
	snprintf(f->s.ident[0], KH_NAME_MAX, "Admin1");
	snprintf(f->s.ident[1], KH_NAME_MAX, "Admin2");
	snprintf(f->s.role.name, KH_NAME_MAX, "Administrator");
	f->s.role.perms = KH_PERM(KH_P_COUNT) - 1;
	f->s.role.logins_required = 2;
	f->s.role.ports = KH_PORT_ADMIN;
	f->s.role.sources = KH_SRC_ETHERNET | KH_SRC_USB;
	f->s.active = true;
	f->s.role_gen = atomic_load(&f->hsm.role_gen);
}

/* Run a request; returns the dispatcher's result, response in f->resp. */
static int call(struct fx *f, const char *req)
{
	return kh_test_call(&f->hsm, &f->s, req, f->resp, RESP_MAX);
}

static void call_ok(struct fx *f, const char *req)
{
	int r = call(f, req);
	if (r != KH_OK)
		fail_msg("%.12s failed: %s", req, f->resp);
}

/* Value of tag in the last response: hex-decoded when hex, else text.
 * Returns a malloc'd NUL-terminated buffer, *len its size. */
static uint8_t *resp_get(struct fx *f, const char *tag, bool hex, size_t *len)
{
	struct kh_frame fr;
	assert_int_equal(kh_frame_parse((const uint8_t *)f->resp, strlen(f->resp), KH_FIELDS_MAX, &fr),
			 KH_OK);
	const struct kh_field *fl = kh_frame_get(&fr, tag);
	assert_non_null(fl);
	uint8_t *out = malloc(fl->len + 1);
	assert_non_null(out);
	if (hex) {
		int n = kh_hex_decode(fl->val, fl->len, out, fl->len);
		assert_true(n >= 0);
		*len = (size_t)n;
	} else {
		memcpy(out, fl->val, fl->len);
		*len = fl->len;
	}
	out[*len] = '\0';
	return out;
}

static char *hexs(const void *p, size_t n)
{
	char *h = malloc(2 * n + 1);
	assert_non_null(h);
	kh_hex_encode(p, n, h);
	return h;
}

/* Build "[AO<cmd>;<tag><hex of data>;<rest>]" */
static char *req_hex(const char *cmd, const char *tag, const void *data, size_t n, const char *rest)
{
	char *h = hexs(data, n);
	size_t sz = strlen(h) + strlen(rest) + 64;
	char *q = malloc(sz);
	assert_non_null(q);
	snprintf(q, sz, "[AO%s;%s%s;%s]", cmd, tag, h, rest);
	free(h);
	return q;
}

static void load_pmk(struct fx *f)
{
	char req[512];
	char *p1 = hexs("custodian one pass", 18), *p2 = hexs("custodian two pass", 18);
	snprintf(req, sizeof(req), "[AOMKGN;KNPMK;ALAES;KL256;FM2;FN2;P1%s;P2%s;]", p1, p2);
	call_ok(f, req);
	free(p1);
	free(p2);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->resp = malloc(RESP_MAX);
	assert_non_null(f->resp);
	kh_test_hsm_open(&f->hsm, f->dir);
	admin_session(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	kh_test_hsm_close(&f->hsm, f->dir);
	free(f->resp);
	free(f);
	return 0;
}

/* Digest of everything TLS keeps: table tls and table revoked. */
static void state_digest(struct fx *f, uint8_t out[32])
{
	sqlite3 *h = kh_db_sqlite(f->hsm.db);
	sqlite3_stmt *st;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int n = 0;
	assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
	kh_db_lock(f->hsm.db);
	assert_int_equal(sqlite3_prepare_v2(h, "SELECT name, value FROM tls ORDER BY name", -1, &st,
					    NULL),
			 SQLITE_OK);
	while (sqlite3_step(st) == SQLITE_ROW) {
		EVP_DigestUpdate(md, sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0) + 1);
		EVP_DigestUpdate(md, sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1));
	}
	sqlite3_finalize(st);
	assert_int_equal(sqlite3_prepare_v2(h, "SELECT serial, revoked_at FROM revoked ORDER BY serial",
					    -1, &st, NULL),
			 SQLITE_OK);
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t t = sqlite3_column_int64(st, 1);
		EVP_DigestUpdate(md, sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0) + 1);
		EVP_DigestUpdate(md, &t, sizeof(t));
	}
	sqlite3_finalize(st);
	kh_db_unlock(f->hsm.db);
	assert_int_equal(EVP_DigestFinal_ex(md, out, &n), 1);
	EVP_MD_CTX_free(md);
}

/* ---- the CA, certificates, CSRs ---- */

/* TCAG, then TSRV: returns the CA certificate. */
static X509 *provision(struct fx *f, const char *kt)
{
	char rest[256];
	char *cn = hexs("Keyhold Test CA", 15), *scn = hexs("hsm.local", 9);
	X509 *ca = NULL;
	size_t len;
	const char *why = NULL;

	snprintf(rest, sizeof(rest), "[AOTCAG;KT%s;CN%s;]", kt, cn);
	call_ok(f, rest);
	uint8_t *pem = resp_get(f, "CE", true, &len);
	assert_int_equal(kh_pki_cert_from_pem(pem, len, &ca, &why), KH_OK);
	free(pem);
	snprintf(rest, sizeof(rest), "[AOTSRV;CN%s;]", scn);
	call_ok(f, rest);
	free(cn);
	free(scn);
	return ca;
}

/* A client key and a CSR for it, as PEM. */
static uint8_t *client_csr(const char *cn, EVP_PKEY **key, size_t *len)
{
	struct kh_pki_keyspec spec = {KH_PKI_EC, 256};
	X509_REQ *req = NULL;
	uint8_t *pem = NULL;
	const char *why = NULL;
	assert_int_equal(kh_pki_keygen(&spec, key), KH_OK);
	assert_int_equal(kh_pki_csr_new(*key, cn, "DNS:client", &req, &why), KH_OK);
	assert_int_equal(kh_pki_csr_pem(req, &pem, len), KH_OK);
	X509_REQ_free(req);
	return pem;
}

/* TSGN a fresh client key; returns the certificate, serial in sn. */
static X509 *tsgn(struct fx *f, const char *cn, const char *days, EVP_PKEY **key,
		  char sn[KH_PKI_SERIAL_HEX])
{
	size_t len;
	uint8_t *csr = client_csr(cn, key, &len);
	char rest[32] = "";
	if (days)
		snprintf(rest, sizeof(rest), "DY%s;", days);
	char *q = req_hex("TSGN", "CR", csr, len, rest);
	call_ok(f, q);
	uint8_t *pem = resp_get(f, "CE", true, &len);
	X509 *x = NULL;
	const char *why = NULL;
	assert_int_equal(kh_pki_cert_from_pem(pem, len, &x, &why), KH_OK);
	uint8_t *s = resp_get(f, "SN", false, &len);
	assert_true(len < KH_PKI_SERIAL_HEX);
	memcpy(sn, s, len + 1);
	char own[KH_PKI_SERIAL_HEX];
	assert_int_equal(kh_pki_serial_hex(x, own), KH_OK);
	assert_string_equal(own, sn);
	free(s);
	free(pem);
	free(q);
	free(csr);
	return x;
}

/* A CA made by the test (not the HSM) and a client certificate from it. */
static void foreign(const char *cn, X509 **ca, EVP_PKEY **cakey, X509 **cert, EVP_PKEY **key)
{
	struct kh_pki_keyspec spec = {KH_PKI_EC, 256};
	X509_REQ *req = NULL;
	const char *why = NULL;
	assert_int_equal(kh_pki_keygen(&spec, cakey), KH_OK);
	assert_int_equal(kh_pki_ca_new(*cakey, cn, 365, time(NULL), ca), KH_OK);
	assert_int_equal(kh_pki_keygen(&spec, key), KH_OK);
	assert_int_equal(kh_pki_csr_new(*key, "intruder", NULL, &req, &why), KH_OK);
	assert_int_equal(kh_pki_client_cert(*ca, *cakey, req, 30, time(NULL), cert, &why), KH_OK);
	X509_REQ_free(req);
}

/* ---- handshakes ---- */

struct srv {
	SSL_CTX *ctx;
	int fd;
	int ok;
	long verify;
};

static void *server_main(void *arg)
{
	struct srv *sv = arg;
	char drain[512];
	SSL *ssl = SSL_new(sv->ctx);
	SSL_set_fd(ssl, sv->fd);
	sv->ok = SSL_accept(ssl) == 1;
	sv->verify = SSL_get_verify_result(ssl);
	if (sv->ok) {
		char b;
		/* one byte each way proves the connection is usable */
		if (SSL_write(ssl, "K", 1) != 1 || SSL_read(ssl, &b, 1) != 1 || b != 'P')
			sv->ok = 0;
		SSL_shutdown(ssl);
	}
	SSL_free(ssl);
	/* Closing with the client's unread records in the buffer would reset
	 * the connection and could discard the alert: drain until the client
	 * has read it and closed. */
	shutdown(sv->fd, SHUT_WR);
	while (read(sv->fd, drain, sizeof(drain)) > 0)
		;
	close(sv->fd);
	ERR_clear_error();
	return NULL;
}

static int last_alert;
static void client_info(const SSL *ssl, int where, int ret)
{
	if (where & SSL_CB_READ_ALERT)
		last_alert = ret & 0xff;
}

struct hs {
	int server_ok; /* handshake and one byte each way succeeded on the server */
	int client_ok;
	int alert;     /* alert the client received, 0 if none */
};

/* One handshake of a client (cert and key optional) against sctx. */
static struct hs handshake(SSL_CTX *sctx, X509 *ca, X509 *cert, EVP_PKEY *key, int client_max)
{
	int sv[2];
	struct timeval tv = {10, 0};
	struct srv s = {0};
	pthread_t th;
	struct hs out = {0};
	char b = 0;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	for (int i = 0; i < 2; i++) {
		setsockopt(sv[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(sv[i], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	}
	s.ctx = sctx;
	s.fd = sv[0];
	assert_int_equal(pthread_create(&th, NULL, server_main, &s), 0);

	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
	assert_non_null(cctx);
	if (client_max)
		SSL_CTX_set_max_proto_version(cctx, client_max);
	assert_int_equal(X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), ca), 1);
	SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
	if (cert) {
		assert_int_equal(SSL_CTX_use_certificate(cctx, cert), 1);
		assert_int_equal(SSL_CTX_use_PrivateKey(cctx, key), 1);
	}
	SSL *ssl = SSL_new(cctx);
	SSL_set_info_callback(ssl, client_info);
	assert_int_equal(SSL_set1_host(ssl, "localhost"), 1);
	SSL_set_fd(ssl, sv[1]);
	last_alert = 0;
	/* in TLS 1.3 the server judges the client's certificate after the
	 * client's handshake is done: the verdict arrives with the first read */
	out.client_ok = SSL_connect(ssl) == 1 && SSL_read(ssl, &b, 1) == 1 && b == 'K' &&
			SSL_write(ssl, "P", 1) == 1;
	out.alert = last_alert;
	SSL_free(ssl);
	close(sv[1]);
	SSL_CTX_free(cctx);
	pthread_join(th, NULL);
	out.server_ok = s.ok;
	ERR_clear_error();
	return out;
}

static struct hs prod_handshake(struct fx *f, X509 *ca, X509 *cert, EVP_PKEY *key)
{
	enum kh_tls_mode mode;
	SSL_CTX *ctx = kh_tls_server_ctx(&f->hsm, KH_PORT_PROD, &mode);
	assert_non_null(ctx);
	assert_int_not_equal(mode, KH_TLS_CLEAR);
	struct hs h = handshake(ctx, ca, cert, key, 0);
	SSL_CTX_free(ctx);
	return h;
}

/* ---- tests ---- */

static void test_needs_pmk(void **state)
{
	struct fx *f = *state;
	enum kh_tls_mode mode;
	char *cn = hexs("CA", 2), req[128];
	snprintf(req, sizeof(req), "[AOTCAG;KTEC;CN%s;]", cn);
	assert_int_equal(call(f, req), KH_ERR_MAJOR_KEY_NOT_LOADED);
	assert_non_null(strstr(f->resp, "load a PMK first"));
	snprintf(req, sizeof(req), "[AOTCSR;CN%s;]", cn);
	assert_int_equal(call(f, req), KH_ERR_MAJOR_KEY_NOT_LOADED);
	/* no certificate yet: TLS mode, no context */
	assert_null(kh_tls_server_ctx(&f->hsm, KH_PORT_PROD, &mode));
	assert_int_equal(mode, KH_TLS_MUTUAL);
	call_ok(f, "[AOTPRS;]");
	assert_non_null(strstr(f->resp, "EXmutual/1.2/N;"));
	assert_non_null(strstr(f->resp, "ADmutual/1.2/N;"));
	/* TSGN without a CA */
	load_pmk(f);
	EVP_PKEY *k = NULL;
	size_t len;
	uint8_t *csr = client_csr("x", &k, &len);
	char *q = req_hex("TSGN", "CR", csr, len, "");
	assert_int_equal(call(f, q), KH_ERR_STATE);
	free(q);
	free(csr);
	EVP_PKEY_free(k);
	free(cn);
}

static void test_mutual_tls(void **state)
{
	struct fx *f = *state;
	load_pmk(f);
	X509 *ca = provision(f, "EC");
	EVP_PKEY *key = NULL;
	char sn[KH_PKI_SERIAL_HEX];
	X509 *cert = tsgn(f, "app1", NULL, &key, sn);
	struct hs h;

	call_ok(f, "[AOTPRS;]");
	assert_non_null(strstr(f->resp, "EXmutual/1.2/Y;"));

	/* a TSGN certificate is accepted */
	h = prod_handshake(f, ca, cert, key);
	assert_true(h.server_ok);
	assert_true(h.client_ok);

	/* no certificate: refused in mutual mode */
	h = prod_handshake(f, ca, NULL, NULL);
	assert_false(h.server_ok);
	assert_false(h.client_ok);
	assert_int_equal(h.alert, AL_CERT_REQUIRED);

	/* a certificate from another CA tree: refused, unknown_ca */
	X509 *oca = NULL, *ocert = NULL;
	EVP_PKEY *ocak = NULL, *okey = NULL;
	foreign("Other CA", &oca, &ocak, &ocert, &okey);
	h = prod_handshake(f, ca, ocert, okey);
	assert_false(h.server_ok);
	assert_int_equal(h.alert, AL_UNKNOWN_CA);

	/* an expired certificate: issued while the HSM clock is 400 days back */
	pthread_mutex_lock(&f->hsm.mu);
	f->hsm.clock_offset = -400 * 86400;
	pthread_mutex_unlock(&f->hsm.mu);
	EVP_PKEY *ekey = NULL;
	char esn[KH_PKI_SERIAL_HEX];
	X509 *ecert = tsgn(f, "old", "1", &ekey, esn);
	pthread_mutex_lock(&f->hsm.mu);
	f->hsm.clock_offset = 0;
	pthread_mutex_unlock(&f->hsm.mu);
	h = prod_handshake(f, ca, ecert, ekey);
	assert_false(h.server_ok);
	assert_int_equal(h.alert, AL_CERT_EXPIRED);

	/* revoked: TRVK, then the same certificate is refused */
	char req[128];
	snprintf(req, sizeof(req), "[AOTRVK;SN%s;]", sn);
	call_ok(f, req);
	h = prod_handshake(f, ca, cert, key);
	assert_false(h.server_ok);
	assert_int_equal(h.alert, AL_CERT_REVOKED);
	/* another TSGN certificate still works */
	EVP_PKEY *key2 = NULL;
	char sn2[KH_PKI_SERIAL_HEX];
	X509 *cert2 = tsgn(f, "app2", NULL, &key2, sn2);
	h = prod_handshake(f, ca, cert2, key2);
	assert_true(h.server_ok);
	/* the CRL in force lists the serial */
	call_ok(f, "[AOTCRL;]");
	size_t len;
	uint8_t *pem = resp_get(f, "CL", true, &len);
	STACK_OF(X509_CRL) *crls = NULL;
	const char *why = NULL;
	assert_int_equal(kh_pki_crls_from_pem(pem, len, 4, &crls, &why), KH_OK);
	assert_int_equal(sk_X509_CRL_num(crls), 1);
	assert_true(kh_pki_crl_lists(sk_X509_CRL_value(crls, 0), sn));
	assert_false(kh_pki_crl_lists(sk_X509_CRL_value(crls, 0), sn2));
	assert_int_equal(X509_CRL_verify(sk_X509_CRL_value(crls, 0), X509_get0_pubkey(ca)), 1);
	sk_X509_CRL_pop_free(crls, X509_CRL_free);
	free(pem);

	/* Allow Anonymous: no certificate is fine, a bad one is still refused */
	call_ok(f, "[AOTPRT;PTexcrypt;MOanonymous;]");
	h = prod_handshake(f, ca, NULL, NULL);
	assert_true(h.server_ok);
	assert_true(h.client_ok);
	h = prod_handshake(f, ca, ocert, okey);
	assert_false(h.server_ok);
	assert_int_equal(h.alert, AL_UNKNOWN_CA);
	h = prod_handshake(f, ca, cert, key);
	assert_false(h.server_ok);
	assert_int_equal(h.alert, AL_CERT_REVOKED);
	/* the Admin port kept mutual */
	enum kh_tls_mode mode;
	SSL_CTX *actx = kh_tls_server_ctx(&f->hsm, KH_PORT_ADMIN, &mode);
	assert_non_null(actx);
	assert_int_equal(mode, KH_TLS_MUTUAL);
	h = handshake(actx, ca, NULL, NULL, 0);
	assert_false(h.server_ok);
	SSL_CTX_free(actx);
	call_ok(f, "[AOTPRS;]");
	assert_non_null(strstr(f->resp, "EXanonymous/1.2/Y;"));
	assert_non_null(strstr(f->resp, "ADmutual/1.2/Y;"));

	/* TLS 1.3 minimum refuses a TLS 1.2 client */
	call_ok(f, "[AOTPRT;PTexcrypt;MOmutual;TV1.3;]");
	SSL_CTX *pctx = kh_tls_server_ctx(&f->hsm, KH_PORT_PROD, &mode);
	assert_non_null(pctx);
	h = handshake(pctx, ca, cert2, key2, TLS1_2_VERSION);
	assert_false(h.server_ok);
	assert_int_equal(h.alert, AL_PROTOCOL_VERSION);
	h = handshake(pctx, ca, cert2, key2, 0);
	assert_true(h.server_ok);
	/* clear: no context */
	call_ok(f, "[AOTPRT;PTexcrypt;MOclear;]");
	assert_null(kh_tls_server_ctx(&f->hsm, KH_PORT_PROD, &mode));
	assert_int_equal(mode, KH_TLS_CLEAR);
	/* a context taken before the change keeps working */
	h = handshake(pctx, ca, cert2, key2, 0);
	assert_true(h.server_ok);
	SSL_CTX_free(pctx);
	call_ok(f, "[AOTPRS;]");
	assert_non_null(strstr(f->resp, "EXclear/1.2/Y;"));
	call_ok(f, "[AOTPRT;PTexcrypt;MOmutual;]");

	/* TCAX lists our CA */
	call_ok(f, "[AOTCAX;]");
	pem = resp_get(f, "CE", true, &len);
	STACK_OF(X509) *sk = NULL;
	assert_int_equal(kh_pki_certs_from_pem(pem, len, 1, 8, &sk, &why), KH_OK);
	assert_int_equal(sk_X509_num(sk), 1);
	assert_int_equal(X509_cmp(sk_X509_value(sk, 0), ca), 0);
	sk_X509_pop_free(sk, X509_free);
	free(pem);

	/* after a restart, the contexts come back from storage */
	kh_hsm_close(&f->hsm);
	assert_int_equal(kh_hsm_open(&f->hsm, f->dir, false), KH_OK);
	admin_session(f);
	h = prod_handshake(f, ca, cert2, key2);
	assert_true(h.server_ok);
	h = prod_handshake(f, ca, cert, key);
	assert_false(h.server_ok);
	assert_int_equal(h.alert, AL_CERT_REVOKED);

	/* started without the PMK (volatile mode ignores the sealed one): the
	 * start succeeds and the TLS ports refuse until a PMK is loaded */
	kh_hsm_close(&f->hsm);
	assert_int_equal(kh_hsm_open(&f->hsm, f->dir, true), KH_OK);
	admin_session(f);
	assert_null(kh_tls_server_ctx(&f->hsm, KH_PORT_PROD, &mode));
	assert_int_equal(mode, KH_TLS_MUTUAL);
	assert_null(kh_tls_server_ctx(&f->hsm, KH_PORT_ADMIN, &mode));
	assert_int_equal(mode, KH_TLS_MUTUAL);
	snprintf(req, sizeof(req), "[AOTRVK;SN%s;]", sn2);
	assert_int_equal(call(f, req), KH_ERR_MAJOR_KEY_NOT_LOADED);
	assert_non_null(strstr(f->resp, "load a PMK first"));
	kh_hsm_close(&f->hsm);
	assert_int_equal(kh_hsm_open(&f->hsm, f->dir, false), KH_OK);
	admin_session(f);
	h = prod_handshake(f, ca, cert2, key2);
	assert_true(h.server_ok);

	X509_free(cert2);
	EVP_PKEY_free(key2);
	X509_free(ecert);
	EVP_PKEY_free(ekey);
	X509_free(oca);
	X509_free(ocert);
	EVP_PKEY_free(ocak);
	EVP_PKEY_free(okey);
	X509_free(cert);
	EVP_PKEY_free(key);
	X509_free(ca);
}

/* TCSR on the HSM, signed by an outside CA, installed with TSCI; that CA
 * imported with TCAI and its CRL with TCRL. */
static void test_csr_and_import(void **state)
{
	struct fx *f = *state;
	load_pmk(f);
	X509 *ca = provision(f, "RSA");
	X509 *oca = NULL, *ocert = NULL;
	EVP_PKEY *ocak = NULL, *okey = NULL;
	foreign("Partner CA", &oca, &ocak, &ocert, &okey);
	const char *why = NULL;
	size_t len;
	char req[256];
	struct hs h;

	/* TCSR: key type defaults to the CA's */
	char *cn = hexs("hsm.partner", 11);
	snprintf(req, sizeof(req), "[AOTCSR;CN%s;]", cn);
	call_ok(f, req);
	uint8_t *pem = resp_get(f, "CR", true, &len);
	X509_REQ *csr = NULL;
	assert_int_equal(kh_pki_csr_from_pem(pem, len, &csr, &why), KH_OK);
	assert_int_equal(EVP_PKEY_is_a(X509_REQ_get0_pubkey(csr), "RSA"), 1);
	free(pem);
	X509 *srv = NULL;
	assert_int_equal(kh_pki_server_cert(oca, ocak, X509_REQ_get0_pubkey(csr), "hsm.partner",
					    NULL, 30, time(NULL), &srv, &why),
			 KH_OK);
	uint8_t *spem = NULL;
	size_t slen = 0;
	assert_int_equal(kh_pki_cert_pem(srv, &spem, &slen), KH_OK);

	/* not trusted yet: TSCI refuses and nothing changes */
	uint8_t before[32], after[32];
	state_digest(f, before);
	char *q = req_hex("TSCI", "CE", spem, slen, "");
	assert_int_equal(call(f, q), KH_ERR_TLS);
	assert_non_null(strstr(f->resp, "does not chain to a trusted CA"));
	state_digest(f, after);
	assert_memory_equal(before, after, 32);

	/* TCAI the partner CA, then TSCI works */
	uint8_t *capem = NULL;
	size_t calen = 0;
	assert_int_equal(kh_pki_cert_pem(oca, &capem, &calen), KH_OK);
	char *qa = req_hex("TCAI", "CE", capem, calen, "");
	call_ok(f, qa);
	size_t fplen;
	uint8_t *fp = resp_get(f, "FP", false, &fplen);
	uint8_t raw[32];
	char fphex[65];
	assert_int_equal(kh_pki_fingerprint(oca, raw), KH_OK);
	kh_hex_encode(raw, 32, fphex);
	assert_string_equal((char *)fp, fphex);
	free(fp);
	call_ok(f, q);
	/* the new server certificate is served; the partner's client
	 * certificate is now accepted (no CRL imported for that CA yet) */
	h = prod_handshake(f, oca, ocert, okey);
	assert_true(h.server_ok);
	assert_true(h.client_ok);
	/* the pending key is used up: installing again matches the current key */
	call_ok(f, q);

	/* TCRL: the partner's CRL revoking its client certificate */
	struct kh_pki_revoked rv;
	assert_int_equal(kh_pki_serial_hex(ocert, rv.serial), KH_OK);
	rv.when = time(NULL);
	X509_CRL *crl = NULL;
	assert_int_equal(kh_pki_crl_new(oca, ocak, &rv, 1, time(NULL), &crl), KH_OK);
	STACK_OF(X509_CRL) *one = sk_X509_CRL_new_null();
	assert_true(sk_X509_CRL_push(one, crl) > 0);
	uint8_t *cpem = NULL;
	size_t clen = 0;
	assert_int_equal(kh_pki_crls_pem(one, &cpem, &clen), KH_OK);
	char *qc = req_hex("TCRL", "CL", cpem, clen, "");
	call_ok(f, qc);
	pem = resp_get(f, "CL", true, &len);
	STACK_OF(X509_CRL) *all = NULL;
	assert_int_equal(kh_pki_crls_from_pem(pem, len, 8, &all, &why), KH_OK);
	assert_int_equal(sk_X509_CRL_num(all), 2); /* ours and the partner's */
	sk_X509_CRL_pop_free(all, X509_CRL_free);
	free(pem);
	h = prod_handshake(f, oca, ocert, okey);
	assert_false(h.server_ok);
	assert_int_equal(h.alert, AL_CERT_REVOKED);

	/* a CRL from a CA that is not trusted is refused */
	X509 *xca = NULL, *xcert = NULL;
	EVP_PKEY *xcak = NULL, *xkey = NULL;
	foreign("Stranger CA", &xca, &xcak, &xcert, &xkey);
	X509_CRL *xcrl = NULL;
	assert_int_equal(kh_pki_crl_new(xca, xcak, NULL, 0, time(NULL), &xcrl), KH_OK);
	STACK_OF(X509_CRL) *xs = sk_X509_CRL_new_null();
	assert_true(sk_X509_CRL_push(xs, xcrl) > 0);
	uint8_t *xpem = NULL;
	size_t xlen = 0;
	assert_int_equal(kh_pki_crls_pem(xs, &xpem, &xlen), KH_OK);
	char *qx = req_hex("TCRL", "CL", xpem, xlen, "");
	state_digest(f, before);
	assert_int_equal(call(f, qx), KH_ERR_TLS);
	assert_non_null(strstr(f->resp, "not a trusted CA"));
	state_digest(f, after);
	assert_memory_equal(before, after, 32);

	/* TCAI RP=Y drops the partner (and its CRL) but keeps our own CA */
	char *qs = req_hex("TCAI", "CE", capem, calen, "RPY;");
	call_ok(f, qs); /* replace with the same partner: still two anchors */
	call_ok(f, "[AOTCAX;]");
	pem = resp_get(f, "CE", true, &len);
	STACK_OF(X509) *sk = NULL;
	assert_int_equal(kh_pki_certs_from_pem(pem, len, 1, 8, &sk, &why), KH_OK);
	assert_int_equal(sk_X509_num(sk), 2);
	assert_int_equal(X509_cmp(sk_X509_value(sk, 0), ca), 0);
	sk_X509_pop_free(sk, X509_free);
	free(pem);

	free(qs);
	free(qx);
	free(xpem);
	sk_X509_CRL_pop_free(xs, X509_CRL_free);
	X509_free(xca);
	X509_free(xcert);
	EVP_PKEY_free(xcak);
	EVP_PKEY_free(xkey);
	free(qc);
	free(cpem);
	sk_X509_CRL_pop_free(one, X509_CRL_free);
	free(qa);
	free(capem);
	free(q);
	free(spem);
	X509_free(srv);
	X509_REQ_free(csr);
	free(cn);
	X509_free(oca);
	X509_free(ocert);
	EVP_PKEY_free(ocak);
	EVP_PKEY_free(okey);
	X509_free(ca);
}

/* FIPS mode keeps the ports encrypted and the Admin port mutual. */
static void test_fips_port_modes(void **state)
{
	struct fx *f = *state;
	call_ok(f, "[AOSETS;FIY;]");
	assert_int_equal(call(f, "[AOTPRT;PTexcrypt;MOclear;]"), KH_ERR_FIPS);
	assert_int_equal(call(f, "[AOTPRT;PTadmin;MOclear;]"), KH_ERR_FIPS);
	assert_int_equal(call(f, "[AOTPRT;PTadmin;MOanonymous;]"), KH_ERR_FIPS);
	call_ok(f, "[AOTPRT;PTexcrypt;MOanonymous;]");
	call_ok(f, "[AOTPRS;]");
	assert_non_null(strstr(f->resp, "ADmutual/"));
	assert_non_null(strstr(f->resp, "EXanonymous/"));
	call_ok(f, "[AOSETS;FIN;]");
	call_ok(f, "[AOTPRT;PTadmin;MOclear;]");
	/* nor is FIPS mode turned on while a port is clear, or the Admin port
	 * is not mutual */
	assert_int_equal(call(f, "[AOSETS;FIY;]"), KH_ERR_STATE);
	assert_non_null(strstr(f->resp, "Admin port is clear"));
	call_ok(f, "[AOTPRT;PTadmin;MOanonymous;]");
	assert_int_equal(call(f, "[AOSETS;FIY;]"), KH_ERR_STATE);
	call_ok(f, "[AOTPRT;PTadmin;MOmutual;]");
	call_ok(f, "[AOTPRT;PTexcrypt;MOclear;]");
	assert_int_equal(call(f, "[AOSETS;FIY;]"), KH_ERR_STATE);
	assert_non_null(strstr(f->resp, "Excrypt port is clear"));
	call_ok(f, "[AOSETG;]");
	assert_non_null(strstr(f->resp, "FIN;"));
	call_ok(f, "[AOTPRT;PTexcrypt;MOanonymous;]");
	call_ok(f, "[AOSETS;FIY;]");
}

/* Every command fed garbage: an error, and the stored state unchanged. */
static void test_bad_input(void **state)
{
	struct fx *f = *state;
	load_pmk(f);
	X509 *ca = provision(f, "EC");
	uint8_t before[32], after[32];
	EVP_PKEY *ck = NULL;
	size_t csrlen;
	uint8_t *csr = client_csr("c", &ck, &csrlen);
	X509 *oca = NULL, *ocert = NULL;
	EVP_PKEY *ocak = NULL, *okey = NULL;
	foreign("Other", &oca, &ocak, &ocert, &okey);
	uint8_t *opem = NULL;
	size_t olen = 0;
	assert_int_equal(kh_pki_cert_pem(ocert, &opem, &olen), KH_OK);
	const char *garbage = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n";
	/* a CSR with one byte of its signature flipped */
	uint8_t *bad_csr = malloc(csrlen);
	memcpy(bad_csr, csr, csrlen);
	bad_csr[csrlen - 40] = bad_csr[csrlen - 40] == 'A' ? 'B' : 'A';

	char *reqs[] = {
		strdup("[AOTCAG;KTDSA;CN41;]"),
		strdup("[AOTCAG;KTEC;CNZZ;]"),
		strdup("[AOTCAG;KTEC;CN01;]"),
		strdup("[AOTCAG;KTEC;CN41;DY0;]"),
		strdup("[AOTCAG;KTRSA;KB1024;CN41;]"),
		strdup("[AOTCAG;KTEC;KBP-521;CN41;]"),
		strdup("[AOTCAG;KTEC;]"),
		strdup("[AOTCAI;CEZZZZ;]"),
		req_hex("TCAI", "CE", garbage, strlen(garbage), ""),
		req_hex("TCAI", "CE", opem, olen, ""),          /* not a CA */
		req_hex("TCAI", "CE", csr, csrlen, ""),          /* a CSR */
		req_hex("TCAI", "CE", "hello", 5, ""),
		strdup("[AOTCAI;CE41;RPX;]"),
		strdup("[AOTSRV;]"),
		strdup("[AOTSRV;CN41;SA49503A3939392E312E312E31;]"), /* IP:999.1.1.1 */
		strdup("[AOTSRV;CN41;KTXX;]"),
		strdup("[AOTSRV;CN41;DY99999;]"),
		strdup("[AOTCSR;CN;]"),
		strdup("[AOTCSR;CN0A0B;]"),
		strdup("[AOTSCI;CE00;]"),
		req_hex("TSCI", "CE", garbage, strlen(garbage), ""),
		req_hex("TSCI", "CE", opem, olen, ""),           /* matches no key of ours */
		strdup("[AOTSGN;CRABC;]"),
		req_hex("TSGN", "CR", garbage, strlen(garbage), ""),
		req_hex("TSGN", "CR", bad_csr, csrlen, ""),
		req_hex("TSGN", "CR", opem, olen, ""),           /* a certificate, not a CSR */
		req_hex("TSGN", "CR", csr, csrlen, "DY0;"),
		strdup("[AOTRVK;SNXYZ;]"),
		strdup("[AOTRVK;SN0000;]"),
		strdup("[AOTRVK;]"),
		strdup("[AOTCRL;CL00;]"),
		req_hex("TCRL", "CL", garbage, strlen(garbage), ""),
		req_hex("TCRL", "CL", opem, olen, ""),           /* a certificate, not a CRL */
		strdup("[AOTPRT;PTfoo;MOmutual;]"),
		strdup("[AOTPRT;PTexcrypt;MOnone;]"),
		strdup("[AOTPRT;PTexcrypt;MOmutual;TV1.1;]"),
		strdup("[AOTPRT;MOmutual;]"),
	};
	for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
		state_digest(f, before);
		int r = call(f, reqs[i]);
		if (r == KH_OK)
			fail_msg("request %zu (%.24s) was accepted: %s", i, reqs[i], f->resp);
		assert_non_null(strstr(f->resp, "[AOERRO;"));
		state_digest(f, after);
		assert_memory_equal(before, after, 32);
		free(reqs[i]);
	}
	/* and the HSM still serves */
	EVP_PKEY *key = NULL;
	char sn[KH_PKI_SERIAL_HEX];
	X509 *cert = tsgn(f, "still-ok", NULL, &key, sn);
	struct hs h = prod_handshake(f, ca, cert, key);
	assert_true(h.server_ok);
	X509_free(cert);
	EVP_PKEY_free(key);
	free(bad_csr);
	free(opem);
	X509_free(oca);
	X509_free(ocert);
	EVP_PKEY_free(ocak);
	EVP_PKEY_free(okey);
	free(csr);
	EVP_PKEY_free(ck);
	X509_free(ca);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN); /* a refused peer closes while the other side writes */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_needs_pmk, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mutual_tls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_csr_and_import, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fips_port_modes, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
