/*
 * Replication within a device group. Members share major keys, so a key
 * moves between them as its wrapped key-table row (KTEX on the Primary,
 * KTIM on a member) and the configuration as a blob sealed under the PMK
 * (CFEX, CFIM); the guardian never holds a key in clear.
 *
 * A key-changing request runs on the Primary; the rows it touched are read
 * back, written to the journal as one KTIM request (deletes and rows, one
 * transaction on each member) BEFORE the client is answered, then applied
 * to every member that is caught up. A member that is down or behind gets
 * its due entries in order from the replicator, and serves only once it
 * has none. Replaying an entry is harmless (KTIM of an identical row
 * changes nothing; a delete of a key that is gone deletes nothing), so a
 * guardian killed between the journal and a member's answer applies the
 * entry again on restart.
 */
#include "guardian/core_int.h"
#include "common/kh_buf.h"
#include "common/kh_frame.h"
#include "common/kh_log.h"
#include "common/kh_pool.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROW_HEX_ID_AT 10  /* "Row layout": version (1) | slot (4) | key id (16) */
#define ROW_HEX_ID_LEN 32
#define RESP_MAX (8u * 1024 * 1024)
#define SLOTS_MAX 8       /* slots one request can touch (SL, PS, DS, each twice) */
#define PAGE_ROWS 200

