/*
 * Progress of migrations and seeds: the report callback the library calls
 * for every step. Human output is one line per migration or seed, started
 * when the step starts and finished with its duration ("... 12 ms"), so a
 * long migration shows what it is working on. For --json the steps are
 * collected and written into the command's JSON document.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

void cli_report_init(cli_report *r, const cli *c)
{
    memset(r, 0, sizeof *r);
    r->c = c;
}

void cli_report_free(cli_report *r)
{
    free(r->steps);
    for (size_t i = 0; i < r->nwarnings; i++)
        free(r->warnings[i]);
    free(r->warnings);
    free(r->fail_statement);
    memset(r, 0, sizeof *r);
}

static const char *action_word(int action)
{
    return action == DBK_MIGRATE_ACTION_DOWN ? "down" : action == DBK_MIGRATE_ACTION_SEED ? "seed"
                                                                                          : "up";
}

static void label(const dbk_migrate_event *ev, char *buf, size_t n)
{
    if (ev->action == DBK_MIGRATE_ACTION_SEED)
        snprintf(buf, n, "%s", ev->name ? ev->name : "");
    else
        snprintf(buf, n, "%lld_%s", (long long)ev->version, ev->name ? ev->name : "");
}

static void add_step(cli_report *r, const dbk_migrate_event *ev, bool skipped)
{
    if (r->nsteps == r->cap) {
        size_t ncap = r->cap ? r->cap * 2 : 16;
        cli_step *p = realloc(r->steps, ncap * sizeof *p);
        if (!p)
            return;
        r->steps = p;
        r->cap = ncap;
    }
    cli_step *s = &r->steps[r->nsteps++];
    memset(s, 0, sizeof *s);
    s->action = ev->action;
    s->version = ev->version;
    snprintf(s->name, sizeof s->name, "%s", ev->name ? ev->name : "");
    s->duration_ms = ev->duration_ms;
    s->transactional = ev->transactional;
    s->skipped = skipped;
}

void cli_report_event(void *ctx, const dbk_migrate_event *ev)
{
    cli_report *r = ctx;
    const cli *c = r->c;
    char lab[300];
    label(ev, lab, sizeof lab);
    switch (ev->kind) {
    case DBK_MIGRATE_EVENT_START:
        cli_info(c, "  %-5s %s%s ...", action_word(ev->action), lab,
                 ev->transactional ? "" : " (no transaction)");
        r->line_open = !c->quiet;
        break;
    case DBK_MIGRATE_EVENT_DONE: {
        char t[32];
        if (ev->duration_ms < 1)
            snprintf(t, sizeof t, "<1 ms");
        else
            snprintf(t, sizeof t, "%lld ms", (long long)ev->duration_ms);
        if (r->line_open)
            cli_info(c, " %s\n", t);
        else
            cli_info(c, "  %-5s %s ... %s\n", action_word(ev->action), lab, t);
        r->line_open = false;
        add_step(r, ev, false);
        break;
    }
    case DBK_MIGRATE_EVENT_SKIPPED:
        cli_info(c, "  %-5s %s unchanged, skipped\n", action_word(ev->action), lab);
        add_step(r, ev, true);
        break;
    case DBK_MIGRATE_EVENT_FAILED:
        if (r->line_open)
            cli_info(c, " FAILED after %lld ms\n", (long long)ev->duration_ms);
        r->line_open = false;
        r->failed = true;
        r->fail_version = ev->version;
        snprintf(r->fail_path, sizeof r->fail_path, "%s", ev->path ? ev->path : "");
        r->fail_line = ev->line;
        free(r->fail_statement);
        r->fail_statement = ev->statement ? strdup(ev->statement) : NULL;
        break;
    case DBK_MIGRATE_EVENT_WARNING:
    case DBK_MIGRATE_EVENT_WAITING:
        if (r->line_open) {
            cli_info(c, "\n");
            r->line_open = false;
        }
        if (!c->quiet)
            fprintf(stderr, "  %s: %s\n",
                    ev->kind == DBK_MIGRATE_EVENT_WARNING ? "warning" : "note",
                    ev->message ? ev->message : "");
        if (ev->kind == DBK_MIGRATE_EVENT_WARNING && ev->message) {
            char **p = realloc(r->warnings, (r->nwarnings + 1) * sizeof *p);
            if (p) {
                r->warnings = p;
                r->warnings[r->nwarnings] = strdup(ev->message);
                if (r->warnings[r->nwarnings])
                    r->nwarnings++;
            }
        }
        break;
    }
}

void cli_report_json(jw *w, const cli_report *r, const char *steps_key)
{
    jw_key(w, steps_key);
    jw_arr(w);
    for (size_t i = 0; i < r->nsteps; i++) {
        const cli_step *s = &r->steps[i];
        jw_obj(w);
        if (s->action == DBK_MIGRATE_ACTION_SEED) {
            jw_kstr(w, "name", s->name);
            jw_kstr(w, "status", s->skipped ? "skipped" : "ran");
        } else {
            jw_kint(w, "version", s->version);
            jw_kstr(w, "name", s->name);
            jw_kstr(w, "direction", action_word(s->action));
            jw_kbool(w, "transactional", s->transactional);
        }
        jw_kint(w, "duration_ms", s->duration_ms);
        jw_end_obj(w);
    }
    jw_end_arr(w);
    jw_key(w, "warnings");
    jw_arr(w);
    for (size_t i = 0; i < r->nwarnings; i++)
        jw_str(w, r->warnings[i]);
    jw_end_arr(w);
    if (r->failed) {
        jw_key(w, "failed");
        jw_obj(w);
        if (r->fail_version)
            jw_kint(w, "version", r->fail_version);
        jw_kstr(w, "file", r->fail_path);
        jw_kint(w, "line", r->fail_line);
        jw_kstr(w, "statement", r->fail_statement);
        jw_end_obj(w);
    }
}

void cli_report_json_extra(jw *w, void *ctx)
{
    cli_report *r = ctx;
    bool seeds = r->nsteps && r->steps[0].action == DBK_MIGRATE_ACTION_SEED;
    cli_report_json(w, r, seeds ? "seeds" : "steps");
}

void cli_report_print_failure(const cli_report *r)
{
    if (!r->failed || !r->fail_statement)
        return;
    fprintf(stderr, "  failing statement (%s, line %d):\n", r->fail_path, r->fail_line);
    /* Indented, at most 20 lines. */
    const char *p = r->fail_statement;
    for (int n = 0; *p && n < 20; n++) {
        const char *e = strchr(p, '\n');
        int len = e ? (int)(e - p) : (int)strlen(p);
        fprintf(stderr, "    %.*s\n", len > 400 ? 400 : len, p);
        if (!e)
            return;
        p = e + 1;
    }
    if (*p)
        fprintf(stderr, "    ...\n");
}
