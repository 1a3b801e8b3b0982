/*
 * Objects: the handle table, token objects read from the HSM's key table
 * (GPKM, GPKR) and session objects held as cryptograms, templates for new
 * keys, finding, attributes, create / copy / destroy, and key generation.
 * A handle names one key for the life of the module: a token object is
 * named to the HSM by slot and key identifier, so a slot that now holds
 * another key is refused rather than used.
 */
#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/objects.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "pkcs11/p11.h"
#include "pkcs11/p11_attr.h"
#include "pkcs11/p11_internal.h"
#include "pkcs11/p11_log.h"
#include "common/kh_mem.h"

#define GPKM_PAGE 1000

struct p11_retired {
	struct p11_retired *next;
	uint8_t *p;
	size_t n;
};

/* Guarded by the module lock. */
static struct {
	struct p11_hmap objs;  /* handle -> obj */
	struct p11_hmap token; /* token_key(slot, hsm slot) -> obj */
	CK_OBJECT_HANDLE next;
} O;

static uint64_t token_key(const struct p11_slot *sl, uint32_t hsm_slot)
{
	return ((uint64_t)(sl->id + 1) << 32) | ((uint64_t)hsm_slot + 1);
}

static void buf_free(uint8_t **p, size_t *n)
{
	if (*p) {
		kh_wipe(*p, *n);
		free(*p);
	}
	*p = NULL;
	*n = 0;
}

static void obj_free(struct p11_obj *o)
{
	buf_free(&o->cg, &o->cg_len);
	buf_free(&o->pub, &o->pub_len);
	buf_free(&o->value, &o->value_len);
	buf_free(&o->label, &o->label_len);
	buf_free(&o->ckaid, &o->ckaid_len);
	buf_free(&o->extra, &o->extra_len);
	for (struct p11_retired *r = o->retired, *nx; r; r = nx) {
		nx = r->next;
		kh_wipe(r->p, r->n);
		free(r->p);
		free(r);
	}
	free(o);
}

/* Keep memory that a concurrent call may still read until the object goes. */
static void retire(struct p11_obj *o, uint8_t *p, size_t n)
{
	if (!p)
		return;
	struct p11_retired *r = malloc(sizeof(*r));
	if (!r) {
		/* cannot keep it: leak rather than free under a reader */
		return;
	}
	r->p = p;
	r->n = n;
	r->next = o->retired;
	o->retired = r;
}

/* module lock held */
static void obj_unref_locked(struct p11_obj *o)
{
	if (--o->refs == 0)
		obj_free(o);
}

void p11_obj_put_locked(struct p11_obj *o)
{
	if (o)
		obj_unref_locked(o);
}

void p11_obj_put(struct p11_obj *o)
{
	if (!o)
		return;
	p11_lock();
	obj_unref_locked(o);
	p11_unlock();
}

/* Remove the handle (module lock held); the table's reference goes. */
static void unpublish_locked(struct p11_obj *o)
{
	if (o->destroyed)
		return;
	o->destroyed = true;
	p11_hmap_del(&O.objs, o->handle);
	if (o->token && p11_hmap_get(&O.token, token_key(o->slot, o->hsm_slot)) == o)
		p11_hmap_del(&O.token, token_key(o->slot, o->hsm_slot));
	obj_unref_locked(o);
}

/* Give o a handle (it arrives with refs = 1: the table's). Module lock held. */
static CK_RV publish_locked(struct p11_obj *o)
{
	o->handle = ++O.next;
	if (p11_hmap_put(&O.objs, o->handle, o) != KH_OK)
		return CKR_HOST_MEMORY;
	if (o->token) {
		struct p11_obj *old = p11_hmap_get(&O.token, token_key(o->slot, o->hsm_slot));
		if (old)
			unpublish_locked(old);
		if (p11_hmap_put(&O.token, token_key(o->slot, o->hsm_slot), o) != KH_OK) {
			p11_hmap_del(&O.objs, o->handle);
			return CKR_HOST_MEMORY;
		}
	}
	return CKR_OK;
}

static CK_RV publish(struct p11_obj *o, CK_OBJECT_HANDLE *out)
{
	p11_lock();
	CK_RV rv = publish_locked(o);
	if (rv == CKR_OK)
		*out = o->handle;
	p11_unlock();
	if (rv != CKR_OK)
		obj_free(o);
	return rv;
}

void p11_objects_free_all(void)
{
	size_t it = 0;
	uint64_t k;
	void *v;
	while (p11_hmap_next(&O.objs, &it, &k, &v)) {
		struct p11_obj *o = v;
		o->destroyed = true;
		obj_unref_locked(o);
	}
	p11_hmap_free(&O.objs);
	p11_hmap_free(&O.token);
	O.next = 0;
}

static void unpublish_where(bool (*pred)(const struct p11_obj *, const void *), const void *arg)
{
	p11_lock();
	size_t it = 0;
	uint64_t k;
	void *v;
	while (p11_hmap_next(&O.objs, &it, &k, &v)) {
		struct p11_obj *o = v;
		if (pred(o, arg))
			unpublish_locked(o);
	}
	p11_unlock();
}

static bool owned_by(const struct p11_obj *o, const void *arg)
{
	return !o->token && o->owner == *(const CK_SESSION_HANDLE *)arg;
}

static bool private_session_obj(const struct p11_obj *o, const void *arg)
{
	return !o->token && o->slot == arg && o->priv;
}

void p11_objects_session_closed(CK_SESSION_HANDLE h)
{
	unpublish_where(owned_by, &h);
}

void p11_objects_logged_out(struct p11_slot *sl)
{
	unpublish_where(private_session_obj, sl);
}

/* ---- reading token objects from the HSM ---- */

static bool default_private(CK_OBJECT_CLASS cls)
{
	return cls == CKO_SECRET_KEY || cls == CKO_PRIVATE_KEY;
}

static bool field_letters(const struct kh_frame *f, const char *tag, bool usage, unsigned *out)
{
	const struct kh_field *fl = kh_frame_get(f, tag);
	if (!fl)
		return false;
	return usage ? p11_usage_parse(fl->val, fl->len, out) : p11_flag_parse(fl->val, fl->len, out);
}

/* GPKR / GPKS answer -> attributes of o (fields o does not own yet). */
static CK_RV settings_parse(const struct kh_frame *f, struct p11_obj *o)
{
	const struct kh_field *cl = kh_frame_get(f, "CL"), *ty = kh_frame_get(f, "TY");
	uint8_t *kd = NULL;
	size_t kdlen = 0;
	uint64_t bits = 0;
	if (!cl || !ty || !p11_class_from(cl->val, cl->len, &o->cls) || kh_frame_u64(f, "BT", 0, 1u << 20, &bits) != KH_OK ||
	    p11_field_bytes(f, "KD", &kd, &kdlen) != KH_OK || kdlen != P11_KEY_ID_LEN) {
		free(kd);
		return CKR_DEVICE_ERROR;
	}
	memcpy(o->key_id, kd, P11_KEY_ID_LEN);
	free(kd);
	o->bits = (CK_ULONG)bits;
	if (!p11_ktype_from(ty->val, ty->len, &o->ktype))
		o->ktype = CKK_GENERIC_SECRET;
	unsigned u = 0, fl = 0;
	if (field_letters(f, "CZ", true, &u))
		o->usage = u;
	if (field_letters(f, "KF", false, &fl))
		o->flags = fl;
	KH_IGNORE(p11_field_bytes(f, "LB", &o->label, &o->label_len));
	KH_IGNORE(p11_field_bytes(f, "KI", &o->ckaid, &o->ckaid_len));
	KH_IGNORE(p11_field_bytes(f, "EX", &o->extra, &o->extra_len));
	KH_IGNORE(p11_field_bytes(f, "RD", &o->pub, &o->pub_len));
	if (o->cls == CKO_CERTIFICATE)
		KH_IGNORE(p11_field_bytes(f, "CE", &o->value, &o->value_len));
	if (o->cls == CKO_DATA)
		KH_IGNORE(p11_field_bytes(f, "DV", &o->value, &o->value_len));
	uint8_t *ae = NULL;
	size_t aelen = 0;
	if (p11_field_bytes(f, "AE", &ae, &aelen) == KH_OK && aelen >= 3) {
		memcpy(o->kcv, ae, 3);
		o->has_kcv = true;
	}
	free(ae);
	const uint8_t *pv;
	size_t pvlen;
	if (p11_extra_find(o->extra, o->extra_len, CKA_PRIVATE, &pv, &pvlen) && pvlen == 1)
		o->priv = pv[0] != 0;
	else
		o->priv = default_private(o->cls);
	return CKR_OK;
}

static CK_RV load_token(struct p11_session *s, struct p11_obj *o)
{
	struct kh_buf *req = kh_buf_new(256), *resp = p11_buf_new();
	struct kh_frame f;
	struct p11_obj *t = calloc(1, sizeof(*t));
	CK_RV rv = CKR_HOST_MEMORY;
	if (!req || !resp || !t)
		goto out;
	if (kh_msg_begin(req, "GPKR") != KH_OK || kh_msg_put_u64(req, "SL", o->hsm_slot) != KH_OK ||
	    kh_msg_end(req) != KH_OK)
		goto out;
	int r = p11_call(s, P11_CALL_BALANCE, req, resp, &f);
	if (r == KH_ERR_NOT_FOUND) {
		rv = CKR_OBJECT_HANDLE_INVALID;
		goto gone;
	}
	if (r != KH_OK) {
		rv = p11_rv_from_kh(r);
		goto out;
	}
	if ((rv = settings_parse(&f, t)) != CKR_OK)
		goto out;
	if (memcmp(t->key_id, o->key_id, P11_KEY_ID_LEN) != 0) {
		/* the slot holds another key now */
		rv = CKR_OBJECT_HANDLE_INVALID;
		goto gone;
	}
	p11_lock();
	if (!o->loaded) {
		o->cls = t->cls;
		o->ktype = t->ktype;
		o->bits = t->bits;
		o->usage = t->usage;
		o->flags = t->flags;
		o->priv = t->priv;
		o->has_kcv = t->has_kcv;
		memcpy(o->kcv, t->kcv, 3);
#define MOVE(fld) do { o->fld = t->fld; o->fld##_len = t->fld##_len; t->fld = NULL; t->fld##_len = 0; } while (0)
		MOVE(pub);
		MOVE(value);
		MOVE(label);
		MOVE(ckaid);
		MOVE(extra);
#undef MOVE
		o->loaded = true;
	}
	p11_unlock();
	rv = CKR_OK;
	goto out;
gone:
	p11_lock();
	unpublish_locked(o);
	p11_unlock();
out:
	if (t)
		obj_free(t);
	kh_buf_free(req);
	kh_buf_free(resp);
	return rv;
}

