/*
 * The guardian's checks of one member device: probe, admission, diagnose,
 * ping. Everything here reads; nothing changes a device. Messages name the
 * host, port and step (the reference's troubleshooting order) and never
 * carry a password: the login's password only goes into a wiped buffer.
 */
#include "guardian/member.h"
#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_frame.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#define REQ_MAX 1024
#define RESP_MAX 65536

static const char *const role_names[] = {"Primary", "Production", "Backup"};
static const char *const mk_names[KG_MK_COUNT] = {"FTK", "PMK", "BEK"};
static const char *const mk_tags[KG_MK_COUNT] = {"FT", "PM", "BK"};
static const char *const admit_names[] = {"OK",          "NO_PRIMARY",   "SECOND_PRIMARY",
                                          "UNREACHABLE", "DEVICE_ERROR", "MODEL",
                                          "VERSION",     "MAJOR_KEY",    "FEATURES"};
static const char *const step_names[KG_DIAG_NSTEPS] = {
    "device group enabled", "device enabled",   "Admin port TCP", "Admin port TLS",
    "Excrypt port TCP",     "Excrypt port TLS", "same CA tree"};
static const char *const state_names[] = {"ok", "failed", "not run"};

const char *kg_member_role_name(enum kg_member_role r)
{
	return (unsigned)r < 3 ? role_names[r] : "?";
}

const char *kg_mk_name(enum kg_mk k)
{
	return (unsigned)k < KG_MK_COUNT ? mk_names[k] : "?";
}

const char *kg_admit_name(enum kg_admit a)
{
	return (unsigned)a < sizeof(admit_names) / sizeof(admit_names[0]) ? admit_names[a] : "?";
}

const char *kg_diag_step_name(enum kg_diag_step s)
{
	return (unsigned)s < KG_DIAG_NSTEPS ? step_names[s] : "?";
}

const char *kg_diag_state_name(enum kg_diag_state s)
{
	return (unsigned)s < 3 ? state_names[s] : "?";
}

