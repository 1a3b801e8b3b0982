/*
 * Major-key commands (MKST MKLB MKLC MKLA MKGN MKER) and the per-connection
 * key-loading ceremony, which either loads a key or, with RO=Y, rotates a
 * loaded FTK or PMK to the new key (kh_mk_rotate). Parts live on the secure
 * heap only until they are combined; audit entries and replies carry check
 * values, never key bytes.
 */
#include "hsm/cmds.h"
#include "hsm/audit.h"
#include "hsm/fragment.h"
#include "hsm/majorkey.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <libgfshare.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#define MAX_PARTS KH_FRAGMENT_MAX_PARTS
_Static_assert(MAX_PARTS <= 9, "fragment tags F1..F9 are one digit");
#define SHARES_LEN (MAX_PARTS * KH_MK_MAX_LEN)

struct kh_mk_ceremony {
	enum kh_mk_id id;
	char mode;       /* 'C' XOR'd components, 'F' M-of-N fragments */
	size_t keylen;   /* bytes; for 'F' known after the first fragment */
	unsigned needed; /* parts needed; for 'F' M, known after the first */
	unsigned entered;
	uint8_t *acc;                /* 'C': XOR of the components so far (secure) */
	uint8_t *shares;             /* 'F': entered shares, KH_MK_MAX_LEN each (secure) */
	uint8_t nums[MAX_PARTS];     /* 'F': their numbers */
	char kcvs[MAX_PARTS][7];     /* 'C': check values of the components so far */
	struct kh_fragment_hdr meta; /* 'F': what every fragment must agree on */
	bool rotate;                 /* RO=Y: replaces the loaded key */
	uint32_t grace;              /* GP: seconds the replaced key still opens */
};

void kh_mk_ceremony_free(struct kh_mk_ceremony *cer)
{
	if (cer == NULL)
		return;
	kh_secure_free(cer->acc, KH_MK_MAX_LEN);
	kh_secure_free(cer->shares, SHARES_LEN);
	kh_wipe(cer, sizeof(*cer));
	free(cer);
}

static void ceremony_end(struct kh_ctx *c)
{
	kh_mk_ceremony_free(c->s->ceremony);
	c->s->ceremony = NULL;
}

/* ---- libgfshare's randomness --------------------------------------------- */

/* libgfshare draws its polynomial coefficients (and the bytes it scrubs
 * contexts with) from a global hook whose stock choice is random(). Ours is
 * OpenSSL's private DRBG; a failure is recorded and checked by the caller,
 * since the hook cannot return one. */
static _Thread_local bool gf_rand_failed;

static void gf_rand(unsigned char *buf, unsigned int n)
{
	if (RAND_priv_bytes(buf, (int)n) != 1) {
		/* libgfshare also scrubs its buffers through this hook: a failed
		 * draw must still leave them wiped */
		kh_wipe(buf, n);
		gf_rand_failed = true;
	}
}

static pthread_once_t gf_once = PTHREAD_ONCE_INIT;

static void gf_hook(void)
{
	gfshare_fill_rand = gf_rand;
}

static void gf_init(void)
{
	pthread_once(&gf_once, gf_hook);
	gf_rand_failed = false;
}

/* ---- helpers -------------------------------------------------------------- */

static int key_name(struct kh_ctx *c, const struct kh_frame *req, enum kh_mk_id *id)
{
	char name[8];
	int r = kh_frame_str(req, "KN", name, sizeof(name));
	if (r == KH_OK)
		r = kh_mk_id_parse(name, id);
	if (r != KH_OK)
		kh_ctx_detail(c, "KN");
	return r;
}

static int key_bits(struct kh_ctx *c, const struct kh_frame *req, size_t *keylen)
{
	char alg[8];
	uint64_t bits;
	int r = kh_frame_str(req, "AL", alg, sizeof(alg));
	if (r == KH_OK && strcmp(alg, "AES") != 0)
		r = KH_ERR_UNSUPPORTED;
	if (r != KH_OK) {
		kh_ctx_detail(c, "AL");
		return r;
	}
	if ((r = kh_frame_u64(req, "KL", 128, 256, &bits)) != KH_OK ||
	    (bits != 128 && bits != 192 && bits != 256)) {
		kh_ctx_detail(c, "KL");
		return r != KH_OK ? r : KH_ERR_BAD_FIELD;
	}
	*keylen = (size_t)bits / 8;
	return KH_OK;
}

