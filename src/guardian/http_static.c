/*
 * The web console's files as the router serves them: a lookup in the
 * table compiled in at build time and the Content-Type of each. Only
 * names in the table are ever answered: no path is built from a request.
 */
#include "guardian/http_static.h"

#include <stdbool.h>
#include <string.h>

const struct kg_asset *kg_static_find(const char *name)
{
	for (unsigned i = 0; i < kg_console_nassets; i++)
		if (strcmp(kg_console_assets[i].name, name) == 0)
			return &kg_console_assets[i];
	return NULL;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && strcmp(s + n - k, suffix) == 0;
}

const char *kg_static_type(const struct kg_asset *a)
{
	static const struct {
		const char *ext, *type;
	} types[] = {
	    {".html", "text/html; charset=utf-8"},
	    {".js", "text/javascript; charset=utf-8"},
	    {".mjs", "text/javascript; charset=utf-8"},
	    {".css", "text/css; charset=utf-8"},
	    {".svg", "image/svg+xml"},
	    {".png", "image/png"},
	    {".ico", "image/x-icon"},
	    {".json", "application/json"},
	    {".txt", "text/plain; charset=utf-8"},
	};
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (ends_with(a->name, types[i].ext))
			return types[i].type;
	return "application/octet-stream";
}