CK_RV p11_obj_get(struct p11_session *s, CK_OBJECT_HANDLE h, struct p11_obj **out)
{
	p11_lock();
	struct p11_obj *o = p11_hmap_get(&O.objs, h);
	if (!o || o->destroyed || o->slot != s->slot) {
		p11_unlock();
		return CKR_OBJECT_HANDLE_INVALID;
	}
	o->refs++;
	bool loaded = o->loaded;
	p11_unlock();
	if (!loaded) {
		CK_RV rv = load_token(s, o);
		if (rv != CKR_OK) {
			p11_obj_put(o);
			return rv;
		}
	}
	if (o->priv && !p11_session_logged_in(s)) {
		p11_obj_put(o);
		return CKR_OBJECT_HANDLE_INVALID;
	}
	*out = o;
	return CKR_OK;
}

int p11_obj_put_ref(const struct p11_obj *o, struct kh_buf *req, const char *slot_tag, const char *id_tag,
		    const char *cg_tag)
{
	int r;
	if (o->token) {
		r = kh_msg_put_u64(req, slot_tag, o->hsm_slot);
		if (r == KH_OK && id_tag)
			r = kh_msg_put_hex(req, id_tag, o->key_id, P11_KEY_ID_LEN);
		return r;
	}
	if (!o->cg)
		return KH_ERR_BAD_FIELD;
	p11_lock();
	r = kh_msg_put_hex(req, cg_tag, o->cg, o->cg_len);
	p11_unlock();
	return r;
}

const uint8_t *p11_obj_spki(const struct p11_obj *o, size_t *len)
{
	*len = o->pub_len;
	return o->pub;
}

/* ---- templates ---- */

static const CK_ATTRIBUTE *tmpl_find(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
	for (CK_ULONG i = 0; i < n; i++)
		if (t[i].type == type)
			return &t[i];
	return NULL;
}

static CK_RV attr_bool(const CK_ATTRIBUTE *a, bool *v)
{
	if (!a->pValue || a->ulValueLen != sizeof(CK_BBOOL))
		return CKR_ATTRIBUTE_VALUE_INVALID;
	CK_BBOOL b = *(const CK_BBOOL *)a->pValue;
	if (b != CK_TRUE && b != CK_FALSE)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	*v = b == CK_TRUE;
	return CKR_OK;
}

static CK_RV attr_ulong(const CK_ATTRIBUTE *a, CK_ULONG *v)
{
	if (!a->pValue || a->ulValueLen != sizeof(CK_ULONG))
		return CKR_ATTRIBUTE_VALUE_INVALID;
	memcpy(v, a->pValue, sizeof(*v));
	return CKR_OK;
}

static CK_RV attr_dup(const CK_ATTRIBUTE *a, uint8_t **p, size_t *n, size_t max)
{
	if (a->ulValueLen && !a->pValue)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	if (a->ulValueLen > max)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	uint8_t *b = malloc(a->ulValueLen ? a->ulValueLen : 1);
	if (!b)
		return CKR_HOST_MEMORY;
	if (a->ulValueLen)
		memcpy(b, a->pValue, a->ulValueLen);
	free(*p);
	*p = b;
	*n = a->ulValueLen;
	return CKR_OK;
}

static const struct {
	CK_ATTRIBUTE_TYPE t;
	unsigned bit;
} usage_attrs[] = {
	{CKA_ENCRYPT, P11_U_ENCRYPT}, {CKA_DECRYPT, P11_U_DECRYPT}, {CKA_SIGN, P11_U_SIGN},
	{CKA_VERIFY, P11_U_VERIFY},   {CKA_WRAP, P11_U_WRAP},       {CKA_UNWRAP, P11_U_UNWRAP},
	{CKA_DERIVE, P11_U_DERIVE},   {CKA_SIGN_RECOVER, P11_U_SIGN}, {CKA_VERIFY_RECOVER, P11_U_VERIFY},
};

static bool usage_attr(CK_ATTRIBUTE_TYPE t, unsigned *bit)
{
	for (size_t i = 0; i < sizeof(usage_attrs) / sizeof(usage_attrs[0]); i++)
		if (usage_attrs[i].t == t) {
			*bit = usage_attrs[i].bit;
			return true;
		}
	return false;
}

void p11_newkey_free(struct p11_newkey *nk)
{
	free(nk->pubexp);
	free(nk->ec_params);
	free(nk->label);
	free(nk->ckaid);
	free(nk->extra);
	if (nk->value) {
		kh_wipe(nk->value, nk->value_len_bytes);
		free(nk->value);
	}
	memset(nk, 0, sizeof(*nk));
}

/* Key components C_CreateObject reads from the template itself. */
static bool component_attr(CK_ATTRIBUTE_TYPE t)
{
	switch (t) {
	case CKA_MODULUS:
	case CKA_PRIVATE_EXPONENT:
	case CKA_PRIME_1:
	case CKA_PRIME_2:
	case CKA_EXPONENT_1:
	case CKA_EXPONENT_2:
	case CKA_COEFFICIENT:
	case CKA_EC_POINT:
	case CKA_PUBLIC_KEY_INFO:
	case CKA_CERTIFICATE_TYPE:
	case CKA_APPLICATION:
	case CKA_OBJECT_ID:
		return true;
	default:
		return false;
	}
}

CK_RV p11_tmpl_parse(const CK_ATTRIBUTE *t, CK_ULONG n, enum p11_tmpl_use use, CK_OBJECT_CLASS cls,
		     CK_KEY_TYPE ktype, struct p11_newkey *nk)
{
	CK_RV rv = CKR_OK;
	bool v;
	unsigned set_usage = 0, clear_usage = 0, bit;
	bool have_sensitive = false, sensitive = true, have_extractable = false, extractable = false;
	bool modifiable = true, have_priv = false;
	CK_ULONG ul;

	memset(nk, 0, sizeof(*nk));
	if (n && !t)
		return CKR_ARGUMENTS_BAD;
	nk->cls = cls;
	nk->ktype = ktype;
	for (CK_ULONG i = 0; i < n && rv == CKR_OK; i++) {
		const CK_ATTRIBUTE *a = &t[i];
		if (a->ulValueLen && !a->pValue && a->ulValueLen != CK_UNAVAILABLE_INFORMATION) {
			rv = CKR_ATTRIBUTE_VALUE_INVALID;
			break;
		}
		for (CK_ULONG j = 0; j < i && rv == CKR_OK; j++)
			if (t[j].type == a->type)
				rv = CKR_TEMPLATE_INCONSISTENT; /* said twice */
		if (rv != CKR_OK)
			break;
		switch (a->type) {
		case CKA_CLASS:
			if ((rv = attr_ulong(a, &ul)) == CKR_OK && cls != (CK_OBJECT_CLASS)-1 && ul != cls)
				rv = CKR_TEMPLATE_INCONSISTENT;
			if (rv == CKR_OK)
				nk->cls = ul;
			break;
		case CKA_KEY_TYPE:
			if ((rv = attr_ulong(a, &ul)) != CKR_OK)
				break;
			if (ktype != (CK_KEY_TYPE)-1 && ul != ktype &&
			    !(ktype == CKK_GENERIC_SECRET && p11_is_hmac_ktype(ul)))
				rv = CKR_TEMPLATE_INCONSISTENT;
			else
				nk->ktype = ul;
			break;
		case CKA_TOKEN:
			rv = attr_bool(a, &nk->token);
			break;
		case CKA_PRIVATE:
			rv = attr_bool(a, &nk->priv);
			have_priv = true;
			break;
		case CKA_MODIFIABLE:
			rv = attr_bool(a, &modifiable);
			break;
		case CKA_COPYABLE:
		case CKA_DESTROYABLE:
			/* an HSM key can always be copied and destroyed by its role */
			if ((rv = attr_bool(a, &v)) == CKR_OK && !v)
				rv = CKR_ATTRIBUTE_VALUE_INVALID;
			break;
		case CKA_LABEL:
			rv = attr_dup(a, &nk->label, &nk->label_len, 4096);
			break;
		case CKA_ID:
			rv = attr_dup(a, &nk->ckaid, &nk->ckaid_len, 4096);
			break;
		case CKA_SENSITIVE:
			rv = attr_bool(a, &sensitive);
			have_sensitive = true;
			break;
		case CKA_EXTRACTABLE:
			rv = attr_bool(a, &extractable);
			have_extractable = true;
			break;
		case CKA_VALUE_LEN:
			rv = attr_ulong(a, &nk->value_len);
			break;
		case CKA_MODULUS_BITS:
			rv = attr_ulong(a, &nk->modulus_bits);
			break;
		case CKA_PUBLIC_EXPONENT:
			rv = attr_dup(a, &nk->pubexp, &nk->pubexp_len, 64);
			break;
		case CKA_EC_PARAMS:
			rv = attr_dup(a, &nk->ec_params, &nk->ec_params_len, 256);
			break;
		case CKA_VALUE:
			if (use != P11_TMPL_CREATE) {
				rv = CKR_ATTRIBUTE_READ_ONLY;
				break;
			}
			if (a->ulValueLen > 65536) {
				rv = CKR_ATTRIBUTE_VALUE_INVALID;
				break;
			}
			nk->value = malloc(a->ulValueLen ? a->ulValueLen : 1);
			if (!nk->value) {
				rv = CKR_HOST_MEMORY;
				break;
			}
			if (a->ulValueLen)
				memcpy(nk->value, a->pValue, a->ulValueLen);
			nk->value_len_bytes = a->ulValueLen;
			break;
		case CKA_LOCAL:
		case CKA_ALWAYS_SENSITIVE:
		case CKA_NEVER_EXTRACTABLE:
		case CKA_KEY_GEN_MECHANISM:
		case CKA_UNIQUE_ID:
			rv = CKR_ATTRIBUTE_READ_ONLY;
			break;
		case CKA_ALWAYS_AUTHENTICATE:
		case CKA_WRAP_WITH_TRUSTED:
		case CKA_TRUSTED:
			/* not supported when true */
			if ((rv = attr_bool(a, &v)) == CKR_OK && v)
				rv = CKR_ATTRIBUTE_VALUE_INVALID;
			break;
		case CKA_CHECK_VALUE:
			/* accepted and ignored: the HSM computes its own */
			break;
		default:
			if (usage_attr(a->type, &bit)) {
				if ((rv = attr_bool(a, &v)) == CKR_OK) {
					if (v)
						set_usage |= bit;
					else
						clear_usage |= bit;
				}
			} else if (p11_attr_descriptive(a->type)) {
				if (a->ulValueLen > 4096)
					rv = CKR_ATTRIBUTE_VALUE_INVALID;
				else if (p11_extra_set(&nk->extra, &nk->extra_len, a->type, a->pValue, a->ulValueLen) != KH_OK)
					rv = CKR_HOST_MEMORY;
			} else if (use == P11_TMPL_CREATE && component_attr(a->type)) {
				/* read by C_CreateObject from the template */
			} else if (a->type == CKA_SUBJECT || a->type == CKA_START_DATE || a->type == CKA_END_DATE) {
				/* descriptive: handled above */
			} else {
				rv = CKR_ATTRIBUTE_TYPE_INVALID;
			}
			break;
		}
	}
	if (rv != CKR_OK) {
		p11_newkey_free(nk);
		return rv;
	}
	if (p11_is_hmac_ktype(nk->ktype)) {
		CK_ULONG kt = nk->ktype;
		if (p11_extra_set(&nk->extra, &nk->extra_len, CKA_KEY_TYPE, &kt, sizeof(kt)) != KH_OK) {
			p11_newkey_free(nk);
			return CKR_HOST_MEMORY;
		}
	}
	/* usage: what the template says; where it says nothing, what the key
	 * type can do (derive only when asked, as PKCS#11's default is false) */
	unsigned allowed = p11_usage_allowed(nk->cls, nk->ktype);
	unsigned dflt = allowed & ~P11_U_DERIVE;
	if (nk->ktype == CKK_EC_MONTGOMERY)
		dflt = P11_U_DERIVE;
	if (nk->cls == CKO_SECRET_KEY && nk->ktype == CKK_AES)
		dflt = P11_U_ENCRYPT | P11_U_DECRYPT | P11_U_SIGN | P11_U_VERIFY | P11_U_WRAP | P11_U_UNWRAP;
	nk->usage = ((dflt & ~clear_usage) | set_usage) & allowed;
	if (set_usage & ~allowed)
		p11_log(P11_LOG_DEBUG, "template usage 0x%x not possible for this key type: dropped", set_usage & ~allowed);
	bool secretish = nk->cls == CKO_SECRET_KEY || nk->cls == CKO_PRIVATE_KEY;
	nk->flags = 0;
	if (secretish) {
		if (!have_sensitive)
			sensitive = true;
		if (!have_extractable)
			extractable = false;
		if (sensitive)
			nk->flags |= P11_F_SENSITIVE;
		if (extractable)
			nk->flags |= P11_F_EXPORTABLE;
	} else if (have_sensitive && sensitive && nk->cls == CKO_PUBLIC_KEY) {
		p11_newkey_free(nk);
		return CKR_ATTRIBUTE_VALUE_INVALID;
	}
	if (modifiable)
		nk->flags |= P11_F_MODIFIABLE;
	if (!have_priv)
		nk->priv = default_private(nk->cls);
	else if (nk->priv != default_private(nk->cls)) {
		uint8_t b = nk->priv;
		if (p11_extra_set(&nk->extra, &nk->extra_len, CKA_PRIVATE, &b, 1) != KH_OK) {
			p11_newkey_free(nk);
			return CKR_HOST_MEMORY;
		}
	}
	return CKR_OK;
}