/* RO and GP: whether the ceremony rotates the loaded key, and for how long
 * the replaced key keeps opening cryptograms. The key's state must fit:
 * loaded for a rotation, not loaded for a load. */
static int read_rotation(struct kh_ctx *c, const struct kh_frame *req, enum kh_mk_id id,
                         bool *rotate, uint32_t *grace)
{
	struct kh_mk_info info;
	uint64_t gp = 0;
	int r;

	*rotate = false;
	*grace = 0;
	if (kh_frame_has(req, "RO") && (r = kh_frame_yn(req, "RO", rotate)) != KH_OK) {
		kh_ctx_detail(c, "RO");
		return r;
	}
	if (kh_frame_has(req, "GP")) {
		if (!*rotate) {
			kh_ctx_detail(c, "GP: only with RO=Y");
			return KH_ERR_BAD_FIELD;
		}
		if ((r = kh_frame_u64(req, "GP", 0, KH_MK_GRACE_MAX, &gp)) != KH_OK) {
			kh_ctx_detail(c, "GP: 0 to %d seconds", KH_MK_GRACE_MAX);
			return r;
		}
	}
	*grace = (uint32_t)gp;
	if (*rotate && id == KH_MK_BEK) {
		kh_ctx_detail(c, "RO: the BEK is not rotated (erase and load it; back up again)");
		return KH_ERR_UNSUPPORTED;
	}
	kh_mk_info(c->hsm, id, &info);
	if (*rotate && !info.loaded) {
		kh_ctx_detail(c, "%s is not loaded: nothing to rotate (load it without RO)",
		              kh_mk_name(id));
		return KH_ERR_NOT_FOUND;
	}
	if (!*rotate && info.loaded) {
		kh_ctx_detail(c, "%s is loaded: erase it first, or rotate it (RO=Y)",
		              kh_mk_name(id));
		return KH_ERR_EXISTS;
	}
	return KH_OK;
}

static int audit(struct kh_ctx *c, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int audit(struct kh_ctx *c, const char *event, const char *fmt, ...)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX], detail[200];
	va_list ap;
	kh_session_actor(c->s, actor, sizeof(actor));
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	return kh_audit_append(c->hsm, actor, event, detail);
}

/* UTC YYYYMMDDhhmmss, the protocol's time format. */
static void fmt_time(int64_t t, char out[static 16])
{
	struct tm tm;
	time_t tt = (time_t)t;
	if (gmtime_r(&tt, &tm) == NULL || strftime(out, 16, "%Y%m%d%H%M%S", &tm) != 14)
		snprintf(out, 16, "0");
}

/* The last part is in: load the key, or rotate to it. Replies KV (and for
 * a rotation OV, RW and, with a grace period, GU). */
static int install(struct kh_ctx *c, enum kh_mk_id id, bool rotate, uint32_t grace,
                   const uint8_t *key, size_t len, const char *event, const char *how,
                   struct kh_buf *resp)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX], kcv[7], until[16];
	struct kh_mk_rotation rot;
	int r;

	kh_session_actor(c->s, actor, sizeof(actor));
	if (!rotate) {
		r = kh_mk_load(c->hsm, id, key, len, actor, event, how, kcv);
		if (r == KH_ERR_EXISTS)
			kh_ctx_detail(c, "%s is loaded: erase it first, or rotate it (RO=Y)",
			              kh_mk_name(id));
		if (r == KH_OK)
			r = kh_msg_put(resp, "KV", kcv);
		return r;
	}
	r = kh_mk_rotate(c->hsm, id, key, len, grace, actor, how, &rot);
	if (r == KH_ERR_NOT_FOUND)
		kh_ctx_detail(c, "%s is not loaded: nothing to rotate", kh_mk_name(id));
	else if (r == KH_ERR_BAD_KCV)
		kh_ctx_detail(c, "the new %s is the current one (KCV %s)", kh_mk_name(id), rot.kcv);
	else if (r == KH_ERR_CRYPTO && rot.bad[0])
		kh_ctx_detail(c, "%s does not open under the current %s: nothing rotated", rot.bad,
		              kh_mk_name(id));
	if (r != KH_OK)
		return r;
	if ((r = kh_msg_put(resp, "KV", rot.kcv)) != KH_OK ||
	    (r = kh_msg_put(resp, "OV", rot.old_kcv)) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "RW", rot.rows)) != KH_OK)
		return r;
	if (rot.until != 0) {
		fmt_time(rot.until, until);
		r = kh_msg_put(resp, "GU", until);
	}
	return r;
}

