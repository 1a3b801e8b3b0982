/* The PKCS#11 module's configuration file: every tag, defaults, several
 * blocks, address forms, each error with its exact "file:line: <TAG>:"
 * text, passwords on the secure heap and out of errors, and the logger the
 * file configures. Files the parser must find are made in a temp dir. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/kh_mem.h"
#include "pkcs11/p11_config.h"
#include "pkcs11/p11_log.h"

#include <openssl/crypto.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define ERRSZ 512

static char dir[256];

static void write_file(const char *name, const char *text)
{
	char path[512];
	FILE *f;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

static int group_setup(void **state)
{
	char sub[300];
	(void)state;
	/* a secure heap, so that the tests can see passwords land on it */
	if (kh_mem_init(64 * 1024) != 0)
		return -1;
	snprintf(dir, sizeof(dir), "%s/kh-p11cfg-XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(dir) == NULL)
		return -1;
	write_file("ca.pem", "-----BEGIN CERTIFICATE-----\n");
	write_file("client.pem", "-----BEGIN CERTIFICATE-----\n");
	write_file("client.key", "-----BEGIN PRIVATE KEY-----\n");
	write_file("client.p12", "0");
	snprintf(sub, sizeof(sub), "%s/sub", dir);
	return mkdir(sub, 0700);
}

static int group_teardown(void **state)
{
	char cmd[300];
	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* printf into a new string (the tests free it). */
__attribute__((format(printf, 1, 2))) static char *textf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, fmt);
	assert_true(vasprintf(&s, fmt, ap) >= 0);
	va_end(ap);
	return s;
}

static int parse(const char *text, struct p11_config *cfg, char *err)
{
	return p11_config_parse(text, strlen(text), "t.cfg", cfg, err, ERRSZ);
}

/* A failed parse leaves nothing behind. */
static void assert_empty(const struct p11_config *cfg)
{
	assert_int_equal(cfg->nslots, 0);
	for (size_t i = 0; i < P11_CFG_MAX_SLOTS; i++) {
		assert_null(cfg->slots[i].crypto_opr_pass);
		assert_null(cfg->slots[i].crypto_opr2_pass);
		assert_null(cfg->slots[i].key_pass);
	}
}

static void expect_error(const char *text, size_t len, const char *want)
{
	struct p11_config *cfg = calloc(1, sizeof(*cfg));
	char err[ERRSZ];
	int rc;

	assert_non_null(cfg);
	rc = p11_config_parse(text, len, "t.cfg", cfg, err, sizeof(err));
	if (rc != KH_ERR_MALFORMED || strcmp(err, want) != 0)
		fail_msg("for\n%s\nwanted %s\n   got %s (%d)", text, want, err, rc);
	assert_null(strchr(err, '\n'));
	assert_null(strstr(err, "Pw-")); /* the tests' passwords all start so */
	assert_empty(cfg);
	free(cfg);
}

#define EXPECT_ERROR(text, want) expect_error((text), strlen(text), (want))

/* A block that needs no files: TLS off. Six lines. */
#define MIN_HSM                                                                                    \
	"<HSM>\n<SLOT>1</SLOT>\n<CRYPTO-OPR>u</CRYPTO-OPR>\n<ADDRESS>h</ADDRESS>\n"                \
	"<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED>\n</HSM>\n"

static void test_full_valid(void **state)
{
	struct p11_config *cfg = calloc(1, sizeof(*cfg));
	char err[ERRSZ], path[512];
	const struct p11_slot_cfg *s;
	char *text;
	(void)state;

	assert_non_null(cfg);
	text = textf("# Keyhold PKCS#11 configuration\n"
	             "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	             "<FXPKCS11>\n"
	             "  <LOG-LEVEL> debug </LOG-LEVEL>\n"
	             "  <LOG-FILE> %s/p11.log </LOG-FILE>\n"
	             "  <!-- the one production HSM -->\n"
	             "  <HSM>\n"
	             "    <SLOT> 7 </SLOT>\n"
	             "    <LABEL> Payments HSM </LABEL>\n"
	             "    <CRYPTO-OPR> pkcs11user </CRYPTO-OPR>\n"
	             "    <CRYPTO-OPR-PASS> s3cret pass </CRYPTO-OPR-PASS>\n"
	             "    <CRYPTO-OPR-2> second.user </CRYPTO-OPR-2>\n"
	             "    <CRYPTO-OPR-2-PASS>other-secret</CRYPTO-OPR-2-PASS>\n"
	             "    <SO-OPR> Admin_1 </SO-OPR>\n"
	             "    <ADDRESS> 127.0.0.1 </ADDRESS>\n"
	             "    <ADDRESS> hsm-b.example.com:9200 </ADDRESS>\n"
	             "    <PROD-PORT> 9101 </PROD-PORT>\n"
	             "    <PROD-TLS-ENABLED> Yes </PROD-TLS-ENABLED>\n"
	             "    <PROD-TLS-ANONYMOUS> no </PROD-TLS-ANONYMOUS>\n"
	             "    <PROD-TLS-CA> %s/ca.pem </PROD-TLS-CA>\n"
	             "    <PROD-TLS-CERT> %s/client.pem </PROD-TLS-CERT>\n"
	             "    <PROD-TLS-KEY> %s/client.key </PROD-TLS-KEY>\n"
	             "    <PROD-TLS-KEY-PASS> key pass </PROD-TLS-KEY-PASS>\n"
	             "    <FX-LOAD-BALANCE> NO </FX-LOAD-BALANCE>\n"
	             "    <CONNECT-TIMEOUT> 5 </CONNECT-TIMEOUT>\n"
	             "    <REQUEST-TIMEOUT> 3600 </REQUEST-TIMEOUT>\n"
	             "    <MAX-CONNECTIONS> 1024 </MAX-CONNECTIONS>\n"
	             "  </HSM>\n"
	             "</FXPKCS11>\n"
	             "# end\n",
	             dir, dir, dir, dir);
	assert_int_equal(
	    p11_config_parse(text, strlen(text), "/etc/fxpkcs11.cfg", cfg, err, sizeof(err)),
	    KH_OK);
	assert_string_equal(err, "");
	assert_string_equal(cfg->path, "/etc/fxpkcs11.cfg");
	assert_int_equal(cfg->log_level, P11_LOG_DEBUG);
	snprintf(path, sizeof(path), "%s/p11.log", dir);
	assert_string_equal(cfg->log_file, path);
	assert_int_equal(cfg->nslots, 1);
	s = &cfg->slots[0];
	assert_int_equal(s->slot_id, 7);
	assert_string_equal(s->label, "Payments HSM");
	assert_string_equal(s->crypto_opr, "pkcs11user");
	assert_string_equal(s->crypto_opr_pass, "s3cret pass");
	assert_string_equal(s->crypto_opr2, "second.user");
	assert_string_equal(s->crypto_opr2_pass, "other-secret");
	assert_string_equal(s->so_opr, "Admin_1");
	assert_int_equal(s->naddr, 2);
	assert_string_equal(s->addr[0].host, "127.0.0.1");
	assert_int_equal(s->addr[0].port, 9101); /* from <PROD-PORT>, given after it */
	assert_string_equal(s->addr[1].host, "hsm-b.example.com");
	assert_int_equal(s->addr[1].port, 9200);
	assert_int_equal(s->prod_port, 9101);
	assert_true(s->tls);
	assert_false(s->tls_anonymous);
	snprintf(path, sizeof(path), "%s/ca.pem", dir);
	assert_string_equal(s->ca_file, path);
	snprintf(path, sizeof(path), "%s/client.pem", dir);
	assert_string_equal(s->cert_file, path);
	snprintf(path, sizeof(path), "%s/client.key", dir);
	assert_string_equal(s->key_file, path);
	assert_string_equal(s->key_pass, "key pass");
	assert_false(s->load_balance);
	assert_int_equal(s->connect_timeout_ms, 5000);
	assert_int_equal(s->request_timeout_ms, 3600000);
	assert_int_equal(s->max_connections, 1024);
	p11_config_free(cfg);
	assert_empty(cfg);
	free(text);
	free(cfg);
}