int p11_newkey_put(const struct p11_newkey *nk, struct kh_buf *req, const char *usage_tag, const char *flags_tag,
		   const char *dest_tag)
{
	char letters[8];
	int r = KH_OK;
	if (usage_tag) {
		p11_usage_letters(nk->usage, letters);
		r = kh_msg_put(req, usage_tag, letters);
	}
	if (r == KH_OK && flags_tag) {
		p11_flag_letters(nk->flags & (P11_F_EXPORTABLE | P11_F_SENSITIVE | P11_F_MODIFIABLE), letters);
		r = kh_msg_put(req, flags_tag, letters);
	}
	if (r == KH_OK)
		r = kh_msg_put(req, "FS", "FTK");
	if (r == KH_OK && nk->token && dest_tag)
		r = kh_msg_put(req, dest_tag, "*");
	if (r == KH_OK && nk->token && nk->label_len)
		r = kh_msg_put_hex(req, "LB", nk->label, nk->label_len);
	if (r == KH_OK && nk->token && nk->ckaid_len)
		r = kh_msg_put_hex(req, "KI", nk->ckaid, nk->ckaid_len);
	if (r == KH_OK && nk->token && nk->extra_len)
		r = kh_msg_put_hex(req, "EX", nk->extra, nk->extra_len);
	return r;
}

static CK_RV dup_into(uint8_t **dst, size_t *dlen, const uint8_t *src, size_t n)
{
	*dst = NULL;
	*dlen = 0;
	if (!src)
		return CKR_OK;
	*dst = malloc(n ? n : 1);
	if (!*dst)
		return CKR_HOST_MEMORY;
	if (n)
		memcpy(*dst, src, n);
	*dlen = n;
	return CKR_OK;
}

static struct p11_obj *obj_new(struct p11_session *s, const struct p11_newkey *nk)
{
	struct p11_obj *o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->slot = s->slot;
	o->refs = 1;
	o->token = nk->token;
	o->owner = nk->token ? 0 : s->handle;
	o->cls = nk->cls;
	o->ktype = nk->ktype;
	o->usage = nk->usage;
	o->flags = nk->flags;
	o->priv = nk->priv;
	o->loaded = true;
	if (dup_into(&o->label, &o->label_len, nk->label, nk->label_len) != CKR_OK ||
	    dup_into(&o->ckaid, &o->ckaid_len, nk->ckaid, nk->ckaid_len) != CKR_OK ||
	    dup_into(&o->extra, &o->extra_len, nk->extra, nk->extra_len) != CKR_OK) {
		obj_free(o);
		return NULL;
	}
	return o;
}

CK_RV p11_obj_from_resp(struct p11_session *s, const struct p11_newkey *nk, const struct kh_frame *f,
			const char *dest_tag, const char *id_tag, const char *cg_tag, const char *pub_tag,
			CK_OBJECT_HANDLE *out)
{
	struct p11_obj *o = obj_new(s, nk);
	uint8_t *kd = NULL;
	size_t kdlen = 0;
	uint64_t slot;
	if (!o)
		return CKR_HOST_MEMORY;
	if (p11_field_bytes(f, id_tag, &kd, &kdlen) != KH_OK || kdlen != P11_KEY_ID_LEN)
		goto bad;
	memcpy(o->key_id, kd, P11_KEY_ID_LEN);
	free(kd);
	kd = NULL;
	if (nk->token) {
		if (kh_frame_u64(f, dest_tag, 0, 0xffffffffu, &slot) != KH_OK)
			goto bad;
		o->hsm_slot = (uint32_t)slot;
	} else {
		if (p11_field_bytes(f, cg_tag, &o->cg, &o->cg_len) != KH_OK)
			goto bad;
		o->cg_tag = cg_tag;
	}
	if (pub_tag)
		KH_IGNORE(p11_field_bytes(f, pub_tag, &o->pub, &o->pub_len));
	uint8_t *ae = NULL;
	size_t aelen = 0;
	if (p11_field_bytes(f, "AE", &ae, &aelen) == KH_OK && aelen >= 3) {
		memcpy(o->kcv, ae, 3);
		o->has_kcv = true;
	}
	free(ae);
	if (nk->cls == CKO_SECRET_KEY && !o->bits)
		o->bits = nk->value_len * 8;
	if (o->pub) {
		const uint8_t *p = o->pub;
		EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)o->pub_len);
		if (pk)
			o->bits = (CK_ULONG)EVP_PKEY_get_bits(pk);
		EVP_PKEY_free(pk);
	}
	return publish(o, out);
bad:
	free(kd);
	obj_free(o);
	p11_log(P11_LOG_ERROR, "the HSM's answer lacks %s/%s", id_tag, nk->token ? dest_tag : cg_tag);
	return CKR_DEVICE_ERROR;
}

/* ---- finding ---- */

struct filter {
	bool has_cls, has_kt, has_label, has_id, has_token, others;
	CK_OBJECT_CLASS cls;
	CK_KEY_TYPE kt;
	bool token;
	const CK_ATTRIBUTE *label, *id;
};

static CK_RV filter_parse(const CK_ATTRIBUTE *t, CK_ULONG n, struct filter *fl)
{
	memset(fl, 0, sizeof(*fl));
	for (CK_ULONG i = 0; i < n; i++) {
		const CK_ATTRIBUTE *a = &t[i];
		if (a->ulValueLen && !a->pValue)
			return CKR_ARGUMENTS_BAD;
		switch (a->type) {
		case CKA_CLASS:
			if (a->ulValueLen != sizeof(CK_ULONG))
				return CKR_ATTRIBUTE_VALUE_INVALID;
			memcpy(&fl->cls, a->pValue, sizeof(CK_ULONG));
			fl->has_cls = true;
			break;
		case CKA_KEY_TYPE:
			if (a->ulValueLen != sizeof(CK_ULONG))
				return CKR_ATTRIBUTE_VALUE_INVALID;
			memcpy(&fl->kt, a->pValue, sizeof(CK_ULONG));
			fl->has_kt = true;
			if (p11_is_hmac_ktype(fl->kt))
				fl->others = true;
			break;
		case CKA_TOKEN:
			if (a->ulValueLen != sizeof(CK_BBOOL))
				return CKR_ATTRIBUTE_VALUE_INVALID;
			fl->token = *(const CK_BBOOL *)a->pValue != CK_FALSE;
			fl->has_token = true;
			break;
		case CKA_LABEL:
			fl->label = a;
			fl->has_label = true;
			break;
		case CKA_ID:
			fl->id = a;
			fl->has_id = true;
			break;
		default:
			fl->others = true;
			break;
		}
	}
	return CKR_OK;
}