static void whyf(char *why, size_t whysz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void whyf(char *why, size_t whysz, const char *fmt, ...)
{
	va_list ap;
	if (why == NULL || whysz == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(why, whysz, fmt, ap);
	va_end(ap);
}

static bool is_cmd(const struct kh_frame *f, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(f->cmd, *list) == 0)
			return true;
	return false;
}

bool kg_key_changing(const struct kh_frame *f)
{
	static const char *const into_slot[] = {"GPGS", "GPKA", "GRSA", "GECC", "ASYL",
	                                        "LRSA", "GPCA", NULL};
	static const char *const into_ds[] = {"GPKU", "GPUK", "GPDK", NULL};
	static const char *const changes[] = {"LB", "KI", "EX", "CZ", "KF", "DV", NULL};

	if (strcmp(f->cmd, "GPKD") == 0)
		return true;
	if (is_cmd(f, into_slot))
		return kh_frame_has(f, "SL") || kh_frame_has(f, "PS");
	if (is_cmd(f, into_ds))
		return kh_frame_has(f, "DS");
	if (strcmp(f->cmd, "GPKS") == 0 && kh_frame_has(f, "SL")) {
		for (const char *const *t = changes; *t; t++)
			if (kh_frame_has(f, *t))
				return true;
	}
	return false;
}

/* The numbered slots f names in SL, PS and DS (not "*"), added to set. */
static void slots_of(const struct kh_frame *f, uint32_t *set, size_t *n)
{
	static const char *const tags[] = {"SL", "PS", "DS", NULL};
	for (const char *const *t = tags; *t; t++) {
		uint64_t v;
		if (!kh_frame_has(f, *t) || kh_frame_u64(f, *t, 0, 999999, &v) != KH_OK)
			continue;
		bool seen = false;
		for (size_t i = 0; i < *n; i++)
			seen |= set[i] == (uint32_t)v;
		if (!seen && *n < SLOTS_MAX)
			set[(*n)++] = (uint32_t)v;
	}
}

static int call_text(struct kg_core *c, struct kg_dev *d, const char *text, struct kh_buf *resp,
                     struct kh_frame *f, char *why, size_t whysz)
{
	struct kh_buf *req = kh_buf_new(strlen(text) + 1);
	int r;
	if (req == NULL)
		return KH_ERR_NOMEM;
	if ((r = kh_buf_put_str(req, text)) == KH_OK)
		r = kg_dev_call(c, d, req, resp, f, why, whysz);
	kh_buf_free(req);
	return r;
}

/* The row in slot on d (hex, malloc'd) or NULL when the slot is empty. */
static int ktex_slot(struct kg_core *c, struct kg_dev *d, uint32_t slot, char **row, char *why,
                     size_t whysz)
{
	struct kh_buf *resp = kh_buf_new(RESP_MAX);
	struct kh_frame f;
	char req[64];
	int r;

	*row = NULL;
	if (resp == NULL)
		return KH_ERR_NOMEM;
	snprintf(req, sizeof(req), "[AOKTEX;SL%u;]", slot);
	r = call_text(c, d, req, resp, &f, why, whysz);
	if (r == KH_ERR_NOT_FOUND) {
		r = KH_OK;
	} else if (r == KH_OK) {
		const struct kh_field *rw = kh_frame_get(&f, "RW");
		const char *base = (const char *)kh_buf_ptr(resp);
		if (rw == NULL || rw->len < ROW_HEX_ID_AT + ROW_HEX_ID_LEN) {
			whyf(why, whysz, "%s port %u: KTEX: no row in the answer", d->d.host, d->d.port);
			r = KH_ERR_PROTOCOL;
		} else if (rw->val < base || rw->len > kh_buf_len(resp) ||
		           (size_t)(rw->val - base) > kh_buf_len(resp) - rw->len) {
			/* the parsed answer must lie in resp: never copy from elsewhere */
			log_warnx("KTEX answer from %s port %u: a field outside the answer (%zu bytes)",
			          d->d.host, d->d.port, kh_buf_len(resp));
			whyf(why, whysz, "%s port %u: KTEX: answer out of step", d->d.host, d->d.port);
			r = KH_ERR_PROTOCOL;
		} else if ((*row = malloc(rw->len + 1)) == NULL) {
			r = KH_ERR_NOMEM;
		} else {
			memcpy(*row, rw->val, rw->len);
			(*row)[rw->len] = '\0';
		}
	}
	kh_buf_free(resp);
	return r;
}

static void row_id(const char *row, char id[ROW_HEX_ID_LEN + 1])
{
	memcpy(id, row + ROW_HEX_ID_AT, ROW_HEX_ID_LEN);
	id[ROW_HEX_ID_LEN] = '\0';
}

/* ---- the journal ------------------------------------------------------- */

/* The members of g to apply an entry to now (caught up, up, enabled), and
 * every member but origin as pending. Under change_mu. */
static size_t members(struct kg_core *c, struct kg_group *g, struct kg_dev *origin,
                      struct kg_dev **out)
{
	size_t n = 0;
	pthread_rwlock_rdlock(&c->mu);
	for (size_t j = 0; j < KG_DEVICES_MAX; j++) {
		struct kg_dev *d = g->dev[j];
		if (d == NULL || d == origin)
			continue;
		out[n++] = d;
	}
	pthread_rwlock_unlock(&c->mu);
	return n;
}

static bool ready(struct kg_core *c, struct kg_dev *d)
{
	bool ok;
	pthread_rwlock_rdlock(&c->mu);
	ok = !d->removed && d->d.enabled && atomic_load(&d->joined) &&
	     (d->d.state == KH_GSTATE_UP || d->d.state == KH_GSTATE_DEGRADED);
	pthread_rwlock_unlock(&c->mu);
	return ok;
}

static void mark(struct kg_core *c, struct kg_dev *d, int64_t seq, int r, const char *err)
{
	struct kh_gstore_why w;
	if (r == KH_OK) {
		if (kh_gstore_journal_applied(c->st, seq, d->d.id, &w) == KH_OK)
			atomic_fetch_sub(&d->pending, 1);
		else
			log_warnx("journal %lld on device %lld: %s", (long long)seq, (long long)d->d.id,
			          w.text);
	} else if (kh_gstore_journal_failed(c->st, seq, d->d.id, err, &w) != KH_OK) {
		log_warnx("journal %lld on device %lld: %s", (long long)seq, (long long)d->d.id, w.text);
	}
}

/* Journal the request text (a KTIM or CFIM) and apply it to every member
 * that is ready and has nothing older due. Under change_mu. */
static int journal_and_apply(struct kg_core *c, struct kg_group *g, struct kg_dev *origin,
                             enum kh_gstore_jkind kind, const struct kh_buf *entry, char *why,
                             size_t whysz)
{
	struct kg_dev *m[KG_DEVICES_MAX];
	struct kh_gstore_why w;
	int64_t seq;
	int r;

	if ((r = kh_gstore_journal_append(c->st, g->g.id, kind, kh_buf_ptr(entry), kh_buf_len(entry),
	                                  origin ? origin->d.id : 0, &seq, &w)) != KH_OK) {
		whyf(why, whysz, "journal: %s", w.text);
		return r;
	}
	size_t n = members(c, g, origin, m);
	for (size_t i = 0; i < n; i++)
		atomic_fetch_add(&m[i]->pending, 1);
	struct kh_buf *resp = kh_buf_new(RESP_MAX);
	if (resp == NULL)
		return KH_OK; /* journaled: the replicator applies it */
	for (size_t i = 0; i < n; i++) {
		struct kh_frame f;
		char err[KG_WHY_MAX] = "";
		/* an older entry still due goes first: the replicator keeps order */
		if (!ready(c, m[i]) || atomic_load(&m[i]->pending) != 1)
			continue;
		kh_buf_reset(resp);
		r = kg_dev_call(c, m[i], entry, resp, &f, err, sizeof(err));
		mark(c, m[i], seq, r, err);
		if (r != KH_OK)
			log_warnx("journal %lld not applied on device %lld yet: %s", (long long)seq,
			          (long long)m[i]->d.id, err);
	}
	kh_buf_free(resp);
	pthread_rwlock_wrlock(&c->mu);
	g->g.journal_head = seq;
	atomic_fetch_add(&g->gen, 1);
	pthread_rwlock_unlock(&c->mu);
	kg_wake_replicator(c);
	return KH_OK;
}

struct due {
	int64_t seq;
	uint8_t *payload;
	size_t len;
};

struct due_list {
	struct due *e;
	size_t n, cap;
	int err;
};

static int collect_due(const struct kh_gstore_jentry *e, void *arg)
{
	struct due_list *l = arg;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct due *n = realloc(l->e, cap * sizeof(*n));
		if (n == NULL) {
			l->err = KH_ERR_NOMEM;
			return 1;
		}
		l->e = n;
		l->cap = cap;
	}
	struct due *d = &l->e[l->n];
	if ((d->payload = malloc(e->payload_len ? e->payload_len : 1)) == NULL) {
		l->err = KH_ERR_NOMEM;
		return 1;
	}
	memcpy(d->payload, e->payload, e->payload_len);
	d->len = e->payload_len;
	d->seq = e->seq;
	l->n++;
	return 0;
}

