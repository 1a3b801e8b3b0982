/*
 * The PKCS#11 module's configuration parser: an fxpkcs11.cfg-style tag file
 * read with explicit bounds (the text need not be NUL-terminated, and no
 * str*() ever runs on it). A password goes straight from the text to the
 * secure heap and must never reach an error text: messages name tags, lines
 * and file paths, never a value.
 */
#include "pkcs11/p11_config.h"
#include "common/kh_mem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CFG_FILE_MAX (1024u * 1024u)
#define SLOT_ID_MAX 2147483647ul /* CK_SLOT_ID values an int-minded application keeps */
#define IDENT_LEN_MAX 63         /* the HSM's KH_NAME_MAX less its NUL */
#define HOST_LEN_MAX 253         /* a DNS name; IP literals are shorter */
#define TAG_SHOW_MAX 48          /* longest unknown tag name quoted in an error */
#define PASS_ALLOC (P11_CFG_PASS_MAX + 1)

enum tag_id {
	T_FXPKCS11,
	T_HSM,
	T_LOG_LEVEL,
	T_LOG_FILE,
	T_SLOT,
	T_LABEL,
	T_CRYPTO_OPR,
	T_CRYPTO_OPR_PASS,
	T_CRYPTO_OPR2,
	T_CRYPTO_OPR2_PASS,
	T_SO_OPR,
	T_ADDRESS,
	T_PROD_PORT,
	T_TLS_ENABLED,
	T_TLS_ANONYMOUS,
	T_TLS_CA,
	T_TLS_CERT,
	T_TLS_KEY,
	T_TLS_KEY_PASS,
	T_LOAD_BALANCE,
	T_CONNECT_TIMEOUT,
	T_REQUEST_TIMEOUT,
	T_MAX_CONNECTIONS,
	T_COUNT
};

/* Where an element may stand: the containers themselves, the file's top
 * level (inside <FXPKCS11> or with no outer element), or an <HSM> block. */
enum scope { SC_CONTAINER, SC_TOP, SC_HSM };

struct tag_def {
	const char *name;
	enum scope scope;
	bool repeat; /* may appear more than once in its block */
	bool secret; /* a password: nothing after its '<' is ever quoted */
};

static const struct tag_def tags[T_COUNT] = {
    [T_FXPKCS11] = {"FXPKCS11", SC_CONTAINER, false, false},
    [T_HSM] = {"HSM", SC_CONTAINER, true, false},
    [T_LOG_LEVEL] = {"LOG-LEVEL", SC_TOP, false, false},
    [T_LOG_FILE] = {"LOG-FILE", SC_TOP, false, false},
    [T_SLOT] = {"SLOT", SC_HSM, false, false},
    [T_LABEL] = {"LABEL", SC_HSM, false, false},
    [T_CRYPTO_OPR] = {"CRYPTO-OPR", SC_HSM, false, false},
    [T_CRYPTO_OPR_PASS] = {"CRYPTO-OPR-PASS", SC_HSM, false, true},
    [T_CRYPTO_OPR2] = {"CRYPTO-OPR-2", SC_HSM, false, false},
    [T_CRYPTO_OPR2_PASS] = {"CRYPTO-OPR-2-PASS", SC_HSM, false, true},
    [T_SO_OPR] = {"SO-OPR", SC_HSM, false, false},
    [T_ADDRESS] = {"ADDRESS", SC_HSM, true, false},
    [T_PROD_PORT] = {"PROD-PORT", SC_HSM, false, false},
    [T_TLS_ENABLED] = {"PROD-TLS-ENABLED", SC_HSM, false, false},
    [T_TLS_ANONYMOUS] = {"PROD-TLS-ANONYMOUS", SC_HSM, false, false},
    [T_TLS_CA] = {"PROD-TLS-CA", SC_HSM, false, false},
    [T_TLS_CERT] = {"PROD-TLS-CERT", SC_HSM, false, false},
    [T_TLS_KEY] = {"PROD-TLS-KEY", SC_HSM, false, false},
    [T_TLS_KEY_PASS] = {"PROD-TLS-KEY-PASS", SC_HSM, false, true},
    [T_LOAD_BALANCE] = {"FX-LOAD-BALANCE", SC_HSM, false, false},
    [T_CONNECT_TIMEOUT] = {"CONNECT-TIMEOUT", SC_HSM, false, false},
    [T_REQUEST_TIMEOUT] = {"REQUEST-TIMEOUT", SC_HSM, false, false},
    [T_MAX_CONNECTIONS] = {"MAX-CONNECTIONS", SC_HSM, false, false},
};

/* A leaf element's value: trimmed, inside the text, free of '<' and of
 * control bytes; line is where its opening tag stands. */
