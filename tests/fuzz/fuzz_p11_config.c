/*
 * libFuzzer target for the PKCS#11 module's configuration parser: any bytes
 * either parse into a configuration that keeps every documented rule, or
 * fail with one line naming the file and leave nothing behind. A parsed
 * configuration written back as text must parse to the same thing. Any
 * sanitizer report or broken property (abort) is a bug in the parser.
 */
#include "common/kh_err.h"
#include "pkcs11/p11_config.h"

#include "fuzz_check.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME "fuzz.cfg"
#define ERRSZ 512

static void *xcalloc(size_t n)
{
	void *p = calloc(1, n ? n : 1);
	if (p == NULL)
		abort();
	return p;
}

static bool one_line(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			return false;
	return true;
}

static bool bounded(const char *s, size_t sz)
{
	return memchr(s, '\0', sz) != NULL;
}

static void check_empty(const struct p11_config *c)
{
	CHECK(c->nslots == 0);
	for (size_t i = 0; i < P11_CFG_MAX_SLOTS; i++) {
		CHECK(c->slots[i].crypto_opr_pass == NULL);
		CHECK(c->slots[i].crypto_opr2_pass == NULL);
		CHECK(c->slots[i].key_pass == NULL);
	}
}

static void check_pass(const char *p)
{
	if (p == NULL)
		return;
	CHECK(strlen(p) <= P11_CFG_PASS_MAX);
	CHECK(one_line(p) && strchr(p, '<') == NULL);
}

/* Every rule of p11_config.h and docs/PKCS11.md that a parsed file keeps. */
static void check_valid(const struct p11_config *c)
{
	CHECK(c->nslots >= 1 && c->nslots <= P11_CFG_MAX_SLOTS);
	CHECK(c->log_level >= P11_LOG_NONE && c->log_level <= P11_LOG_DEBUG);
	CHECK(bounded(c->log_file, sizeof(c->log_file)));
	CHECK(c->log_file[0] == '\0' || c->log_file[0] == '/');
	CHECK(strcmp(c->path, NAME) == 0);
	for (size_t i = 0; i < c->nslots; i++) {
		const struct p11_slot_cfg *s = &c->slots[i];
		CHECK(s->slot_id <= 2147483647ul);
		for (size_t j = 0; j < i; j++)
			CHECK(c->slots[j].slot_id != s->slot_id);
		CHECK(bounded(s->label, sizeof(s->label)) && s->label[0] != '\0');
		CHECK(one_line(s->label));
		CHECK(bounded(s->crypto_opr, sizeof(s->crypto_opr)));
		CHECK(strlen(s->crypto_opr) >= 1 && strlen(s->crypto_opr) <= 63);
		CHECK(strspn(s->crypto_opr, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
		                            "0123456789_.-") == strlen(s->crypto_opr));
		CHECK(bounded(s->crypto_opr2, sizeof(s->crypto_opr2)));
		CHECK(strcmp(s->crypto_opr2, s->crypto_opr) != 0);
		CHECK(s->crypto_opr2_pass == NULL || s->crypto_opr2[0] != '\0');
		CHECK(bounded(s->so_opr, sizeof(s->so_opr)));
		check_pass(s->crypto_opr_pass);
		check_pass(s->crypto_opr2_pass);
		check_pass(s->key_pass);
		CHECK(s->naddr >= 1 && s->naddr <= P11_CFG_MAX_ADDRS);
		for (size_t a = 0; a < s->naddr; a++) {
			CHECK(bounded(s->addr[a].host, sizeof(s->addr[a].host)));
			CHECK(s->addr[a].host[0] != '\0');
			CHECK(s->addr[a].port >= 1 && s->addr[a].port <= 65535);
		}
		CHECK(s->prod_port >= 1 && s->prod_port <= 65535);
		CHECK(!s->tls || s->ca_file[0] == '/');
		CHECK(!s->tls || s->tls_anonymous || s->cert_file[0] == '/');
		CHECK(s->key_file[0] == '\0' || s->cert_file[0] == '/');
		CHECK(s->connect_timeout_ms >= 1000 && s->connect_timeout_ms <= 600000 &&
		      s->connect_timeout_ms % 1000 == 0);
		CHECK(s->request_timeout_ms >= 1000 && s->request_timeout_ms <= 3600000 &&
		      s->request_timeout_ms % 1000 == 0);
		CHECK(s->max_connections >= 1 && s->max_connections <= 1024);
	}
}

struct out {
	char *p;
	size_t n, cap;
};

__attribute__((format(printf, 2, 3))) static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int k;
	va_start(ap, fmt);
	k = vsnprintf(o->p + o->n, o->cap - o->n, fmt, ap);
	va_end(ap);
	CHECK(k >= 0 && (size_t)k < o->cap - o->n);
	o->n += (size_t)k;
}

static void put_str(struct out *o, const char *tag, const char *v)
{
	if (v && v[0])
		put(o, "<%s>%s</%s>\n", tag, v, tag);
}

static const char *yn(bool b)
{
	return b ? "YES" : "NO";
}

