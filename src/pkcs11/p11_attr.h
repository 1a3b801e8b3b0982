/*
 * The mapping between the HSM's key attributes and PKCS#11's, and the
 * values C_GetAttributeValue answers. See p11_attr.c.
 */
#ifndef P11_ATTR_H
#define P11_ATTR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "pkcs11/p11.h"

const char *p11_class_name(CK_OBJECT_CLASS c);             /* "secret" ... or NULL */
bool p11_class_from(const char *s, size_t n, CK_OBJECT_CLASS *out);
const char *p11_ktype_name(CK_KEY_TYPE kt);                /* "AES" ... or NULL */
bool p11_ktype_from(const char *s, size_t n, CK_KEY_TYPE *out);
bool p11_is_hmac_ktype(CK_KEY_TYPE kt);
/* P11_U_* a key of this class and type can carry. */
unsigned p11_usage_allowed(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt);

/* CKA_EC_PARAMS -> curve index (or -1): named-curve OID or printable name. */
int p11_curve_from_params(const uint8_t *p, size_t n);
const char *p11_curve_hsm(int c);      /* GECC RA value */
CK_KEY_TYPE p11_curve_ktype(int c);    /* CKK_EC, CKK_EC_EDWARDS, CKK_EC_MONTGOMERY */

/* Descriptive attributes: kept beside the key on the HSM (EX). */
bool p11_attr_descriptive(CK_ATTRIBUTE_TYPE t);
bool p11_extra_find(const uint8_t *ex, size_t n, CK_ATTRIBUTE_TYPE t, const uint8_t **v, size_t *vlen);
KH_MUST_CHECK int p11_extra_set(uint8_t **ex, size_t *n, CK_ATTRIBUTE_TYPE t, const void *v, size_t vlen);

/* One attribute's value. */
struct p11_av {
	uint8_t *p;
	size_t n;
	bool heap;
	uint8_t small[16];
};
/* CKR_OK (a filled), CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID.
 * o's attributes must be loaded; call under the module lock. */
CK_RV p11_attr_value(const struct p11_obj *o, CK_ATTRIBUTE_TYPE t, struct p11_av *a);
void p11_av_free(struct p11_av *a);

#endif
