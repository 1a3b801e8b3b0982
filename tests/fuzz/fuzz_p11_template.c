/*
 * PKCS#11 templates as an application hands them to the module: the input
 * is a list of attributes (type: 4 bytes big-endian, length: 1 byte,
 * value), parsed for every use a template has, plus the descriptive
 * attribute list the module stores on the HSM (EX) and CKA_EC_PARAMS.
 * Nothing may crash, and a template that parses must describe a key the
 * module can ask the HSM for.
 */
#include "fuzz_check.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pkcs11/p11.h"
#include "pkcs11/p11_attr.h"
#include "common/kh_buf.h"

#define MAX_ATTRS 32

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	CK_ATTRIBUTE t[MAX_ATTRS];
	uint8_t *vals[MAX_ATTRS];
	CK_ULONG n = 0;
	size_t off = 0;

	while (n < MAX_ATTRS && size - off >= 5) {
		uint32_t ty = (uint32_t)data[off] << 24 | (uint32_t)data[off + 1] << 16 |
		              (uint32_t)data[off + 2] << 8 | data[off + 3];
		size_t l = data[off + 4];
		off += 5;
		if (l > size - off)
			l = size - off;
		/* own copies: the parser may keep nothing pointing into them */
		vals[n] = malloc(l ? l : 1);
		if (!vals[n])
			break;
		memcpy(vals[n], data + off, l);
		t[n].type = ty;
		t[n].pValue = l ? vals[n] : NULL;
		t[n].ulValueLen = l;
		off += l;
		n++;
	}

	static const enum p11_tmpl_use uses[] = {P11_TMPL_GENERATE,    P11_TMPL_GEN_PUBLIC,
	                                         P11_TMPL_GEN_PRIVATE, P11_TMPL_UNWRAP,
	                                         P11_TMPL_DERIVE,      P11_TMPL_CREATE};
	static const CK_OBJECT_CLASS classes[] = {CKO_SECRET_KEY,  CKO_PUBLIC_KEY,
	                                          CKO_PRIVATE_KEY, CKO_SECRET_KEY,
	                                          CKO_SECRET_KEY,  (CK_OBJECT_CLASS)-1};
	static const CK_KEY_TYPE types[] = {CKK_AES, CKK_EC,         CKK_RSA, CKK_GENERIC_SECRET,
	                                    CKK_AES, (CK_KEY_TYPE)-1};
	for (size_t u = 0; u < sizeof(uses) / sizeof(uses[0]); u++) {
		struct p11_newkey nk;
		if (p11_tmpl_parse(t, n, uses[u], classes[u], types[u], &nk) != CKR_OK)
			continue;
		/* what it asks for is within what the type can do */
		if (nk.usage & ~p11_usage_allowed(nk.cls, nk.ktype))
			abort();
		struct kh_buf *req = kh_buf_new(1u << 20);
		if (req && kh_msg_begin(req, "GPGS") == KH_OK)
			KH_IGNORE(p11_newkey_put(&nk, req, "CZ", "KF", "SL"));
		kh_buf_free(req);
		p11_newkey_free(&nk);
	}

	/* the stored descriptive list: any bytes from the HSM */
	const uint8_t *v;
	size_t vl;
	for (CK_ATTRIBUTE_TYPE ty = 0; ty < 4; ty++)
		if (p11_extra_find(data, size, ty, &v, &vl) && (v < data || v + vl > data + size))
			abort();
	uint8_t *ex = NULL;
	size_t exn = 0;
	for (CK_ULONG i = 0; i < n; i++)
		if (p11_extra_set(&ex, &exn, t[i].type & 0xffffffffu, t[i].pValue,
		                  t[i].ulValueLen) != KH_OK)
			break;
	for (CK_ULONG i = 0; i < n; i++)
		if (!p11_extra_find(ex, exn, t[i].type & 0xffffffffu, &v, &vl))
			abort();
	free(ex);
	(void)p11_curve_from_params(data, size);

	for (CK_ULONG i = 0; i < n; i++)
		free(vals[i]);
	return 0;
}