static void test_defaults(void **state)
{
	struct p11_config *cfg = calloc(1, sizeof(*cfg));
	char err[ERRSZ];
	const struct p11_slot_cfg *s;
	char *text;
	(void)state;

	assert_non_null(cfg);
	text =
	    textf("<HSM><SLOT>0</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>hsm</ADDRESS>"
	          "<PROD-TLS-CA>%s/ca.pem</PROD-TLS-CA><PROD-TLS-CERT>%s/client.p12</PROD-TLS-CERT>"
	          "</HSM>",
	          dir, dir);
	assert_int_equal(parse(text, cfg, err), KH_OK);
	assert_int_equal(cfg->log_level, P11_LOG_ERROR);
	assert_string_equal(cfg->log_file, "");
	assert_string_equal(cfg->path, "t.cfg");
	assert_int_equal(cfg->nslots, 1);
	s = &cfg->slots[0];
	assert_int_equal(s->slot_id, 0);
	assert_string_equal(s->label, "Keyhold");
	assert_null(s->crypto_opr_pass);
	assert_string_equal(s->crypto_opr2, "");
	assert_null(s->crypto_opr2_pass);
	assert_string_equal(s->so_opr, "");
	assert_int_equal(s->naddr, 1);
	assert_int_equal(s->addr[0].port, 9100);
	assert_int_equal(s->prod_port, 9100);
	assert_true(s->tls);
	assert_false(s->tls_anonymous);
	assert_string_equal(s->key_file, ""); /* the key is in the PKCS#12 file */
	assert_null(s->key_pass);
	assert_false(s->load_balance); /* one address */
	assert_int_equal(s->connect_timeout_ms, 10000);
	assert_int_equal(s->request_timeout_ms, 60000);
	assert_int_equal(s->max_connections, 64);
	p11_config_free(cfg);
	free(text);

	/* anonymous TLS needs the CA only; two addresses balance by default */
	text = textf("<HSM>\n<SLOT>2147483647</SLOT>\n<CRYPTO-OPR>u</CRYPTO-OPR>\n"
	             "<ADDRESS>a</ADDRESS><ADDRESS>b</ADDRESS>\n"
	             "<PROD-TLS-ANONYMOUS>YES</PROD-TLS-ANONYMOUS>\n"
	             "<PROD-TLS-CA>%s/ca.pem</PROD-TLS-CA>\n</HSM>\n",
	             dir);
	assert_int_equal(parse(text, cfg, err), KH_OK);
	assert_int_equal(cfg->slots[0].slot_id, 2147483647ul);
	assert_true(cfg->slots[0].tls_anonymous);
	assert_true(cfg->slots[0].load_balance);
	assert_string_equal(cfg->slots[0].cert_file, "");
	p11_config_free(cfg);
	free(text);
	free(cfg);
}

static void test_two_blocks(void **state)
{
	struct p11_config *cfg = calloc(1, sizeof(*cfg));
	char err[ERRSZ];
	/* no outer element, several elements on a line, values over lines, CRLF,
	 * a byte order mark, a label of exactly 32 bytes with UTF-8 in it,
	 * blanks inside closing tags, an empty <LOG-FILE> */
	const char *text =
	    "\xef\xbb\xbf<LOG-LEVEL>NONE</LOG-LEVEL><LOG-FILE></LOG-FILE>\r\n"
	    "<HSM> <SLOT>1</SLOT> <CRYPTO-OPR>alice</CRYPTO-OPR>\r\n"
	    "  <ADDRESS>10.0.0.1</ADDRESS> <PROD-TLS-ENABLED>no</PROD-TLS-ENABLED>\r\n"
	    "  <LABEL>\n   0123456789012345678901234567\xc3\xa9\xc3\xa9\n  </LABEL>\r\n"
	    "</HSM>\r\n"
	    "# the second slot\n"
	    "<HSM><SLOT>2</SLOT \n><CRYPTO-OPR>bob</CRYPTO-OPR\t><ADDRESS>10.0.0.2:9300</ADDRESS>"
	    "<LABEL>key \xf0\x9f\x94\x91</LABEL>"
	    "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED><FX-LOAD-BALANCE>yes</FX-LOAD-BALANCE>"
	    "<CRYPTO-OPR-PASS>b0b</CRYPTO-OPR-PASS></HSM>";
	(void)state;

	assert_non_null(cfg);
	assert_int_equal(parse(text, cfg, err), KH_OK);
	assert_int_equal(cfg->log_level, P11_LOG_NONE);
	assert_int_equal(cfg->nslots, 2);
	assert_int_equal(cfg->slots[0].slot_id, 1);
	assert_string_equal(cfg->slots[0].crypto_opr, "alice");
	assert_string_equal(cfg->slots[0].label, "0123456789012345678901234567\xc3\xa9\xc3\xa9");
	assert_false(cfg->slots[0].tls);
	assert_null(cfg->slots[0].crypto_opr_pass);
	assert_int_equal(cfg->slots[1].slot_id, 2);
	assert_string_equal(cfg->slots[1].crypto_opr, "bob");
	assert_string_equal(cfg->slots[1].label, "key \xf0\x9f\x94\x91");
	assert_string_equal(cfg->slots[1].addr[0].host, "10.0.0.2");
	assert_int_equal(cfg->slots[1].addr[0].port, 9300);
	assert_true(cfg->slots[1].load_balance); /* explicit, with one address */
	assert_string_equal(cfg->slots[1].crypto_opr_pass, "b0b");
	p11_config_free(cfg);

	/* sixteen blocks is the limit */
	{
		char *big = calloc(1, 16 * 256), *p = big;
		for (int i = 0; i < 16; i++)
			p += sprintf(
			    p,
			    "<HSM><SLOT>%d</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>"
			    "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED></HSM>\n",
			    i);
		assert_int_equal(parse(big, cfg, err), KH_OK);
		assert_int_equal(cfg->nslots, 16);
		p11_config_free(cfg);
		free(big);
	}
	free(cfg);
}