struct val {
	const char *p;
	size_t n;
	unsigned line;
};

struct pstate {
	const char *t;
	size_t len, pos;
	unsigned line;
	const char *name;
	struct p11_config *cfg;
	char *err;
	size_t errsz;

	bool any_element; /* an element was seen: <FXPKCS11> and <?xml?> come too late */
	bool decl_seen;
	bool outer_open, outer_done;
	unsigned outer_line;
	bool in_hsm;
	unsigned hsm_line;
	unsigned top_seen[T_COUNT]; /* line of each tag's first use, 0 if none */
	unsigned hsm_seen[T_COUNT]; /* the same for the open <HSM> block */
	unsigned block_line[P11_CFG_MAX_SLOTS];
};

/* ---- errors ---- */

/* Error texts end up in logs and on terminals: keep them one line. */
static void one_line(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			*s = '?';
}

__attribute__((format(printf, 5, 6))) static int fail_rc(struct pstate *ps, int rc, unsigned line,
                                                         const char *tag, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (ps->err == NULL || ps->errsz == 0)
		return rc;
	n = snprintf(ps->err, ps->errsz, "%s:%u: <%s>: ", ps->name, line, tag);
	if (n >= 0 && (size_t)n < ps->errsz) {
		va_start(ap, fmt);
		vsnprintf(ps->err + n, ps->errsz - (size_t)n, fmt, ap);
		va_end(ap);
	}
	one_line(ps->err);
	return rc;
}

#define fail(ps, line, tag, ...) fail_rc((ps), KH_ERR_MALFORMED, (line), (tag), __VA_ARGS__)

static const char *errtext(int e, char *buf, size_t n)
{
	/* GNU strerror_r (_GNU_SOURCE): returns the text, maybe not in buf */
	return strerror_r(e, buf, n);
}

/* ---- bytes ---- */

static bool is_ws(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_namech(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == '.' || c == ':';
}

static bool is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

static unsigned char upper(unsigned char c)
{
	return c >= 'a' && c <= 'z' ? (unsigned char)(c - 'a' + 'A') : c;
}

/* The n bytes at p equal the NUL-terminated word w (case-insensitively if ci). */
static bool bytes_eq(const char *p, size_t n, const char *w, bool ci)
{
	size_t i;
	for (i = 0; i < n; i++) {
		unsigned char a = (unsigned char)p[i], b = (unsigned char)w[i];
		if (b == '\0')
			return false;
		if (ci ? upper(a) != upper(b) : a != b)
			return false;
	}
	return w[i] == '\0';
}

static void advance(struct pstate *ps)
{
	if (ps->t[ps->pos] == '\n')
		ps->line++;
	ps->pos++;
}

static bool at(const struct pstate *ps, const char *w)
{
	size_t n = strlen(w);
	return ps->len - ps->pos >= n && bytes_eq(ps->t + ps->pos, n, w, false);
}

/* A tag name as it may be quoted in an error: name characters only (the
 * scanner guarantees that), shortened if long. */
static void show_name(const char *p, size_t n, char out[static TAG_SHOW_MAX + 4])
{
	size_t k = n > TAG_SHOW_MAX ? TAG_SHOW_MAX : n;
	memcpy(out, p, k);
	if (k < n)
		memcpy(out + k, "...", 4);
	else
		out[k] = '\0';
}

static int lookup(const char *p, size_t n, bool ci)
{
	for (int i = 0; i < T_COUNT; i++)
		if (bytes_eq(p, n, tags[i].name, ci))
			return i;
	return -1;
}

/* The name of the element the parser is in, for errors with no tag of their own. */
static const char *context(const struct pstate *ps)
{
	return ps->in_hsm ? "HSM" : "FXPKCS11";
}

/* ---- values ---- */

static bool get_uint(const struct val *v, uint64_t lo, uint64_t hi, uint64_t *out)
{
	uint64_t x = 0;
	if (v->n == 0 || v->n > 10)
		return false;
	for (size_t i = 0; i < v->n; i++) {
		unsigned char c = (unsigned char)v->p[i];
		if (c < '0' || c > '9')
			return false;
		x = x * 10 + (uint64_t)(c - '0');
	}
	if (x < lo || x > hi)
		return false;
	*out = x;
	return true;
}

static bool get_port(const char *p, size_t n, unsigned *port)
{
	struct val v = {p, n, 0};
	uint64_t x;
	if (!get_uint(&v, 1, 65535, &x))
		return false;
	*port = (unsigned)x;
	return true;
}

static int set_uint(struct pstate *ps, enum tag_id id, const struct val *v, uint64_t lo,
                    uint64_t hi, const char *what, uint64_t *out)
{
	if (!get_uint(v, lo, hi, out))
		return fail(ps, v->line, tags[id].name, "not %s (%llu-%llu)", what,
		            (unsigned long long)lo, (unsigned long long)hi);
	return KH_OK;
}

static int set_yesno(struct pstate *ps, enum tag_id id, const struct val *v, bool *out)
{
	if (bytes_eq(v->p, v->n, "YES", true))
		*out = true;
	else if (bytes_eq(v->p, v->n, "NO", true))
		*out = false;
	else
		return fail(ps, v->line, tags[id].name, "not YES or NO");
	return KH_OK;
}

static int set_text(struct pstate *ps, enum tag_id id, const struct val *v, char *dst, size_t dstsz)
{
	if (v->n >= dstsz)
		return fail(ps, v->line, tags[id].name, "longer than %zu bytes", dstsz - 1);
	memcpy(dst, v->p, v->n);
	dst[v->n] = '\0';
	return KH_OK;
}

static bool utf8_ok(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		size_t k;
		uint32_t cp, min;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			k = 1, cp = c & 0x1fu, min = 0x80;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2, cp = c & 0x0fu, min = 0x800;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3, cp = c & 0x07u, min = 0x10000;
		} else {
			return false;
		}
		if (n - i <= k)
			return false;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + j] & 0x3fu);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += k + 1;
	}
	return true;
}