static void msgf(char *msg, size_t msgsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void msgf(char *msg, size_t msgsz, const char *fmt, ...)
{
	va_list ap;
	if (msg == NULL || msgsz == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, msgsz, fmt, ap);
	va_end(ap);
}

static const char *dev_host(const struct kg_member_dev *d)
{
	return d->host && d->host[0] ? d->host : "127.0.0.1";
}

static unsigned dev_port(const struct kg_member_dev *d, bool admin)
{
	if (admin)
		return d->admin_port ? d->admin_port : KG_MEMBER_ADMIN_PORT;
	return d->excrypt_port ? d->excrypt_port : KG_MEMBER_EXCRYPT_PORT;
}

static int dev_timeout(const struct kg_member_dev *d)
{
	return d->timeout_ms > 0 ? d->timeout_ms : KG_MEMBER_TIMEOUT_MS;
}

/* The client TLS context for a connection: the caller's, or one loaded from
 * the files (without the client certificate for Anonymous TLS). A new
 * reference in *out; msg on failure. */
static int tls_ctx_get(const struct kg_member_tls *tls, bool with_cert, SSL_CTX **out, char *msg,
                       size_t msgsz)
{
	char err[KG_MEMBER_MSG_MAX];
	*out = NULL;
	if (tls && tls->tls_ctx) {
		if (SSL_CTX_up_ref(tls->tls_ctx) != 1)
			return KH_ERR_NOMEM;
		*out = tls->tls_ctx;
		return KH_OK;
	}
	struct kh_client_tls t = {
	    .ca_file = tls ? tls->ca_file : NULL,
	    .cert_file = tls && with_cert ? tls->cert_file : NULL,
	    .key_file = tls && with_cert ? tls->key_file : NULL,
	    .pass = tls && with_cert ? tls->pass : NULL,
	    .passlen = tls && with_cert && tls->pass ? strlen(tls->pass) : 0,
	};
	int r = kh_client_tls_ctx(&t, out, err, sizeof(err));
	if (r != KH_OK)
		msgf(msg, msgsz, "guardian %s", err);
	return r;
}

/* A client for one port of the device, not connected. use_tls false: clear
 * TCP; probe: an ECHO after connecting. */
static struct kh_client *client_for(const struct kg_member_dev *dev, bool admin, bool use_tls,
                                    SSL_CTX *ctx, bool probe)
{
	struct kh_client_opts o;
	kh_client_opts_init(&o);
	o.host = dev_host(dev);
	o.port = dev_port(dev, admin);
	o.port_name = admin ? "Admin" : "Excrypt";
	o.tls = use_tls;
	o.tls_ctx = use_tls ? ctx : NULL;
	o.connect_timeout_ms = dev_timeout(dev);
	o.io_timeout_ms = dev_timeout(dev);
	o.handshake_timeout_ms = dev_timeout(dev);
	o.probe = probe;
	return kh_client_new(&o);
}

/* "<host> <client error>": kh_client names the port and step, not the
 * host; an HSM's refusal (ERRO) comes as its ET text only, so the port and
 * what was asked are added. */
static void client_msg(const struct kg_member_dev *dev, struct kh_client *c, const char *what,
                       char *msg, size_t msgsz)
{
	const char *e = kh_client_error(c), *peer = kh_client_peer(c);
	if (strncmp(e, peer, strlen(peer)) == 0 || what == NULL)
		msgf(msg, msgsz, "%s %s", dev_host(dev), e[0] ? e : peer);
	else
		msgf(msg, msgsz, "%s %s: %s: %s", dev_host(dev), peer, what, e[0] ? e : "failed");
}

/* Connect to the Excrypt port as dev->conn says and log in when asked. */
static int excrypt_open(const struct kg_member_dev *dev, const struct kg_member_tls *tls,
                        const struct kg_member_login *login, bool probe, struct kh_client **out,
                        char *msg, size_t msgsz)
{
	SSL_CTX *ctx = NULL;
	struct kh_client *c = NULL;
	struct kh_buf *req = NULL, *resp = NULL;
	struct kh_frame *f = NULL;
	bool use_tls = dev->conn != KG_CONN_CLEAR;
	int r;

	*out = NULL;
	if (use_tls && (r = tls_ctx_get(tls, dev->conn == KG_CONN_TLS, &ctx, msg, msgsz)) != KH_OK)
		return r;
	c = client_for(dev, false, use_tls, ctx, probe);
	if (c == NULL) {
		r = KH_ERR_NOMEM;
		msgf(msg, msgsz, "out of memory");
		goto out;
	}
	if ((r = kh_client_connect(c)) != KH_OK) {
		client_msg(dev, c, NULL, msg, msgsz);
		goto out;
	}
	if (login && login->user) {
		req = kh_buf_new(REQ_MAX);
		resp = kh_buf_new(RESP_MAX);
		f = malloc(sizeof(*f));
		if (req == NULL || resp == NULL || f == NULL) {
			r = KH_ERR_NOMEM;
			msgf(msg, msgsz, "out of memory");
			goto out;
		}
		if ((r = kh_msg_begin(req, "LOGN")) != KH_OK ||
		    (r = kh_msg_put(req, "ID", login->user)) != KH_OK ||
		    (r = kh_msg_put_hex(req, "PW", (const uint8_t *)login->pw, login->pwlen)) !=
		        KH_OK ||
		    (r = kh_msg_end(req)) != KH_OK) {
			msgf(msg, msgsz, "login as %.64s: %s", login->user, kh_errname(r));
			goto out;
		}
		if ((r = kh_client_call(c, req, resp, f)) != KH_OK) {
			char what[128];
			snprintf(what, sizeof(what), "login as %.64s", login->user);
			client_msg(dev, c, what, msg, msgsz);
			/* an HSM refusal: name it, the ET text may be short */
			if (r > KH_ERR_IO || r < KH_ERR_PROTOCOL) {
				size_t n = strlen(msg);
				msgf(msg + n, msgsz - n, " (%s)", kh_errname(r));
			}
			goto out;
		}
		bool active = true;
		if (kh_frame_has(f, "AC") && kh_frame_yn(f, "AC", &active) == KH_OK && !active) {
			r = KH_ERR_NOT_LOGGED_IN;
			msgf(msg, msgsz, "%s %s: login as %.64s: the role needs more logins",
			     dev_host(dev), kh_client_peer(c), login->user);
			goto out;
		}
	}
	*out = c;
	c = NULL;
	r = KH_OK;
out:
	kh_client_free(c);
	kh_buf_free(req);
	kh_buf_free(resp);
	free(f);
	SSL_CTX_free(ctx);
	return r;
}

/* ---- probe ---- */

static int get_str(const struct kh_frame *f, const char *tag, char *out, size_t outsz)
{
	return kh_frame_str(f, tag, out, outsz) == KH_OK ? KH_OK : KH_ERR_PROTOCOL;
}

static int get_yn(const struct kh_frame *f, const char *tag, bool *out)
{
	const struct kh_field *v = kh_frame_get(f, tag);
	if (v == NULL || v->len != 1 || (v->val[0] != 'Y' && v->val[0] != 'N'))
		return KH_ERR_PROTOCOL;
	*out = v->val[0] == 'Y';
	return KH_OK;
}

/* A STAT major-key field: "N" or an uppercase hex check value. */
static int get_kcv(const struct kh_frame *f, const char *tag, char out[16])
{
	char v[16];
	if (get_str(f, tag, v, 16) != KH_OK || v[0] == '\0')
		return KH_ERR_PROTOCOL;
	if (strcmp(v, "N") == 0) {
		out[0] = '\0';
		return KH_OK;
	}
	for (const char *p = v; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'F')))
			return KH_ERR_PROTOCOL;
	snprintf(out, 16, "%s", v); /* not the bytes after v's NUL */
	return KH_OK;
}

