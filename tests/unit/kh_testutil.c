/* Test helpers shared by the unit tests. */
#include "kh_testutil.h"
#include "hsm/hsm_core.h"
#include "hsm/db.h"
#include "hsm/dispatch.h"
#include "hsm/keystore.h"
#include "common/kh_buf.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kh_test_hsm_open(struct kh_hsm *hsm, char dir[static 256])
{
	snprintf(dir, 256, "/tmp/kh-unit-XXXXXX");
	assert_non_null(mkdtemp(dir));
	kh_log_init("unit", KH_LOG_WARN, NULL);
	assert_int_equal(kh_hsm_open(hsm, dir, false), KH_OK);
}

void kh_test_hsm_close(struct kh_hsm *hsm, const char *dir)
{
	char cmd[512];
	kh_hsm_close(hsm);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

void kh_test_session(struct kh_session *s, enum kh_port port)
{
	memset(s, 0, sizeof(*s));
	s->port = port;
	s->source = KH_SRC_ETHERNET;
	snprintf(s->peer, sizeof(s->peer), "unit");
}

int kh_test_call(struct kh_hsm *hsm, struct kh_session *s, const char *req, char *out, size_t outsz)
{
	struct kh_frame f;
	struct kh_buf *b = kh_buf_new(KH_FRAME_MAX);
	int r = kh_frame_parse((const uint8_t *)req, strlen(req), KH_FIELDS_MAX, &f);
	assert_int_equal(r, KH_OK);
	r = kh_dispatch(hsm, s, &f, b);
	size_t n = kh_buf_len(b);
	if (n >= outsz)
		n = outsz - 1;
	memcpy(out, kh_buf_ptr(b), n);
	out[n] = '\0';
	kh_buf_free(b);
	return r;
}

void kh_test_hexstr(const char *s, char *out)
{
	kh_hex_encode((const uint8_t *)s, strlen(s), out);
}

int kh_test_logn(struct kh_hsm *hsm, struct kh_session *s, const char *id, const char *pw,
                 const char *np, char *out, size_t outsz)
{
	char req[1200], hp[520], hn[520];
	kh_test_hexstr(pw, hp);
	if (np) {
		kh_test_hexstr(np, hn);
		snprintf(req, sizeof(req), "[AOLOGN;ID%s;PW%s;NP%s;]", id, hp, hn);
	} else {
		snprintf(req, sizeof(req), "[AOLOGN;ID%s;PW%s;]", id, hp);
	}
	return kh_test_call(hsm, s, req, out, outsz);
}

void kh_test_admin_login(struct kh_hsm *hsm, struct kh_session *s)
{
	char out[4096];
	kh_test_session(s, KH_PORT_ADMIN);
	assert_int_equal(
	    kh_test_logn(hsm, s, "Admin1", "safest", KH_TEST_ADMIN1_PW, out, sizeof(out)), KH_OK);
	assert_int_equal(
	    kh_test_logn(hsm, s, "Admin2", "safest", KH_TEST_ADMIN2_PW, out, sizeof(out)), KH_OK);
	assert_true(s->active);
}

int kh_test_fx_setup(void **state)
{
	struct kh_test_fx *x = calloc(1, sizeof(*x));
	assert_non_null(x);
	kh_test_hsm_open(&x->hsm, x->dir);
	*state = x;
	return 0;
}

int kh_test_fx_setup_admin(void **state)
{
	int r = kh_test_fx_setup(state);
	struct kh_test_fx *x = *state;
	kh_test_admin_login(&x->hsm, &x->admin);
	return r;
}

int kh_test_fx_teardown(void **state)
{
	struct kh_test_fx *x = *state;
	kh_test_hsm_close(&x->hsm, x->dir);
	free(x);
	return 0;
}

void kh_test_admin_session(struct kh_hsm *hsm, struct kh_session *s)
{
	kh_test_session(s, KH_PORT_ADMIN);
	s->nident = 2;
	snprintf(s->ident[0], KH_NAME_MAX, "Admin1");
	snprintf(s->ident[1], KH_NAME_MAX, "Admin2");
	s->role.perms = ~0ULL;
	s->role.logins_required = 2;
	s->role.ports = KH_PORT_ADMIN;
	snprintf(s->role.name, sizeof(s->role.name), "Administrator");
	s->active = true;
	s->role_gen = atomic_load(&hsm->role_gen);
}

const char *kh_test_field(const char *resp, const char *tag)
{
	static char out[1 << 20];
	char pat[4] = {';', tag[0], tag[1], '\0'};
	const char *p = strstr(resp, pat);
	out[0] = '\0';
	if (p == NULL)
		return out;
	p += 3;
	size_t n = strcspn(p, ";");
	assert_true(n < sizeof(out));
	memcpy(out, p, n);
	out[n] = '\0';
	return out;
}

void kh_test_assert_key(struct kh_hsm *hsm, uint32_t slot, const uint8_t *m, size_t n)
{
	struct kh_key_row row;
	uint8_t *out = NULL;
	size_t olen = 0;
	assert_int_equal(kh_keystore_get(hsm, slot, &row), KH_OK);
	assert_int_equal(kh_keystore_unwrap(hsm, &row, &out, &olen), KH_OK);
	assert_int_equal(olen, n);
	assert_memory_equal(out, m, n);
	kh_secure_free(out, olen);
	kh_keystore_row_free(&row);
}

int kh_test_db_exec(struct kh_hsm *hsm, const char *sql)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(kh_db_sqlite(hsm->db), sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return rc;
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}