static int set_label(struct pstate *ps, const struct val *v, char *dst)
{
	if (v->n == 0)
		return fail(ps, v->line, "LABEL", "empty value");
	if (v->n > P11_CFG_LABEL_MAX)
		return fail(ps, v->line, "LABEL", "longer than %d bytes", P11_CFG_LABEL_MAX);
	if (!utf8_ok((const unsigned char *)v->p, v->n))
		return fail(ps, v->line, "LABEL", "not valid UTF-8");
	return set_text(ps, T_LABEL, v, dst, P11_CFG_LABEL_MAX + 1);
}

/* An identity name as the HSM accepts it. */
static int set_ident(struct pstate *ps, enum tag_id id, const struct val *v, char *dst)
{
	if (v->n == 0 || v->n > IDENT_LEN_MAX)
		return fail(ps, v->line, tags[id].name, "not an identity name (1-%d characters)",
		            IDENT_LEN_MAX);
	for (size_t i = 0; i < v->n; i++) {
		unsigned char c = (unsigned char)v->p[i];
		if (!is_namech(c) || c == ':')
			return fail(ps, v->line, tags[id].name,
			            "not an identity name (letters, digits, '_', '.', '-')");
	}
	return set_text(ps, id, v, dst, P11_CFG_NAME_MAX + 1);
}

/* Straight from the text to the secure heap; the error never quotes it. */
static int set_pass(struct pstate *ps, enum tag_id id, const struct val *v, char **dst)
{
	char *p;
	if (v->n > P11_CFG_PASS_MAX)
		return fail(ps, v->line, tags[id].name, "longer than %d bytes", P11_CFG_PASS_MAX);
	if (v->n == 0 && id != T_TLS_KEY_PASS)
		return fail(ps, v->line, tags[id].name, "empty value (leave the tag out instead)");
	p = kh_secure_alloc(PASS_ALLOC);
	if (p == NULL)
		return fail_rc(ps, KH_ERR_NOMEM, v->line, tags[id].name, "out of secure memory");
	for (size_t i = 0; i < v->n; i++)
		p[i] = v->p[i];
	p[v->n] = '\0';
	*dst = p;
	return KH_OK;
}

