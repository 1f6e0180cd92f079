/* SPDX-License-Identifier: MIT */
/* The stats text as JSON and as Prometheus metrics (stats-format.h). */
#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "stats-format.h"

#define TENANT_SECTION "Tenant "

struct entry {
	const char *section, *key, *value;  /* into the parsed copy */
};

struct parsed {
	char *copy;
	struct entry *e;
	size_t n;
};

/* Splits the text into (section, key, value) entries; NULL-free on error. */
static bool parse(const char *text, struct parsed *p)
{
	const char *section = "";
	size_t cap = 64;
	char *line;

	p->n = 0;
	p->copy = strdup(text);
	p->e = malloc(cap * sizeof(*p->e));
	if (!p->copy || !p->e) {
		free(p->copy);
		free(p->e);
		return false;
	}
	for (char *save = NULL, *s = p->copy; (line = strtok_r(s, "\n", &save)); s = NULL) {
		char *colon = strchr(line, ':');

		if (line[0] == '#') {
			section = line + 1 + (line[1] == ' ');
			continue;
		}
		if (!colon)
			continue;
		if (p->n == cap) {
			struct entry *e = realloc(p->e, 2 * cap * sizeof(*e));

			if (!e)
				break;
			p->e = e;
			cap *= 2;
		}
		*colon = 0;
		p->e[p->n++] = (struct entry){ section, line, colon + 1 };
	}
	return true;
}

static void parsed_free(struct parsed *p)
{
	free(p->copy);
	free(p->e);
}

static const char *tenant_of(const struct entry *e)
{
	return strncmp(e->section, TENANT_SECTION, strlen(TENANT_SECTION)) ? NULL : e->section + strlen(TENANT_SECTION);
}

static bool is_number(const char *s)
{
	char *end;

	if (!*s || isspace((unsigned char)*s))
		return false;
	strtod(s, &end);
	return *end == 0;
}

static void print_json_string(const char *s, FILE *out)
{
	fputc('"', out);
	for (; *s; s++)
		if (*s == '"' || *s == '\\')
			fprintf(out, "\\%c", *s);
		else if ((unsigned char)*s >= 0x20)
			fputc(*s, out);
	fputc('"', out);
}

static void print_json_member(const struct entry *e, bool first, FILE *out)
{
	if (!first)
		fputc(',', out);
	print_json_string(e->key, out);
	fputc(':', out);
	if (is_number(e->value))
		fputs(e->value, out);
	else
		print_json_string(e->value, out);
}

/* Sections that become members of a JSON object keyed by their name. */
static const struct group {
	const char *prefix, *member;
	bool always;
} groups[] = { { "Tenant ", "tenants", true }, { "Sequence ", "sequences", false } };

static const struct group *group_of(const struct entry *e, const char **ret_name)
{
	for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++)
		if (!strncmp(e->section, groups[g].prefix, strlen(groups[g].prefix))) {
			*ret_name = e->section + strlen(groups[g].prefix);
			return &groups[g];
		}
	return NULL;
}

void stats_print_json(const char *text, FILE *out)
{
	struct parsed p;
	const char *name;
	bool first = true;

	if (!parse(text, &p)) {
		fputs("{}\n", out);
		return;
	}
	fputc('{', out);
	for (size_t i = 0; i < p.n; i++)
		if (!group_of(&p.e[i], &name)) {
			print_json_member(&p.e[i], first, out);
			first = false;
		}
	for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++) {
		bool opened = false;

		for (size_t i = 0; i < p.n; i++) {
			if (group_of(&p.e[i], &name) != &groups[g] || (i > 0 && p.e[i - 1].section == p.e[i].section))
				continue;
			fprintf(out, "%s", opened ? "," : first ? "" : ",");
			if (!opened)
				fprintf(out, "\"%s\":{", groups[g].member);
			opened = true;
			first = false;
			print_json_string(name, out);
			fputs(":{", out);
			for (size_t j = i; j < p.n && p.e[j].section == p.e[i].section; j++)
				print_json_member(&p.e[j], j == i, out);
			fputc('}', out);
		}
		if (!opened && groups[g].always) {
			fprintf(out, "%s\"%s\":{", first ? "" : ",", groups[g].member);
			first = false;
			opened = true;
		}
		if (opened)
			fputc('}', out);
	}
	fputs("}\n", out);
	parsed_free(&p);
}