/* Does o (loaded) match every attribute of the template? Module lock held. */
static bool matches_locked(const struct p11_obj *o, const CK_ATTRIBUTE *t, CK_ULONG n)
{
	for (CK_ULONG i = 0; i < n; i++) {
		struct p11_av v;
		if (p11_attr_value(o, t[i].type, &v) != CKR_OK)
			return false;
		bool eq = v.n == t[i].ulValueLen && (v.n == 0 || memcmp(v.p, t[i].pValue, v.n) == 0);
		p11_av_free(&v);
		if (!eq)
			return false;
	}
	return true;
}

struct cand {
	struct p11_obj **v;
	size_t n, cap;
};

static CK_RV cand_add(struct cand *c, struct p11_obj *o)
{
	if (c->n == c->cap) {
		size_t ncap = c->cap ? c->cap * 2 : 64;
		struct p11_obj **nv = realloc(c->v, ncap * sizeof(*nv));
		if (!nv)
			return CKR_HOST_MEMORY;
		c->v = nv;
		c->cap = ncap;
	}
	c->v[c->n++] = o;
	return CKR_OK;
}

/* A token object from a GPKM list item (module lock held): the known
 * handle when the slot still holds the same key, else a new one. */
static CK_RV token_obj_locked(struct p11_slot *sl, uint32_t hsm_slot, const uint8_t key_id[P11_KEY_ID_LEN],
			      CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, CK_ULONG bits, struct p11_obj **out)
{
	struct p11_obj *o = p11_hmap_get(&O.token, token_key(sl, hsm_slot));
	if (o && memcmp(o->key_id, key_id, P11_KEY_ID_LEN) == 0) {
		o->refs++;
		*out = o;
		return CKR_OK;
	}
	o = calloc(1, sizeof(*o));
	if (!o)
		return CKR_HOST_MEMORY;
	o->slot = sl;
	o->refs = 1;
	o->token = true;
	o->hsm_slot = hsm_slot;
	memcpy(o->key_id, key_id, P11_KEY_ID_LEN);
	o->cls = cls;
	o->ktype = kt;
	o->bits = bits;
	o->priv = default_private(cls);
	CK_RV rv = publish_locked(o);
	if (rv != CKR_OK) {
		obj_free(o);
		return rv;
	}
	o->refs++;
	*out = o;
	return CKR_OK;
}

/* One "slot:class:type:bits:keyid" item of a GPKM list. */
static bool parse_item(const char *p, size_t n, uint32_t *slot, CK_OBJECT_CLASS *cls, CK_KEY_TYPE *kt,
		       CK_ULONG *bits, uint8_t key_id[P11_KEY_ID_LEN])
{
	size_t start[5], len[5], k = 0, s = 0;
	for (size_t i = 0; i <= n; i++) {
		if (i == n || p[i] == ':') {
			if (k == 5)
				return false;
			start[k] = s;
			len[k] = i - s;
			k++;
			s = i + 1;
		}
	}
	if (k != 5)
		return false;
	uint64_t v = 0;
	for (size_t f = 0; f < 4; f += 3) {
		if (!len[f] || len[f] > 10)
			return false;
		v = 0;
		for (size_t i = 0; i < len[f]; i++) {
			char c = p[start[f] + i];
			if (c < '0' || c > '9')
				return false;
			v = v * 10 + (uint64_t)(c - '0');
		}
		if (f == 0)
			*slot = (uint32_t)v;
		else
			*bits = (CK_ULONG)v;
	}
	if (!p11_class_from(p + start[1], len[1], cls))
		return false;
	if (!p11_ktype_from(p + start[2], len[2], kt))
		*kt = CKK_GENERIC_SECRET;
	return len[4] == 2 * P11_KEY_ID_LEN && kh_hex_decode(p + start[4], len[4], key_id, P11_KEY_ID_LEN) == P11_KEY_ID_LEN;
}

static CK_RV find_token(struct p11_session *s, const struct filter *fl, struct cand *c)
{
	struct kh_buf *req = kh_buf_new(16384), *resp = p11_buf_new();
	struct kh_frame f;
	CK_RV rv = CKR_HOST_MEMORY;
	uint64_t from = 0;
	if (!req || !resp)
		goto out;
	for (;;) {
		kh_buf_reset(req);
		int r = kh_msg_begin(req, "GPKM");
		if (r == KH_OK) r = kh_msg_put_u64(req, "SL", from);
		if (r == KH_OK) r = kh_msg_put_u64(req, "NM", GPKM_PAGE);
		if (r == KH_OK && fl->has_cls) {
			const char *cn = p11_class_name(fl->cls);
			if (!cn) { rv = CKR_OK; goto out; } /* a class the HSM does not hold */
			r = kh_msg_put(req, "CL", cn);
		}
		if (r == KH_OK && fl->has_kt) {
			const char *tn = p11_ktype_name(fl->kt);
			if (!tn) { rv = CKR_OK; goto out; }
			r = kh_msg_put(req, "TY", tn);
		}
		if (r == KH_OK && fl->has_label)
			r = kh_msg_put_hex(req, "LB", fl->label->pValue, fl->label->ulValueLen);
		if (r == KH_OK && fl->has_id)
			r = kh_msg_put_hex(req, "KI", fl->id->pValue, fl->id->ulValueLen);
		if (r == KH_OK) r = kh_msg_end(req);
		if (r != KH_OK) {
			rv = r == KH_ERR_NOMEM ? CKR_HOST_MEMORY : CKR_ATTRIBUTE_VALUE_INVALID;
			goto out;
		}
		r = p11_call(s, P11_CALL_BALANCE, req, resp, &f);
		if (r == KH_ERR_NOT_LOGGED_IN || r == KH_ERR_COMMAND_NOT_ALLOWED || r == KH_ERR_PERMISSION_DENIED) {
			rv = CKR_OK; /* nothing on the token is visible to this login */
			goto out;
		}
		if (r != KH_OK) {
			rv = p11_rv_from_kh(r);
			goto out;
		}
		const struct kh_field *kl = kh_frame_get(&f, "KL");
		size_t pos = 0;
		p11_lock();
		while (kl && pos < kl->len) {
			size_t e = pos;
			while (e < kl->len && kl->val[e] != ',')
				e++;
			uint32_t hs;
			CK_OBJECT_CLASS cls;
			CK_KEY_TYPE kt;
			CK_ULONG bits;
			uint8_t kid[P11_KEY_ID_LEN];
			struct p11_obj *o;
			if (e > pos && parse_item(kl->val + pos, e - pos, &hs, &cls, &kt, &bits, kid)) {
				if (token_obj_locked(s->slot, hs, kid, cls, kt, bits, &o) != CKR_OK ||
				    cand_add(c, o) != CKR_OK) {
					p11_unlock();
					rv = CKR_HOST_MEMORY;
					goto out;
				}
			}
			pos = e + 1;
		}
		p11_unlock();
		if (!kh_frame_has(&f, "NX") || kh_frame_u64(&f, "NX", 0, 0xffffffffu, &from) != KH_OK)
			break;
	}
	rv = CKR_OK;
out:
	kh_buf_free(req);
	kh_buf_free(resp);
	return rv;
}

P11_EXPORT CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	struct filter fl;
	struct cand c = {0};
	if (ulCount && !pTemplate) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	if (s->find_active) {
		rv = CKR_OPERATION_ACTIVE;
		goto out;
	}
	if ((rv = filter_parse(pTemplate, ulCount, &fl)) != CKR_OK)
		goto out;
	bool logged = p11_session_logged_in(s);
	/* session objects */
	if (!fl.has_token || !fl.token) {
		p11_lock();
		size_t it = 0;
		uint64_t k;
		void *v;
		while (p11_hmap_next(&O.objs, &it, &k, &v)) {
			struct p11_obj *o = v;
			if (o->token || o->slot != s->slot || (o->priv && !logged))
				continue;
			if (!matches_locked(o, pTemplate, ulCount))
				continue;
			if ((rv = cand_add(&c, o)) != CKR_OK) {
				p11_unlock();
				goto out;
			}
			o->refs++;
		}
		p11_unlock();
	}
	size_t nsession = c.n;
	if (!fl.has_token || fl.token) {
		if ((rv = find_token(s, &fl, &c)) != CKR_OK)
			goto out;
	}
	s->found = calloc(c.n ? c.n : 1, sizeof(CK_OBJECT_HANDLE));
	if (!s->found) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	s->nfound = s->found_pos = 0;
	for (size_t i = 0; i < c.n; i++) {
		struct p11_obj *o = c.v[i];
		if (i >= nsession) {
			/* the HSM matched class, type, label and id; load the rest
			 * only when the template asks about it */
			p11_lock();
			bool need = fl.others && !o->loaded;
			p11_unlock();
			if (need && load_token(s, o) != CKR_OK)
				continue;
			p11_lock();
			bool ok = (!o->loaded || matches_locked(o, pTemplate, ulCount)) && !o->destroyed &&
				  (!o->loaded || !o->priv || logged);
			p11_unlock();
			if (!ok)
				continue;
		}
		s->found[s->nfound++] = o->handle;
	}
	s->find_active = true;
out:
	for (size_t i = 0; i < c.n; i++)
		p11_obj_put(c.v[i]);
	free(c.v);
	p11_session_put(s);
	return rv;
}

P11_EXPORT CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount,
			       CK_ULONG_PTR pulObjectCount)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pulObjectCount || (!phObject && ulMaxObjectCount))
		rv = CKR_ARGUMENTS_BAD;
	else if (!s->find_active)
		rv = CKR_OPERATION_NOT_INITIALIZED;
	else {
		CK_ULONG n = 0;
		while (n < ulMaxObjectCount && s->found_pos < s->nfound)
			phObject[n++] = s->found[s->found_pos++];
		*pulObjectCount = n;
	}
	p11_session_put(s);
	return rv;
}

P11_EXPORT CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!s->find_active)
		rv = CKR_OPERATION_NOT_INITIALIZED;
	free(s->found);
	s->found = NULL;
	s->nfound = s->found_pos = 0;
	s->find_active = false;
	p11_session_put(s);
	return rv;
}

/* ---- attributes ---- */