int kg_member_probe(const struct kg_member_dev *dev, const struct kg_member_tls *tls,
                    const struct kg_member_login *login, struct kg_member_facts *out, char *msg,
                    size_t msgsz)
{
	static const char *const cmds[3] = {"PRMD", "HASH", "STAT"};
	struct kh_client *c = NULL;
	struct kh_buf *req = kh_buf_new(REQ_MAX), *resp = kh_buf_new(RESP_MAX);
	struct kh_frame *f = malloc(sizeof(*f));
	struct kg_member_facts st; /* STAT's own copy, to cross-check */
	int r;

	memset(out, 0, sizeof(*out));
	memset(&st, 0, sizeof(st));
	msgf(msg, msgsz, "%s", "");
	if (req == NULL || resp == NULL || f == NULL) {
		r = KH_ERR_NOMEM;
		msgf(msg, msgsz, "out of memory");
		goto out;
	}
	if ((r = excrypt_open(dev, tls, login, true, &c, msg, msgsz)) != KH_OK)
		goto out;
	/* pipelined: three requests, then three answers in order */
	for (int i = 0; i < 3; i++) {
		kh_buf_reset(req);
		if ((r = kh_msg_begin(req, cmds[i])) != KH_OK || (r = kh_msg_end(req)) != KH_OK ||
		    (r = kh_client_send(c, req)) != KH_OK) {
			client_msg(dev, c, cmds[i], msg, msgsz);
			goto out;
		}
	}
	for (int i = 0; i < 3; i++) {
		if ((r = kh_client_recv(c, resp, f)) != KH_OK) {
			client_msg(dev, c, cmds[i], msg, msgsz);
			if (r > KH_ERR_IO || r < KH_ERR_PROTOCOL) {
				size_t n = strlen(msg);
				msgf(msg + n, msgsz - n, " (%s)", kh_errname(r));
			}
			goto out;
		}
		switch (i) {
		case 0:
			r = get_str(f, "MD", out->model, sizeof(out->model));
			if (r == KH_OK)
				r = get_str(f, "VN", out->version, sizeof(out->version));
			if (r == KH_OK)
				r = get_yn(f, "FI", &out->fips);
			if (r == KH_OK)
				r = get_yn(f, "PK", &out->pkcs11);
			break;
		case 1:
			r = get_str(f, "SN", out->serial, sizeof(out->serial));
			break;
		default: {
			char state[16];
			r = get_str(f, "MD", st.model, sizeof(st.model));
			if (r == KH_OK)
				r = get_str(f, "VN", st.version, sizeof(st.version));
			if (r == KH_OK)
				r = get_str(f, "SN", st.serial, sizeof(st.serial));
			if (r == KH_OK)
				r = get_yn(f, "FI", &st.fips);
			if (r == KH_OK)
				r = get_yn(f, "PK", &st.pkcs11);
			if (r == KH_OK)
				r = get_str(f, "ST", state, sizeof(state));
			if (r == KH_OK)
				r = get_str(f, "FS", out->features, sizeof(out->features));
			for (int k = 0; k < KG_MK_COUNT && r == KH_OK; k++)
				r = get_kcv(f, mk_tags[k], out->kcv[k]);
			if (r == KH_OK)
				out->state_ok = strcmp(state, "OK") == 0;
			break;
		}
		}
		if (r != KH_OK) {
			msgf(msg, msgsz, "%s %s: %s: answer lacks a field or has a bad one",
			     dev_host(dev), kh_client_peer(c), cmds[i]);
			goto out;
		}
	}
	/* the three commands must describe one device */
	if (strcmp(st.model, out->model) != 0 || strcmp(st.version, out->version) != 0 ||
	    strcmp(st.serial, out->serial) != 0 || st.fips != out->fips ||
	    st.pkcs11 != out->pkcs11) {
		r = KH_ERR_PROTOCOL;
		msgf(msg, msgsz, "%s %s: STAT disagrees with PRMD/HASH", dev_host(dev),
		     kh_client_peer(c));
		goto out;
	}
	r = KH_OK;
out:
	if (r != KH_OK) {
		struct kg_member_facts z;
		memset(&z, 0, sizeof(z));
		*out = z;
	}
	kh_client_free(c);
	kh_buf_free(req);
	kh_buf_free(resp);
	free(f);
	return r;
}

