/* Test helpers shared by the unit tests. */
#include "kh_testutil.h"
#include "hsm/hsm_core.h"
#include "hsm/dispatch.h"
#include "common/kh_buf.h"
#include "common/kh_log.h"

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