P11_EXPORT CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
				     CK_ULONG ulCount)
{
	struct p11_session *s;
	struct p11_obj *o;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pTemplate && ulCount) {
		p11_session_put(s);
		return CKR_ARGUMENTS_BAD;
	}
	if ((rv = p11_obj_get(s, hObject, &o)) != CKR_OK) {
		p11_session_put(s);
		return rv;
	}
	p11_lock();
	for (CK_ULONG i = 0; i < ulCount; i++) {
		CK_ATTRIBUTE *a = &pTemplate[i];
		struct p11_av v;
		CK_RV r = p11_attr_value(o, a->type, &v);
		if (r != CKR_OK) {
			a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
			if (rv == CKR_OK)
				rv = r;
			continue;
		}
		if (!a->pValue) {
			a->ulValueLen = v.n;
		} else if (a->ulValueLen < v.n) {
			a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
			if (rv == CKR_OK)
				rv = CKR_BUFFER_TOO_SMALL;
		} else {
			if (v.n)
				memcpy(a->pValue, v.p, v.n);
			a->ulValueLen = v.n;
		}
		p11_av_free(&v);
	}
	p11_unlock();
	p11_obj_put(o);
	p11_session_put(s);
	return rv;
}

P11_EXPORT CK_RV C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize)
{
	struct p11_session *s;
	struct p11_obj *o;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pulSize)
		rv = CKR_ARGUMENTS_BAD;
	else if ((rv = p11_obj_get(s, hObject, &o)) == CKR_OK) {
		*pulSize = CK_UNAVAILABLE_INFORMATION;
		p11_obj_put(o);
	}
	p11_session_put(s);
	return rv;
}

/* What a C_SetAttributeValue or C_CopyObject template changes. */
struct change {
	bool label, id, usage, flags, token_set, token;
	uint8_t *lb, *ki, *ex;
	size_t lb_len, ki_len, ex_len;
	unsigned new_usage, new_flags;
};

static void change_free(struct change *ch)
{
	free(ch->lb);
	free(ch->ki);
	free(ch->ex);
}

static CK_RV change_parse(const struct p11_obj *o, const CK_ATTRIBUTE *t, CK_ULONG n, bool copy, struct change *ch)
{
	CK_RV rv = CKR_OK;
	bool v;
	unsigned bit;
	bool key = o->cls == CKO_SECRET_KEY || o->cls == CKO_PRIVATE_KEY || o->cls == CKO_PUBLIC_KEY;

	memset(ch, 0, sizeof(*ch));
	ch->new_usage = o->usage;
	ch->new_flags = o->flags;
	p11_lock();
	rv = dup_into(&ch->ex, &ch->ex_len, o->extra, o->extra_len);
	p11_unlock();
	for (CK_ULONG i = 0; i < n && rv == CKR_OK; i++) {
		const CK_ATTRIBUTE *a = &t[i];
		if (a->ulValueLen && !a->pValue) {
			rv = CKR_ATTRIBUTE_VALUE_INVALID;
			break;
		}
		switch (a->type) {
		case CKA_LABEL:
			rv = attr_dup(a, &ch->lb, &ch->lb_len, 4096);
			ch->label = true;
			break;
		case CKA_ID:
			rv = attr_dup(a, &ch->ki, &ch->ki_len, 4096);
			ch->id = true;
			break;
		case CKA_TOKEN:
			if (!copy) {
				rv = CKR_ATTRIBUTE_READ_ONLY;
				break;
			}
			rv = attr_bool(a, &ch->token);
			ch->token_set = true;
			break;
		case CKA_SENSITIVE:
			if (!key || o->cls == CKO_PUBLIC_KEY) {
				rv = CKR_ATTRIBUTE_TYPE_INVALID;
				break;
			}
			if ((rv = attr_bool(a, &v)) != CKR_OK)
				break;
			if (v)
				ch->new_flags |= P11_F_SENSITIVE;
			else if (o->flags & P11_F_SENSITIVE)
				rv = CKR_ATTRIBUTE_READ_ONLY;
			break;
		case CKA_EXTRACTABLE:
			if (!key || o->cls == CKO_PUBLIC_KEY) {
				rv = CKR_ATTRIBUTE_TYPE_INVALID;
				break;
			}
			if ((rv = attr_bool(a, &v)) != CKR_OK)
				break;
			if (!v)
				ch->new_flags &= ~(unsigned)P11_F_EXPORTABLE;
			else if (!(o->flags & P11_F_EXPORTABLE))
				rv = CKR_ATTRIBUTE_READ_ONLY;
			break;
		case CKA_MODIFIABLE:
			if (!copy) {
				rv = CKR_ATTRIBUTE_READ_ONLY;
				break;
			}
			if ((rv = attr_bool(a, &v)) != CKR_OK)
				break;
			if (!v)
				ch->new_flags &= ~(unsigned)P11_F_MODIFIABLE;
			else if (!(o->flags & P11_F_MODIFIABLE) && key)
				rv = CKR_ATTRIBUTE_READ_ONLY;
			break;
		case CKA_PRIVATE:
			if ((rv = attr_bool(a, &v)) == CKR_OK && v != o->priv)
				rv = CKR_ATTRIBUTE_READ_ONLY;
			break;
		default:
			if (key && usage_attr(a->type, &bit)) {
				if ((rv = attr_bool(a, &v)) != CKR_OK)
					break;
				if (v && !(p11_usage_allowed(o->cls, o->ktype) & bit)) {
					rv = CKR_ATTRIBUTE_VALUE_INVALID;
					break;
				}
				if (v)
					ch->new_usage |= bit;
				else
					ch->new_usage &= ~bit;
			} else if (p11_attr_descriptive(a->type) && a->type != CKA_KEY_TYPE && a->type != CKA_PRIVATE) {
				if (a->ulValueLen > 4096)
					rv = CKR_ATTRIBUTE_VALUE_INVALID;
				else if (p11_extra_set(&ch->ex, &ch->ex_len, a->type, a->pValue, a->ulValueLen) != KH_OK)
					rv = CKR_HOST_MEMORY;
			} else {
				/* attributes that exist but cannot change answer read-only */
				struct p11_av av;
				p11_lock();
				CK_RV e = p11_attr_value(o, a->type, &av);
				p11_unlock();
				if (e == CKR_OK)
					p11_av_free(&av);
				rv = e == CKR_ATTRIBUTE_TYPE_INVALID ? CKR_ATTRIBUTE_TYPE_INVALID : CKR_ATTRIBUTE_READ_ONLY;
			}
			break;
		}
	}
	if (rv == CKR_OK) {
		ch->usage = ch->new_usage != o->usage;
		ch->flags = ch->new_flags != o->flags;
		if (key && !copy && ch->usage && !(o->flags & P11_F_MODIFIABLE))
			rv = CKR_ATTRIBUTE_READ_ONLY;
	}
	if (rv != CKR_OK)
		change_free(ch);
	return rv;
}

static int put_bound_change(struct kh_buf *req, const struct change *ch)
{
	char l[8];
	int r = KH_OK;
	if (ch->usage) {
		p11_usage_letters(ch->new_usage, l);
		r = kh_msg_put(req, "CZ", l);
	}
	if (r == KH_OK && ch->flags) {
		p11_flag_letters(ch->new_flags, l);
		r = kh_msg_put(req, "KF", l);
	}
	return r;
}

/* A session key's cryptogram with new bound attributes (GPKS on CG). */
static CK_RV recrypt(struct p11_session *s, const struct p11_obj *o, const struct change *ch, uint8_t **cg,
		     size_t *cglen)
{
	struct kh_buf *req = p11_buf_new(), *resp = p11_buf_new();
	struct kh_frame f;
	CK_RV rv = CKR_HOST_MEMORY;
	if (!req || !resp)
		goto out;
	if (kh_msg_begin(req, "GPKS") != KH_OK || p11_obj_put_ref(o, req, "SL", NULL, "CG") != KH_OK ||
	    put_bound_change(req, ch) != KH_OK || kh_msg_end(req) != KH_OK)
		goto out;
	int r = p11_call(s, P11_CALL_BALANCE, req, resp, &f);
	if (r != KH_OK) {
		rv = r == KH_ERR_BAD_FIELD || r == KH_ERR_KEY_USAGE || r == KH_ERR_PERMISSION_DENIED
			     ? CKR_ATTRIBUTE_READ_ONLY
			     : p11_rv_from_kh(r);
		goto out;
	}
	rv = p11_field_bytes(&f, o->cg_tag, cg, cglen) == KH_OK ? CKR_OK : CKR_DEVICE_ERROR;
out:
	kh_buf_free(req);
	kh_buf_free(resp);
	return rv;
}

/* Install a change on the object (module lock taken here). */
static void change_apply(struct p11_obj *o, struct change *ch, uint8_t *cg, size_t cglen)
{
	p11_lock();
	if (ch->label) {
		retire(o, o->label, o->label_len);
		o->label = ch->lb;
		o->label_len = ch->lb_len;
		ch->lb = NULL;
	}
	if (ch->id) {
		retire(o, o->ckaid, o->ckaid_len);
		o->ckaid = ch->ki;
		o->ckaid_len = ch->ki_len;
		ch->ki = NULL;
	}
	retire(o, o->extra, o->extra_len);
	o->extra = ch->ex;
	o->extra_len = ch->ex_len;
	ch->ex = NULL;
	o->usage = ch->new_usage;
	o->flags = ch->new_flags;
	if (cg) {
		retire(o, o->cg, o->cg_len);
		o->cg = cg;
		o->cg_len = cglen;
	}
	p11_unlock();
}