/* ---- admission ---- */

enum kg_admit kg_member_admit(const struct kg_member_facts *primary, enum kg_member_role role,
                              const struct kg_member_probed *dev, char *why, size_t whysz)
{
	msgf(why, whysz, "%s", "");
	if (primary == NULL && role != KG_ROLE_PRIMARY) {
		msgf(why, whysz,
		     "the group has no Primary yet: the first device must be the Primary, "
		     "not a %s device",
		     kg_member_role_name(role));
		return KG_ADMIT_NO_PRIMARY;
	}
	if (primary != NULL && role == KG_ROLE_PRIMARY) {
		msgf(why, whysz,
		     "the group has a Primary already%s%s%s: add this device as "
		     "Production or Backup, or promote it later",
		     primary->serial[0] ? " (serial " : "", primary->serial,
		     primary->serial[0] ? ")" : "");
		return KG_ADMIT_SECOND_PRIMARY;
	}
	if (dev == NULL || dev->err != KH_OK || dev->facts == NULL) {
		msgf(why, whysz, "the device cannot be reached: %s",
		     dev && dev->msg && dev->msg[0] ? dev->msg
		     : dev                          ? kh_strerror(dev->err)
		                                    : "not probed");
		return KG_ADMIT_UNREACHABLE;
	}
	const struct kg_member_facts *d = dev->facts;
	if (!d->state_ok) {
		msgf(why, whysz,
		     "the device (serial %s) is in its error state (a self-test failed)",
		     d->serial);
		return KG_ADMIT_DEVICE_ERROR;
	}
	if (primary == NULL)
		return KG_ADMIT_OK;
	if (strcmp(primary->model, d->model) != 0) {
		msgf(why, whysz, "model differs: Primary \"%s\", device \"%s\"", primary->model,
		     d->model);
		return KG_ADMIT_MODEL;
	}
	if (strcmp(primary->version, d->version) != 0) {
		msgf(why, whysz, "version differs: Primary %s, device %s", primary->version,
		     d->version);
		return KG_ADMIT_VERSION;
	}
	for (int k = 0; k < KG_MK_COUNT; k++) {
		/* check values are public; no need for a constant-time compare */
		if (strcmp(primary->kcv[k], d->kcv[k]) == 0)
			continue;
		msgf(why, whysz,
		     "%s check value differs: Primary %s, device %s: members must hold the "
		     "same major keys",
		     mk_names[k], primary->kcv[k][0] ? primary->kcv[k] : "(not loaded)",
		     d->kcv[k][0] ? d->kcv[k] : "(not loaded)");
		return KG_ADMIT_MAJOR_KEY;
	}
	if (strcmp(primary->features, d->features) != 0) {
		msgf(why, whysz, "feature set differs: Primary %s, device %s", primary->features,
		     d->features);
		return KG_ADMIT_FEATURES;
	}
	return KG_ADMIT_OK;
}