int kg_repl_catch_up(struct kg_core *c, struct kg_group *g, struct kg_dev *d)
{
	struct due_list l = {0};
	struct kh_gstore_why w;
	int64_t left = 0;
	int r;

	(void)g;
	if ((r = kh_gstore_journal_pending(c->st, d->d.id, 100, collect_due, &l, &w)) != KH_OK &&
	    l.err == 0) {
		log_warnx("device %lld: journal: %s", (long long)d->d.id, w.text);
		return r;
	}
	struct kh_buf *req = kh_buf_new(KH_GSTORE_PAYLOAD_MAX + 1);
	struct kh_buf *resp = kh_buf_new(RESP_MAX);
	r = l.err ? l.err : (req && resp ? KH_OK : KH_ERR_NOMEM);
	for (size_t i = 0; r == KH_OK && i < l.n; i++) {
		struct kh_frame f;
		char err[KG_WHY_MAX] = "";
		kh_buf_reset(req);
		kh_buf_reset(resp);
		if ((r = kh_buf_put(req, l.e[i].payload, l.e[i].len)) != KH_OK)
			break;
		r = kg_dev_call(c, d, req, resp, &f, err, sizeof(err));
		mark(c, d, l.e[i].seq, r, err);
		if (r != KH_OK)
			log_warnx("device %lld: journal entry %lld: %s", (long long)d->d.id,
			          (long long)l.e[i].seq, err);
	}
	for (size_t i = 0; i < l.n; i++)
		free(l.e[i].payload);
	free(l.e);
	kh_buf_free(req);
	kh_buf_free(resp);
	if (kh_gstore_journal_count_pending(c->st, d->d.id, &left, &w) == KH_OK) {
		int64_t was = atomic_exchange(&d->pending, left);
		if (was != 0 && left == 0) {
			pthread_rwlock_wrlock(&c->mu);
			atomic_fetch_add(&g->gen, 1);
			pthread_rwlock_unlock(&c->mu);
			kg_event(c, g->g.id, d->d.id, KH_GEV_REPLICATION, "caught up with the journal");
		}
	}
	return r;
}

/* ---- key-changing requests --------------------------------------------- */