P11_EXPORT CK_RV C_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
				     CK_ULONG ulCount)
{
	struct p11_session *s;
	struct p11_obj *o = NULL;
	struct change ch;
	struct kh_buf *req = NULL, *resp = NULL;
	struct kh_frame f;
	uint8_t *cg = NULL;
	size_t cglen = 0;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pTemplate && ulCount) {
		p11_session_put(s);
		return CKR_ARGUMENTS_BAD;
	}
	if ((rv = p11_obj_get(s, hObject, &o)) != CKR_OK) {
		p11_session_put(s);
		return rv;
	}
	if (o->token && !p11_session_rw(s)) {
		rv = CKR_SESSION_READ_ONLY;
		goto out;
	}
	bool key = o->cls == CKO_SECRET_KEY || o->cls == CKO_PRIVATE_KEY || o->cls == CKO_PUBLIC_KEY;
	if (key && !(o->flags & P11_F_MODIFIABLE)) {
		rv = CKR_ACTION_PROHIBITED;
		goto out;
	}
	if ((rv = change_parse(o, pTemplate, ulCount, false, &ch)) != CKR_OK)
		goto out;
	if (o->token) {
		req = p11_buf_new();
		resp = p11_buf_new();
		int r = req && resp ? KH_OK : KH_ERR_NOMEM;
		if (r == KH_OK) r = kh_msg_begin(req, "GPKS");
		if (r == KH_OK) r = kh_msg_put_u64(req, "SL", o->hsm_slot);
		if (r == KH_OK) r = kh_msg_put_hex(req, "KD", o->key_id, P11_KEY_ID_LEN);
		if (r == KH_OK && ch.label) r = kh_msg_put_hex(req, "LB", ch.lb, ch.lb_len);
		if (r == KH_OK && ch.id) r = kh_msg_put_hex(req, "KI", ch.ki, ch.ki_len);
		if (r == KH_OK) r = kh_msg_put_hex(req, "EX", ch.ex, ch.ex_len);
		if (r == KH_OK) r = put_bound_change(req, &ch);
		if (r == KH_OK) r = kh_msg_end(req);
		if (r == KH_OK)
			r = p11_call(s, P11_CALL_PRIMARY, req, resp, &f);
		if (r != KH_OK) {
			rv = r == KH_ERR_BAD_FIELD || r == KH_ERR_KEY_USAGE ? CKR_ATTRIBUTE_READ_ONLY : p11_rv_from_kh(r);
			change_free(&ch);
			goto out;
		}
	} else if (key && (ch.usage || ch.flags)) {
		if ((rv = recrypt(s, o, &ch, &cg, &cglen)) != CKR_OK) {
			change_free(&ch);
			goto out;
		}
	}
	change_apply(o, &ch, cg, cglen);
	change_free(&ch);
out:
	kh_buf_free(req);
	kh_buf_free(resp);
	p11_obj_put(o);
	p11_session_put(s);
	return rv;
}

/* ---- create, copy, destroy ---- */

static CK_RV rsa_der(const CK_ATTRIBUTE *t, CK_ULONG n, bool priv, uint8_t **der, size_t *len);
static CK_RV ec_der(const CK_ATTRIBUTE *t, CK_ULONG n, bool priv, CK_KEY_TYPE kt, uint8_t **der, size_t *len);

/* A module-held object (session certificates and data objects). */
static CK_RV create_local(struct p11_session *s, const struct p11_newkey *nk, const uint8_t *value, size_t vlen,
			  CK_OBJECT_HANDLE *ph)
{
	struct p11_obj *o = obj_new(s, nk);
	if (!o)
		return CKR_HOST_MEMORY;
	if (dup_into(&o->value, &o->value_len, value ? value : (const uint8_t *)"", vlen) != CKR_OK) {
		obj_free(o);
		return CKR_HOST_MEMORY;
	}
	RAND_bytes(o->key_id, P11_KEY_ID_LEN);
	if (nk->cls == CKO_CERTIFICATE) {
		const uint8_t *p = value;
		X509 *x = d2i_X509(NULL, &p, (long)vlen);
		if (!x || p != value + vlen) {
			X509_free(x);
			obj_free(o);
			return CKR_ATTRIBUTE_VALUE_INVALID;
		}
		uint8_t *spki = NULL;
		int l = i2d_PUBKEY(X509_get0_pubkey(x), &spki);
		X509_free(x);
		if (l > 0)
			dup_into(&o->pub, &o->pub_len, spki, (size_t)l);
		OPENSSL_free(spki);
	}
	return publish(o, ph);
}

static CK_RV create_key(struct p11_session *s, struct p11_newkey *nk, const CK_ATTRIBUTE *t, CK_ULONG n,
			CK_OBJECT_HANDLE *ph)
{
	uint8_t *kv = NULL;
	size_t kvlen = 0;
	CK_RV rv;
	const char *cg_tag;
	const char *tn = p11_ktype_name(nk->ktype);
	if (!tn)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	switch (nk->cls) {
	case CKO_SECRET_KEY:
		if (!nk->value)
			return CKR_TEMPLATE_INCOMPLETE;
		if (nk->ktype == CKK_AES && nk->value_len_bytes != 16 && nk->value_len_bytes != 24 &&
		    nk->value_len_bytes != 32)
			return CKR_ATTRIBUTE_VALUE_INVALID;
		if (nk->value_len && nk->value_len != nk->value_len_bytes)
			return CKR_TEMPLATE_INCONSISTENT;
		nk->value_len = nk->value_len_bytes;
		cg_tag = "BG";
		break;
	case CKO_PRIVATE_KEY:
	case CKO_PUBLIC_KEY:
		if (nk->ktype == CKK_RSA)
			rv = rsa_der(t, n, nk->cls == CKO_PRIVATE_KEY, &kv, &kvlen);
		else
			rv = ec_der(t, n, nk->cls == CKO_PRIVATE_KEY, nk->ktype, &kv, &kvlen);
		if (rv != CKR_OK)
			return rv;
		cg_tag = nk->cls == CKO_PRIVATE_KEY ? "RC" : "SD";
		break;
	default:
		return CKR_ATTRIBUTE_VALUE_INVALID;
	}
	struct kh_buf *req = p11_buf_new(), *resp = p11_buf_new();
	struct kh_frame f;
	rv = CKR_HOST_MEMORY;
	if (!req || !resp)
		goto out;
	int r = kh_msg_begin(req, "GPKA");
	if (r == KH_OK) r = kh_msg_put(req, "CL", p11_class_name(nk->cls));
	if (r == KH_OK) r = kh_msg_put(req, "KT", tn);
	if (r == KH_OK)
		r = kv ? kh_msg_put_hex(req, "KV", kv, kvlen) : kh_msg_put_hex(req, "KV", nk->value, nk->value_len_bytes);
	if (r == KH_OK) r = p11_newkey_put(nk, req, "CZ", "KF", "SL");
	if (r == KH_OK) r = kh_msg_end(req);
	if (r != KH_OK)
		goto out;
	r = p11_call(s, nk->token ? P11_CALL_PRIMARY : P11_CALL_BALANCE, req, resp, &f);
	if (r != KH_OK) {
		rv = r == KH_ERR_BAD_FIELD || r == KH_ERR_UNSUPPORTED || r == KH_ERR_CRYPTO ? CKR_ATTRIBUTE_VALUE_INVALID
										       : p11_rv_from_kh(r);
		goto out;
	}
	rv = p11_obj_from_resp(s, nk, &f, "SL", "KD", cg_tag, "RD", ph);
	if (rv == CKR_OK && kv) {
		/* GPKA answers no public key: it is what we sent (a public
		 * key's SPKI, or the public half of the PKCS#8 we sent) */
		const uint8_t *p = kv;
		EVP_PKEY *pk = nk->cls == CKO_PRIVATE_KEY ? d2i_AutoPrivateKey(NULL, &p, (long)kvlen)
							  : d2i_PUBKEY(NULL, &p, (long)kvlen);
		uint8_t *spki = NULL;
		int l = pk ? i2d_PUBKEY(pk, &spki) : -1;
		struct p11_obj *o;
		p11_lock();
		o = p11_hmap_get(&O.objs, *ph);
		if (o && !o->pub && l > 0 && dup_into(&o->pub, &o->pub_len, spki, (size_t)l) == CKR_OK)
			o->bits = (CK_ULONG)EVP_PKEY_get_bits(pk);
		p11_unlock();
		OPENSSL_free(spki);
		EVP_PKEY_free(pk);
	}
out:
	if (kv) {
		kh_wipe(kv, kvlen);
		free(kv);
	}
	kh_buf_free(req);
	kh_buf_free(resp);
	return rv;
}

static CK_RV create_token_value(struct p11_session *s, struct p11_newkey *nk, const char *cmd, const char *tag,
				const uint8_t *value, size_t vlen, CK_OBJECT_HANDLE *ph)
{
	struct kh_buf *req = p11_buf_new(), *resp = p11_buf_new();
	struct kh_frame f;
	CK_RV rv = CKR_HOST_MEMORY;
	if (!req || !resp)
		goto out;
	int r = kh_msg_begin(req, cmd);
	if (r == KH_OK && strcmp(cmd, "GPKA") == 0) r = kh_msg_put(req, "CL", "data");
	if (r == KH_OK && strcmp(cmd, "GPKA") == 0) r = kh_msg_put(req, "KT", "GENERIC");
	if (r == KH_OK) r = kh_msg_put_hex(req, tag, value, vlen);
	if (r == KH_OK) r = p11_newkey_put(nk, req, NULL, NULL, "SL");
	if (r == KH_OK) r = kh_msg_end(req);
	if (r != KH_OK)
		goto out;
	r = p11_call(s, P11_CALL_PRIMARY, req, resp, &f);
	if (r != KH_OK) {
		rv = r == KH_ERR_BAD_FIELD || r == KH_ERR_UNSUPPORTED ? CKR_ATTRIBUTE_VALUE_INVALID : p11_rv_from_kh(r);
		goto out;
	}
	rv = p11_obj_from_resp(s, nk, &f, "SL", "KD", NULL, "RD", ph);
	if (rv == CKR_OK) {
		p11_lock();
		struct p11_obj *o = p11_hmap_get(&O.objs, *ph);
		if (o)
			KH_IGNORE(dup_into(&o->value, &o->value_len, value, vlen));
		p11_unlock();
	}
out:
	kh_buf_free(req);
	kh_buf_free(resp);
	return rv;
}