static void test_address_forms(void **state)
{
	struct p11_config *cfg = calloc(1, sizeof(*cfg));
	char err[ERRSZ];
	const struct p11_slot_cfg *s;
	const char *text = "<HSM><SLOT>1</SLOT><CRYPTO-OPR>u</CRYPTO-OPR>\n"
	                   "<ADDRESS>hsm1</ADDRESS>\n"
	                   "<ADDRESS>hsm1.example.com:1</ADDRESS>\n"
	                   "<ADDRESS>192.0.2.7:65535</ADDRESS>\n"
	                   "<ADDRESS>[2001:db8::1]:9443</ADDRESS>\n"
	                   "<ADDRESS>[::1]</ADDRESS>\n"
	                   "<ADDRESS>fe80::2</ADDRESS>\n"
	                   "<ADDRESS>::ffff:192.0.2.1</ADDRESS>\n"
	                   "<ADDRESS>under_score-host</ADDRESS>\n"
	                   "<PROD-PORT>9555</PROD-PORT>\n"
	                   "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED></HSM>\n";
	(void)state;

	assert_non_null(cfg);
	assert_int_equal(parse(text, cfg, err), KH_OK);
	s = &cfg->slots[0];
	assert_int_equal(s->naddr, 8);
	assert_string_equal(s->addr[0].host, "hsm1");
	assert_int_equal(s->addr[0].port, 9555);
	assert_string_equal(s->addr[1].host, "hsm1.example.com");
	assert_int_equal(s->addr[1].port, 1);
	assert_string_equal(s->addr[2].host, "192.0.2.7");
	assert_int_equal(s->addr[2].port, 65535);
	assert_string_equal(s->addr[3].host, "2001:db8::1");
	assert_int_equal(s->addr[3].port, 9443);
	assert_string_equal(s->addr[4].host, "::1");
	assert_int_equal(s->addr[4].port, 9555);
	assert_string_equal(s->addr[5].host, "fe80::2");
	assert_int_equal(s->addr[5].port, 9555);
	assert_string_equal(s->addr[6].host, "::ffff:192.0.2.1");
	assert_string_equal(s->addr[7].host, "under_score-host");
	assert_true(s->load_balance);
	p11_config_free(cfg);
	free(cfg);

	const struct {
		const char *addr, *want;
	} bad[] = {
	    {"", "not host, host:port or [IPv6]:port"},
	    {"[::1", "not host, host:port or [IPv6]:port"},
	    {"[zz]:1", "not host, host:port or [IPv6]:port"},
	    {"[]", "not host, host:port or [IPv6]:port"},
	    {"[::1]x", "not host, host:port or [IPv6]:port (port 1-65535)"},
	    {"[::1]:", "not host, host:port or [IPv6]:port (port 1-65535)"},
	    {"[::1]:70000", "not host, host:port or [IPv6]:port (port 1-65535)"},
	    {"h:0", "not host, host:port or [IPv6]:port (port 1-65535)"},
	    {"h:65536", "not host, host:port or [IPv6]:port (port 1-65535)"},
	    {"h:", "not host, host:port or [IPv6]:port (port 1-65535)"},
	    {"h:+1", "not host, host:port or [IPv6]:port (port 1-65535)"},
	    {":9100", "not host, host:port or [IPv6]:port"},
	    {"a:b:c", "not host, host:port or [IPv6]:port"},
	    {"fe80::1%eth0", "not host, host:port or [IPv6]:port"},
	    {"bad host", "not host, host:port or [IPv6]:port"},
	    {"h/x", "not host, host:port or [IPv6]:port"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *t =
		    textf("<HSM>\n<SLOT>1</SLOT>\n<ADDRESS>%s</ADDRESS>\n</HSM>\n", bad[i].addr);
		char *w = textf("t.cfg:3: <ADDRESS>: %s", bad[i].want);
		EXPECT_ERROR(t, w);
		free(w);
		free(t);
	}
	/* a host name of 254 bytes */
	{
		char host[255], *t;
		memset(host, 'a', 254);
		host[254] = '\0';
		t = textf("<HSM><ADDRESS>%s</ADDRESS></HSM>", host);
		EXPECT_ERROR(t, "t.cfg:1: <ADDRESS>: not host, host:port or [IPv6]:port");
		free(t);
	}
	EXPECT_ERROR("<HSM>\n<ADDRESS>1</ADDRESS><ADDRESS>2</ADDRESS><ADDRESS>3</ADDRESS>"
	             "<ADDRESS>4</ADDRESS><ADDRESS>5</ADDRESS><ADDRESS>6</ADDRESS>"
	             "<ADDRESS>7</ADDRESS><ADDRESS>8</ADDRESS>\n<ADDRESS>9</ADDRESS>\n</HSM>\n",
	             "t.cfg:3: <ADDRESS>: more than 8 addresses in one <HSM> block");
}

/* One tag's value in an otherwise valid block (tag on line 2). */
static void expect_value_error(const char *tag, const char *value, const char *want)
{
	char *t = textf("<HSM>\n<%s>%s</%s>\n<SLOT>9</SLOT><CRYPTO-OPR>u</CRYPTO-OPR>"
	                "<ADDRESS>h</ADDRESS></HSM>\n",
	                tag, value, tag);
	char *w = textf("t.cfg:2: <%s>: %s", tag, want);
	/* the SLOT case repeats it: use the value's own line */
	EXPECT_ERROR(t, w);
	free(w);
	free(t);
}

static void test_value_errors(void **state)
{
	(void)state;
	expect_value_error("LABEL", "", "empty value");
	expect_value_error("LABEL", "012345678901234567890123456789012", "longer than 32 bytes");
	expect_value_error("LABEL", "0123456789012345678901234567890\xc3\xa9",
	                   "longer than 32 bytes");
	expect_value_error("LABEL", "bad \xff utf8", "not valid UTF-8");
	expect_value_error("LABEL", "surrogate \xed\xa0\x80", "not valid UTF-8");
	expect_value_error("LABEL", "too high \xf4\x90\x80\x80", "not valid UTF-8");
	expect_value_error("LABEL", "bad tail \xf0\x9f\x94\x41", "not valid UTF-8");
	expect_value_error("LABEL", "overlong \xc0\xaf", "not valid UTF-8");
	expect_value_error("LABEL", "cut \xe2\x82", "not valid UTF-8");
	expect_value_error("LABEL", "a\x01z", "control character in the value");
	expect_value_error("LABEL", "two\nlines", "control character in the value");
	expect_value_error("LABEL", "tab\there", "control character in the value");
	expect_value_error("LABEL", "del\x7f", "control character in the value");
	expect_value_error("PROD-PORT", "0", "not a port number (1-65535)");
	expect_value_error("PROD-PORT", "65536", "not a port number (1-65535)");
	expect_value_error("PROD-PORT", "", "not a port number (1-65535)");
	expect_value_error("PROD-PORT", "-1", "not a port number (1-65535)");
	expect_value_error("PROD-PORT", "9 100", "not a port number (1-65535)");
	expect_value_error("PROD-PORT", "0x10", "not a port number (1-65535)");
	expect_value_error("PROD-PORT", "99999999999999999999", "not a port number (1-65535)");
	expect_value_error("PROD-TLS-ENABLED", "maybe", "not YES or NO");
	expect_value_error("PROD-TLS-ENABLED", "TRUE", "not YES or NO");
	expect_value_error("PROD-TLS-ANONYMOUS", "1", "not YES or NO");
	expect_value_error("FX-LOAD-BALANCE", "YESS", "not YES or NO");
	expect_value_error("FX-LOAD-BALANCE", "", "not YES or NO");
	expect_value_error("CONNECT-TIMEOUT", "0", "not a number of seconds (1-600)");
	expect_value_error("CONNECT-TIMEOUT", "601", "not a number of seconds (1-600)");
	expect_value_error("REQUEST-TIMEOUT", "3601", "not a number of seconds (1-3600)");
	expect_value_error("REQUEST-TIMEOUT", "0", "not a number of seconds (1-3600)");
	expect_value_error("MAX-CONNECTIONS", "0", "not a number of connections (1-1024)");
	expect_value_error("MAX-CONNECTIONS", "1025", "not a number of connections (1-1024)");
	expect_value_error("CRYPTO-OPR-2", "a b",
	                   "not an identity name (letters, digits, '_', '.', '-')");
	expect_value_error("SO-OPR", "a:b",
	                   "not an identity name (letters, digits, '_', '.', '-')");
	expect_value_error("SO-OPR", "", "not an identity name (1-63 characters)");
	expect_value_error("SO-OPR",
	                   "0123456789012345678901234567890123456789012345678901234567890123",
	                   "not an identity name (1-63 characters)");
	expect_value_error("PROD-TLS-CA", "relative/ca.pem", "not an absolute path");
	expect_value_error("PROD-TLS-CERT", "", "not an absolute path");

	/* slot numbers, with <SLOT> on line 2 */
	const char *slots[] = {"2147483648", "-1", "1x", "", "99999999999", "4294967296"};
	for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
		char *t = textf("<HSM>\n<SLOT>%s</SLOT>\n</HSM>\n", slots[i]);
		EXPECT_ERROR(t, "t.cfg:2: <SLOT>: not a slot number (0-2147483647)");
		free(t);
	}
	EXPECT_ERROR("<LOG-LEVEL>LOUD</LOG-LEVEL>\n" MIN_HSM,
	             "t.cfg:1: <LOG-LEVEL>: not NONE, ERROR, WARN, INFO or DEBUG");
	EXPECT_ERROR("<LOG-LEVEL>WARNING</LOG-LEVEL>\n" MIN_HSM,
	             "t.cfg:1: <LOG-LEVEL>: not NONE, ERROR, WARN, INFO or DEBUG");
	EXPECT_ERROR("\n<LOG-FILE>p11.log</LOG-FILE>\n" MIN_HSM,
	             "t.cfg:2: <LOG-FILE>: not an absolute path");
	{
		char path[1100], *t;
		path[0] = '/';
		memset(path + 1, 'a', 1023);
		path[1024] = '\0';
		t = textf("<LOG-FILE>%s</LOG-FILE>\n" MIN_HSM, path);
		EXPECT_ERROR(t, "t.cfg:1: <LOG-FILE>: longer than 1023 bytes");
		free(t);
	}
}