/* Six hex digits, either case, compared as uppercase. */
static int read_cv(struct kh_ctx *c, const struct kh_frame *req, char out[static 7])
{
	int r = kh_frame_str(req, "CV", out, 7);
	if (r == KH_OK && strlen(out) != 6)
		r = KH_ERR_BAD_FIELD;
	for (int i = 0; r == KH_OK && i < 6; i++) {
		char ch = out[i];
		if (ch >= 'a' && ch <= 'f')
			out[i] = (char)(ch - 'a' + 'A');
		else if (!((ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'F')))
			r = KH_ERR_BAD_FIELD;
	}
	if (r != KH_OK)
		kh_ctx_detail(c, "CV");
	return r;
}

/* ---- MKST ----------------------------------------------------------------- */

KH_ACT(kh_cmd_mkst)
{
	static const char *const tags[KH_MK_COUNT] = {"FT", "PM", "BK"};
	static const char *const prev_tags[KH_MK_COUNT] = {"FR", "PR", "BR"};
	char v[40], until[16];
	int r = kh_msg_put(resp, "BB", "Y");
	for (int i = 0; r == KH_OK && i < KH_MK_COUNT; i++) {
		struct kh_mk_info info;
		kh_mk_prune(c->hsm, (enum kh_mk_id)i);
		kh_mk_info(c->hsm, (enum kh_mk_id)i, &info);
		if (info.loaded)
			snprintf(v, sizeof(v), "Y/%s-%d/%s", info.alg, info.bits, info.kcv);
		else
			snprintf(v, sizeof(v), "N");
		r = kh_msg_put(resp, tags[i], v);
		if (r == KH_OK && info.prev_kcv[0]) {
			fmt_time(info.prev_until, until);
			snprintf(v, sizeof(v), "%s/%s", info.prev_kcv, until);
			r = kh_msg_put(resp, prev_tags[i], v);
		}
	}
	return r;
}

/* ---- MKLB / MKLA ---------------------------------------------------------- */

KH_ACT(kh_cmd_mklb)
{
	struct kh_mk_ceremony *cer = NULL;
	enum kh_mk_id id;
	char mode[3];
	size_t keylen = 0;
	uint64_t np = 0;
	bool rotate;
	uint32_t grace;
	int r;

	if ((r = key_name(c, req, &id)) != KH_OK)
		return r;
	if ((r = kh_frame_str(req, "MO", mode, sizeof(mode))) != KH_OK ||
	    (strcmp(mode, "C") != 0 && strcmp(mode, "F") != 0)) {
		kh_ctx_detail(c, "MO");
		return r != KH_OK ? r : KH_ERR_BAD_FIELD;
	}
	if (mode[0] == 'C') {
		if ((r = key_bits(c, req, &keylen)) != KH_OK)
			return r;
		if ((r = kh_frame_u64(req, "NP", 2, MAX_PARTS, &np)) != KH_OK) {
			kh_ctx_detail(c, "NP");
			return r;
		}
	}
	if ((r = read_rotation(c, req, id, &rotate, &grace)) != KH_OK)
		return r;

	if ((cer = calloc(1, sizeof(*cer))) == NULL)
		return KH_ERR_NOMEM;
	cer->id = id;
	cer->mode = mode[0];
	cer->keylen = keylen;
	cer->needed = (unsigned)np;
	cer->rotate = rotate;
	cer->grace = grace;
	if ((mode[0] == 'C' && (cer->acc = kh_secure_alloc(KH_MK_MAX_LEN)) == NULL) ||
	    (mode[0] == 'F' && (cer->shares = kh_secure_alloc(SHARES_LEN)) == NULL)) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if (mode[0] == 'C')
		r = audit(c, "majorkey.begin", "%s from %u components, AES-%zu%s", kh_mk_name(id),
		          cer->needed, keylen * 8, rotate ? ", rotation" : "");
	else
		r = audit(c, "majorkey.begin", "%s from fragments%s", kh_mk_name(id),
		          rotate ? ", rotation" : "");
	if (r != KH_OK)
		goto out;
	ceremony_end(c); /* a new MKLB replaces an unfinished ceremony */
	c->s->ceremony = cer;
	cer = NULL;
	r = kh_msg_put(resp, "BB", "Y");
out:
	kh_mk_ceremony_free(cer);
	return r;
}