/* The configuration as a file in canonical form (every value explicit). */
static void write_cfg(const struct p11_config *c, struct out *o)
{
	static const char *const lv[] = {"NONE", "ERROR", "WARN", "INFO", "DEBUG"};

	put(o, "<FXPKCS11>\n<LOG-LEVEL>%s</LOG-LEVEL>\n", lv[c->log_level]);
	put_str(o, "LOG-FILE", c->log_file);
	for (size_t i = 0; i < c->nslots; i++) {
		const struct p11_slot_cfg *s = &c->slots[i];
		put(o, "<HSM>\n<SLOT>%lu</SLOT>\n", s->slot_id);
		put_str(o, "LABEL", s->label);
		put_str(o, "CRYPTO-OPR", s->crypto_opr);
		put_str(o, "CRYPTO-OPR-PASS", s->crypto_opr_pass);
		put_str(o, "CRYPTO-OPR-2", s->crypto_opr2);
		put_str(o, "CRYPTO-OPR-2-PASS", s->crypto_opr2_pass);
		put_str(o, "SO-OPR", s->so_opr);
		for (size_t a = 0; a < s->naddr; a++) {
			if (strchr(s->addr[a].host, ':'))
				put(o, "<ADDRESS>[%s]:%u</ADDRESS>\n", s->addr[a].host,
				    s->addr[a].port);
			else
				put(o, "<ADDRESS>%s:%u</ADDRESS>\n", s->addr[a].host,
				    s->addr[a].port);
		}
		put(o, "<PROD-PORT>%u</PROD-PORT>\n", s->prod_port);
		put(o, "<PROD-TLS-ENABLED>%s</PROD-TLS-ENABLED>\n", yn(s->tls));
		put(o, "<PROD-TLS-ANONYMOUS>%s</PROD-TLS-ANONYMOUS>\n", yn(s->tls_anonymous));
		put_str(o, "PROD-TLS-CA", s->ca_file);
		put_str(o, "PROD-TLS-CERT", s->cert_file);
		put_str(o, "PROD-TLS-KEY", s->key_file);
		if (s->key_pass)
			put(o, "<PROD-TLS-KEY-PASS>%s</PROD-TLS-KEY-PASS>\n", s->key_pass);
		put(o, "<FX-LOAD-BALANCE>%s</FX-LOAD-BALANCE>\n", yn(s->load_balance));
		put(o, "<CONNECT-TIMEOUT>%d</CONNECT-TIMEOUT>\n", s->connect_timeout_ms / 1000);
		put(o, "<REQUEST-TIMEOUT>%d</REQUEST-TIMEOUT>\n", s->request_timeout_ms / 1000);
		put(o, "<MAX-CONNECTIONS>%u</MAX-CONNECTIONS>\n</HSM>\n", s->max_connections);
	}
	put(o, "</FXPKCS11>\n");
}

static bool same_pass(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static void check_same(const struct p11_config *x, const struct p11_config *y)
{
	CHECK(x->nslots == y->nslots && x->log_level == y->log_level);
	CHECK(strcmp(x->log_file, y->log_file) == 0);
	for (size_t i = 0; i < x->nslots; i++) {
		const struct p11_slot_cfg *a = &x->slots[i], *b = &y->slots[i];
		CHECK(a->slot_id == b->slot_id);
		CHECK(strcmp(a->label, b->label) == 0);
		CHECK(strcmp(a->crypto_opr, b->crypto_opr) == 0);
		CHECK(strcmp(a->crypto_opr2, b->crypto_opr2) == 0);
		CHECK(strcmp(a->so_opr, b->so_opr) == 0);
		CHECK(same_pass(a->crypto_opr_pass, b->crypto_opr_pass));
		CHECK(same_pass(a->crypto_opr2_pass, b->crypto_opr2_pass));
		CHECK(same_pass(a->key_pass, b->key_pass));
		CHECK(a->naddr == b->naddr);
		for (size_t k = 0; k < a->naddr; k++) {
			CHECK(strcmp(a->addr[k].host, b->addr[k].host) == 0);
			CHECK(a->addr[k].port == b->addr[k].port);
		}
		CHECK(a->prod_port == b->prod_port && a->tls == b->tls);
		CHECK(a->tls_anonymous == b->tls_anonymous && a->load_balance == b->load_balance);
		CHECK(strcmp(a->ca_file, b->ca_file) == 0);
		CHECK(strcmp(a->cert_file, b->cert_file) == 0);
		CHECK(strcmp(a->key_file, b->key_file) == 0);
		CHECK(a->connect_timeout_ms == b->connect_timeout_ms);
		CHECK(a->request_timeout_ms == b->request_timeout_ms);
		CHECK(a->max_connections == b->max_connections);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct p11_config *cfg = xcalloc(sizeof(*cfg)), *again = xcalloc(sizeof(*again));
	char err[ERRSZ], small[16];
	size_t smallsz = size ? 1 + data[0] % sizeof(small) : sizeof(small);
	/* exactly size bytes, so that ASan sees any read past the end */
	int rc = p11_config_parse((const char *)data, size, NAME, cfg, err, sizeof(err));

	CHECK(rc == KH_OK || rc == KH_ERR_MALFORMED || rc == KH_ERR_NOMEM);
	CHECK(bounded(err, sizeof(err)) && one_line(err));
	if (rc != KH_OK) {
		check_empty(cfg);
		CHECK(strncmp(err, NAME ":", strlen(NAME ":")) == 0);
		CHECK(strstr(err, ": <") != NULL && strstr(err, ">: ") != NULL);
	} else {
		struct out o;
		CHECK(err[0] == '\0');
		check_valid(cfg);
		o.cap = 256 * 1024;
		o.n = 0;
		o.p = xcalloc(o.cap);
		write_cfg(cfg, &o);
		CHECK(p11_config_parse(o.p, o.n, NAME, again, err, sizeof(err)) == KH_OK);
		check_same(cfg, again);
		p11_config_free(again);
		free(o.p);
	}

	/* the same verdict with an error buffer too small for the message */
	CHECK(p11_config_parse((const char *)data, size, NAME, again, small, smallsz) == rc);
	CHECK(bounded(small, smallsz));
	p11_config_free(again);

	p11_config_free(cfg);
	check_empty(cfg);
	free(again);
	free(cfg);
	return 0;
}