/* An absolute path; check_file: it must name a readable regular file now. */
static int set_path(struct pstate *ps, enum tag_id id, const struct val *v, char *dst,
                    bool check_file)
{
	const char *tag = tags[id].name;
	char ebuf[128];
	struct stat st;
	int fd, rc;

	if (v->n == 0 || v->p[0] != '/')
		return fail(ps, v->line, tag, "not an absolute path");
	rc = set_text(ps, id, v, dst, P11_CFG_PATH_MAX);
	if (rc != KH_OK || !check_file)
		return rc;
	fd = open(dst, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return fail(ps, v->line, tag, "cannot read %s: %s", dst,
		            errtext(errno, ebuf, sizeof(ebuf)));
	rc = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
	close(fd);
	if (!rc)
		return fail(ps, v->line, tag, "%s is not a regular file", dst);
	return KH_OK;
}

static bool host_ok(const char *p, size_t n)
{
	if (n == 0 || n > HOST_LEN_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_'))
			return false;
	}
	return true;
}

static bool ipv6_ok(const char *p, size_t n, char *out /* INET6_ADDRSTRLEN */)
{
	struct in6_addr a;
	if (n == 0 || n >= INET6_ADDRSTRLEN)
		return false;
	memcpy(out, p, n);
	out[n] = '\0';
	return inet_pton(AF_INET6, out, &a) == 1;
}

/* "host", "host:port", "[v6]", "[v6]:port", or a bare IPv6 literal (no
 * port). A port of 0 means "the block's <PROD-PORT>", filled in at </HSM>. */
static int set_address(struct pstate *ps, const struct val *v, struct p11_slot_cfg *s)
{
	const char *what = "not host, host:port or [IPv6]:port";
	struct p11_addr *a;
	const char *p = v->p;
	size_t n = v->n, colons = 0, last = 0;

	if (s->naddr == P11_CFG_MAX_ADDRS)
		return fail(ps, v->line, "ADDRESS", "more than %d addresses in one <HSM> block",
		            P11_CFG_MAX_ADDRS);
	a = &s->addr[s->naddr];
	a->port = 0;
	if (n > 0 && p[0] == '[') {
		size_t close = 1;
		while (close < n && p[close] != ']')
			close++;
		if (close == n || !ipv6_ok(p + 1, close - 1, a->host))
			return fail(ps, v->line, "ADDRESS", "%s", what);
		if (close + 1 < n) {
			if (p[close + 1] != ':' ||
			    !get_port(p + close + 2, n - close - 2, &a->port))
				return fail(ps, v->line, "ADDRESS", "%s (port 1-65535)", what);
		}
		s->naddr++;
		return KH_OK;
	}
	for (size_t i = 0; i < n; i++)
		if (p[i] == ':')
			colons++, last = i;
	if (colons > 1) {
		if (!ipv6_ok(p, n, a->host))
			return fail(ps, v->line, "ADDRESS", "%s", what);
	} else if (colons == 1) {
		if (!host_ok(p, last))
			return fail(ps, v->line, "ADDRESS", "%s", what);
		if (!get_port(p + last + 1, n - last - 1, &a->port))
			return fail(ps, v->line, "ADDRESS", "%s (port 1-65535)", what);
		memcpy(a->host, p, last);
		a->host[last] = '\0';
	} else {
		if (!host_ok(p, n))
			return fail(ps, v->line, "ADDRESS", "%s", what);
		memcpy(a->host, p, n);
		a->host[n] = '\0';
	}
	s->naddr++;
	return KH_OK;
}

static bool ends_with_ci(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && bytes_eq(s + n - k, k, suffix, true);
}

static int set_value(struct pstate *ps, enum tag_id id, const struct val *v)
{
	struct p11_config *c = ps->cfg;
	struct p11_slot_cfg *s = &c->slots[c->nslots];
	uint64_t u = 0;
	int rc;

	switch (id) {
	case T_LOG_LEVEL: {
		static const char *const names[] = {"NONE", "ERROR", "WARN", "INFO", "DEBUG"};
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
			if (bytes_eq(v->p, v->n, names[i], true)) {
				c->log_level = (enum p11_log_level)i;
				return KH_OK;
			}
		}
		return fail(ps, v->line, "LOG-LEVEL", "not NONE, ERROR, WARN, INFO or DEBUG");
	}
	case T_LOG_FILE:
		if (v->n == 0) {
			c->log_file[0] = '\0';
			return KH_OK;
		}
		return set_path(ps, id, v, c->log_file, false);
	case T_SLOT:
		rc = set_uint(ps, id, v, 0, SLOT_ID_MAX, "a slot number", &u);
		if (rc != KH_OK)
			return rc;
		for (size_t i = 0; i < c->nslots; i++)
			if (c->slots[i].slot_id == (unsigned long)u)
				return fail(
				    ps, v->line, "SLOT",
				    "slot %llu is already used by the <HSM> block on line %u",
				    (unsigned long long)u, ps->block_line[i]);
		s->slot_id = (unsigned long)u;
		return KH_OK;
	case T_LABEL:
		return set_label(ps, v, s->label);
	case T_CRYPTO_OPR:
		return set_ident(ps, id, v, s->crypto_opr);
	case T_CRYPTO_OPR2:
		return set_ident(ps, id, v, s->crypto_opr2);
	case T_SO_OPR:
		return set_ident(ps, id, v, s->so_opr);
	case T_CRYPTO_OPR_PASS:
		return set_pass(ps, id, v, &s->crypto_opr_pass);
	case T_CRYPTO_OPR2_PASS:
		return set_pass(ps, id, v, &s->crypto_opr2_pass);
	case T_TLS_KEY_PASS:
		return set_pass(ps, id, v, &s->key_pass);
	case T_ADDRESS:
		return set_address(ps, v, s);
	case T_PROD_PORT:
		rc = set_uint(ps, id, v, 1, 65535, "a port number", &u);
		s->prod_port = (unsigned)u;
		return rc;
	case T_TLS_ENABLED:
		return set_yesno(ps, id, v, &s->tls);
	case T_TLS_ANONYMOUS:
		return set_yesno(ps, id, v, &s->tls_anonymous);
	case T_LOAD_BALANCE:
		return set_yesno(ps, id, v, &s->load_balance);
	case T_TLS_CA:
		return set_path(ps, id, v, s->ca_file, true);
	case T_TLS_CERT:
		return set_path(ps, id, v, s->cert_file, true);
	case T_TLS_KEY:
		return set_path(ps, id, v, s->key_file, true);
	case T_CONNECT_TIMEOUT:
		rc = set_uint(ps, id, v, 1, 600, "a number of seconds", &u);
		s->connect_timeout_ms = (int)u * 1000;
		return rc;
	case T_REQUEST_TIMEOUT:
		rc = set_uint(ps, id, v, 1, 3600, "a number of seconds", &u);
		s->request_timeout_ms = (int)u * 1000;
		return rc;
	case T_MAX_CONNECTIONS:
		rc = set_uint(ps, id, v, 1, 1024, "a number of connections", &u);
		s->max_connections = (unsigned)u;
		return rc;
	case T_FXPKCS11:
	case T_HSM:
	case T_COUNT:
		break;
	}
	return fail_rc(ps, KH_ERR_INTERNAL, v->line, tags[id].name, "internal error");
}