static void test_block_rules(void **state)
{
	char *t, *w;
	(void)state;
	EXPECT_ERROR("", "t.cfg:1: <HSM>: no <HSM> block in the file");
	EXPECT_ERROR("# only a comment\n<FXPKCS11>\n</FXPKCS11>\n",
	             "t.cfg:1: <HSM>: no <HSM> block in the file");
	EXPECT_ERROR("<LOG-LEVEL>INFO</LOG-LEVEL>\n", "t.cfg:1: <HSM>: no <HSM> block in the file");
	EXPECT_ERROR(MIN_HSM "\n<HSM>\n<CRYPTO-OPR>u</CRYPTO-OPR>\n<ADDRESS>h</ADDRESS>\n</HSM>\n",
	             "t.cfg:8: <SLOT>: missing from the <HSM> block");
	EXPECT_ERROR("\n<HSM>\n<SLOT>1</SLOT>\n<ADDRESS>h</ADDRESS>\n</HSM>\n",
	             "t.cfg:2: <CRYPTO-OPR>: missing from the <HSM> block");
	EXPECT_ERROR("\n\n<HSM>\n<SLOT>1</SLOT>\n<CRYPTO-OPR>u</CRYPTO-OPR>\n</HSM>\n",
	             "t.cfg:3: <ADDRESS>: missing from the <HSM> block (at least one is needed)");
	EXPECT_ERROR(
	    "<HSM>\n<SLOT>1</SLOT>\n<CRYPTO-OPR>u</CRYPTO-OPR>\n<ADDRESS>h</ADDRESS>\n</HSM>\n",
	    "t.cfg:1: <PROD-TLS-CA>: required when <PROD-TLS-ENABLED> is YES");
	EXPECT_ERROR(MIN_HSM MIN_HSM,
	             "t.cfg:8: <SLOT>: slot 1 is already used by the <HSM> block on line 1");
	EXPECT_ERROR("<HSM>\n<SLOT>1</SLOT>\n<CRYPTO-OPR>u</CRYPTO-OPR>\n<ADDRESS>h</ADDRESS>\n"
	             "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED>\n"
	             "<CRYPTO-OPR-2-PASS>x</CRYPTO-OPR-2-PASS>\n</HSM>\n",
	             "t.cfg:6: <CRYPTO-OPR-2-PASS>: given without <CRYPTO-OPR-2>");
	EXPECT_ERROR(
	    "<HSM>\n<SLOT>1</SLOT>\n<CRYPTO-OPR>u</CRYPTO-OPR>\n<ADDRESS>h</ADDRESS>\n"
	    "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED>\n<CRYPTO-OPR-2>u</CRYPTO-OPR-2>\n</HSM>\n",
	    "t.cfg:6: <CRYPTO-OPR-2>: names the same identity as <CRYPTO-OPR>");

	/* seventeen blocks */
	{
		char *big = calloc(1, 17 * 256), *p = big;
		for (int i = 0; i < 17; i++)
			p += sprintf(
			    p,
			    "<HSM><SLOT>%d</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>"
			    "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED></HSM>\n",
			    i);
		EXPECT_ERROR(big, "t.cfg:17: <HSM>: more than 16 <HSM> blocks");
		free(big);
	}

	/* TLS without a client certificate */
	t = textf("<HSM>\n<SLOT>1</SLOT>\n<CRYPTO-OPR>u</CRYPTO-OPR>\n<ADDRESS>h</ADDRESS>\n"
	          "<PROD-TLS-CA>%s/ca.pem</PROD-TLS-CA>\n</HSM>\n",
	          dir);
	EXPECT_ERROR(t, "t.cfg:1: <PROD-TLS-CERT>: required when TLS is on and "
	                "<PROD-TLS-ANONYMOUS> is NO");
	free(t);
	/* a key without a certificate, and with a PKCS#12 one */
	t = textf(
	    "<HSM><SLOT>1</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>\n"
	    "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED>\n<PROD-TLS-KEY>%s/client.key</PROD-TLS-KEY>\n"
	    "</HSM>\n",
	    dir);
	EXPECT_ERROR(t, "t.cfg:3: <PROD-TLS-KEY>: given without <PROD-TLS-CERT>");
	free(t);
	t = textf(
	    "<HSM><SLOT>1</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>\n"
	    "<PROD-TLS-CA>%s/ca.pem</PROD-TLS-CA><PROD-TLS-CERT>%s/client.p12</PROD-TLS-CERT>\n"
	    "<PROD-TLS-KEY>%s/client.key</PROD-TLS-KEY>\n</HSM>\n",
	    dir, dir, dir);
	EXPECT_ERROR(t, "t.cfg:3: <PROD-TLS-KEY>: not used with a PKCS#12 <PROD-TLS-CERT> (the key "
	                "is in that file)");
	free(t);

	/* files that must exist: the error names the path */
	t = textf("<HSM>\n<PROD-TLS-CA>%s/nope.pem</PROD-TLS-CA>\n</HSM>\n", dir);
	w = textf("t.cfg:2: <PROD-TLS-CA>: cannot read %s/nope.pem: No such file or directory",
	          dir);
	EXPECT_ERROR(t, w);
	free(w);
	free(t);
	t = textf("<HSM>\n\n<PROD-TLS-CERT>%s/sub</PROD-TLS-CERT>\n</HSM>\n", dir);
	w = textf("t.cfg:3: <PROD-TLS-CERT>: %s/sub is not a regular file", dir);
	EXPECT_ERROR(t, w);
	free(w);
	free(t);
	if (geteuid() != 0) { /* root reads anything */
		char path[512];
		snprintf(path, sizeof(path), "%s/unreadable.key", dir);
		write_file("unreadable.key", "x");
		assert_int_equal(chmod(path, 0), 0);
		t = textf("<HSM>\n<PROD-TLS-KEY>%s</PROD-TLS-KEY>\n</HSM>\n", path);
		w = textf("t.cfg:2: <PROD-TLS-KEY>: cannot read %s: Permission denied", path);
		EXPECT_ERROR(t, w);
		free(w);
		free(t);
	}
}

