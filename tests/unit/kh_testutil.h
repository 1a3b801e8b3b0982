/* Helpers for unit tests: a throwaway device in a temporary data dir. */
#ifndef KH_TESTUTIL_H
#define KH_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "hsm/hsm.h"

#include <openssl/evp.h>
#include <stdbool.h>

/* Opens a fresh device in a new temporary directory (path in dir, 256 bytes). */
void kh_test_hsm_open(struct kh_hsm *hsm, char dir[static 256]);
/* Closes it and removes the directory. */
void kh_test_hsm_close(struct kh_hsm *hsm, const char *dir);
/* A session on the given port, logged out. */
void kh_test_session(struct kh_session *s, enum kh_port port);
/* Run one request text through the dispatcher; the response is copied to
 * out (NUL-terminated). Returns the dispatcher's result. */
int kh_test_call(struct kh_hsm *hsm, struct kh_session *s, const char *req, char *out, size_t outsz);

/* The passwords kh_test_admin_login gives the two administrators in place
 * of the default one. */
#define KH_TEST_ADMIN1_PW "first-secret-1"
#define KH_TEST_ADMIN2_PW "second-secret-2"

/* Uppercase hex of the text s into out (2 * strlen(s) + 1 bytes). */
void kh_test_hexstr(const char *s, char *out);
/* LOGN as id with password pw, changing it to np unless np is NULL. */
int kh_test_logn(struct kh_hsm *hsm, struct kh_session *s, const char *id, const char *pw,
                 const char *np, char *out, size_t outsz);
/* A new admin-port session s on which Admin1 and Admin2 log in, changing
 * the default password to KH_TEST_ADMIN1_PW / KH_TEST_ADMIN2_PW; s is then
 * active. */
void kh_test_admin_login(struct kh_hsm *hsm, struct kh_session *s);

/* The dispatcher tests' fixture: a device, an admin session and the last
 * response. */
struct kh_test_fx {
	struct kh_hsm hsm;
	char dir[256];
	struct kh_session admin;
	char out[262144];
};
/* cmocka setup: a fresh device in a new kh_test_fx, nobody logged in. */
int kh_test_fx_setup(void **state);
/* cmocka setup: as kh_test_fx_setup, then kh_test_admin_login on admin. */
int kh_test_fx_setup_admin(void **state);
/* cmocka teardown for both. */
int kh_test_fx_teardown(void **state);

/* Request text through the dispatcher on a fixture x; response in x->out. */
#define KH_CALL(x, s, req) kh_test_call(&(x)->hsm, (s), (req), (x)->out, sizeof((x)->out))
#define KH_LOGN(x, s, id, pw, np)                                                                  \
	kh_test_logn(&(x)->hsm, (s), (id), (pw), (np), (x)->out, sizeof((x)->out))

/* A session on the admin port that stands for Admin1 and Admin2 logged in
 * as Administrator, without going through LOGN. */
void kh_test_admin_session(struct kh_hsm *hsm, struct kh_session *s);
/* The value of tag in the response resp ("" if absent), in a static buffer. */
const char *kh_test_field(const char *resp, const char *tag);

/* The key in slot unwraps to exactly the n bytes m. */
void kh_test_assert_key(struct kh_hsm *hsm, uint32_t slot, const uint8_t *m, size_t n);
/* One SQL statement straight on the device's database (to tamper with it):
 * SQLITE_OK, or the sqlite result code. */
int kh_test_db_exec(struct kh_hsm *hsm, const char *sql);

/* The fixed test major keys: kh_test_pmk is the bytes 1..32, kh_test_ftk
 * the bytes F0..FF followed by 16 zero bytes. */
extern const uint8_t kh_test_pmk[32], kh_test_ftk[32];
/* cmocka setup: as kh_test_fx_setup_admin, then kh_test_pmk loaded as the PMK. */
int kh_test_fx_setup_pmk(void **state);
/* cmocka setup: as kh_test_fx_setup_pmk, then kh_test_ftk loaded as the FTK. */
int kh_test_fx_setup_keys(void **state);
/* A cmocka test t run with the fixture set-up setup and kh_test_fx_teardown. */
#define KH_FX_TEST(t, setup) cmocka_unit_test_setup_teardown(t, setup, kh_test_fx_teardown)