int kg_repl_key_change(struct kg_core *c, struct kg_group *g, const struct kh_buf *req,
                       const struct kh_frame *rf, kg_send_fn send, void *arg, struct kh_buf *resp,
                       struct kh_frame *f, char *why, size_t whysz)
{
	uint32_t slots[SLOTS_MAX];
	char *pre[SLOTS_MAX] = {0}, *post[SLOTS_MAX] = {0};
	size_t ns = 0;
	struct kg_dev *prim;
	struct kh_buf *entry = NULL;
	int r;

	pthread_mutex_lock(&g->change_mu);
	pthread_rwlock_rdlock(&c->mu);
	prim = kg_group_primary(g);
	bool up = prim && !prim->removed && prim->d.enabled && atomic_load(&prim->joined) &&
	          prim->d.state != KH_GSTATE_DOWN && prim->d.state != KH_GSTATE_DISABLED;
	pthread_rwlock_unlock(&c->mu);
	if (!up) {
		pthread_mutex_unlock(&g->change_mu);
		whyf(why, whysz, "the group's Primary is %s: key-changing commands wait until an "
		                 "operator promotes a device (keyhold device promote)",
		     prim ? "down" : "missing");
		return KH_ERR_STATE;
	}
	slots_of(rf, slots, &ns);
	for (size_t i = 0; i < ns; i++)
		if ((r = ktex_slot(c, prim, slots[i], &pre[i], why, whysz)) != KH_OK)
			goto out;
	if ((r = send(arg, prim, req, resp, f)) != KH_OK) {
		if (r == KH_ERR_IO || r == KH_ERR_CLOSED || r == KH_ERR_TIMEOUT || r == KH_ERR_CONNECT)
			whyf(why, whysz, "the group's Primary did not answer (%s)", kh_errname(r));
		goto out;
	}
	/* the answer names the slots the HSM picked */
	{
		size_t before = ns;
		slots_of(f, slots, &ns);
		for (size_t i = before; i < ns; i++)
			pre[i] = NULL;
	}
	for (size_t i = 0; i < ns; i++)
		if ((r = ktex_slot(c, prim, slots[i], &post[i], why, whysz)) != KH_OK)
			goto replfail;
	if ((entry = kh_buf_new(KH_GSTORE_PAYLOAD_MAX)) == NULL) {
		r = KH_ERR_NOMEM;
		goto replfail;
	}
	bool any_del = false, any_row = false;
	r = kh_buf_put_str(entry, "[AOKTIM;");
	for (size_t i = 0; r == KH_OK && i < ns; i++) {
		char a[ROW_HEX_ID_LEN + 1], b[ROW_HEX_ID_LEN + 1];
		if (pre[i] == NULL)
			continue;
		row_id(pre[i], a);
		if (post[i]) {
			row_id(post[i], b);
			if (strcmp(a, b) == 0)
				continue; /* the same key, changed: its row replaces it */
		}
		r = kh_buf_putf(entry, "%s%u:%s", any_del ? "," : "DL", slots[i], a);
		any_del = true;
	}
	if (r == KH_OK && any_del)
		r = kh_buf_put_str(entry, ";");
	for (size_t i = 0; r == KH_OK && i < ns; i++) {
		if (post[i] == NULL || (pre[i] && strcmp(pre[i], post[i]) == 0))
			continue;
		if ((r = kh_buf_put_str(entry, any_row ? "," : "RW")) == KH_OK)
			r = kh_buf_put_str(entry, post[i]);
		any_row = true;
	}
	if (r == KH_OK && any_row)
		r = kh_buf_put_str(entry, ";RPY;");
	if (r == KH_OK)
		r = kh_buf_put_str(entry, "]");
	if (r != KH_OK) {
		whyf(why, whysz, "the change is too large to replicate (%s)", kh_errname(r));
		goto replfail;
	}
	if (!any_del && !any_row)
		goto out; /* nothing changed in the table */
	r = journal_and_apply(c, g, prim, any_row ? KH_GJ_KEY_ROW : KH_GJ_KEY_DELETE, entry, why,
	                      whysz);
	if (r != KH_OK)
		goto replfail;
	goto out;
replfail:
	/* the Primary changed but the change is not journaled: the client must
	 * not take it as done everywhere */
	log_warnx("group %lld: a %s on the Primary was not replicated: %s", (long long)g->g.id,
	          rf->cmd, why);
	kg_event(c, g->g.id, prim->d.id, KH_GEV_REPLICATION,
	         "%s ran on the Primary but was not replicated: %s (synchronize the members)", rf->cmd,
	         why);
	if (r == KH_OK)
		r = KH_ERR_INTERNAL;
out:
	for (size_t i = 0; i < ns; i++) {
		free(pre[i]);
		free(post[i]);
	}
	kh_buf_free(entry);
	pthread_mutex_unlock(&g->change_mu);
	return r;
}

