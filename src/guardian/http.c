/*
 * kg_http_start: the HTTP listener (http_server.c) with the core's real
 * actions. This is the only place the API meets kg_core_*; the router and
 * the server take the actions as a table so that they can be tested on
 * their own. Production never runs with any other table.
 */
#include "guardian/guardian.h"
#include "guardian/http_router.h"
#include "guardian/http_server.h"

static const struct kg_http_ops core_ops = {
	.store = kg_core_store,
	.group_add = kg_core_group_add,
	.group_modify = kg_core_group_modify,
	.group_remove = kg_core_group_remove,
	.group_check = kg_core_group_check,
	.device_add = kg_core_device_add,
	.device_modify = kg_core_device_modify,
	.device_remove = kg_core_device_remove,
	.device_promote = kg_core_device_promote,
	.device_sync = kg_core_device_sync,
	.device_diagnose = kg_core_device_diagnose,
	.device_live = kg_core_device_live,
	.device_admin_addr = kg_core_device_admin_addr,
	.device_admin_client = kg_core_device_admin_client,
};

int kg_http_start(struct kg_core *c, const struct kg_http_cfg *cfg, struct kg_http **out,
		  char *why, size_t whysz)
{
	struct kg_http_cfg k = *cfg;
	if (k.port == 0)
		k.port = 8080;
	return kg_httpd_start(&core_ops, c, &k, out, why, whysz);
}
