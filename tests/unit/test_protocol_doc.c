/* docs/PROTOCOL.md and the command table must name the same commands. */
#include "kh_testutil.h"
#include "hsm/dispatch.h"

#include <stdio.h>
#include <string.h>

/* Catalogue entries without a handler are listed in the catalogue table as
 * "| NAME | summary | not yet |". */
static void test_catalogue_listed(void **state)
{
	FILE *f = fopen(KH_PROTOCOL_MD, "r");
	char line[512];
	bool listed[KH_MAX_COMMANDS] = {false};
	(void)state;
	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		char name[5];
		if (strncmp(line, "| ", 2) != 0 || strlen(line) < 8 || line[6] != ' ')
			continue;
		memcpy(name, line + 2, 4);
		name[4] = '\0';
		int idx = kh_cmd_index(name);
		if (idx >= 0)
			listed[idx] = true;
	}
	fclose(f);
	for (size_t i = 0; i < kh_cmd_count; i++)
		if (kh_cmd_table[i].act == NULL && !listed[i])
			fail_msg("catalogue command %s is missing from PROTOCOL.md", kh_cmd_table[i].name);
}

static void test_doc_matches_table(void **state)
{
	FILE *f = fopen(KH_PROTOCOL_MD, "r");
	char line[512];
	bool seen[KH_MAX_COMMANDS] = {false};
	int documented = 0;
	(void)state;
	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "### ", 4) != 0 || strlen(line) < 9 || line[8] != ' ')
			continue;
		char name[5];
		memcpy(name, line + 4, 4);
		name[4] = '\0';
		if (strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") != 4)
			continue; /* a section heading, not a command */
		int idx = kh_cmd_index(name);
		if (idx < 0)
			fail_msg("PROTOCOL.md documents %s, which the command table lacks", name);
		if (seen[idx])
			fail_msg("PROTOCOL.md documents %s twice", name);
		seen[idx] = true;
		documented++;
		/* the heading's summary matches the table's */
		const char *sum = strstr(line, "— ");
		assert_non_null(sum);
		sum += strlen("— ");
		if (strncmp(sum, kh_cmd_table[idx].summary, strlen(kh_cmd_table[idx].summary)) != 0)
			fail_msg("%s: summary differs between PROTOCOL.md and the table", name);
	}
	fclose(f);
	size_t implemented = 0;
	for (size_t i = 0; i < kh_cmd_count; i++) {
		if (kh_cmd_table[i].act == NULL) {
			if (seen[i])
				fail_msg("%s has a section but no handler", kh_cmd_table[i].name);
			continue;
		}
		implemented++;
		if (!seen[i])
			fail_msg("command %s is not documented in PROTOCOL.md", kh_cmd_table[i].name);
	}
	assert_int_equal((size_t)documented, implemented);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_doc_matches_table),
					   cmocka_unit_test(test_catalogue_listed)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