/* ---- blocks ---- */

static void begin_hsm(struct pstate *ps, unsigned line)
{
	struct p11_slot_cfg *s = &ps->cfg->slots[ps->cfg->nslots];

	memset(s, 0, sizeof(*s));
	memcpy(s->label, "Keyhold", sizeof("Keyhold"));
	s->prod_port = 9100;
	s->tls = true;
	s->tls_anonymous = false;
	s->connect_timeout_ms = 10 * 1000;
	s->request_timeout_ms = 60 * 1000;
	s->max_connections = 64;
	memset(ps->hsm_seen, 0, sizeof(ps->hsm_seen));
	ps->in_hsm = true;
	ps->hsm_line = line;
}

/* The rules that need the whole block; a missing tag is reported on the
 * block's first line. */
static int end_hsm(struct pstate *ps)
{
	struct p11_config *c = ps->cfg;
	struct p11_slot_cfg *s = &c->slots[c->nslots];
	const unsigned *seen = ps->hsm_seen;
	unsigned bl = ps->hsm_line;

	if (!seen[T_SLOT])
		return fail(ps, bl, "SLOT", "missing from the <HSM> block");
	if (!seen[T_CRYPTO_OPR])
		return fail(ps, bl, "CRYPTO-OPR", "missing from the <HSM> block");
	if (!seen[T_ADDRESS])
		return fail(ps, bl, "ADDRESS",
		            "missing from the <HSM> block (at least one is needed)");
	if (seen[T_CRYPTO_OPR2_PASS] && !seen[T_CRYPTO_OPR2])
		return fail(ps, seen[T_CRYPTO_OPR2_PASS], "CRYPTO-OPR-2-PASS",
		            "given without <CRYPTO-OPR-2>");
	if (seen[T_CRYPTO_OPR2] && strcmp(s->crypto_opr2, s->crypto_opr) == 0)
		return fail(ps, seen[T_CRYPTO_OPR2], "CRYPTO-OPR-2",
		            "names the same identity as <CRYPTO-OPR>");
	if (seen[T_TLS_KEY] && !seen[T_TLS_CERT])
		return fail(ps, seen[T_TLS_KEY], "PROD-TLS-KEY", "given without <PROD-TLS-CERT>");
	if (seen[T_TLS_KEY] &&
	    (ends_with_ci(s->cert_file, ".p12") || ends_with_ci(s->cert_file, ".pfx")))
		return fail(ps, seen[T_TLS_KEY], "PROD-TLS-KEY",
		            "not used with a PKCS#12 <PROD-TLS-CERT> (the key is in that file)");
	if (s->tls && !seen[T_TLS_CA])
		return fail(ps, bl, "PROD-TLS-CA", "required when <PROD-TLS-ENABLED> is YES");
	if (s->tls && !s->tls_anonymous && !seen[T_TLS_CERT])
		return fail(ps, bl, "PROD-TLS-CERT",
		            "required when TLS is on and <PROD-TLS-ANONYMOUS> is NO");

	for (size_t i = 0; i < s->naddr; i++)
		if (s->addr[i].port == 0)
			s->addr[i].port = s->prod_port;
	if (!seen[T_LOAD_BALANCE])
		s->load_balance = s->naddr > 1;
	ps->block_line[c->nslots] = bl;
	c->nslots++;
	ps->in_hsm = false;
	return KH_OK;
}