/* ---- configuration ----------------------------------------------------- */

static int config_digest(struct kg_core *c, struct kg_dev *d, char cd[65], char *why, size_t whysz)
{
	struct kh_buf *resp = kh_buf_new(4096);
	struct kh_frame f;
	int r;
	if (resp == NULL)
		return KH_ERR_NOMEM;
	if ((r = call_text(c, d, "[AOKTCK;CFY;]", resp, &f, why, whysz)) == KH_OK &&
	    kh_frame_str(&f, "CD", cd, 65) != KH_OK) {
		whyf(why, whysz, "%s port %u: KTCK: no configuration digest", d->d.host, d->d.port);
		r = KH_ERR_PROTOCOL;
	}
	kh_buf_free(resp);
	return r;
}

/* CFEX on the Primary into a CFIM request. */
static int config_entry(struct kg_core *c, struct kg_dev *prim, struct kh_buf **entry, char *why,
                        size_t whysz)
{
	struct kh_buf *resp = kh_buf_new(RESP_MAX);
	struct kh_frame f;
	int r;
	*entry = NULL;
	if (resp == NULL)
		return KH_ERR_NOMEM;
	if ((r = call_text(c, prim, "[AOCFEX;]", resp, &f, why, whysz)) == KH_OK) {
		const struct kh_field *cf = kh_frame_get(&f, "CF");
		struct kh_buf *e = cf ? kh_buf_new(cf->len + 16) : NULL;
		if (cf == NULL)
			r = KH_ERR_PROTOCOL;
		else if (e == NULL)
			r = KH_ERR_NOMEM;
		else if ((r = kh_buf_put_str(e, "[AOCFIM;CF")) == KH_OK &&
		         (r = kh_buf_put(e, cf->val, cf->len)) == KH_OK)
			r = kh_buf_put_str(e, ";]");
		if (r == KH_OK)
			*entry = e;
		else
			kh_buf_free(e);
	}
	kh_buf_free(resp);
	return r;
}

int kg_repl_config(struct kg_core *c, struct kg_group *g, bool wait)
{
	char cd[65], why[KG_WHY_MAX] = "";
	struct kh_buf *entry = NULL;
	struct kg_dev *prim;
	int r;

	if (!wait) {
		/* the monitor's poll: never held up by a join in progress */
		if (pthread_mutex_trylock(&g->change_mu) != 0)
			return KH_OK;
	} else {
		pthread_mutex_lock(&g->change_mu);
	}
	pthread_rwlock_rdlock(&c->mu);
	prim = kg_group_primary(g);
	bool on = g->g.opt_configuration && prim;
	pthread_rwlock_unlock(&c->mu);
	on = on && ready(c, prim);
	if (!on) {
		pthread_mutex_unlock(&g->change_mu);
		return KH_OK;
	}
	if ((r = config_digest(c, prim, cd, why, sizeof(why))) != KH_OK)
		goto out;
	if (strcmp(cd, g->last_cd) == 0)
		goto out;
	if ((r = config_entry(c, prim, &entry, why, sizeof(why))) != KH_OK)
		goto out;
	if ((r = journal_and_apply(c, g, prim, KH_GJ_CONFIG, entry, why, sizeof(why))) != KH_OK)
		goto out;
	memcpy(g->last_cd, cd, sizeof(g->last_cd));
	kg_event(c, g->g.id, prim->d.id, KH_GEV_REPLICATION,
	         "configuration of the Primary replicated to the members");
out:
	if (r != KH_OK)
		log_warnx("group %lld: configuration not replicated: %s", (long long)g->g.id, why);
	kh_buf_free(entry);
	pthread_mutex_unlock(&g->change_mu);
	return r;
}

/* ---- joining ----------------------------------------------------------- */