P11_EXPORT CK_RV C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
				CK_OBJECT_HANDLE_PTR phObject)
{
	struct p11_session *s;
	struct p11_newkey nk;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if ((!pTemplate && ulCount) || !phObject) {
		p11_session_put(s);
		return CKR_ARGUMENTS_BAD;
	}
	const CK_ATTRIBUTE *ca = tmpl_find(pTemplate, ulCount, CKA_CLASS);
	const CK_ATTRIBUTE *kta = tmpl_find(pTemplate, ulCount, CKA_KEY_TYPE);
	CK_ULONG cls = 0, kt = (CK_KEY_TYPE)-1;
	if (!ca) {
		p11_session_put(s);
		return CKR_TEMPLATE_INCOMPLETE;
	}
	if ((rv = attr_ulong(ca, &cls)) != CKR_OK || (kta && (rv = attr_ulong(kta, &kt)) != CKR_OK)) {
		p11_session_put(s);
		return rv;
	}
	bool key = cls == CKO_SECRET_KEY || cls == CKO_PRIVATE_KEY || cls == CKO_PUBLIC_KEY;
	if (key && !kta) {
		p11_session_put(s);
		return CKR_TEMPLATE_INCOMPLETE;
	}
	if (!key && cls != CKO_CERTIFICATE && cls != CKO_DATA) {
		p11_session_put(s);
		return CKR_ATTRIBUTE_VALUE_INVALID;
	}
	if ((rv = p11_tmpl_parse(pTemplate, ulCount, P11_TMPL_CREATE, cls, key ? kt : (CK_KEY_TYPE)-1, &nk)) != CKR_OK) {
		p11_session_put(s);
		return rv;
	}
	if (nk.token && !p11_session_rw(s)) {
		rv = CKR_SESSION_READ_ONLY;
		goto out;
	}
	if (nk.priv && !p11_session_logged_in(s)) {
		rv = CKR_USER_NOT_LOGGED_IN; /* PKCS#11 5.1: only public objects before login */
		goto out;
	}
	if (key) {
		rv = create_key(s, &nk, pTemplate, ulCount, phObject);
	} else if (cls == CKO_CERTIFICATE) {
		const CK_ATTRIBUTE *ct = tmpl_find(pTemplate, ulCount, CKA_CERTIFICATE_TYPE);
		CK_ULONG ctype = CKC_X_509;
		if (ct && ((rv = attr_ulong(ct, &ctype)) != CKR_OK || ctype != CKC_X_509)) {
			rv = CKR_ATTRIBUTE_VALUE_INVALID;
			goto out;
		}
		if (!nk.value) {
			rv = CKR_TEMPLATE_INCOMPLETE;
			goto out;
		}
		nk.ktype = CKC_X_509;
		nk.usage = 0;
		nk.flags = 0;
		if (!tmpl_find(pTemplate, ulCount, CKA_PRIVATE))
			nk.priv = false;
		if (nk.token)
			rv = create_token_value(s, &nk, "GPCA", "CE", nk.value, nk.value_len_bytes, phObject);
		else
			rv = create_local(s, &nk, nk.value, nk.value_len_bytes, phObject);
	} else {
		const CK_ATTRIBUTE *app = tmpl_find(pTemplate, ulCount, CKA_APPLICATION);
		const CK_ATTRIBUTE *oid = tmpl_find(pTemplate, ulCount, CKA_OBJECT_ID);
		if ((app && p11_extra_set(&nk.extra, &nk.extra_len, CKA_APPLICATION, app->pValue, app->ulValueLen) != KH_OK) ||
		    (oid && p11_extra_set(&nk.extra, &nk.extra_len, CKA_OBJECT_ID, oid->pValue, oid->ulValueLen) != KH_OK)) {
			rv = CKR_HOST_MEMORY;
			goto out;
		}
		nk.ktype = CKK_GENERIC_SECRET;
		nk.usage = 0;
		nk.flags = P11_F_MODIFIABLE;
		if (!tmpl_find(pTemplate, ulCount, CKA_PRIVATE))
			nk.priv = false;
		if (!nk.priv || tmpl_find(pTemplate, ulCount, CKA_PRIVATE)) {
			uint8_t b = nk.priv;
			if (p11_extra_set(&nk.extra, &nk.extra_len, CKA_PRIVATE, &b, 1) != KH_OK) {
				rv = CKR_HOST_MEMORY;
				goto out;
			}
		}
		if (nk.token)
			rv = create_token_value(s, &nk, "GPKA", "KV", nk.value, nk.value_len_bytes, phObject);
		else
			rv = create_local(s, &nk, nk.value, nk.value_len_bytes, phObject);
	}
out:
	p11_newkey_free(&nk);
	p11_session_put(s);
	return rv;
}

/* The key as a cryptogram (session objects have one; token keys: GPGC). */
static CK_RV key_cryptogram(struct p11_session *s, const struct p11_obj *o, uint8_t **cg, size_t *cglen,
			    const char **tag)
{
	*tag = o->cls == CKO_SECRET_KEY ? "BG" : o->cls == CKO_PRIVATE_KEY ? "RC" : "SD";
	if (!o->token) {
		p11_lock();
		CK_RV rv = dup_into(cg, cglen, o->cg, o->cg_len);
		p11_unlock();
		return rv;
	}
	struct kh_buf *req = kh_buf_new(512), *resp = p11_buf_new();
	struct kh_frame f;
	CK_RV rv = CKR_HOST_MEMORY;
	if (req && resp && kh_msg_begin(req, "GPGC") == KH_OK && p11_obj_put_ref(o, req, "SL", "KD", "CG") == KH_OK &&
	    kh_msg_end(req) == KH_OK) {
		int r = p11_call(s, P11_CALL_BALANCE, req, resp, &f);
		rv = r != KH_OK ? p11_rv_from_kh(r)
				: p11_field_bytes(&f, *tag, cg, cglen) == KH_OK ? CKR_OK : CKR_DEVICE_ERROR;
	}
	kh_buf_free(req);
	kh_buf_free(resp);
	return rv;
}

P11_EXPORT CK_RV C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
			      CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject)
{
	struct p11_session *s;
	struct p11_obj *o = NULL;
	struct change ch;
	struct p11_newkey nk;
	uint8_t *cg = NULL, *cg2 = NULL;
	size_t cglen = 0, cg2len = 0;
	const char *tag;
	bool have_ch = false;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	memset(&nk, 0, sizeof(nk));
	if ((!pTemplate && ulCount) || !phNewObject) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	if ((rv = p11_obj_get(s, hObject, &o)) != CKR_OK)
		goto out;
	if ((rv = change_parse(o, pTemplate, ulCount, true, &ch)) != CKR_OK)
		goto out;
	have_ch = true;
	/* the copy as a new-key description */
	nk.cls = o->cls;
	nk.ktype = o->ktype;
	nk.token = ch.token_set ? ch.token : o->token;
	nk.priv = o->priv;
	nk.usage = ch.new_usage;
	nk.flags = ch.new_flags;
	nk.value_len = o->bits / 8;
	p11_lock();
	rv = dup_into(&nk.label, &nk.label_len, ch.label ? ch.lb : o->label, ch.label ? ch.lb_len : o->label_len);
	if (rv == CKR_OK)
		rv = dup_into(&nk.ckaid, &nk.ckaid_len, ch.id ? ch.ki : o->ckaid, ch.id ? ch.ki_len : o->ckaid_len);
	p11_unlock();
	if (rv == CKR_OK)
		rv = dup_into(&nk.extra, &nk.extra_len, ch.ex, ch.ex_len);
	if (rv != CKR_OK)
		goto out;
	if (nk.token && !p11_session_rw(s)) {
		rv = CKR_SESSION_READ_ONLY;
		goto out;
	}
	if (nk.priv && !p11_session_logged_in(s)) {
		rv = CKR_USER_NOT_LOGGED_IN; /* PKCS#11 5.1: only public objects before login */
		goto out;
	}
	if (o->cls == CKO_CERTIFICATE || o->cls == CKO_DATA) {
		p11_lock();
		rv = dup_into(&cg, &cglen, o->value, o->value_len);
		p11_unlock();
		if (rv != CKR_OK)
			goto out;
		if (!nk.token)
			rv = create_local(s, &nk, cg, cglen, phNewObject);
		else if (o->cls == CKO_CERTIFICATE)
			rv = create_token_value(s, &nk, "GPCA", "CE", cg, cglen, phNewObject);
		else
			rv = create_token_value(s, &nk, "GPKA", "KV", cg, cglen, phNewObject);
		goto out;
	}
	if ((rv = key_cryptogram(s, o, &cg, &cglen, &tag)) != CKR_OK)
		goto out;
	if (ch.usage || ch.flags) {
		struct p11_obj tmp = *o;
		tmp.token = false;
		tmp.cg = cg;
		tmp.cg_len = cglen;
		tmp.cg_tag = tag;
		if ((rv = recrypt(s, &tmp, &ch, &cg2, &cg2len)) != CKR_OK)
			goto out;
		free(cg);
		cg = cg2;
		cglen = cg2len;
		cg2 = NULL;
	}
	struct p11_obj *n = obj_new(s, &nk);
	if (!n) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	memcpy(n->key_id, o->key_id, P11_KEY_ID_LEN);
	n->bits = o->bits;
	n->has_kcv = o->has_kcv;
	memcpy(n->kcv, o->kcv, 3);
	p11_lock();
	rv = dup_into(&n->pub, &n->pub_len, o->pub, o->pub_len);
	p11_unlock();
	if (rv != CKR_OK) {
		obj_free(n);
		goto out;
	}
	if (!nk.token) {
		n->cg = cg;
		n->cg_len = cglen;
		n->cg_tag = tag;
		cg = NULL;
		rv = publish(n, phNewObject);
		goto out;
	}
	struct kh_buf *req = p11_buf_new(), *resp = p11_buf_new();
	struct kh_frame f;
	int r = req && resp ? KH_OK : KH_ERR_NOMEM;
	if (r == KH_OK) r = kh_msg_begin(req, "GPKA");
	if (r == KH_OK) r = kh_msg_put_hex(req, "CG", cg, cglen);
	if (r == KH_OK) r = p11_newkey_put(&nk, req, NULL, NULL, "SL");
	if (r == KH_OK) r = kh_msg_end(req);
	if (r == KH_OK)
		r = p11_call(s, P11_CALL_PRIMARY, req, resp, &f);
	uint64_t slot = 0;
	if (r == KH_OK && kh_frame_u64(&f, "SL", 0, 0xffffffffu, &slot) != KH_OK)
		r = KH_ERR_PROTOCOL;
	kh_buf_free(req);
	kh_buf_free(resp);
	if (r != KH_OK) {
		obj_free(n);
		rv = p11_rv_from_kh(r);
		goto out;
	}
	n->hsm_slot = (uint32_t)slot;
	rv = publish(n, phNewObject);
out:
	if (cg) {
		kh_wipe(cg, cglen);
		free(cg);
	}
	if (have_ch)
		change_free(&ch);
	p11_newkey_free(&nk);
	p11_obj_put(o);
	p11_session_put(s);
	return rv;
}