static void test_syntax_errors(void **state)
{
	(void)state;
	const struct {
		const char *text, *want;
	} c[] = {
	    /* repeated tags */
	    {"<HSM>\n<SLOT>1</SLOT>\n<SLOT>2</SLOT>\n</HSM>\n",
	     "t.cfg:3: <SLOT>: given twice (first on line 2)"},
	    {"<LOG-LEVEL>INFO</LOG-LEVEL>\n" MIN_HSM "<LOG-LEVEL>INFO</LOG-LEVEL>\n",
	     "t.cfg:8: <LOG-LEVEL>: given twice (first on line 1)"},
	    {"<HSM><CRYPTO-OPR-PASS>a</CRYPTO-OPR-PASS>\n<CRYPTO-OPR-PASS>a</CRYPTO-OPR-PASS>",
	     "t.cfg:2: <CRYPTO-OPR-PASS>: given twice (first on line 1)"},
	    /* unknown tags */
	    {"<HSM>\n<SLOTS>1</SLOTS>\n</HSM>\n", "t.cfg:2: <SLOTS>: unknown tag"},
	    {"<HSM>\n<slot>1</slot>\n</HSM>\n",
	     "t.cfg:2: <slot>: unknown tag (tags are upper case: <SLOT>)"},
	    {"<FOO>", "t.cfg:1: <FOO>: unknown tag"},
	    {"<AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA>",
	     "t.cfg:1: <AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA...>: unknown tag"},
	    /* tags outside their block */
	    {"\n<SLOT>1</SLOT>\n", "t.cfg:2: <SLOT>: only allowed inside <HSM>"},
	    {"<FXPKCS11>\n<ADDRESS>h</ADDRESS>\n</FXPKCS11>\n",
	     "t.cfg:2: <ADDRESS>: only allowed inside <HSM>"},
	    {"<HSM>\n<LOG-LEVEL>INFO</LOG-LEVEL>\n</HSM>\n",
	     "t.cfg:2: <LOG-LEVEL>: not allowed inside <HSM> (it applies to the file)"},
	    {"<HSM>\n<HSM>\n", "t.cfg:2: <HSM>: blocks cannot nest (the block on line 1 is open)"},
	    {"<HSM>\n<FXPKCS11>\n", "t.cfg:2: <FXPKCS11>: not allowed inside <HSM>"},
	    {MIN_HSM "<FXPKCS11>\n",
	     "t.cfg:7: <FXPKCS11>: must enclose the whole file (it comes after other elements)"},
	    {"<LOG-LEVEL>INFO</LOG-LEVEL><FXPKCS11>\n",
	     "t.cfg:1: <FXPKCS11>: must enclose the whole file (it comes after other elements)"},
	    {"<FXPKCS11>\n<FXPKCS11>\n", "t.cfg:2: <FXPKCS11>: given twice (first on line 1)"},
	    /* unclosed and mismatched elements */
	    {"\n" MIN_HSM "<HSM>\n<SLOT>2</SLOT>\n", "t.cfg:8: <HSM>: not closed (no </HSM>)"},
	    {"<FXPKCS11>\n" MIN_HSM, "t.cfg:1: <FXPKCS11>: not closed (no </FXPKCS11>)"},
	    {"<HSM>\n<LABEL>abc", "t.cfg:2: <LABEL>: not closed (no </LABEL>)"},
	    {"<HSM>\n<LABEL>abc</SLOT>\n</HSM>\n",
	     "t.cfg:2: <LABEL>: closed by </SLOT> instead of </LABEL>"},
	    {"<HSM>\n<LABEL>abc\n<SLOT>1</SLOT>\n</HSM>\n",
	     "t.cfg:2: <LABEL>: no </LABEL> after the value (a value may not contain '<')"},
	    {"<HSM>\n<LABEL>a</LABEL</HSM>\n",
	     "t.cfg:2: <LABEL>: no </LABEL> after the value (a value may not contain '<')"},
	    {"<FXPKCS11>\n<HSM>\n</FXPKCS11>\n",
	     "t.cfg:3: </FXPKCS11>: does not close <HSM> (opened on line 2)"},
	    {"<FXPKCS11>\n</HSM>\n",
	     "t.cfg:2: </HSM>: does not close <FXPKCS11> (opened on line 1)"},
	    {MIN_HSM "</HSM>\n", "t.cfg:7: </HSM>: closes no open element"},
	    {"<HSM>\n</SLOT>\n", "t.cfg:2: </SLOT>: does not close <HSM> (opened on line 1)"},
	    {"<HSM", "t.cfg:1: <HSM>: tag not closed by '>'"},
	    {"<HSM\n\n", "t.cfg:1: <HSM>: tag not closed by '>'"},
	    {"<HSM></HSM", "t.cfg:1: </HSM>: tag not closed by '>'"},
	    {"<HSM id=\"1\">", "t.cfg:1: <HSM>: malformed tag (attributes are not supported)"},
	    {"<HSM/>", "t.cfg:1: <HSM>: empty-element tags (<.../>) are not supported"},
	    {"< HSM>", "t.cfg:1: <FXPKCS11>: '<' not followed by a tag name"},
	    {"<HSM>\n<>", "t.cfg:2: <HSM>: '<' not followed by a tag name"},
	    {"<HSM>\n</>", "t.cfg:2: <HSM>: '<' not followed by a tag name"},
	    /* trailing garbage and stray text */
	    {MIN_HSM "junk\n", "t.cfg:7: <FXPKCS11>: text outside an element"},
	    {"<HSM>\nfoo\n</HSM>\n", "t.cfg:2: <HSM>: text outside an element"},
	    {"<FXPKCS11>\n" MIN_HSM "</FXPKCS11>\n\nx",
	     "t.cfg:10: </FXPKCS11>: text after the end of the element"},
	    {"<FXPKCS11>\n" MIN_HSM "</FXPKCS11>\n" MIN_HSM,
	     "t.cfg:9: <HSM>: after </FXPKCS11> (the end of the file's element)"},
	    {MIN_HSM "<!-- open", "t.cfg:7: <FXPKCS11>: comment not closed (no -->)"},
	    {MIN_HSM "<?xml version=\"1.0\"?>\n",
	     "t.cfg:7: <?xml>: only allowed once, at the start of the file"},
	    {"<?xml version=\"1.0\"?><?xml version=\"1.0\"?>",
	     "t.cfg:1: <?xml>: only allowed once, at the start of the file"},
	    {"<?xml version=\"1.0\"", "t.cfg:1: <?xml>: not closed (no ?>)"},
	    {"<?php ?>", "t.cfg:1: <FXPKCS11>: unknown processing instruction (only <?xml ...?>)"},
	    /* a '#' between elements starts a comment, even after a tag */
	    {"<HSM>\n<SLOT>1</SLOT>\n<CRYPTO-OPR>u</CRYPTO-OPR> # </HSM>\n<SLOT>",
	     "t.cfg:4: <SLOT>: given twice (first on line 2)"},
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
		EXPECT_ERROR(c[i].text, c[i].want);

	/* NUL bytes: in a value, and between elements */
	{
		static const char nul[] = "<HSM>\n<LABEL>a\0b</LABEL>\n</HSM>\n";
		expect_error(nul, sizeof(nul) - 1,
		             "t.cfg:2: <LABEL>: control character in the value");
	}
	expect_error(MIN_HSM "\0", sizeof(MIN_HSM), "t.cfg:7: <FXPKCS11>: text outside an element");

	/* a file larger than 1 MiB, even one that is all comment */
	{
		size_t n = 1024 * 1024 + 1;
		char *big = malloc(n + 1);
		assert_non_null(big);
		memset(big, ' ', n);
		big[0] = '#';
		big[n] = '\0';
		expect_error(big, n,
		             "t.cfg:1: <FXPKCS11>: the file is larger than 1 MiB (1048577 bytes)");
		free(big);
	}
}

/* The text need not be NUL-terminated: only len bytes are read. */
static void test_bounded_input(void **state)
{
	struct p11_config *cfg = calloc(1, sizeof(*cfg));
	char err[ERRSZ];
	const char *text = MIN_HSM "<HSM>garbage that must not be read";
	(void)state;

	assert_non_null(cfg);
	assert_int_equal(p11_config_parse(text, strlen(MIN_HSM), "t.cfg", cfg, err, sizeof(err)),
	                 KH_OK);
	assert_int_equal(cfg->nslots, 1);
	p11_config_free(cfg);
	/* cut in the middle of a value */
	assert_int_equal(p11_config_parse(MIN_HSM, 12, "t.cfg", cfg, err, sizeof(err)),
	                 KH_ERR_MALFORMED);
	assert_string_equal(err, "t.cfg:2: <SLOT>: not closed (no </SLOT>)");
	/* a small error buffer is cut, not overrun; none at all is allowed */
	{
		char small[8];
		memset(small, 'x', sizeof(small));
		assert_int_equal(p11_config_parse("", 0, "t.cfg", cfg, small, 6), KH_ERR_MALFORMED);
		assert_string_equal(small, "t.cfg");
		assert_int_equal(small[6], 'x');
		assert_int_equal(p11_config_parse("", 0, "t.cfg", cfg, NULL, 0), KH_ERR_MALFORMED);
	}
	/* no name: a placeholder */
	assert_int_equal(p11_config_parse("x", 1, NULL, cfg, err, sizeof(err)), KH_ERR_MALFORMED);
	assert_string_equal(err, "(configuration):1: <FXPKCS11>: text outside an element");
	/* a file name with a newline still gives one line */
	assert_int_equal(p11_config_parse("x", 1, "a\nb", cfg, err, sizeof(err)), KH_ERR_MALFORMED);
	assert_string_equal(err, "a?b:1: <FXPKCS11>: text outside an element");
	free(cfg);
}

#define PW1 "Pw-One-7f3a9c"
#define PW2 "Pw-Two-b81d42"
#define PW3 "Pw-Key-55e0aa"

static void test_passwords(void **state)
{
	struct p11_config *cfg = calloc(1, sizeof(*cfg));
	char err[ERRSZ];
	char *text;
	(void)state;

	assert_non_null(cfg);
	assert_int_equal(CRYPTO_secure_malloc_initialized(), 1);
	text = textf(
	    "<HSM><SLOT>3</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>\n"
	    "<CRYPTO-OPR-PASS>" PW1 "</CRYPTO-OPR-PASS>\n"
	    "<CRYPTO-OPR-2>v</CRYPTO-OPR-2><CRYPTO-OPR-2-PASS>" PW2 "</CRYPTO-OPR-2-PASS>\n"
	    "<PROD-TLS-CA>%s/ca.pem</PROD-TLS-CA><PROD-TLS-CERT>%s/client.p12</PROD-TLS-CERT>\n"
	    "<PROD-TLS-KEY-PASS>" PW3 "</PROD-TLS-KEY-PASS>\n</HSM>\n",
	    dir, dir);
	assert_int_equal(parse(text, cfg, err), KH_OK);
	assert_string_equal(cfg->slots[0].crypto_opr_pass, PW1);
	assert_string_equal(cfg->slots[0].crypto_opr2_pass, PW2);
	assert_string_equal(cfg->slots[0].key_pass, PW3);
	assert_true(CRYPTO_secure_allocated(cfg->slots[0].crypto_opr_pass));
	assert_true(CRYPTO_secure_allocated(cfg->slots[0].crypto_opr2_pass));
	assert_true(CRYPTO_secure_allocated(cfg->slots[0].key_pass));
	p11_config_free(cfg);
	assert_empty(cfg);
	free(text);

	/* an empty key password is allowed (PKCS#12 files often have one) */
	text = textf(
	    "<HSM><SLOT>3</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>\n"
	    "<PROD-TLS-CA>%s/ca.pem</PROD-TLS-CA><PROD-TLS-CERT>%s/client.p12</PROD-TLS-CERT>\n"
	    "<PROD-TLS-KEY-PASS></PROD-TLS-KEY-PASS>\n</HSM>\n",
	    dir, dir);
	assert_int_equal(parse(text, cfg, err), KH_OK);
	assert_non_null(cfg->slots[0].key_pass);
	assert_string_equal(cfg->slots[0].key_pass, "");
	p11_config_free(cfg);
	free(text);

	/* a failure after the passwords were read: freed, and not in the text */
	const char *after = "<HSM>\n<SLOT>1</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>\n"
	                    "<CRYPTO-OPR-PASS>" PW1 "</CRYPTO-OPR-PASS>\n"
	                    "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED>\n</HSM>\n"
	                    "<HSM>\n<SLOT>2</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>\n"
	                    "<CRYPTO-OPR-PASS>" PW2 "</CRYPTO-OPR-PASS>\n"
	                    "<PROD-PORT>0</PROD-PORT>\n</HSM>\n";
	EXPECT_ERROR(after, "t.cfg:9: <PROD-PORT>: not a port number (1-65535)");
	/* failing inside the block that holds them */
	EXPECT_ERROR("<HSM>\n<CRYPTO-OPR-PASS>" PW1 "</CRYPTO-OPR-PASS>\n"
	             "<CRYPTO-OPR-2-PASS>" PW2 "</CRYPTO-OPR-2-PASS>\n</HSM>\n",
	             "t.cfg:1: <SLOT>: missing from the <HSM> block");

	/* errors in a password's own value never quote it */
	const struct {
		const char *text, *want;
	} c[] = {
	    {"<HSM>\n<CRYPTO-OPR-PASS>" PW1 "<" PW2 "</CRYPTO-OPR-PASS>\n</HSM>\n",
	     "t.cfg:2: <CRYPTO-OPR-PASS>: no </CRYPTO-OPR-PASS> after the value (a value may "
	     "not contain '<')"},
	    {"<HSM>\n<CRYPTO-OPR-2-PASS>" PW1 "</" PW2 ">x</CRYPTO-OPR-2-PASS>\n</HSM>\n",
	     "t.cfg:2: <CRYPTO-OPR-2-PASS>: no </CRYPTO-OPR-2-PASS> after the value (a value may "
	     "not contain '<')"},
	    {"<HSM>\n<PROD-TLS-KEY-PASS>" PW1 "\x01" PW2 "</PROD-TLS-KEY-PASS>\n</HSM>\n",
	     "t.cfg:2: <PROD-TLS-KEY-PASS>: control character in the value"},
	    {"<HSM>\n<CRYPTO-OPR-PASS>" PW1, "t.cfg:2: <CRYPTO-OPR-PASS>: not closed (no "
	                                     "</CRYPTO-OPR-PASS>)"},
	    {"<HSM>\n<CRYPTO-OPR-PASS></CRYPTO-OPR-PASS>\n</HSM>\n",
	     "t.cfg:2: <CRYPTO-OPR-PASS>: empty value (leave the tag out instead)"},
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
		EXPECT_ERROR(c[i].text, c[i].want);

	/* 256 bytes fit, 257 do not */
	{
		char pw[258], *t;
		memset(pw, 'Q', 257);
		pw[256] = '\0';
		t = textf("<HSM><SLOT>3</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>"
		          "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED>"
		          "<CRYPTO-OPR-PASS>%s</CRYPTO-OPR-PASS></HSM>",
		          pw);
		assert_int_equal(parse(t, cfg, err), KH_OK);
		assert_int_equal(strlen(cfg->slots[0].crypto_opr_pass), 256);
		p11_config_free(cfg);
		free(t);
		pw[256] = 'Q';
		pw[257] = '\0';
		t = textf("<HSM>\n<CRYPTO-OPR-PASS>%s</CRYPTO-OPR-PASS></HSM>", pw);
		EXPECT_ERROR(t, "t.cfg:2: <CRYPTO-OPR-PASS>: longer than 256 bytes");
		free(t);
	}
	free(cfg);
}

static void test_free_reparse(void **state)
{
	struct p11_config *cfg = calloc(1, sizeof(*cfg));
	char err[ERRSZ];
	const char *a =
	    "<HSM><SLOT>1</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>"
	    "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED><CRYPTO-OPR-PASS>p1</CRYPTO-OPR-PASS>"
	    "</HSM><HSM><SLOT>2</SLOT><CRYPTO-OPR>u</CRYPTO-OPR><ADDRESS>h</ADDRESS>"
	    "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED><CRYPTO-OPR-PASS>p2</CRYPTO-OPR-PASS>"
	    "</HSM>";
	const char *b = "<HSM><SLOT>5</SLOT><CRYPTO-OPR>w</CRYPTO-OPR><ADDRESS>h2</ADDRESS>"
	                "<PROD-TLS-ENABLED>NO</PROD-TLS-ENABLED></HSM>";
	(void)state;

	assert_non_null(cfg);
	assert_int_equal(parse(a, cfg, err), KH_OK);
	assert_int_equal(cfg->nslots, 2);
	p11_config_free(cfg);
	assert_empty(cfg);
	assert_string_equal(cfg->path, "");
	p11_config_free(cfg); /* twice is harmless */
	assert_int_equal(parse(b, cfg, err), KH_OK);
	assert_int_equal(cfg->nslots, 1);
	assert_int_equal(cfg->slots[0].slot_id, 5);
	assert_null(cfg->slots[0].crypto_opr_pass);
	assert_null(cfg->slots[1].crypto_opr_pass);
	p11_config_free(cfg);
	/* a failed parse, then a good one into the same struct */
	assert_int_equal(parse("<HSM>", cfg, err), KH_ERR_MALFORMED);
	assert_empty(cfg);
	assert_int_equal(parse(a, cfg, err), KH_OK);
	assert_string_equal(cfg->slots[1].crypto_opr_pass, "p2");
	p11_config_free(cfg);
	p11_config_free(NULL);
	free(cfg);
}

static void test_load(void **state)
{
	struct p11_config *cfg = calloc(1, sizeof(*cfg));
	char err[ERRSZ], path[512], *want;
	(void)state;

	assert_non_null(cfg);
	snprintf(path, sizeof(path), "%s/missing.cfg", dir);
	assert_int_equal(p11_config_load(path, cfg, err, sizeof(err)), KH_ERR_LOCAL_FILE);
	want = textf("%s: cannot open: No such file or directory", path);
	assert_string_equal(err, want);
	free(want);
	assert_empty(cfg);

	snprintf(path, sizeof(path), "%s/sub", dir);
	assert_int_equal(p11_config_load(path, cfg, err, sizeof(err)), KH_ERR_LOCAL_FILE);
	want = textf("%s: not a regular file", path);
	assert_string_equal(err, want);
	free(want);

	write_file("good.cfg", MIN_HSM);
	snprintf(path, sizeof(path), "%s/good.cfg", dir);
	assert_int_equal(p11_config_load(path, cfg, err, sizeof(err)), KH_OK);
	assert_string_equal(cfg->path, path);
	assert_int_equal(cfg->nslots, 1);
	p11_config_free(cfg);

	/* errors name the file by the path it was loaded from */
	write_file("bad.cfg", MIN_HSM "<PROD-PORT>1</PROD-PORT>\n");
	snprintf(path, sizeof(path), "%s/bad.cfg", dir);
	assert_int_equal(p11_config_load(path, cfg, err, sizeof(err)), KH_ERR_MALFORMED);
	want = textf("%s:7: <PROD-PORT>: only allowed inside <HSM>", path);
	assert_string_equal(err, want);
	free(want);
	assert_empty(cfg);

	/* larger than 1 MiB on disk */
	{
		char *big = malloc(1024 * 1024 + 2);
		assert_non_null(big);
		memset(big, '#', 1024 * 1024 + 1);
		big[1024 * 1024 + 1] = '\0';
		write_file("big.cfg", big);
		free(big);
		snprintf(path, sizeof(path), "%s/big.cfg", dir);
		assert_int_equal(p11_config_load(path, cfg, err, sizeof(err)), KH_ERR_MALFORMED);
		want =
		    textf("%s:1: <FXPKCS11>: the file is larger than 1 MiB (1048577 bytes)", path);
		assert_string_equal(err, want);
		free(want);
	}
	free(cfg);
}

/* The logger as the file configures it: level filter, one line per event,
 * mode 0600, control characters neutralised. */
static void test_log_from_config(void **state)
{
	struct p11_config *cfg = calloc(1, sizeof(*cfg));
	char err[ERRSZ], path[512], buf[4096], *text;
	struct stat st;
	ssize_t n;
	int fd;
	(void)state;

	assert_non_null(cfg);
	snprintf(path, sizeof(path), "%s/p11.log", dir);
	text = textf("<LOG-LEVEL>INFO</LOG-LEVEL><LOG-FILE>%s</LOG-FILE>\n" MIN_HSM, path);
	assert_int_equal(parse(text, cfg, err), KH_OK);
	free(text);
	p11_log_open(cfg->log_level, cfg->log_file);
	p11_log(P11_LOG_INFO, "slot %d ready", 1);
	p11_log(P11_LOG_DEBUG, "not written");
	p11_log(P11_LOG_ERROR, "two\nlines");
	p11_log_close();
	p11_log(P11_LOG_ERROR, "after close");
	p11_config_free(cfg);
	free(cfg);

	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	assert_true(n > 0);
	buf[n] = '\0';
	/* 2024-01-02T03:04:05.678Z keyhold-pkcs11[123] INFO: slot 1 ready */
	{
		char *l2 = strchr(buf, '\n');
		assert_non_null(l2);
		*l2++ = '\0';
		assert_int_equal(strlen(buf) > 25, 1);
		assert_int_equal(buf[4], '-');
		assert_int_equal(buf[10], 'T');
		assert_int_equal(buf[23], 'Z');
		assert_non_null(strstr(buf, " keyhold-pkcs11["));
		assert_non_null(strstr(buf, "] INFO: slot 1 ready"));
		assert_non_null(strstr(l2, "] ERROR: two?lines\n"));
		assert_null(strstr(l2, "not written"));
		assert_null(strstr(l2, "after close"));
		assert_int_equal(strchr(l2, '\n')[1], '\0');
	}
}

/* Read all of the file at path into buf (NUL-terminated). */
static size_t slurp(const char *path, char *buf, size_t sz)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;
	assert_true(fd >= 0);
	n = read(fd, buf, sz - 1);
	close(fd);
	assert_true(n >= 0);
	buf[n] = '\0';
	return (size_t)n;
}

/* A log file that cannot be opened falls back to stderr and says so; long
 * messages are cut; a forked child logs with its own pid. */
static void test_log_fallback_and_fork(void **state)
{
	char path[512], bad[512], buf[8192], *long_msg, *nl;
	int saved, fd, status;
	pid_t pid;
	(void)state;

	snprintf(path, sizeof(path), "%s/stderr.txt", dir);
	snprintf(bad, sizeof(bad), "%s/no-such-dir/p11.log", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	saved = dup(STDERR_FILENO);
	assert_true(saved >= 0);
	assert_true(dup2(fd, STDERR_FILENO) >= 0);
	close(fd);
	p11_log_open(P11_LOG_WARN, bad);
	p11_log(P11_LOG_WARN, "to stderr");
	p11_log(P11_LOG_INFO, "below the level");
	long_msg = malloc(5000);
	assert_non_null(long_msg);
	memset(long_msg, 'L', 4999);
	long_msg[4999] = '\0';
	p11_log(P11_LOG_ERROR, "%s", long_msg);
	free(long_msg);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		p11_log_reset_after_fork();
		p11_log(P11_LOG_ERROR, "child %ld", (long)getpid());
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	p11_log_close();
	fflush(stderr);
	assert_true(dup2(saved, STDERR_FILENO) >= 0);
	close(saved);

	slurp(path, buf, sizeof(buf));
	assert_non_null(strstr(buf, "cannot open log file "));
	assert_non_null(
	    strstr(buf, "no-such-dir/p11.log: No such file or directory; logging to stderr\n"));
	assert_non_null(strstr(buf, "] WARN: to stderr\n"));
	assert_null(strstr(buf, "below the level"));
	/* the long line: cut to P11_LOG_LINE_MAX with "..." */
	nl = strstr(buf, "LLLL");
	assert_non_null(nl);
	while (nl > buf && nl[-1] != '\n')
		nl--;
	assert_int_equal(strchr(nl, '\n') - nl + 1, P11_LOG_LINE_MAX);
	assert_memory_equal(strchr(nl, '\n') - 3, "...", 3);
	{
		char want[64];
		snprintf(want, sizeof(want), "[%ld] ERROR: child %ld\n", (long)pid, (long)pid);
		assert_non_null(strstr(buf, want));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_full_valid),
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_two_blocks),
	    cmocka_unit_test(test_address_forms),
	    cmocka_unit_test(test_value_errors),
	    cmocka_unit_test(test_block_rules),
	    cmocka_unit_test(test_syntax_errors),
	    cmocka_unit_test(test_bounded_input),
	    cmocka_unit_test(test_passwords),
	    cmocka_unit_test(test_free_reparse),
	    cmocka_unit_test(test_load),
	    cmocka_unit_test(test_log_from_config),
	    cmocka_unit_test(test_log_fallback_and_fork),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