int kg_repl_ktck(struct kg_core *c, struct kg_dev *d, char ck[65], uint64_t *rows, char *why,
                 size_t whysz)
{
	struct kh_buf *resp = kh_buf_new(4096);
	struct kh_frame f;
	int r;
	if (resp == NULL)
		return KH_ERR_NOMEM;
	if ((r = call_text(c, d, "[AOKTCK;]", resp, &f, why, whysz)) == KH_OK &&
	    (kh_frame_str(&f, "CK", ck, 65) != KH_OK ||
	     kh_frame_u64(&f, "RN", 0, UINT64_MAX, rows) != KH_OK)) {
		whyf(why, whysz, "%s port %u: KTCK: a field is missing", d->d.host, d->d.port);
		r = KH_ERR_PROTOCOL;
	}
	kh_buf_free(resp);
	return r;
}

struct keyref {
	uint32_t slot;
	char id[ROW_HEX_ID_LEN + 1];
};

struct keylist {
	struct keyref *k;
	size_t n, cap;
};

static int keylist_add(struct keylist *l, uint32_t slot, const char *id)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 256;
		struct keyref *n = realloc(l->k, cap * sizeof(*n));
		if (n == NULL)
			return KH_ERR_NOMEM;
		l->k = n;
		l->cap = cap;
	}
	l->k[l->n].slot = slot;
	memcpy(l->k[l->n].id, id, ROW_HEX_ID_LEN + 1);
	l->n++;
	return KH_OK;
}