/* ---- syntax ---- */

/* Whitespace, '#' comments (to the end of the line) and <!-- --> comments
 * between elements. */
static int skip_between(struct pstate *ps)
{
	for (;;) {
		while (ps->pos < ps->len && is_ws((unsigned char)ps->t[ps->pos]))
			advance(ps);
		if (ps->pos == ps->len)
			return KH_OK;
		if (ps->t[ps->pos] == '#') {
			while (ps->pos < ps->len && ps->t[ps->pos] != '\n')
				ps->pos++;
		} else if (at(ps, "<!--")) {
			unsigned line = ps->line;
			ps->pos += 4;
			while (ps->pos < ps->len && !at(ps, "-->"))
				advance(ps);
			if (ps->pos == ps->len)
				return fail(ps, line, context(ps), "comment not closed (no -->)");
			ps->pos += 3;
		} else {
			return KH_OK;
		}
	}
}

/* "<?xml ... ?>", only as the first thing in the file. */
static int xml_decl(struct pstate *ps)
{
	unsigned line = ps->line;

	if (!at(ps, "<?xml") || ps->len - ps->pos < 6 ||
	    !(is_ws((unsigned char)ps->t[ps->pos + 5]) || ps->t[ps->pos + 5] == '?'))
		return fail(ps, line, context(ps),
		            "unknown processing instruction (only <?xml ...?>)");
	if (ps->any_element || ps->decl_seen)
		return fail(ps, line, "?xml", "only allowed once, at the start of the file");
	while (ps->pos < ps->len && !at(ps, "?>"))
		advance(ps);
	if (ps->pos == ps->len)
		return fail(ps, line, "?xml", "not closed (no ?>)");
	ps->pos += 2;
	ps->decl_seen = true;
	return KH_OK;
}

/* Reads NAME, blanks, ">" at ps->pos; the name is left in *np and *nn. */
static int tag_name(struct pstate *ps, unsigned line, bool closing, const char **np, size_t *nn)
{
	char show[TAG_SHOW_MAX + 5];
	size_t start = ps->pos;

	while (ps->pos < ps->len && is_namech((unsigned char)ps->t[ps->pos]))
		ps->pos++;
	if (ps->pos == start)
		return fail(ps, line, context(ps), "'<' not followed by a tag name");
	*np = ps->t + start;
	*nn = ps->pos - start;
	show_name(*np, *nn, show + 1);
	show[0] = '/';
	while (ps->pos < ps->len && is_ws((unsigned char)ps->t[ps->pos]))
		advance(ps);
	if (ps->pos == ps->len)
		return fail(ps, line, closing ? show : show + 1, "tag not closed by '>'");
	if (ps->t[ps->pos] == '/' && !closing)
		return fail(ps, line, show + 1, "empty-element tags (<.../>) are not supported");
	if (ps->t[ps->pos] != '>')
		return fail(ps, line, closing ? show : show + 1,
		            "malformed tag (attributes are not supported)");
	ps->pos++;
	return KH_OK;
}

/* After a leaf's value, at '<': its own closing tag. Advances past it and
 * returns true, or returns false with ps->pos unchanged. */
static bool own_close(struct pstate *ps, const char *name)
{
	size_t n = strlen(name), p = ps->pos + 2 + n;
	unsigned lines = 0;

	if (ps->len - ps->pos < n + 3 || ps->t[ps->pos + 1] != '/' ||
	    !bytes_eq(ps->t + ps->pos + 2, n, name, false))
		return false;
	while (p < ps->len && is_ws((unsigned char)ps->t[p]))
		lines += ps->t[p++] == '\n';
	if (p == ps->len || ps->t[p] != '>')
		return false;
	ps->pos = p + 1;
	ps->line += lines;
	return true;
}

