/* The REST API's request-body parsers: any bytes as a body, parsed and,
 * when they are an object, applied as a group (add and partial update), a
 * device (add and partial update), a promote body and a login body, with
 * the results rendered back. Nothing may crash, leak or read out of
 * bounds, and every accepted record must render. */
#include "guardian/http_json.h"

#include "fuzz_check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char why[KG_WHY_MAX];
	struct kh_gstore_group g;
	struct kh_gstore_device d;
	enum kh_gstore_role old;
	const char *s;
	size_t len;
	bool role;
	json_t *o = NULL, *out;

	if (kg_json_body((const char *)data, size, &o, why, sizeof(why)) != KH_OK)
		return 0;
	for (int add = 0; add < 2; add++) {
		kh_gstore_group_defaults(&g);
		if (kg_json_group(o, add, &g, why, sizeof(why)) == KH_OK) {
			if ((out = kg_json_group_out(&g)) == NULL)
				abort(); /* an accepted group always renders */
			json_decref(out);
		}
		kh_gstore_device_defaults(&d);
		if (kg_json_device(o, add, &d, &role, why, sizeof(why)) == KH_OK) {
			if ((out = kg_json_device_out(&d, NULL)) == NULL)
				abort();
			json_decref(out);
		}
	}
	KH_IGNORE(kg_json_promote(o, &old, why, sizeof(why)));
	static const char *const login[] = {"user", "password", NULL};
	if (kg_json_only(o, login, NULL, why, sizeof(why)) == KH_OK) {
		KH_IGNORE(kg_json_str(o, "user", true, 64, &s, &len, why, sizeof(why)));
		KH_IGNORE(kg_json_str(o, "password", true, 256, &s, &len, why, sizeof(why)));
	}
	json_decref(o);
	return 0;
}