static uint32_t row_slot(const char *row)
{
	uint32_t v = 0;
	for (int i = 2; i < 10; i++) {
		char ch = row[i];
		v = v * 16 + (uint32_t)(ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
	}
	return v;
}

/* Walk every row of d's table (KTEX pages); fn gets the RW field of a page. */
typedef int (*page_fn)(const struct kh_field *rw, void *arg);
static int walk_table(struct kg_core *c, struct kg_dev *d, page_fn fn, void *arg, char *why,
                      size_t whysz)
{
	struct kh_buf *resp = kh_buf_new(RESP_MAX);
	uint64_t next = 0;
	int r = resp ? KH_OK : KH_ERR_NOMEM;
	while (r == KH_OK) {
		struct kh_frame f;
		char req[64];
		snprintf(req, sizeof(req), "[AOKTEX;SL%llu;NM%u;]", (unsigned long long)next, PAGE_ROWS);
		kh_buf_reset(resp);
		if ((r = call_text(c, d, req, resp, &f, why, whysz)) != KH_OK)
			break;
		const struct kh_field *rw = kh_frame_get(&f, "RW");
		if (rw && rw->len && (r = fn(rw, arg)) != KH_OK) {
			whyf(why, whysz, "%s port %u: %s", d->d.host, d->d.port, kh_errname(r));
			break;
		}
		if (!kh_frame_has(&f, "NX"))
			break;
		if ((r = kh_frame_u64(&f, "NX", next + 1, 999999, &next)) != KH_OK)
			whyf(why, whysz, "%s port %u: KTEX: bad NX", d->d.host, d->d.port);
	}
	kh_buf_free(resp);
	return r;
}

static int list_page(const struct kh_field *rw, void *arg)
{
	struct keylist *l = arg;
	size_t at = 0;
	while (at < rw->len) {
		const char *p = rw->val + at;
		const char *e = memchr(p, ',', rw->len - at);
		size_t n = e ? (size_t)(e - p) : rw->len - at;
		if (n < ROW_HEX_ID_AT + ROW_HEX_ID_LEN)
			return KH_ERR_PROTOCOL;
		char id[ROW_HEX_ID_LEN + 1];
		row_id(p, id);
		int r = keylist_add(l, row_slot(p), id);
		if (r != KH_OK)
			return r;
		at += n + (e ? 1 : 0);
	}
	return KH_OK;
}

struct copy_ctx {
	struct kg_core *c;
	struct kg_dev *to;
	struct kh_buf *req, *resp;
	char *why;
	size_t whysz;
	uint64_t rows;
};

static int copy_page(const struct kh_field *rw, void *arg)
{
	struct copy_ctx *x = arg;
	struct kh_frame f;
	int r;
	kh_buf_reset(x->req);
	kh_buf_reset(x->resp);
	if ((r = kh_buf_put_str(x->req, "[AOKTIM;RW")) != KH_OK ||
	    (r = kh_buf_put(x->req, rw->val, rw->len)) != KH_OK ||
	    (r = kh_buf_put_str(x->req, ";RPY;]")) != KH_OK)
		return r;
	if ((r = kg_dev_call(x->c, x->to, x->req, x->resp, &f, x->why, x->whysz)) != KH_OK)
		return r;
	x->rows++;
	return KH_OK;
}

static bool has_key(const struct keylist *l, uint32_t slot, const char *id)
{
	/* pages come in slot order: binary search */
	size_t lo = 0, hi = l->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (l->k[mid].slot < slot)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < l->n && l->k[lo].slot == slot && strcmp(l->k[lo].id, id) == 0;
}

/* The FTK, PMK and BEK check values d reports now (STAT FT / PM / BK; "N"
 * when not loaded). */
static int major_kcvs(struct kg_core *c, struct kg_dev *d, char kcv[3][20], char *why,
                      size_t whysz)
{
	static const char *const tags[3] = {"FT", "PM", "BK"};
	struct kh_buf *resp = kh_buf_new(4096);
	struct kh_frame f;
	int r;
	if (resp == NULL)
		return KH_ERR_NOMEM;
	if ((r = call_text(c, d, "[AOSTAT;]", resp, &f, why, whysz)) == KH_OK)
		for (int i = 0; i < 3 && r == KH_OK; i++)
			if (kh_frame_str(&f, tags[i], kcv[i], 20) != KH_OK) {
				whyf(why, whysz, "%s port %u: STAT: no %s", d->d.host, d->d.port, tags[i]);
				r = KH_ERR_PROTOCOL;
			}
	kh_buf_free(resp);
	return r;
}

int kg_repl_join(struct kg_core *c, struct kg_group *g, struct kg_dev *d, char *why, size_t whysz)
{
	struct keylist mine = {0}, theirs = {0};
	struct kh_buf *req = NULL, *resp = NULL, *cfg = NULL;
	struct kh_gstore_group row;
	struct kh_gstore_why w;
	struct kg_dev *prim;
	char ck_p[65], ck_d[65];
	uint64_t n_p = 0, n_d = 0;
	int r;

	pthread_rwlock_rdlock(&c->mu);
	prim = kg_group_primary(g);
	bool conf = g->g.opt_configuration;
	pthread_rwlock_unlock(&c->mu);
	if (prim == NULL || prim == d) {
		whyf(why, whysz, "the group has no Primary to copy from");
		return KH_ERR_STATE;
	}
	atomic_store(&d->joined, false);
	pthread_rwlock_wrlock(&c->mu);
	atomic_fetch_add(&g->gen, 1);
	pthread_rwlock_unlock(&c->mu);
	req = kh_buf_new(RESP_MAX + 64);
	resp = kh_buf_new(RESP_MAX);
	if (req == NULL || resp == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	/* the member must hold the Primary's major keys now (they may have
	 * changed since it was admitted) */
	{
		static const char *const names[3] = {"FTK", "PMK", "BEK"};
		char kp[3][20], kd[3][20];
		if ((r = major_kcvs(c, prim, kp, why, whysz)) != KH_OK ||
		    (r = major_kcvs(c, d, kd, why, whysz)) != KH_OK)
			goto out;
		for (int i = 0; i < 3; i++)
			if (strcmp(kp[i], kd[i]) != 0) {
				whyf(why, whysz, "%s check value differs: Primary %s, device %s: members must "
				                 "hold the same major keys", names[i], kp[i], kd[i]);
				r = KH_ERR_BAD_KCV;
				goto out;
			}
	}
	/* the journal head now: everything after it reaches d as usual */
	if ((r = kh_gstore_group_get(c->st, g->g.id, &row, &w)) != KH_OK) {
		whyf(why, whysz, "%s", w.text);
		goto out;
	}
	if (conf) {
		struct kh_frame f;
		if ((r = config_entry(c, prim, &cfg, why, whysz)) != KH_OK ||
		    (r = kg_dev_call(c, d, cfg, resp, &f, why, whysz)) != KH_OK)
			goto out;
	}
	/* the member's keys that the Primary does not have go first */
	if ((r = walk_table(c, prim, list_page, &theirs, why, whysz)) != KH_OK ||
	    (r = walk_table(c, d, list_page, &mine, why, whysz)) != KH_OK)
		goto out;
	kh_buf_reset(req);
	size_t ndel = 0;
	for (size_t i = 0; r == KH_OK && i <= mine.n; i++) {
		if (i < mine.n && has_key(&theirs, mine.k[i].slot, mine.k[i].id))
			continue;
		if (i < mine.n)
			r = kh_buf_putf(req, "%s%u:%s", ndel ? "," : "[AOKTIM;DL", mine.k[i].slot,
			                mine.k[i].id);
		if (i < mine.n)
			ndel++;
		if (r == KH_OK && ndel && (ndel == 1000 || i == mine.n)) {
			struct kh_frame f;
			if ((r = kh_buf_put_str(req, ";]")) == KH_OK)
				r = kg_dev_call(c, d, req, resp, &f, why, whysz);
			kh_buf_reset(req);
			ndel = 0;
		}
	}
	if (r != KH_OK)
		goto out;
	struct copy_ctx x = {.c = c, .to = d, .req = req, .resp = resp, .why = why, .whysz = whysz};
	if ((r = walk_table(c, prim, copy_page, &x, why, whysz)) != KH_OK)
		goto out;
	if ((r = kg_repl_ktck(c, prim, ck_p, &n_p, why, whysz)) != KH_OK ||
	    (r = kg_repl_ktck(c, d, ck_d, &n_d, why, whysz)) != KH_OK)
		goto out;
	if (strcmp(ck_p, ck_d) != 0) {
		whyf(why, whysz, "key-table check differs after the copy (Primary %llu rows, device %llu)",
		     (unsigned long long)n_p, (unsigned long long)n_d);
		r = KH_ERR_STATE;
		goto out;
	}
	if ((r = kh_gstore_journal_synced(c->st, d->d.id, row.journal_head, &w)) != KH_OK) {
		whyf(why, whysz, "journal: %s", w.text);
		goto out;
	}
	{
		int64_t left = 0;
		if (kh_gstore_journal_count_pending(c->st, d->d.id, &left, &w) == KH_OK)
			atomic_store(&d->pending, left);
	}
	atomic_store(&d->joined, true);
	pthread_rwlock_wrlock(&c->mu);
	atomic_fetch_add(&g->gen, 1);
	pthread_rwlock_unlock(&c->mu);
	log_info("device %lld joined: %llu rows, key-table check %.16s...", (long long)d->d.id,
	         (unsigned long long)n_d, ck_d);
out:
	free(mine.k);
	free(theirs.k);
	kh_buf_free(req);
	kh_buf_free(resp);
	kh_buf_free(cfg);
	return r;
}

/* ---- the replicator thread --------------------------------------------- */

void *kg_replicator_main(void *arg)
{
	struct kg_core *c = arg;
	unsigned rounds = 0;
	while (!atomic_load(&c->stopping)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_mutex_lock(&c->wake_mu);
		while (!c->wake_flag && !atomic_load(&c->stopping))
			if (pthread_cond_timedwait(&c->wake, &c->wake_mu, &ts) != 0)
				break;
		c->wake_flag = false;
		pthread_mutex_unlock(&c->wake_mu);
		if (atomic_load(&c->stopping))
			break;
		for (size_t i = 0; i < KG_GROUPS_MAX; i++) {
			struct kg_dev *due[KG_DEVICES_MAX];
			size_t n = 0;
			pthread_rwlock_rdlock(&c->mu);
			struct kg_group *g = c->grp[i];
			if (g && !g->removed)
				for (size_t j = 0; j < KG_DEVICES_MAX; j++)
					if (g->dev[j] && atomic_load(&g->dev[j]->pending) > 0)
						due[n++] = g->dev[j];
			pthread_rwlock_unlock(&c->mu);
			for (size_t k = 0; k < n; k++) {
				if (!ready(c, due[k]))
					continue;
				pthread_mutex_lock(&g->change_mu);
				if (!due[k]->removed)
					(void)kg_repl_catch_up(c, g, due[k]);
				pthread_mutex_unlock(&g->change_mu);
			}
		}
		if (++rounds % 60 == 0) {
			struct kh_gstore_why w;
			int64_t removed = 0;
			if (kh_gstore_journal_prune(c->st, &removed, &w) != KH_OK)
				log_warnx("journal prune: %s", w.text);
		}
	}
	return NULL;
}