KH_ACT(kh_cmd_mkla)
{
	struct kh_mk_ceremony *cer = c->s->ceremony;
	int r;
	if (cer == NULL)
		return KH_ERR_CEREMONY_STATE;
	r = audit(c, "majorkey.abort", "%s after %u of %u parts", kh_mk_name(cer->id), cer->entered,
	          cer->needed);
	ceremony_end(c); /* the parts go even if the audit record could not be written */
	if (r != KH_OK)
		return r;
	return kh_msg_put(resp, "BB", "Y");
}

/* ---- MKLC ----------------------------------------------------------------- */

static int enter_component(struct kh_ctx *c, const struct kh_frame *req, struct kh_buf *resp)
{
	struct kh_mk_ceremony *cer = c->s->ceremony;
	uint8_t *comp = NULL;
	size_t clen = 0;
	char kcv[7], want[7];
	int r;

	if (kh_frame_has(req, "FB") || kh_frame_has(req, "PP")) {
		kh_ctx_detail(c, "ceremony expects components (CM)");
		return KH_ERR_CEREMONY_STATE;
	}
	if ((r = kh_frame_hex_secure(req, "CM", KH_MK_MAX_LEN, &comp, &clen)) != KH_OK) {
		kh_ctx_detail(c, "CM");
		return r;
	}
	if (clen != cer->keylen) {
		kh_ctx_detail(c, "CM: must be %zu bytes", cer->keylen);
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	if ((r = kh_mk_kcv(comp, clen, kcv)) != KH_OK)
		goto out;
	if (kh_frame_has(req, "CV")) {
		if ((r = read_cv(c, req, want)) != KH_OK)
			goto out;
		if (!kh_ct_equal(want, kcv, 6)) {
			KH_IGNORE(audit(c, "majorkey.component.rejected",
			                "%s component with KCV %s does not match the expected %s",
			                kh_mk_name(cer->id), kcv, want));
			kh_ctx_detail(c, "CV");
			r = KH_ERR_BAD_KCV;
			goto out;
		}
	}
	/* the same component entered twice cancels out of the XOR: refuse it
	 * (equal check values mean equal components, barring a collision) */
	for (unsigned i = 0; i < cer->entered; i++) {
		if (kh_ct_equal(cer->kcvs[i], kcv, 6)) {
			kh_ctx_detail(c, "component %u repeats component %u", cer->entered + 1, i + 1);
			r = KH_ERR_BAD_KCV;
			goto out;
		}
	}
	if (cer->entered + 1 == cer->needed) {
		/* components that cancel out to a zero key are refused */
		uint8_t any = 0;
		for (size_t i = 0; i < clen; i++)
			any |= (uint8_t)(cer->acc[i] ^ comp[i]);
		if (any == 0) {
			kh_ctx_detail(c, "the components cancel out to an all-zero key");
			r = KH_ERR_BAD_KCV;
			goto out;
		}
	}
	if ((r = audit(c, "majorkey.component", "%s component %u of %u KCV %s", kh_mk_name(cer->id),
	               cer->entered + 1, cer->needed, kcv)) != KH_OK)
		goto out;
	for (size_t i = 0; i < clen; i++)
		cer->acc[i] ^= comp[i];
	memcpy(cer->kcvs[cer->entered], kcv, 7);
	cer->entered++;
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK ||
	    (r = kh_msg_put(resp, "AE", kcv)) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "LD", cer->entered)) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "LN", cer->needed)) != KH_OK)
		goto out;
	if (cer->entered == cer->needed) {
		char how[48];
		snprintf(how, sizeof(how), "from %u components", cer->needed);
		r = install(c, cer->id, cer->rotate, cer->grace, cer->acc, cer->keylen,
		            "majorkey.load", how, resp);
		ceremony_end(c);
	}