static int leaf(struct pstate *ps, enum tag_id id, unsigned line)
{
	const char *name = tags[id].name;
	size_t vs = ps->pos, ve;
	struct val v;

	while (ps->pos < ps->len && ps->t[ps->pos] != '<')
		advance(ps);
	if (ps->pos == ps->len)
		return fail(ps, line, name, "not closed (no </%s>)", name);
	ve = ps->pos;
	if (!own_close(ps, name)) {
		/* Quote what closed it only when that cannot be part of a password. */
		size_t q = ps->pos + 2, qs = q;
		char show[TAG_SHOW_MAX + 4];
		while (q < ps->len && is_namech((unsigned char)ps->t[q]))
			q++;
		if (!tags[id].secret && ps->len - ps->pos > 2 && ps->t[ps->pos + 1] == '/' &&
		    q > qs && q < ps->len && ps->t[q] == '>') {
			show_name(ps->t + qs, q - qs, show);
			return fail(ps, line, name, "closed by </%s> instead of </%s>", show, name);
		}
		return fail(ps, line, name,
		            "no </%s> after the value (a value may not contain '<')", name);
	}
	while (vs < ve && is_ws((unsigned char)ps->t[vs]))
		vs++;
	while (ve > vs && is_ws((unsigned char)ps->t[ve - 1]))
		ve--;
	for (size_t i = vs; i < ve; i++)
		if (is_ctl((unsigned char)ps->t[i]))
			return fail(ps, line, name, "control character in the value");
	v.p = ps->t + vs;
	v.n = ve - vs;
	v.line = line;
	return set_value(ps, id, &v);
}

static int open_tag(struct pstate *ps, unsigned line)
{
	const struct tag_def *d;
	char show[TAG_SHOW_MAX + 4];
	const char *np;
	size_t nn;
	unsigned *seen;
	int id, rc;

	rc = tag_name(ps, line, false, &np, &nn);
	if (rc != KH_OK)
		return rc;
	show_name(np, nn, show);
	id = lookup(np, nn, false);
	if (id < 0) {
		int ci = lookup(np, nn, true);
		if (ci >= 0)
			return fail(ps, line, show, "unknown tag (tags are upper case: <%s>)",
			            tags[ci].name);
		return fail(ps, line, show, "unknown tag");
	}
	d = &tags[id];
	if (ps->outer_done)
		return fail(ps, line, d->name, "after </FXPKCS11> (the end of the file's element)");

	if (id == T_FXPKCS11) {
		if (ps->in_hsm)
			return fail(ps, line, d->name, "not allowed inside <HSM>");
		if (ps->outer_open)
			return fail(ps, line, d->name, "given twice (first on line %u)",
			            ps->outer_line);
		if (ps->any_element)
			return fail(ps, line, d->name,
			            "must enclose the whole file (it comes after other elements)");
		ps->outer_open = true;
		ps->outer_line = line;
		ps->any_element = true;
		return KH_OK;
	}
	ps->any_element = true;
	if (id == T_HSM) {
		if (ps->in_hsm)
			return fail(ps, line, d->name,
			            "blocks cannot nest (the block on line %u is open)",
			            ps->hsm_line);
		if (ps->cfg->nslots == P11_CFG_MAX_SLOTS)
			return fail(ps, line, d->name, "more than %d <HSM> blocks",
			            P11_CFG_MAX_SLOTS);
		begin_hsm(ps, line);
		return KH_OK;
	}
	if (d->scope == SC_HSM && !ps->in_hsm)
		return fail(ps, line, d->name, "only allowed inside <HSM>");
	if (d->scope == SC_TOP && ps->in_hsm)
		return fail(ps, line, d->name, "not allowed inside <HSM> (it applies to the file)");
	seen = ps->in_hsm ? ps->hsm_seen : ps->top_seen;
	if (seen[id] && !d->repeat)
		return fail(ps, line, d->name, "given twice (first on line %u)", seen[id]);
	if (!seen[id])
		seen[id] = line;
	return leaf(ps, (enum tag_id)id, line);
}

static int close_tag(struct pstate *ps, unsigned line)
{
	char show[TAG_SHOW_MAX + 5];
	const char *np;
	size_t nn;
	int rc;

	rc = tag_name(ps, line, true, &np, &nn);
	if (rc != KH_OK)
		return rc;
	show[0] = '/';
	show_name(np, nn, show + 1);
	if (ps->in_hsm) {
		if (!bytes_eq(np, nn, "HSM", false))
			return fail(ps, line, show, "does not close <HSM> (opened on line %u)",
			            ps->hsm_line);
		return end_hsm(ps);
	}
	if (ps->outer_open) {
		if (!bytes_eq(np, nn, "FXPKCS11", false))
			return fail(ps, line, show, "does not close <FXPKCS11> (opened on line %u)",
			            ps->outer_line);
		ps->outer_open = false;
		ps->outer_done = true;
		return KH_OK;
	}
	return fail(ps, line, show, "closes no open element");
}