/* ---- the HSM's server certificate, against the guardian's CA ---- */

static int tcp_connect(const char *host, unsigned port, int timeout_ms)
{
	struct addrinfo hints, *ai = NULL;
	char ps[16];
	int fd = -1;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	snprintf(ps, sizeof(ps), "%u", port);
	if (getaddrinfo(host, ps, &hints, &ai) != 0)
		return -1;
	for (struct addrinfo *a = ai; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd < 0)
			continue;
		struct timeval tv = {.tv_sec = timeout_ms / 1000,
		                     .tv_usec = (timeout_ms % 1000) * 1000};
		(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

static int pass_cb(char *buf, int size, int rwflag, void *u)
{
	(void)rwflag;
	size_t n = u ? strlen(u) : 0;
	if (u == NULL || n >= (size_t)size)
		return -1;
	memcpy(buf, u, n);
	return (int)n;
}

/* The server's certificate on host:port, by a handshake that verifies
 * nothing (only to look at it; nothing is sent over it). The guardian's
 * client certificate is offered so that a mutual-TLS port completes. */
static X509 *fetch_server_cert(const struct kg_member_dev *dev, unsigned port,
                               const struct kg_member_tls *tls)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = NULL;
	X509 *x = NULL;
	int fd = -1;
	if (ctx == NULL)
		goto out;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	(void)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* never a terminal prompt for an encrypted key: the caller's pass or nothing */
	SSL_CTX_set_default_passwd_cb(ctx, pass_cb);
	SSL_CTX_set_default_passwd_cb_userdata(ctx, tls ? (void *)(uintptr_t)tls->pass : NULL);
	if (tls && tls->cert_file && tls->cert_file[0]) {
		/* PEM only here; without it the server's certificate still arrives */
		if (SSL_CTX_use_certificate_chain_file(ctx, tls->cert_file) != 1 ||
		    SSL_CTX_use_PrivateKey_file(ctx, tls->key_file ? tls->key_file : tls->cert_file,
		                                SSL_FILETYPE_PEM) != 1)
			ERR_clear_error();
	}
	if ((fd = tcp_connect(dev_host(dev), port, dev_timeout(dev))) < 0)
		goto out;
	if ((ssl = SSL_new(ctx)) == NULL || SSL_set_fd(ssl, fd) != 1)
		goto out;
	(void)SSL_connect(ssl); /* the certificate arrives even if the server refuses us */
	x = SSL_get1_peer_certificate(ssl);
out:
	ERR_clear_error();
	SSL_free(ssl);
	if (fd >= 0)
		close(fd);
	SSL_CTX_free(ctx);
	return x;
}

/* "RSA", "ECC" or another algorithm's short name, of a key's base id */
static const char *alg_of_nid(int nid)
{
	switch (nid) {
	case EVP_PKEY_RSA:
	case EVP_PKEY_RSA_PSS:
		return "RSA";
	case EVP_PKEY_EC:
		return "ECC";
	case NID_undef:
		return "unknown";
	default:
		return OBJ_nid2sn(nid);
	}
}

/* The key type of the CA that signed x, from x's signature algorithm. */
static const char *issuer_alg(const X509 *x)
{
	int pknid = NID_undef;
	if (OBJ_find_sigid_algs(X509_get_signature_nid(x), NULL, &pknid) != 1)
		pknid = NID_undef;
	return alg_of_nid(pknid);
}

static STACK_OF(X509_INFO) * read_ca_file(const char *path)
{
	BIO *b = path ? BIO_new_file(path, "r") : NULL;
	STACK_OF(X509_INFO) *sk = b ? PEM_X509_INFO_read_bio(b, NULL, NULL, NULL) : NULL;
	BIO_free(b);
	ERR_clear_error();
	return sk;
}

/* Does x chain to a CA of ca_file? *desc says what was found either way. */
static bool ca_tree_check(X509 *x, const char *ca_file, char *desc, size_t descsz)
{
	char subj[200], iss[200], trusted[300] = "";
	STACK_OF(X509_INFO) *cas = read_ca_file(ca_file);
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *vctx = X509_STORE_CTX_new();
	bool ok = false, same_alg = false;
	const char *ialg = issuer_alg(x);
	size_t tn = 0;

	X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof(subj));
	X509_NAME_oneline(X509_get_issuer_name(x), iss, sizeof(iss));
	for (int i = 0; cas && i < sk_X509_INFO_num(cas); i++) {
		X509 *ca = sk_X509_INFO_value(cas, i)->x509;
		if (ca == NULL)
			continue;
		char n[200];
		EVP_PKEY *pk = X509_get0_pubkey(ca);
		const char *a = alg_of_nid(pk ? EVP_PKEY_get_base_id(pk) : NID_undef);
		if (strcmp(a, ialg) == 0)
			same_alg = true;
		X509_NAME_oneline(X509_get_subject_name(ca), n, sizeof(n));
		if (tn < sizeof(trusted))
			tn += (size_t)snprintf(trusted + tn, sizeof(trusted) - tn, "%s\"%s\" (%s)",
			                       tn ? ", " : "", n, a);
		if (store)
			(void)X509_STORE_add_cert(store, ca);
	}
	if (store && vctx && cas && X509_STORE_CTX_init(vctx, store, x, NULL) == 1) {
		/* the tree, not the dates or names: those are the TLS step's */
		X509_STORE_CTX_set_flags(vctx,
		                         X509_V_FLAG_NO_CHECK_TIME | X509_V_FLAG_PARTIAL_CHAIN);
		ok = X509_verify_cert(vctx) == 1;
	}
	ERR_clear_error();
	if (cas == NULL || sk_X509_INFO_num(cas) == 0)
		msgf(desc, descsz, "no CA certificate in the guardian's CA file %s",
		     ca_file ? ca_file : "(none)");
	else if (ok)
		msgf(desc, descsz,
		     "the HSM's server certificate \"%s\" was issued by \"%s\" (%s), "
		     "a CA the guardian trusts",
		     subj, iss, ialg);
	else
		msgf(desc, descsz,
		     "the HSM's server certificate was issued by \"%s\" (%s), which the "
		     "guardian does not trust (it trusts %s): not the same CA tree%s",
		     iss, ialg, trusted,
		     same_alg ? ""
		              : " (one side RSA, the other ECC: both need the same kind of CA)");
	X509_STORE_CTX_free(vctx);
	X509_STORE_free(store);
	sk_X509_INFO_pop_free(cas, X509_INFO_free);
	return ok;
}

