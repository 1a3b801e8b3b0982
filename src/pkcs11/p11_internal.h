/*
 * Plumbing shared by the module's own files and nothing else: the handle
 * tables and the hooks between sessions and objects.
 */
#ifndef P11_INTERNAL_H
#define P11_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "pkcs11/p11.h"

/* An open-addressing map from non-zero 64-bit handles to pointers. */
struct p11_hmap {
	uint64_t *keys;  /* 0 empty, UINT64_MAX deleted */
	void **vals;
	size_t cap, n, used;
};
KH_MUST_CHECK int p11_hmap_put(struct p11_hmap *m, uint64_t key, void *val);
void *p11_hmap_get(const struct p11_hmap *m, uint64_t key);
void *p11_hmap_del(struct p11_hmap *m, uint64_t key);
/* Iterate: *it starts at 0. Deleting the current key while iterating is fine. */
bool p11_hmap_next(const struct p11_hmap *m, size_t *it, uint64_t *key, void **val);
void p11_hmap_free(struct p11_hmap *m);

/* Drop a reference taken by p11_session_get without holding its lock. */
void p11_session_put_ref(struct p11_session *s);

/* Objects (p11_obj.c). */
void p11_objects_free_all(void);                      /* module lock held */
void p11_objects_session_closed(CK_SESSION_HANDLE h); /* its session objects go */
void p11_objects_logged_out(struct p11_slot *sl);     /* private session objects go */

#endif