static int parse_doc(struct pstate *ps)
{
	int rc;

	/* a UTF-8 byte order mark, as some editors write */
	if (at(ps, "\xef\xbb\xbf"))
		ps->pos += 3;
	for (;;) {
		unsigned line;
		rc = skip_between(ps);
		if (rc != KH_OK)
			return rc;
		if (ps->pos == ps->len)
			break;
		line = ps->line;
		if (ps->t[ps->pos] != '<') {
			if (ps->outer_done)
				return fail(ps, line, "/FXPKCS11",
				            "text after the end of the element");
			return fail(ps, line, context(ps), "text outside an element");
		}
		if (at(ps, "<?")) {
			rc = xml_decl(ps);
		} else if (at(ps, "</")) {
			ps->pos += 2;
			rc = close_tag(ps, line);
		} else {
			ps->pos++;
			rc = open_tag(ps, line);
		}
		if (rc != KH_OK)
			return rc;
	}
	if (ps->in_hsm)
		return fail(ps, ps->hsm_line, "HSM", "not closed (no </HSM>)");
	if (ps->outer_open)
		return fail(ps, ps->outer_line, "FXPKCS11", "not closed (no </FXPKCS11>)");
	if (ps->cfg->nslots == 0)
		return fail(ps, 1, "HSM", "no <HSM> block in the file");
	return KH_OK;
}

/* ---- API ---- */

int p11_config_parse(const char *text, size_t len, const char *name, struct p11_config *cfg,
                     char *err, size_t errsz)
{
	struct pstate st, *ps = &st;
	int rc;

	memset(cfg, 0, sizeof(*cfg));
	cfg->log_level = P11_LOG_ERROR;
	if (err && errsz)
		err[0] = '\0';
	if (name == NULL)
		name = "(configuration)";
	memset(ps, 0, sizeof(*ps));
	ps->t = text;
	ps->len = text ? len : 0;
	ps->line = 1;
	ps->name = name;
	ps->cfg = cfg;
	ps->err = err;
	ps->errsz = errsz;

	if (len > CFG_FILE_MAX)
		rc = fail(ps, 1, "FXPKCS11", "the file is larger than 1 MiB (%zu bytes)", len);
	else
		rc = parse_doc(ps);
	if (rc == KH_OK) {
		size_t n = strlen(name);
		if (n >= sizeof(cfg->path))
			n = sizeof(cfg->path) - 1;
		memcpy(cfg->path, name, n);
		cfg->path[n] = '\0';
	} else {
		p11_config_free(cfg);
	}
	return rc;
}

int p11_config_load(const char *path, struct p11_config *cfg, char *err, size_t errsz)
{
	char ebuf[128];
	struct stat st;
	char *buf = NULL;
	size_t got = 0;
	int fd = -1, rc, e = 0;
	const char *what = NULL;

	memset(cfg, 0, sizeof(*cfg));
	if (err && errsz)
		err[0] = '\0';
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		e = errno, what = "cannot open";
		goto fail_io;
	}
	if (fstat(fd, &st) != 0) {
		e = errno, what = "cannot stat";
		goto fail_io;
	}
	if (!S_ISREG(st.st_mode)) {
		what = "not a regular file";
		goto fail_io;
	}
	/* one byte more than allowed, to see a file that is too large */
	buf = malloc(CFG_FILE_MAX + 1);
	if (buf == NULL) {
		rc = KH_ERR_NOMEM;
		if (err && errsz)
			snprintf(err, errsz, "%s: out of memory", path);
		goto out;
	}
	while (got < CFG_FILE_MAX + 1) {
		ssize_t r = read(fd, buf + got, CFG_FILE_MAX + 1 - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			e = errno, what = "cannot read";
			goto fail_io;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	rc = p11_config_parse(buf, got, path, cfg, err, errsz);
	goto out;

fail_io:
	rc = KH_ERR_LOCAL_FILE;
	if (err && errsz) {
		if (e)
			snprintf(err, errsz, "%s: %s: %s", path, what,
			         errtext(e, ebuf, sizeof(ebuf)));
		else
			snprintf(err, errsz, "%s: %s", path, what);
		one_line(err);
	}
out:
	if (buf) {
		kh_wipe(buf, got);
		free(buf);
	}
	if (fd >= 0)
		close(fd);
	return rc;
}

void p11_config_free(struct p11_config *cfg)
{
	if (cfg == NULL)
		return;
	/* every slot, not only nslots: a failed parse may stop inside a block */
	for (size_t i = 0; i < P11_CFG_MAX_SLOTS; i++) {
		struct p11_slot_cfg *s = &cfg->slots[i];
		kh_secure_free(s->crypto_opr_pass, PASS_ALLOC);
		kh_secure_free(s->crypto_opr2_pass, PASS_ALLOC);
		kh_secure_free(s->key_pass, PASS_ALLOC);
	}
	kh_wipe(cfg, sizeof(*cfg));
	memset(cfg, 0, sizeof(*cfg));
}