out:
	kh_secure_free(comp, clen ? clen : 1);
	return r;
}

/* Recombine the entered shares and load the key if it matches the check
 * value every fragment carries. The ceremony ends either way. */
static int finish_fragments(struct kh_ctx *c, struct kh_buf *resp)
{
	struct kh_mk_ceremony *cer = c->s->ceremony;
	gfshare_ctx *g = NULL;
	uint8_t *key = NULL;
	char kcv[7], how[48];
	int r;

	if ((key = kh_secure_alloc(KH_MK_MAX_LEN)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	gf_init();
	if ((g = gfshare_ctx_init_dec(cer->nums, cer->needed, (unsigned)cer->keylen)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	for (unsigned i = 0; i < cer->needed; i++)
		gfshare_ctx_dec_giveshare(g, (unsigned char)i, cer->shares + i * KH_MK_MAX_LEN);
	gfshare_ctx_dec_extract(g, key);
	if ((r = kh_mk_kcv(key, cer->keylen, kcv)) != KH_OK)
		goto out;
	if (!kh_ct_equal(kcv, cer->meta.kcv, 6)) {
		KH_IGNORE(audit(c, "majorkey.fragment.mismatch",
		                "%s fragments recombine to KCV %s, expected %s",
		                kh_mk_name(cer->id), kcv, cer->meta.kcv));
		kh_ctx_detail(c, "recombined key does not match the fragments' check value");
		r = KH_ERR_BAD_KCV;
		goto out;
	}
	snprintf(how, sizeof(how), "from %u of %u fragments", cer->needed, cer->meta.n);
	r = install(c, cer->id, cer->rotate, cer->grace, key, cer->keylen, "majorkey.load", how,
	            resp);
out:
	if (g != NULL)
		gfshare_ctx_free(g); /* scrubs its copy of the shares */
	kh_secure_free(key, KH_MK_MAX_LEN);
	ceremony_end(c);
	return r;
}

static int enter_fragment(struct kh_ctx *c, const struct kh_frame *req, struct kh_buf *resp)
{
	struct kh_mk_ceremony *cer = c->s->ceremony;
	const struct kh_field *fb = kh_frame_get(req, "FB");
	struct kh_fragment_hdr h;
	uint8_t file[KH_FRAGMENT_MAX_LEN];
	uint8_t *pass = NULL, *share = NULL;
	size_t flen = 0, plen = 0, slen = 0;
	int r;

	if (kh_frame_has(req, "CM")) {
		kh_ctx_detail(c, "ceremony expects fragments (FB, PP)");
		return KH_ERR_CEREMONY_STATE;
	}
	if (fb == NULL) {
		kh_ctx_detail(c, "FB");
		return KH_ERR_MISSING_FIELD;
	}
	if (fb->len > 2 * KH_FRAGMENT_MAX_LEN ||
	    (r = kh_frame_hex(req, "FB", file, sizeof(file), &flen)) != KH_OK) {
		kh_ctx_detail(c, "FB");
		return KH_ERR_BAD_FIELD;
	}
	if ((r = kh_frame_hex_secure(req, "PP", KH_FRAGMENT_PASS_MAX, &pass, &plen)) != KH_OK) {
		kh_ctx_detail(c, "PP");
		return r;
	}
	if (plen < KH_FRAGMENT_PASS_MIN) {
		kh_ctx_detail(c, "PP: %d to %d bytes", KH_FRAGMENT_PASS_MIN, KH_FRAGMENT_PASS_MAX);
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	if (kh_fragment_parse(file, flen, &h) != KH_OK) {
		kh_ctx_detail(c, "FB: not a valid fragment file");
		r = KH_ERR_FRAGMENT_INVALID;
		goto out;
	}
	if ((share = kh_secure_alloc(KH_MK_MAX_LEN)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if (kh_fragment_open(file, flen, pass, plen, &h, share, &slen) != KH_OK) {
		kh_ctx_detail(c, "PP: wrong passphrase or damaged fragment");
		r = KH_ERR_FRAGMENT_INVALID;
		goto out;
	}
	/* from here the header is authenticated */
	if (strcmp(h.name, kh_mk_name(cer->id)) != 0) {
		kh_ctx_detail(c, "FB: fragment of %s, not %s", h.name, kh_mk_name(cer->id));
		r = KH_ERR_FRAGMENT_INVALID;
		goto out;
	}
	if (cer->entered > 0) {
		const char *what = strcmp(h.alg, cer->meta.alg) != 0          ? "algorithm"
		                   : h.bits != cer->meta.bits                 ? "key length"
		                   : h.m != cer->meta.m || h.n != cer->meta.n ? "M-of-N split"
		                   : !kh_ct_equal(h.kcv, cer->meta.kcv, 6)    ? "key check value"
		                                                              : NULL;
		if (what != NULL) {
			kh_ctx_detail(c, "FB: %s differs from the first fragment's", what);
			r = KH_ERR_FRAGMENT_INVALID;
			goto out;
		}
		for (unsigned i = 0; i < cer->entered; i++) {
			if (cer->nums[i] == h.number) {
				kh_ctx_detail(c, "FB: fragment %u already entered", h.number);
				r = KH_ERR_FRAGMENT_DUPLICATE;
				goto out;
			}
		}
	}
	if ((r = audit(c, "majorkey.fragment", "%s fragment %u (%u-of-%u) KCV %s",
	               kh_mk_name(cer->id), h.number, h.m, h.n, h.kcv)) != KH_OK)
		goto out;
	if (cer->entered == 0) {
		cer->meta = h;
		cer->meta.ct = NULL;
		cer->meta.ctlen = 0;
		cer->keylen = h.bits / 8;
		cer->needed = h.m;
	}
	memcpy(cer->shares + cer->entered * KH_MK_MAX_LEN, share, slen);
	cer->nums[cer->entered] = (uint8_t)h.number;
	cer->entered++;
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "FX", h.number)) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "LD", cer->entered)) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "LN", cer->needed)) != KH_OK)
		goto out;
	if (cer->entered == cer->needed)
		r = finish_fragments(c, resp);
out:
	/* a refused fragment is a ceremony step too (wrong passphrases matter) */
	if (r == KH_ERR_FRAGMENT_INVALID || r == KH_ERR_FRAGMENT_DUPLICATE)
		KH_IGNORE(audit(c, "majorkey.fragment.rejected", "%s: %s", kh_mk_name(cer->id),
		                c->s->detail));
	kh_secure_free(pass, plen ? plen : 1);
	kh_secure_free(share, KH_MK_MAX_LEN);
	kh_wipe(file, sizeof(file));
	return r;
}