/* ---- diagnose ---- */

static bool is_cert_err(int r)
{
	return r == KH_ERR_TLS_CERT_UNKNOWN_CA || r == KH_ERR_TLS_CERT_EXPIRED ||
	       r == KH_ERR_TLS_CERT_REVOKED;
}

static void append(char *msg, size_t msgsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void append(char *msg, size_t msgsz, const char *fmt, ...)
{
	size_t n = strlen(msg);
	va_list ap;
	if (n + 1 >= msgsz)
		return;
	va_start(ap, fmt);
	vsnprintf(msg + n, msgsz - n, fmt, ap);
	va_end(ap);
}

/* TCP then TLS (or clear) on one port, into steps tcp and tcp+1. */
static int diag_port(const struct kg_member_dev *dev, const struct kg_member_tls *tls, bool admin,
                     struct kg_diag *out, int tcp)
{
	bool use_tls = admin || dev->conn != KG_CONN_CLEAR;
	bool with_cert = admin || dev->conn == KG_CONN_TLS;
	SSL_CTX *ctx = NULL;
	struct kh_client *c = client_for(dev, admin, false, NULL, false);
	char *m = out->step[tcp].msg;
	size_t msz = sizeof(out->step[tcp].msg);
	int r;

	if (c == NULL)
		return KH_ERR_NOMEM;
	if ((r = kh_client_connect(c)) != KH_OK) {
		client_msg(dev, c, NULL, m, msz);
		append(m, msz, " (is the %s port enabled on the HSM, and is this its address?)",
		       admin ? "Admin" : "Excrypt");
		out->step[tcp].state = KG_DIAG_FAILED;
		goto out;
	}
	out->step[tcp].state = KG_DIAG_OK;
	msgf(m, msz, "%s %s: TCP connect: ok", dev_host(dev), kh_client_peer(c));
	kh_client_free(c);

	m = out->step[tcp + 1].msg;
	msz = sizeof(out->step[tcp + 1].msg);
	if (use_tls && (r = tls_ctx_get(tls, with_cert, &ctx, m, msz)) != KH_OK) {
		out->step[tcp + 1].state = KG_DIAG_FAILED;
		c = NULL;
		goto out;
	}
	/* the probe ECHO: with TLS 1.3 a refused client certificate shows only then */
	c = client_for(dev, admin, use_tls, ctx, true);
	if (c == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if ((r = kh_client_connect(c)) == KH_OK) {
		out->step[tcp + 1].state = KG_DIAG_OK;
		msgf(m, msz, "%s %s: %s: ok", dev_host(dev), kh_client_peer(c),
		     !use_tls    ? "clear (no TLS, as configured)"
		     : with_cert ? "mutual TLS handshake and ECHO"
		                 : "server-only TLS handshake and ECHO");
		goto out;
	}
	out->step[tcp + 1].state = KG_DIAG_FAILED;
	client_msg(dev, c, NULL, m, msz);
	if (use_tls && is_cert_err(r)) {
		/* say where the certificate came from: the CA-tree question */
		char desc[KG_MEMBER_MSG_MAX];
		X509 *x = fetch_server_cert(dev, dev_port(dev, admin), tls);
		if (x && !ca_tree_check(x, tls ? tls->ca_file : NULL, desc, sizeof(desc)))
			append(m, msz, "; %s", desc);
		X509_free(x);
	} else if (use_tls && (r == KH_ERR_TLS_HANDSHAKE || r == KH_ERR_CLOSED ||
	                       r == KH_ERR_PROTOCOL || r == KH_ERR_TIMEOUT)) {
		/* a port in Clear mode answers a frame without TLS */
		struct kh_client *cl = client_for(dev, admin, false, NULL, true);
		if (cl && kh_client_connect(cl) == KH_OK)
			append(m, msz,
			       "; the port answers in clear: its TLS mode is Clear, the group "
			       "expects TLS");
		kh_client_free(cl);
	} else if (use_tls && r == KH_ERR_TLS_CERT_REQUIRED) {
		append(m, msz, "; the guardian has no client certificate the HSM accepts");
	}
out:
	kh_client_free(c);
	SSL_CTX_free(ctx);
	return r;
}

int kg_member_diagnose(const struct kg_member_dev *dev, const struct kg_member_tls *tls,
                       bool group_enabled, bool device_enabled, struct kg_diag *out)
{
	int r = KH_OK;
	memset(out, 0, sizeof(*out));
	out->failed = -1;
	for (int i = 0; i < KG_DIAG_NSTEPS; i++) {
		out->step[i].state = KG_DIAG_NOT_RUN;
		msgf(out->step[i].msg, sizeof(out->step[i].msg), "not run");
	}

	out->step[KG_DIAG_GROUP_ENABLED].state = group_enabled ? KG_DIAG_OK : KG_DIAG_FAILED;
	msgf(out->step[KG_DIAG_GROUP_ENABLED].msg, KG_MEMBER_MSG_MAX, "%s",
	     group_enabled ? "the device group is enabled" : "the device group is disabled");
	if (!group_enabled) {
		r = KH_ERR_STATE;
		goto done;
	}
	out->step[KG_DIAG_DEVICE_ENABLED].state = device_enabled ? KG_DIAG_OK : KG_DIAG_FAILED;
	msgf(out->step[KG_DIAG_DEVICE_ENABLED].msg, KG_MEMBER_MSG_MAX, "%s",
	     device_enabled ? "the device is enabled" : "the device is disabled");
	if (!device_enabled) {
		r = KH_ERR_STATE;
		goto done;
	}
	if ((r = diag_port(dev, tls, true, out, KG_DIAG_ADMIN_TCP)) != KH_OK)
		goto done;
	if ((r = diag_port(dev, tls, false, out, KG_DIAG_EXCRYPT_TCP)) != KH_OK)
		goto done;

	/* the CA tree: the certificate each TLS port shows, against the CA file
	 * (the handshakes passed, so this mostly reports; with a caller's own
	 * tls_ctx it is the one check of the files) */
	{
		char *m = out->step[KG_DIAG_CA_TREE].msg;
		unsigned ports[2] = {dev_port(dev, true), dev_port(dev, false)};
		int nports = dev->conn == KG_CONN_CLEAR ? 1 : 2;
		out->step[KG_DIAG_CA_TREE].state = KG_DIAG_OK;
		for (int i = 0; i < nports; i++) {
			char desc[KG_MEMBER_MSG_MAX];
			X509 *x = fetch_server_cert(dev, ports[i], tls);
			bool ok =
			    x && ca_tree_check(x, tls ? tls->ca_file : NULL, desc, sizeof(desc));
			if (x == NULL)
				msgf(desc, sizeof(desc), "no server certificate received");
			X509_free(x);
			if (!ok || nports == 1)
				msgf(m, KG_MEMBER_MSG_MAX, "%s port %u (%s): %s", dev_host(dev),
				     ports[i], i == 0 ? "Admin" : "Excrypt", desc);
			else
				msgf(m, KG_MEMBER_MSG_MAX,
				     "%s ports %u (Admin) and %u (Excrypt): %s", dev_host(dev),
				     ports[0], ports[1], desc);
			if (!ok) {
				out->step[KG_DIAG_CA_TREE].state = KG_DIAG_FAILED;
				r = KH_ERR_TLS_CERT_UNKNOWN_CA;
				break;
			}
		}
	}
done:
	for (int i = 0; i < KG_DIAG_NSTEPS; i++) {
		if (out->step[i].state == KG_DIAG_FAILED) {
			out->failed = i;
			break;
		}
	}
	return r;
}

/* ---- ping ---- */

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int kg_member_ping(const struct kg_member_dev *dev, const struct kg_member_tls *tls,
                   const struct kg_member_login *login, double *latency_ms, char *msg, size_t msgsz)
{
	struct kh_client *c = NULL;
	struct kh_buf *req = kh_buf_new(REQ_MAX), *resp = kh_buf_new(RESP_MAX);
	struct kh_frame *f = malloc(sizeof(*f));
	int r;

	*latency_ms = 0;
	msgf(msg, msgsz, "%s", "");
	if (req == NULL || resp == NULL || f == NULL) {
		r = KH_ERR_NOMEM;
		msgf(msg, msgsz, "out of memory");
		goto out;
	}
	if ((r = excrypt_open(dev, tls, login, false, &c, msg, msgsz)) != KH_OK)
		goto out;
	if ((r = kh_msg_begin(req, "ECHO")) != KH_OK ||
	    (r = kh_msg_put(req, "AG", "ping")) != KH_OK || (r = kh_msg_end(req)) != KH_OK)
		goto out;
	double t0 = now_ms();
	r = kh_client_call(c, req, resp, f);
	double t1 = now_ms();
	if (r != KH_OK) {
		client_msg(dev, c, "ECHO", msg, msgsz);
		goto out;
	}
	char ag[8];
	if (get_str(f, "AG", ag, sizeof(ag)) != KH_OK || strcmp(ag, "ping") != 0) {
		r = KH_ERR_PROTOCOL;
		msgf(msg, msgsz, "%s %s: ECHO: the answer does not echo the request", dev_host(dev),
		     kh_client_peer(c));
		goto out;
	}
	*latency_ms = t1 - t0;
out:
	kh_client_free(c);
	kh_buf_free(req);
	kh_buf_free(resp);
	free(f);
	return r;
}
