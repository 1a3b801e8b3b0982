/*
 * The web console's files, compiled into the guardian at build time
 * (cmake/embed_assets.cmake writes the table): looked up by name, each
 * with its Content-Type and ETag. Read-only bytes; nothing from disk.
 */
#ifndef KG_HTTP_STATIC_H
#define KG_HTTP_STATIC_H

#include <stddef.h>

struct kg_asset {
	const char *name; /* "app.js": served as /console/app.js */
	const unsigned char *data;
	size_t len;
	const char *etag; /* "\"<16 hex of SHA-256>\"", quotes included */
};

/* The generated table (console_assets.c in the build directory). */
extern const struct kg_asset kg_console_assets[];
extern const unsigned kg_console_nassets;

/* The asset called name ("index.html", "app.js", ...), or NULL. */
const struct kg_asset *kg_static_find(const char *name);
/* Its Content-Type, from the name's extension. */
const char *kg_static_type(const struct kg_asset *a);

/* Headers every console file carries: the page may load only its own
 * scripts and styles, be framed by nobody, and leak no referrer. */
#define KG_STATIC_CSP                                                                              \
	"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "          \
	"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

#endif