P11_EXPORT CK_RV C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject)
{
	struct p11_session *s;
	struct p11_obj *o;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if ((rv = p11_obj_get(s, hObject, &o)) != CKR_OK) {
		p11_session_put(s);
		return rv;
	}
	if (o->token) {
		struct kh_buf *req = kh_buf_new(512), *resp = kh_buf_new(65536);
		struct kh_frame f;
		int r = req && resp ? KH_OK : KH_ERR_NOMEM;
		if (!p11_session_rw(s))
			r = KH_ERR_PERMISSION_DENIED;
		if (r == KH_OK) r = kh_msg_begin(req, "GPKD");
		if (r == KH_OK) r = p11_obj_put_ref(o, req, "SL", "KD", "CG");
		if (r == KH_OK) r = kh_msg_end(req);
		if (r == KH_OK)
			r = p11_call(s, P11_CALL_PRIMARY, req, resp, &f);
		kh_buf_free(req);
		kh_buf_free(resp);
		if (!p11_session_rw(s))
			rv = CKR_SESSION_READ_ONLY;
		else if (r != KH_OK && r != KH_ERR_NOT_FOUND)
			rv = p11_rv_from_kh(r);
	}
	if (rv == CKR_OK) {
		p11_lock();
		unpublish_locked(o);
		p11_unlock();
	}
	p11_obj_put(o);
	p11_session_put(s);
	return rv;
}

/* ---- clear key import: PKCS#8 / SPKI DER from template components ---- */

static CK_RV bn_param(OSSL_PARAM_BLD *b, const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type,
		      const char *name, BIGNUM **keep, bool required)
{
	const CK_ATTRIBUTE *a = tmpl_find(t, n, type);
	if (!a || !a->ulValueLen)
		return required ? CKR_TEMPLATE_INCOMPLETE : CKR_OK;
	if (a->ulValueLen > 1024)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	*keep = BN_bin2bn(a->pValue, (int)a->ulValueLen, NULL);
	if (!*keep || !OSSL_PARAM_BLD_push_BN(b, name, *keep))
		return CKR_HOST_MEMORY;
	return CKR_OK;
}

static CK_RV pkey_der(EVP_PKEY *pk, bool priv, uint8_t **der, size_t *len)
{
	uint8_t *p = NULL;
	int l;
	if (priv) {
		PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(pk);
		l = p8 ? i2d_PKCS8_PRIV_KEY_INFO(p8, &p) : -1;
		PKCS8_PRIV_KEY_INFO_free(p8);
	} else {
		l = i2d_PUBKEY(pk, &p);
	}
	if (l <= 0)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	*der = malloc((size_t)l);
	if (!*der) {
		OPENSSL_clear_free(p, (size_t)l);
		return CKR_HOST_MEMORY;
	}
	memcpy(*der, p, (size_t)l);
	*len = (size_t)l;
	OPENSSL_clear_free(p, (size_t)l);
	return CKR_OK;
}

/* The key the built parameters describe, as PKCS#8 (priv) or SPKI DER. */
static CK_RV fromdata_der(const char *alg, OSSL_PARAM_BLD *b, bool priv, uint8_t **der, size_t *len)
{
	OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(b);
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pk = NULL;
	CK_RV rv = params ? CKR_OK : CKR_HOST_MEMORY;
	if (rv == CKR_OK) {
		ctx = EVP_PKEY_CTX_new_from_name(NULL, alg, NULL);
		if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
		    EVP_PKEY_fromdata(ctx, &pk, priv ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params) <= 0)
			rv = CKR_ATTRIBUTE_VALUE_INVALID;
	}
	if (rv == CKR_OK)
		rv = pkey_der(pk, priv, der, len);
	EVP_PKEY_free(pk);
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	return rv;
}

static CK_RV rsa_der(const CK_ATTRIBUTE *t, CK_ULONG n, bool priv, uint8_t **der, size_t *len)
{
	OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
	BIGNUM *bn[8] = {0};
	CK_RV rv = b ? CKR_OK : CKR_HOST_MEMORY;
	if (rv == CKR_OK) rv = bn_param(b, t, n, CKA_MODULUS, OSSL_PKEY_PARAM_RSA_N, &bn[0], true);
	if (rv == CKR_OK) rv = bn_param(b, t, n, CKA_PUBLIC_EXPONENT, OSSL_PKEY_PARAM_RSA_E, &bn[1], true);
	if (priv) {
		if (rv == CKR_OK) rv = bn_param(b, t, n, CKA_PRIVATE_EXPONENT, OSSL_PKEY_PARAM_RSA_D, &bn[2], true);
		if (rv == CKR_OK) rv = bn_param(b, t, n, CKA_PRIME_1, OSSL_PKEY_PARAM_RSA_FACTOR1, &bn[3], true);
		if (rv == CKR_OK) rv = bn_param(b, t, n, CKA_PRIME_2, OSSL_PKEY_PARAM_RSA_FACTOR2, &bn[4], true);
		if (rv == CKR_OK) rv = bn_param(b, t, n, CKA_EXPONENT_1, OSSL_PKEY_PARAM_RSA_EXPONENT1, &bn[5], true);
		if (rv == CKR_OK) rv = bn_param(b, t, n, CKA_EXPONENT_2, OSSL_PKEY_PARAM_RSA_EXPONENT2, &bn[6], true);
		if (rv == CKR_OK) rv = bn_param(b, t, n, CKA_COEFFICIENT, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, &bn[7], true);
	}
	if (rv == CKR_OK)
		rv = fromdata_der("RSA", b, priv, der, len);
	OSSL_PARAM_BLD_free(b);
	for (size_t i = 0; i < 8; i++)
		BN_clear_free(bn[i]);
	return rv;
}

/* An EC point given as DER OCTET STRING (the specification) or raw. */
static bool ec_point_raw(const CK_ATTRIBUTE *a, const uint8_t **p, size_t *n)
{
	const uint8_t *v = a->pValue;
	size_t l = a->ulValueLen;
	if (l >= 2 && v[0] == 0x04) {
		size_t hl = 2, len = v[1];
		if (v[1] == 0x81 && l >= 3) {
			len = v[2];
			hl = 3;
		}
		if (v[1] < 0x80 || v[1] == 0x81) {
			if (hl + len == l) {
				*p = v + hl;
				*n = len;
				return true;
			}
		}
	}
	*p = v;
	*n = l;
	return l > 0;
}

static CK_RV ec_der(const CK_ATTRIBUTE *t, CK_ULONG n, bool priv, CK_KEY_TYPE kt, uint8_t **der, size_t *len)
{
	const CK_ATTRIBUTE *pa = tmpl_find(t, n, CKA_EC_PARAMS);
	const CK_ATTRIBUTE *va = tmpl_find(t, n, priv ? CKA_VALUE : CKA_EC_POINT);
	const CK_ATTRIBUTE *spki = priv ? NULL : tmpl_find(t, n, CKA_PUBLIC_KEY_INFO);
	EVP_PKEY *pk = NULL;
	CK_RV rv;
	if (spki && spki->ulValueLen && !va) {
		const uint8_t *p = spki->pValue;
		pk = d2i_PUBKEY(NULL, &p, (long)spki->ulValueLen);
		if (!pk)
			return CKR_ATTRIBUTE_VALUE_INVALID;
		rv = pkey_der(pk, false, der, len);
		EVP_PKEY_free(pk);
		return rv;
	}
	if (!va || !va->ulValueLen)
		return CKR_TEMPLATE_INCOMPLETE;
	int curve = pa ? p11_curve_from_params(pa->pValue, pa->ulValueLen) : -1;
	if (!pa && kt == CKK_EC_EDWARDS)
		curve = 3;
	if (!pa && kt == CKK_EC_MONTGOMERY)
		curve = 4;
	if (curve < 0 || p11_curve_ktype(curve) != kt)
		return pa ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_TEMPLATE_INCOMPLETE;
	const uint8_t *v = va->pValue;
	size_t vl = va->ulValueLen;
	if (kt != CKK_EC) {
		const char *alg = kt == CKK_EC_EDWARDS ? "ED25519" : "X25519";
		if (!priv)
			ec_point_raw(va, &v, &vl);
		if (vl != 32)
			return CKR_ATTRIBUTE_VALUE_INVALID;
		pk = priv ? EVP_PKEY_new_raw_private_key_ex(NULL, alg, NULL, v, vl)
			  : EVP_PKEY_new_raw_public_key_ex(NULL, alg, NULL, v, vl);
		if (!pk)
			return CKR_ATTRIBUTE_VALUE_INVALID;
		rv = pkey_der(pk, priv, der, len);
		EVP_PKEY_free(pk);
		return rv;
	}
	static const char *const groups[] = {"prime256v1", "secp384r1", "secp521r1"};
	OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
	BIGNUM *d = NULL;
	EC_GROUP *grp = NULL;
	EC_POINT *pub = NULL;
	uint8_t *ptbuf = NULL;
	rv = b ? CKR_OK : CKR_HOST_MEMORY;
	if (rv == CKR_OK && !OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, groups[curve], 0))
		rv = CKR_HOST_MEMORY;
	if (rv == CKR_OK && priv) {
		/* the private scalar, and the public point computed from it
		 * (PKCS#11 does not carry it with the private key) */
		d = BN_bin2bn(v, (int)vl, NULL);
		grp = EC_GROUP_new_by_curve_name_ex(NULL, NULL, OBJ_sn2nid(groups[curve]));
		pub = grp ? EC_POINT_new(grp) : NULL;
		size_t ptlen = 0;
		if (!d || !grp || !pub || BN_is_zero(d) || BN_cmp(d, EC_GROUP_get0_order(grp)) >= 0 ||
		    !EC_POINT_mul(grp, pub, d, NULL, NULL, NULL) ||
		    !(ptlen = EC_POINT_point2buf(grp, pub, POINT_CONVERSION_UNCOMPRESSED, &ptbuf, NULL)) ||
		    !OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_PRIV_KEY, d) ||
		    !OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, ptbuf, ptlen))
			rv = CKR_ATTRIBUTE_VALUE_INVALID;
	} else if (rv == CKR_OK) {
		ec_point_raw(va, &v, &vl);
		if (!OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, v, vl))
			rv = CKR_HOST_MEMORY;
	}
	if (rv == CKR_OK)
		rv = fromdata_der("EC", b, priv, der, len);
	OSSL_PARAM_BLD_free(b);
	BN_clear_free(d);
	EC_POINT_free(pub);
	EC_GROUP_free(grp);
	OPENSSL_free(ptbuf);
	return rv;
}