KH_ACT(kh_cmd_mklc)
{
	struct kh_mk_ceremony *cer = c->s->ceremony;
	if (cer == NULL) {
		kh_ctx_detail(c, "no ceremony: send MKLB first");
		return KH_ERR_CEREMONY_STATE;
	}
	return cer->mode == 'C' ? enter_component(c, req, resp) : enter_fragment(c, req, resp);
}

/* ---- MKGN ----------------------------------------------------------------- */

KH_ACT(kh_cmd_mkgn)
{
	enum kh_mk_id id;
	size_t keylen = 0, plen[MAX_PARTS] = {0};
	uint64_t m = 0, n = 0;
	uint8_t *pass[MAX_PARTS] = {0};
	uint8_t *key = NULL, *shares = NULL;
	uint8_t files[MAX_PARTS][KH_FRAGMENT_MAX_LEN];
	size_t flen[MAX_PARTS] = {0};
	unsigned char nums[MAX_PARTS];
	struct kh_fragment_hdr h;
	gfshare_ctx *g = NULL;
	char tag[3], kcv[7], how[48];
	bool rotate;
	uint32_t grace;
	int r;

	if ((r = key_name(c, req, &id)) != KH_OK || (r = key_bits(c, req, &keylen)) != KH_OK)
		return r;
	if ((r = kh_frame_u64(req, "FM", 2, MAX_PARTS, &m)) != KH_OK) {
		kh_ctx_detail(c, "FM");
		return r;
	}
	if ((r = kh_frame_u64(req, "FN", m, MAX_PARTS, &n)) != KH_OK) {
		kh_ctx_detail(c, "FN");
		return r;
	}
	if ((r = read_rotation(c, req, id, &rotate, &grace)) != KH_OK)
		return r;
	for (unsigned i = 0; i < MAX_PARTS; i++) {
		snprintf(tag, sizeof(tag), "P%u", i + 1);
		if (i >= n) {
			if (kh_frame_has(req, tag)) {
				kh_ctx_detail(c, "%s: more passphrases than fragments", tag);
				r = KH_ERR_BAD_FIELD;
				goto out;
			}
			continue;
		}
		r = kh_frame_hex_secure(req, tag, KH_FRAGMENT_PASS_MAX, &pass[i], &plen[i]);
		if (r == KH_OK && plen[i] < KH_FRAGMENT_PASS_MIN)
			r = KH_ERR_BAD_FIELD;
		if (r != KH_OK) {
			kh_ctx_detail(c, "%s", tag);
			goto out;
		}
	}

	if ((key = kh_secure_alloc(KH_MK_MAX_LEN)) == NULL ||
	    (shares = kh_secure_alloc(SHARES_LEN)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if (RAND_priv_bytes(key, (int)keylen) != 1) {
		r = KH_ERR_CRYPTO;
		goto out;
	}
	if ((r = kh_mk_kcv(key, keylen, kcv)) != KH_OK)
		goto out;
	/* split: share i has number i+1 (its x coordinate; never 0) */
	for (unsigned i = 0; i < n; i++)
		nums[i] = (unsigned char)(i + 1);
	gf_init();
	if ((g = gfshare_ctx_init_enc(nums, (unsigned)n, (unsigned char)m, (unsigned)keylen)) ==
	    NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	gfshare_ctx_enc_setsecret(g, key);
	for (unsigned i = 0; i < n; i++)
		gfshare_ctx_enc_getshare(g, (unsigned char)i, shares + i * KH_MK_MAX_LEN);
	if (gf_rand_failed) {
		r = KH_ERR_CRYPTO;
		goto out;
	}
	memset(&h, 0, sizeof(h));
	snprintf(h.name, sizeof(h.name), "%s", kh_mk_name(id));
	snprintf(h.alg, sizeof(h.alg), "AES");
	h.bits = (unsigned)keylen * 8;
	h.m = (unsigned)m;
	h.n = (unsigned)n;
	memcpy(h.kcv, kcv, 7);
	for (unsigned i = 0; i < n; i++) {
		h.number = i + 1;
		if ((r = kh_fragment_seal(&h, shares + i * KH_MK_MAX_LEN, pass[i], plen[i],
		                          files[i], &flen[i])) != KH_OK)
			goto out;
	}
	snprintf(how, sizeof(how), "generated as %u-of-%u fragments", (unsigned)m, (unsigned)n);
	/* BB first: install appends KV and the rotation's fields */
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK ||
	    (r = install(c, id, rotate, grace, key, keylen, "majorkey.generate", how, resp)) !=
	        KH_OK)
		goto out;
	for (unsigned i = 0; i < n && r == KH_OK; i++) {
		/* F1..F9: MAX_PARTS keeps the number to one digit */
		tag[0] = 'F';
		tag[1] = (char)('1' + i);
		tag[2] = '\0';
		r = kh_msg_put_hex(resp, tag, files[i], flen[i]);
	}
out:
	if (g != NULL)
		gfshare_ctx_free(g); /* scrubs the coefficients */
	for (unsigned i = 0; i < MAX_PARTS; i++)
		kh_secure_free(pass[i], plen[i] ? plen[i] : 1);
	kh_secure_free(key, KH_MK_MAX_LEN);
	kh_secure_free(shares, SHARES_LEN);
	return r;
}

/* ---- MKER ----------------------------------------------------------------- */

KH_ACT(kh_cmd_mker)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX];
	enum kh_mk_id id;
	int r;
	if ((r = key_name(c, req, &id)) != KH_OK)
		return r;
	kh_session_actor(c->s, actor, sizeof(actor));
	if ((r = kh_mk_erase(c->hsm, id, actor)) != KH_OK) {
		if (r == KH_ERR_NOT_FOUND)
			kh_ctx_detail(c, "%s is not loaded", kh_mk_name(id));
		return r;
	}
	return kh_msg_put(resp, "BB", "Y");
}