/* Counters whose names the daemon writes without _total. */
static bool is_counter(const char *key)
{
	static const char *const counters[] = {
		"blocks_compressed", "blocks_freed",  "prefix_lookups", "prefix_query_tokens", "prefix_hit_tokens",
		"evicted_blocks",    "evicted_bytes", "compress_failures",   "window_freed_blocks", "window_freed_bytes",
	};
	size_t n = strlen(key);

	if (n > 6 && !strcmp(key + n - 6, "_total"))
		return true;
	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
		if (!strcmp(key, counters[i]))
			return true;
	return false;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !strcmp(s + n - m, suffix);
}

/* The metric name of a key (prefix "tqkv_" or "tqkv_tenant_"), in base
 * units; *scale converts the value. */
static void metric_name(const char *prefix, const char *key, char *buf, size_t size, double *scale)
{
	size_t n = strlen(key);

	*scale = 1;
	if (ends_with(key, "_usec_total")) {
		snprintf(buf, size, "%s%.*s_seconds_total", prefix, (int)(n - 11), key);
		*scale = 1e-6;
	} else if (ends_with(key, "_sec")) {
		snprintf(buf, size, "%s%.*s_seconds", prefix, (int)(n - 4), key);
	} else {
		snprintf(buf, size, "%s%s%s", prefix, key, is_counter(key) && !ends_with(key, "_total") ? "_total" : "");
	}
}

static void print_type(const char *name, const char *key, FILE *out)
{
	fprintf(out, "# TYPE %s %s\n", name, is_counter(key) ? "counter" : "gauge");
}

void stats_print_prometheus(const char *text, FILE *out)
{
	struct parsed p;
	char name[160];
	double scale;

	if (!parse(text, &p))
		return;
	for (size_t i = 0; i < p.n; i++) {
		const struct entry *e = &p.e[i];

		if (tenant_of(e))
			continue;
		if (!strcmp(e->key, "version")) {
			fprintf(out, "# TYPE tqkv_info gauge\ntqkv_info{version=\"%s\"} 1\n", e->value);
			continue;
		}
		if (!is_number(e->value))
			continue;
		metric_name("tqkv_", e->key, name, sizeof(name), &scale);
		print_type(name, e->key, out);
		fprintf(out, "%s %.17g\n", name, strtod(e->value, NULL) * scale);
	}
	/* Per-tenant metrics, each metric's samples together: the keys of
	 * the first tenant section name them. */
	for (size_t f = 0; f < p.n; f++) {
		if (!tenant_of(&p.e[f]))
			continue;
		for (size_t i = f; i < p.n && p.e[i].section == p.e[f].section; i++) {
			const struct entry *e = &p.e[i];

			if (!is_number(e->value) || !strcmp(e->key, "uid"))
				continue;
			metric_name("tqkv_tenant_", e->key, name, sizeof(name), &scale);
			print_type(name, e->key, out);
			for (size_t j = f; j < p.n; j++)
				if (tenant_of(&p.e[j]) && !strcmp(p.e[j].key, e->key))
					fprintf(out, "%s{tenant=\"%s\"} %.17g\n", name, tenant_of(&p.e[j]),
						strtod(p.e[j].value, NULL) * scale);
		}
		break;
	}
	parsed_free(&p);
}

double stats_number(const char *text, const char *section, const char *key, double def)
{
	struct parsed p;
	double v = def;

	if (!parse(text, &p))
		return def;
	for (size_t i = 0; i < p.n; i++)
		if ((!section || !strcmp(p.e[i].section, section)) && !strcmp(p.e[i].key, key) &&
		    is_number(p.e[i].value)) {
			v = strtod(p.e[i].value, NULL);
			break;
		}
	parsed_free(&p);
	return v;
}