/* KH_CALL with the request built printf-style. */
int kh_test_callf(struct kh_test_fx *x, struct kh_session *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define KH_CALLF(x, s, ...) kh_test_callf((x), (s), __VA_ARGS__)
/* A copy (malloc'd) of the value of tag in x->out ("" if absent). */
char *kh_test_fx_field(struct kh_test_fx *x, const char *tag);
/* The password kh_test_app_login gives appuser. */
#define KH_TEST_APP_PW "app-password-1"
/* Adds role app (LQ1, PMkeys, ranges S:100-199,A:200-299, commands cmds) and
 * its identity appuser (KH_TEST_APP_PW), who logs in on a new prod session p. */
void kh_test_app_login(struct kh_test_fx *x, struct kh_session *p, const char *cmds);

/* n key-table rows from slot first on, in one transaction: every 7th an EC
 * private key, the others AES; labels "key-<slot>", CKA_IDs the slot as 4
 * big-endian bytes. Wrapped under the PMK (load it first). 0 on success. */
int kh_test_fill_keys(struct kh_hsm *hsm, uint32_t first, uint32_t n);

/* Write n bytes to path (fails the test otherwise). */
void kh_test_write_file(const char *path, const void *data, size_t n);
/* The hex value of tag in x's last response, decoded, written to path. */
void kh_test_write_hex_field(struct kh_test_fx *x, const char *tag, const char *path);
/* Uppercase hex of the text s (malloc'd). */
/* TLS on x as a test needs it: a CA of x's own (EC, or RSA with rsa) named
 * cn, its certificate written to ca_out (PEM), and the HSM's server
 * certificate for 127.0.0.1 / localhost issued and installed. */
void kh_test_tls_ca(struct kh_test_fx *x, bool rsa, const char *cn, const char *ca_out);
/* A fresh EC P-256 key and its client certificate (subject cn, SAN san)
 * signed by x's CA with TSGN, written to cert_out (PEM). The caller frees
 * the key (EVP_PKEY_free). */
EVP_PKEY *kh_test_tls_client(struct kh_test_fx *x, const char *cn, const char *san,
                             const char *cert_out);
/* key in PEM (unencrypted) to path. */
void kh_test_write_key(const char *path, EVP_PKEY *key);
char *kh_test_hexs(const char *s);

/* Uppercase hex of the n bytes d (malloc'd). */
char *kh_test_hex(const uint8_t *d, size_t n);
/* The hex text s decoded into out (at most max bytes; fails the test on bad hex): the count. */
size_t kh_test_unhex(const char *s, uint8_t *out, size_t max);
/* The hex text s decoded (malloc'd), its length in *n. */
uint8_t *kh_test_unhex_dup(const char *s, size_t *n);
/* Hex (malloc'd) of the len bytes an i2d_ call put in *der, which it frees and clears. */
char *kh_test_der_hex(int len, uint8_t **der);
/* Hex (malloc'd) of pk's private key as PKCS#8 DER. */
char *kh_test_pkcs8_hex(EVP_PKEY *pk);
/* Hex (malloc'd) of pk's public key as SubjectPublicKeyInfo DER. */
char *kh_test_spki_hex(EVP_PKEY *pk);

/* ---- real daemons on loopback (the built keyhold-hsm, or the server code
 * forked from the test when the binary is missing) ---- */

#include <stdbool.h>
#include <sys/types.h>

/* A program built beside the tests: $env (when set and executable), else
 * <name> next to the test's directory (build/<x>/tests/test_y ->
 * build/<x>/<name>). */
bool kh_test_built_bin(const char *name, const char *env, char *out, size_t outsz);
/* The keyhold-hsm binary ($KEYHOLD_HSM_BIN). */
bool kh_test_hsm_bin(char *out, size_t outsz);
/* A file's contents as text (empty when missing), cut to sz - 1 bytes. */
void kh_test_slurp(const char *path, char *buf, size_t sz);
/* Run bin with args (NULL-terminated) in dir: standard input /dev/null, no
 * controlling terminal (secrets only from files), KEYHOLD_GUARDIAN and
 * KEYHOLD_CONSOLE unset. Exit status (128 + signal when killed) and its
 * output (dir/stdout, dir/stderr) in r. */
struct kh_test_run {
	int rc;
	char out[16384];
	char err[16384];
};
void kh_test_run(struct kh_test_run *r, const char *bin, const char *dir, const char *const *args);
/* A TCP port free on 127.0.0.1 now. */
unsigned kh_test_free_port(void);
/* Something accepts TCP connections on addr:port. */
bool kh_test_port_open(const char *addr, unsigned port);

struct kh_test_daemon {
	pid_t pid;
	char dir[300];       /* its own copy of the data dir */
	char listen[32];     /* listen address */
	unsigned port;       /* Excrypt port */
	unsigned admin_port; /* 0: the Admin port is off */
};
/* A daemon on a fresh copy of the data dir src, made as dir (which must not
 * exist), listening on listen (NULL: 127.0.0.1) with a free Excrypt port
 * and, when admin, a free Admin port. Not started. */
void kh_test_daemon_init(struct kh_test_daemon *d, const char *src, const char *dir,
                         const char *listen, bool admin);
/* Start it and wait until its Excrypt port accepts connections (fails the
 * test if it exits or does not come up). Sanitizer logs go to its dir. */
void kh_test_daemon_start(struct kh_test_daemon *d);
/* Stop with sig (SIGTERM: clean; SIGKILL: a crash) and fail the test on a
 * sanitizer report of the daemon. No-op when not running. */
void kh_test_daemon_stop(struct kh_test_daemon *d, int sig);
/* SIGKILL every daemon still running (for a group teardown after a failed test). */
void kh_test_daemon_kill_all(void);

#endif
