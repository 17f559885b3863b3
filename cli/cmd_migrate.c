/*
 * `dbkit migrate ...`: new, up, down, redo, status, validate, dump, repair.
 *
 * Each subcommand is a thin layer over the library call of the same name
 * (include/dbkit/migrate.h): parse its options, open one connection, call,
 * print. The library does the locking, the transactions and the checks, so
 * a service that migrates on start-up behaves exactly like this tool.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit migrate SUBCOMMAND [OPTIONS]\n"
    "\n"
    "  new NAME                     create <migrations-dir>/<UTC YYYYMMDDHHMMSS>_NAME.sql\n"
    "  up [--to VERSION]            apply pending migrations (up to VERSION), one\n"
    "                               transaction each, one line per migration with its time\n"
    "  down [--steps N | --to VERSION]\n"
    "                               revert the last N migrations (default 1), or every\n"
    "                               migration above VERSION (--to 0: all)\n"
    "  redo                         revert the last migration and apply it again\n"
    "  status [--exit-code]         every migration: applied, pending, changed (file edited\n"
    "                               after it was applied), missing (no file), dirty;\n"
    "                               --exit-code: exit 3 while migrations are pending, 4 when\n"
    "                               one is changed, missing or dirty\n"
    "  validate                     compare applied files with their recorded SHA-256;\n"
    "                               exit 4 on a changed, missing or dirty migration\n"
    "  dump [--output FILE]         write the schema to FILE (default: schema.sql next to\n"
    "                               the migrations folder, i.e. db/schema.sql; - = stdout)\n"
    "  repair                       explain a dirty (interrupted, non-transactional) migration\n"
    "  repair --mark-applied VERSION   record it as applied (you completed it by hand)\n"
    "  repair --mark-pending VERSION   forget it (you undid it; `up` runs it again)\n"
    "  lint [FILE...] [--all] [--engine postgres|sqlite] [--rules]\n"
    "                               report statements that lock or rewrite a live table\n"
    "                               (the pending migrations of the database by default;\n"
    "                               --all: every file, each as if run alone on a populated\n"
    "                               database); exit 6 on findings. `-- lint:ignore RULE\n"
    "                               reason` above a statement suppresses one finding;\n"
    "                               --trace: confirm or dismiss rewrite and lock findings\n"
    "                               by tracing each file (PostgreSQL, see trace)\n"
    "  trace FILE                   run FILE's up section in a transaction on a throwaway\n"
    "                               database migrated to the version before it, print the\n"
    "                               table locks and rewrites of each statement, roll back\n"
    "\n"
    "Migration files have a `-- migrate:up` and a `-- migrate:down` section; see\n"
    "docs/migrations.md. Global options (--url, --migrations-dir, --json, -q,\n"
    "--lock-timeout) apply.\n";

static dbk_migrate_source dir_source(const cli *c)
{
    dbk_migrate_source s;
    memset(&s, 0, sizeof s);
    s.dir = c->migrations_dir;
    return s;
}

static dbk_migrate_opts base_opts(const cli *c, cli_report *rep)
{
    dbk_migrate_opts o = DBK_MIGRATE_OPTS_INIT;
    o.lock_timeout_ms = c->lock_timeout_ms;
    o.report = cli_report_event;
    o.report_ctx = rep;
    return o;
}

/* ---- new ---- */

static int sub_new(cli *c, int argc, char **argv)
{
    const char *name = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            continue;
        if (argv[i][0] == '-' && argv[i][1])
            return cli_usage(c, "migrate new: unknown option %s", argv[i]);
        if (name)
            return cli_usage(c, "migrate new takes one NAME (use _ between words)");
        name = argv[i];
    }
    if (!name)
        return cli_usage(c, "migrate new needs a NAME, e.g. `dbkit migrate new create_users`");
    char path[4096];
    dbk_error err;
    dbk_error_clear(&err);
    dbk_rc rc = dbk_migrate_create(c->migrations_dir, name, 0, path, sizeof path, &err);
    if (rc)
        return cli_fail(c, rc, &err);
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_kstr(&w, "file", path);
        jw_end_obj(&w);
    } else if (!c->quiet) {
        printf("created %s\n", path);
    }
    return CLI_OK;
}

/* ---- up / down / redo ---- */

static void print_summary_json(const cli *c, const cli_report *rep, const char *key,
                               const dbk_migration_status *st)
{
    if (!c->json)
        return;
    jw w;
    jw_init(&w, stdout);
    jw_obj(&w);
    jw_kbool(&w, "ok", true);
    cli_report_json(&w, rep, key);
    if (st) {
        jw_kint(&w, "current_version", st->current_version);
        jw_kint(&w, "pending", (int64_t)st->pending);
    }
    jw_end_obj(&w);
}

struct fail_ctx {
    cli_report *rep;
    const char *key;
};

static void fail_extra(jw *w, void *ctx)
{
    struct fail_ctx *f = ctx;
    cli_report_json(w, f->rep, f->key);
}

static int run_change(cli *c, int argc, char **argv, int which)
{
    dbk_migrate_opts o;
    cli_report rep;
    cli_report_init(&rep, c);
    o = base_opts(c, &rep);
    const char *steps_s = NULL, *to_s = NULL;
    for (int i = 2; i < argc; i++) {
        int r = 0;
        if (which != 2 && (r = cli_opt_value(c, argc, argv, &i, "--to", &to_s)) != 0) {
            if (r < 0)
                return CLI_USAGE;
        } else if (which == 1 &&
                   (r = cli_opt_value(c, argc, argv, &i, "--steps", &steps_s)) != 0) {
            if (r < 0)
                return CLI_USAGE;
        } else {
            return cli_usage(c, "migrate %s: unexpected argument '%s'", argv[1], argv[i]);
        }
    }
    if (to_s) {
        if (!cli_parse_i64(to_s, &o.target))
            return cli_usage(c, "--to takes a migration version (digits), got '%s'", to_s);
        o.has_target = true;
    }
    if (steps_s) {
        int64_t n = 0;
        if (to_s)
            return cli_usage(c, "migrate down: use --steps or --to, not both");
        if (!cli_parse_i64(steps_s, &n) || n < 1 || n > 1000000)
            return cli_usage(c, "--steps takes a positive number, got '%s'", steps_s);
        o.steps = (int)n;
    }
    int envcode = cli_migrate_env(c, &o);
    if (envcode)
        return envcode;
    dbk_conn *conn = NULL;
    char url[512];
    int code = cli_connect(c, true, url, sizeof url, &conn);
    if (code)
        return code;
    dbk_db *db = dbk_conn_db(conn);
    dbk_migrate_source src = dir_source(c);
    dbk_error err;
    dbk_error_clear(&err);
    int n = 0;
    dbk_rc rc;
    const char *key = which == 0 ? "applied" : which == 1 ? "reverted" : "steps";
    cli_info(c, "%s: %s\n", which == 0 ? "migrating" : which == 1 ? "reverting" : "redoing", url);
    if (which == 0)
        rc = dbk_migrate_up(db, &src, &o, &n, &err);
    else if (which == 1)
        rc = dbk_migrate_down(db, &src, &o, &n, &err);
    else
        rc = dbk_migrate_redo(db, &src, &o, &err);
    if (rc) {
        cli_report_print_failure(&rep);
        struct fail_ctx fc = {&rep, key};
        code = cli_fail_ex(c, rc, &err, fail_extra, &fc);
        goto out;
    }
    dbk_migration_status *st = NULL;
    dbk_error e2;
    if (dbk_migrate_status(db, &src, &st, &e2) != DBK_OK)
        st = NULL;
    if (!c->json && !c->quiet) {
        if (which == 0 && n == 0)
            printf("no pending migrations");
        else if (which == 0)
            printf("%d migration%s applied", n, n == 1 ? "" : "s");
        else if (which == 1)
            printf("%d migration%s reverted", n, n == 1 ? "" : "s");
        else
            printf("migration redone");
        if (st)
            printf("; database at version %lld, %zu pending\n", (long long)st->current_version,
                   st->pending);
        else
            printf("\n");
    }
    print_summary_json(c, &rep, key, st);
    dbk_migrate_status_free(st);
    code = CLI_OK;
out:
    cli_report_free(&rep);
    dbk_conn_close(conn);
    return code;
}

/* ---- status / validate / repair ---- */

static void status_json_item(jw *w, const dbk_migration_info *it)
{
    char t[40];
    jw_obj(w);
    jw_kint(w, "version", it->version);
    jw_kstr(w, "name", it->name);
    jw_kstr(w, "state", dbk_migration_state_name(it->state));
    jw_kstr(w, "file", it->filename);
    jw_kstr(w, "file_checksum", it->file_checksum);
    jw_kstr(w, "applied_checksum", it->applied_checksum);
    jw_key(w, "applied_at");
    if (it->applied_at_us) {
        cli_time(it->applied_at_us, t, sizeof t);
        jw_str(w, t);
    } else {
        jw_null(w);
    }
    jw_kint(w, "duration_ms", it->duration_ms);
    jw_kbool(w, "transactional", it->transactional);
    jw_kint(w, "dirty", it->dirty);
    jw_kint(w, "statements_done", it->statements_done);
    jw_end_obj(w);
}

static void status_json(const dbk_migration_status *st, bool ok, jw *w)
{
    jw_obj(w);
    jw_kbool(w, "ok", ok);
    jw_kint(w, "current_version", st->current_version);
    jw_key(w, "counts");
    jw_obj(w);
    jw_kint(w, "applied", (int64_t)st->applied);
    jw_kint(w, "pending", (int64_t)st->pending);
    jw_kint(w, "changed", (int64_t)st->changed);
    jw_kint(w, "missing", (int64_t)st->missing);
    jw_kint(w, "dirty", (int64_t)st->dirty);
    jw_end_obj(w);
    jw_key(w, "migrations");
    jw_arr(w);
    for (size_t i = 0; i < st->count; i++)
        status_json_item(w, &st->items[i]);
    jw_end_arr(w);
}

static void describe_dirty(const dbk_migration_info *it, char *buf, size_t n)
{
    snprintf(buf, n, "%s interrupted after %d statement%s%s%s",
             it->dirty == 2 ? "down" : "up", it->statements_done,
             it->statements_done == 1 ? "" : "s", it->owner[0] ? ", by " : "", it->owner);
}

static void status_table(const cli *c, const dbk_migration_status *st, const char *url)
{
    if (c->quiet)
        return;
    printf("database:   %s\nmigrations: %s\n\n", url, c->migrations_dir);
    if (st->count == 0) {
        printf("no migrations (create one with `dbkit migrate new NAME`)\n");
        return;
    }
    size_t wname = 4;
    for (size_t i = 0; i < st->count; i++)
        if (strlen(st->items[i].name) > wname)
            wname = strlen(st->items[i].name);
    if (wname > 48)
        wname = 48;
    printf("  %-16s %-*s %-8s %-19s %s\n", "VERSION", (int)wname, "NAME", "STATE", "APPLIED AT",
           "TIME");
    for (size_t i = 0; i < st->count; i++) {
        const dbk_migration_info *it = &st->items[i];
        char t[40] = "", d[32] = "", extra[300] = "";
        if (it->applied_at_us) {
            cli_time(it->applied_at_us, t, sizeof t);
            snprintf(d, sizeof d, "%lld ms", (long long)it->duration_ms);
        }
        if (it->state == DBK_MIGRATION_DIRTY) {
            char why[200];
            describe_dirty(it, why, sizeof why);
            snprintf(extra, sizeof extra, "  (%s)", why);
        } else if (it->state == DBK_MIGRATION_CHANGED) {
            snprintf(extra, sizeof extra, "  (file edited after it was applied)");
        } else if (it->state == DBK_MIGRATION_MISSING) {
            snprintf(extra, sizeof extra, "  (no file)");
        } else if (!it->transactional) {
            snprintf(extra, sizeof extra, "  (no transaction)");
        }
        printf("  %-16lld %-*.*s %-8s %-19s %s%s\n", (long long)it->version, (int)wname,
               (int)wname, it->name, dbk_migration_state_name(it->state), t, d, extra);
    }
    printf("\n%zu applied, %zu pending", st->applied, st->pending);
    if (st->changed)
        printf(", %zu changed", st->changed);
    if (st->missing)
        printf(", %zu missing", st->missing);
    if (st->dirty)
        printf(", %zu dirty", st->dirty);
    printf("; current version %lld\n", (long long)st->current_version);
}

static int sub_status(cli *c, int argc, char **argv, int which)
{
    bool exit_code = false;
    for (int i = 2; i < argc; i++) {
        if (which == 0 && strcmp(argv[i], "--exit-code") == 0)
            exit_code = true;
        else
            return cli_usage(c, "migrate %s: unexpected argument '%s'", argv[1], argv[i]);
    }
    dbk_conn *conn = NULL;
    char url[512];
    int code = cli_connect(c, false, url, sizeof url, &conn);
    if (code)
        return code;
    dbk_migrate_source src = dir_source(c);
    dbk_error err;
    dbk_error_clear(&err);
    dbk_migration_status *st = NULL;
    dbk_rc rc = which == 0 ? dbk_migrate_status(dbk_conn_db(conn), &src, &st, &err)
                           : dbk_migrate_validate(dbk_conn_db(conn), &src, &st, &err);
    dbk_conn_close(conn);
    if (rc && !st) {
        code = cli_fail(c, rc, &err);
        return which == 1 && rc == DBK_EINVALID ? CLI_INVALID : code;
    }
    bool problems = st->changed || st->missing || st->dirty;
    if (which == 0) {
        if (c->json) {
            jw w;
            jw_init(&w, stdout);
            status_json(st, true, &w);
            jw_end_obj(&w);
        } else {
            status_table(c, st, url);
        }
        code = CLI_OK;
        if (exit_code)
            code = problems ? CLI_INVALID : st->pending ? CLI_PENDING : CLI_OK;
    } else {
        if (!c->json && !c->quiet) {
            for (size_t i = 0; i < st->count; i++) {
                const dbk_migration_info *it = &st->items[i];
                if (it->state == DBK_MIGRATION_CHANGED)
                    printf("  changed  %s/%s\n           on disk  %s\n           recorded %s\n",
                           c->migrations_dir, it->filename, it->file_checksum,
                           it->applied_checksum);
                else if (it->state == DBK_MIGRATION_MISSING)
                    printf("  missing  %lld_%s (applied, no file in %s)\n",
                           (long long)it->version, it->name, c->migrations_dir);
                else if (it->state == DBK_MIGRATION_DIRTY) {
                    char why[200];
                    describe_dirty(it, why, sizeof why);
                    printf("  dirty    %lld_%s (%s)\n", (long long)it->version, it->name, why);
                }
            }
            if (!problems)
                printf("%zu migration%s checked: every applied file matches its checksum\n",
                       st->count, st->count == 1 ? "" : "s");
        }
        if (rc) {
            if (c->json) {
                /* The status document, with ok false and the error. */
                jw w;
                jw_init(&w, stdout);
                status_json(st, false, &w);
                jw_key(&w, "error");
                jw_obj(&w);
                jw_kstr(&w, "code", dbk_rc_name(rc));
                jw_kstr(&w, "message", err.message);
                jw_kstr(&w, "hint", err.hint);
                jw_end_obj(&w);
                jw_end_obj(&w);
                cli c2 = *c;
                c2.json = false;
                cli_fail(&c2, rc, &err);
            } else {
                cli_fail(c, rc, &err);
            }
            code = CLI_INVALID;
        } else {
            if (c->json) {
                jw w;
                jw_init(&w, stdout);
                status_json(st, true, &w);
                jw_end_obj(&w);
            }
            code = CLI_OK;
        }
    }
    dbk_migrate_status_free(st);
    return code;
}

static int sub_repair(cli *c, int argc, char **argv)
{
    const char *applied_s = NULL, *pending_s = NULL;
    for (int i = 2; i < argc; i++) {
        int r;
        if ((r = cli_opt_value(c, argc, argv, &i, "--mark-applied", &applied_s)) != 0 ||
            (r = cli_opt_value(c, argc, argv, &i, "--mark-pending", &pending_s)) != 0) {
            if (r < 0)
                return CLI_USAGE;
        } else {
            return cli_usage(c, "migrate repair: unexpected argument '%s'", argv[i]);
        }
    }
    if (applied_s && pending_s)
        return cli_usage(c, "migrate repair: --mark-applied or --mark-pending, not both");
    int64_t version = 0;
    const char *vs = applied_s ? applied_s : pending_s;
    if (vs && (!cli_parse_i64(vs, &version) || version <= 0))
        return cli_usage(c, "migrate repair: bad version '%s'", vs);

    dbk_conn *conn = NULL;
    int code = cli_connect(c, true, NULL, 0, &conn);
    if (code)
        return code;
    dbk_db *db = dbk_conn_db(conn);
    dbk_error err;
    dbk_error_clear(&err);
    if (vs) {
        cli_report rep;
        cli_report_init(&rep, c);
        dbk_migrate_opts o = base_opts(c, &rep);
        dbk_rc rc = dbk_migrate_repair(db, version, applied_s != NULL, &o, &err);
        cli_report_free(&rep);
        dbk_conn_close(conn);
        if (rc)
            return cli_fail(c, rc, &err);
        if (c->json) {
            jw w;
            jw_init(&w, stdout);
            jw_obj(&w);
            jw_kbool(&w, "ok", true);
            jw_kint(&w, "version", version);
            jw_kstr(&w, "marked", applied_s ? "applied" : "pending");
            jw_end_obj(&w);
        } else if (!c->quiet) {
            if (applied_s)
                printf("migration %lld is recorded as applied\n", (long long)version);
            else
                printf("migration %lld is no longer recorded: `dbkit migrate up` will run it "
                       "again\n",
                       (long long)version);
        }
        return CLI_OK;
    }
    /* No option: explain. */
    dbk_migrate_source src = dir_source(c);
    dbk_migration_status *st = NULL;
    dbk_rc rc = dbk_migrate_status(db, &src, &st, &err);
    dbk_conn_close(conn);
    if (rc)
        return cli_fail(c, rc, &err);
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_key(&w, "dirty");
        jw_arr(&w);
        for (size_t i = 0; i < st->count; i++)
            if (st->items[i].state == DBK_MIGRATION_DIRTY)
                status_json_item(&w, &st->items[i]);
        jw_end_arr(&w);
        jw_end_obj(&w);
    } else if (!c->quiet) {
        if (!st->dirty)
            printf("no dirty migration: nothing to repair\n");
        for (size_t i = 0; i < st->count; i++) {
            const dbk_migration_info *it = &st->items[i];
            if (it->state != DBK_MIGRATION_DIRTY)
                continue;
            bool up = it->dirty != 2;
            printf("migration %lld (%s) is dirty: %s it without a transaction was interrupted\n"
                   "after %d statement%s of its -- migrate:%s section had completed%s%s%s.\n\n",
                   (long long)it->version, it->filename[0] ? it->filename : it->name,
                   up ? "applying" : "reverting", it->statements_done,
                   it->statements_done == 1 ? "" : "s", up ? "up" : "down",
                   it->owner[0] ? " (migrator " : "", it->owner, it->owner[0] ? ")" : "");
            printf("Look at the database to see how far it got, then either:\n"
                   "  1. complete the remaining statements by hand, so the migration is fully %s,\n"
                   "     and run:  dbkit migrate repair --mark-applied %lld\n"
                   "  2. undo what the completed statements did, so it is fully %s,\n"
                   "     and run:  dbkit migrate repair --mark-pending %lld\n"
                   "     (then `dbkit migrate up` runs it again)\n\n",
                   up ? "applied" : "still applied", (long long)it->version,
                   up ? "not applied" : "reverted", (long long)it->version);
        }
    }
    code = st->dirty ? CLI_INVALID : CLI_OK;
    dbk_migrate_status_free(st);
    return code;
}

/* ---- reading a file given on the command line ---- */

static dbk_rc read_all(const char *path, char **out, size_t *outlen, dbk_error *err)
{
    *out = NULL;
    *outlen = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err->message, sizeof err->message, "cannot read %.300s: %s", path,
                 strerror(errno));
        return DBK_EIO;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    dbk_rc rc = DBK_OK;
    for (;;) {
        if (len + 4096 > cap) {
            size_t nc = cap ? cap * 2 : 8192;
            char *p = realloc(text, nc);
            if (!p) {
                rc = DBK_ENOMEM;
                snprintf(err->message, sizeof err->message, "out of memory reading %.300s", path);
                break;
            }
            text = p;
            cap = nc;
        }
        size_t got = fread(text + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0)
            break;
    }
    fclose(f);
    if (rc == DBK_OK && len == 0) {
        snprintf(err->message, sizeof err->message, "%.300s is empty", path);
        rc = DBK_EINVALID;
    }
    if (rc) {
        free(text);
        return rc;
    }
    text[len] = '\0';
    *out = text;
    *outlen = len;
    return DBK_OK;
}

/* ---- trace ---- */

static int64_t file_version(const char *path)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    int64_t v = 0;
    for (; *b >= '0' && *b <= '9' && v < INT64_MAX / 10 - 10; b++)
        v = v * 10 + (*b - '0');
    return v;
}

/* Traces one file on a throwaway database: created next to the configured
 * one, migrated with the migrations before the file's version, dropped at
 * the end. Prints its own errors; returns an exit code. */
static int trace_one(cli *c, const char *path, dbk_trace **out)
{
    *out = NULL;
    dbk_error err;
    dbk_error_clear(&err);
    char *text = NULL;
    size_t len = 0;
    dbk_rc rc = read_all(path, &text, &len, &err);
    if (rc)
        return cli_fail(c, rc, &err);
    dbk_config *cfg = NULL;
    int code = cli_config(c, true, NULL, 0, &cfg);
    if (code) {
        free(text);
        return code;
    }
    if (dbk_config_engine(cfg) != DBK_ENGINE_POSTGRES) {
        dbk_config_free(cfg);
        free(text);
        return cli_usage(c, "migrate trace needs a PostgreSQL database (--url postgres://...)");
    }
    dbk_conn *admin = NULL, *tc = NULL;
    char name[64], sql[160];
    snprintf(name, sizeof name, "dbkit_trace_%ld", (long)getpid());
    bool created = false;
    rc = dbk_conn_open(cfg, &admin, &err);
    if (rc == DBK_OK) {
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", name);
        rc = dbk_db_exec(dbk_conn_db(admin), sql, NULL, 0, NULL, &err);
    }
    if (rc == DBK_OK) {
        snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
        rc = dbk_db_exec(dbk_conn_db(admin), sql, NULL, 0, NULL, &err);
        created = rc == DBK_OK;
    }
    if (rc == DBK_OK)
        rc = dbk_config_set(cfg, "dbname", name, &err);
    if (rc == DBK_OK)
        rc = dbk_conn_open(cfg, &tc, &err);
    if (rc == DBK_OK) {
        int64_t v = file_version(path);
        if (v > 1) {
            dbk_migrate_source src = dir_source(c);
            dbk_migrate_opts o = DBK_MIGRATE_OPTS_INIT;
            o.has_target = true;
            o.target = v - 1;
            rc = dbk_migrate_opts_from_env(&o, &err);
            if (rc == DBK_OK)
                rc = dbk_migrate_up(dbk_conn_db(tc), &src, &o, NULL, &err);
        }
    }
    if (rc == DBK_OK)
        rc = dbk_migrate_trace(dbk_conn_db(tc), path, text, len, out, &err);
    dbk_conn_close(tc);
    if (created) {
        dbk_error e2;
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
        dbk_db_exec(dbk_conn_db(admin), sql, NULL, 0, NULL, &e2);
    }
    dbk_conn_close(admin);
    dbk_config_free(cfg);
    free(text);
    if (rc)
        return cli_fail(c, rc, &err);
    return CLI_OK;
}

static int sub_trace(cli *c, int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 2; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1])
            return cli_usage(c, "migrate trace: unknown option %s", argv[i]);
        if (path)
            return cli_usage(c, "migrate trace takes one FILE");
        path = argv[i];
    }
    if (!path)
        return cli_usage(c, "migrate trace needs a migration FILE");
    dbk_trace *t = NULL;
    int code = trace_one(c, path, &t);
    if (code)
        return code;
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_kstr(&w, "file", path);
        jw_key(&w, "statements");
        jw_arr(&w);
        for (size_t i = 0; i < t->count; i++) {
            const dbk_trace_step *s = &t->steps[i];
            jw_obj(&w);
            jw_kint(&w, "line", s->line);
            jw_kstr(&w, "statement", s->statement);
            jw_kbool(&w, "traced", s->traced);
            jw_kstr(&w, "locks", s->locks);
            jw_kstr(&w, "held", s->held);
            jw_kbool(&w, "access_exclusive", s->access_exclusive);
            jw_kstr(&w, "rewritten", s->rewritten);
            jw_kstr(&w, "error", s->error);
            jw_end_obj(&w);
        }
        jw_end_arr(&w);
        jw_end_obj(&w);
    } else {
        printf("%-5s %-44s %-40s %s\n", "LINE", "STATEMENT", "LOCKS TAKEN", "REWRITES");
        for (size_t i = 0; i < t->count; i++) {
            const dbk_trace_step *s = &t->steps[i];
            const char *locks = s->error[0]  ? s->error
                                : !s->traced ? "(not traced: runs outside a transaction)"
                                : s->locks[0] ? s->locks
                                              : "-";
            printf("%-5d %-44.44s %-40s %s\n", s->line, s->statement, locks,
                   s->rewritten[0] ? s->rewritten : "-");
        }
        if (!c->quiet)
            printf("rolled back; the database was a throwaway copy at the version before %s\n",
                   path);
    }
    dbk_trace_free(t);
    return CLI_OK;
}

/* ---- lint ---- */

static void lint_json(const dbk_lint_report *r, size_t pending, bool pending_mode)
{
    jw w;
    jw_init(&w, stdout);
    jw_obj(&w);
    jw_kbool(&w, "ok", r->count == 0);
    if (pending_mode)
        jw_kint(&w, "pending", (int64_t)pending);
    jw_kint(&w, "files", (int64_t)r->files);
    jw_kint(&w, "statements", (int64_t)r->statements);
    jw_kint(&w, "ignored", (int64_t)r->ignored);
    jw_key(&w, "findings");
    jw_arr(&w);
    for (size_t i = 0; i < r->count; i++) {
        const dbk_lint_finding *f = &r->items[i];
        jw_obj(&w);
        jw_kstr(&w, "file", f->file);
        jw_kint(&w, "line", f->line);
        jw_kint(&w, "version", f->version);
        jw_kstr(&w, "engine", f->engine == DBK_ENGINE_SQLITE ? "sqlite" : "postgres");
        jw_kstr(&w, "rule", f->rule->id);
        jw_kstr(&w, "severity", f->rule->severity == DBK_LINT_SEVERITY_ERROR ? "error" : "warning");
        jw_kstr(&w, "table", f->table);
        jw_kstr(&w, "message", f->message);
        jw_kstr(&w, "statement", f->statement);
        jw_kstr(&w, "why", f->rule->why);
        jw_kstr(&w, "fix", f->rule->fix);
        jw_end_obj(&w);
    }
    jw_end_arr(&w);
    jw_end_obj(&w);
}

static void lint_text_out(const cli *c, const dbk_lint_report *r)
{
    for (size_t i = 0; i < r->count; i++) {
        const dbk_lint_finding *f = &r->items[i];
        printf("%s:%d: %s [%s] %s\n", f->file, f->line,
               f->rule->severity == DBK_LINT_SEVERITY_ERROR ? "error" : "warning", f->rule->id,
               f->message);
        if (f->statement[0])
            printf("    %s\n", f->statement);
        printf("    why: %s\n    fix: %s\n", f->rule->why, f->rule->fix);
    }
    if (!c->quiet) {
        if (r->count)
            printf("%zu finding%s in %zu file%s", r->count, r->count == 1 ? "" : "s", r->files,
                   r->files == 1 ? "" : "s");
        else
            printf("%zu file%s, %zu statement%s: no findings", r->files,
                   r->files == 1 ? "" : "s", r->statements, r->statements == 1 ? "" : "s");
        if (r->ignored)
            printf(" (%zu ignored by lint:ignore)", r->ignored);
        printf("\n");
    }
}

static void lint_rules_out(const cli *c)
{
    size_t n = 0;
    const dbk_lint_rule *rules = dbk_lint_rules(&n);
    jw w;
    if (c->json) {
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_key(&w, "rules");
        jw_arr(&w);
    }
    for (size_t i = 0; i < n; i++) {
        const char *eng = rules[i].engine == DBK_ENGINE_SQLITE     ? "sqlite"
                          : rules[i].engine == DBK_ENGINE_POSTGRES ? "postgres"
                                                                   : "both";
        const char *sev = rules[i].severity == DBK_LINT_SEVERITY_ERROR ? "error" : "warning";
        if (c->json) {
            jw_obj(&w);
            jw_kstr(&w, "rule", rules[i].id);
            jw_kstr(&w, "engine", eng);
            jw_kstr(&w, "severity", sev);
            jw_kstr(&w, "why", rules[i].why);
            jw_kstr(&w, "fix", rules[i].fix);
            jw_end_obj(&w);
        } else {
            printf("%-29s %-8s %-7s %s\n%-29s fix: %s\n", rules[i].id, eng, sev, rules[i].why,
                   "", rules[i].fix);
        }
    }
    if (c->json) {
        jw_end_arr(&w);
        jw_end_obj(&w);
    }
}

dbk_rc cli_lint_pending(const cli *c, dbk_db *db, dbk_lint_report **out, size_t *pending,
                        dbk_error *err)
{
    dbk_migrate_source src = dir_source(c);
    dbk_migration_status *st = NULL;
    *out = NULL;
    *pending = 0;
    dbk_rc rc = dbk_migrate_status(db, &src, &st, err);
    if (rc)
        return rc;
    int64_t *v = calloc(st->count ? st->count : 1, sizeof *v);
    if (!v) {
        dbk_migrate_status_free(st);
        snprintf(err->message, sizeof err->message, "out of memory");
        return DBK_ENOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < st->count; i++)
        if (st->items[i].state == DBK_MIGRATION_PENDING)
            v[n++] = st->items[i].version;
    dbk_migrate_status_free(st);
    dbk_lint_opts o = DBK_LINT_OPTS_INIT;
    o.engine = dbk_db_engine(db);
    o.scope = DBK_LINT_SCOPE_RUN; /* pending files are applied in order, in one run */
    dbk_migrate_opts mo = DBK_MIGRATE_OPTS_INIT; /* the lock_timeout `up` will use */
    rc = dbk_migrate_opts_from_env(&mo, err);
    if (rc != DBK_OK) {
        free(v);
        return rc;
    }
    o.lock_timeout_ms = mo.statement_lock_timeout_ms;
    o.versions = v;
    o.nversions = n;
    *pending = n;
    rc = dbk_lint_source(&src, &o, out, err);
    free(v);
    return rc;
}

/* --trace: each file with a finding the trace can decide is traced; a
 * dismissed finding leaves the report (and a note says so), a confirmed
 * one gets the evidence appended to its message. */
static int lint_trace(cli *c, dbk_lint_report *rep)
{
    size_t w = 0;
    const char *traced_file = NULL;
    dbk_trace *t = NULL;
    for (size_t i = 0; i < rep->count; i++) {
        dbk_lint_finding *f = &rep->items[i];
        if (f->engine == DBK_ENGINE_POSTGRES && f->table[0] &&
            (!traced_file || strcmp(traced_file, f->file) != 0)) {
            dbk_trace_free(t);
            t = NULL;
            traced_file = f->file;
            int code = trace_one(c, f->file, &t);
            if (code) {
                rep->count = w;
                return code;
            }
        }
        char why[512];
        int verdict = f->engine == DBK_ENGINE_POSTGRES && t && traced_file &&
                              strcmp(traced_file, f->file) == 0
                          ? dbk_trace_judge(t, f, why, sizeof why)
                          : -1;
        if (verdict == 0) {
            cli_info(c, "%s:%d: [%s] dismissed by the trace (%s)\n", f->file, f->line,
                     f->rule->id, why);
            continue;
        }
        if (verdict == 1) {
            size_t ml = strlen(f->message);
            snprintf(f->message + ml, sizeof f->message - ml, " (confirmed, %s)", why);
        }
        rep->items[w++] = *f;
    }
    rep->count = w;
    dbk_trace_free(t);
    return CLI_OK;
}

static int sub_lint(cli *c, int argc, char **argv)
{
    bool all = false, rules = false, trace = false;
    const char *engine_s = NULL;
    char **files = calloc((size_t)argc, sizeof *files);
    size_t nfiles = 0;
    if (!files)
        return CLI_ERROR;
    int code = CLI_OK;
    for (int i = 2; i < argc; i++) {
        int r;
        if (strcmp(argv[i], "--all") == 0) {
            all = true;
        } else if (strcmp(argv[i], "--rules") == 0) {
            rules = true;
        } else if (strcmp(argv[i], "--trace") == 0) {
            trace = true;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--engine", &engine_s)) != 0) {
            if (r < 0) {
                free(files);
                return CLI_USAGE;
            }
        } else if (argv[i][0] == '-' && argv[i][1]) {
            free(files);
            return cli_usage(c, "migrate lint: unknown option %s", argv[i]);
        } else {
            files[nfiles++] = argv[i];
        }
    }
    if (rules) {
        free(files);
        lint_rules_out(c);
        return CLI_OK;
    }
    dbk_lint_opts o = DBK_LINT_OPTS_INIT;
    if (engine_s) {
        if (strcmp(engine_s, "postgres") == 0 || strcmp(engine_s, "postgresql") == 0)
            o.engine = DBK_ENGINE_POSTGRES;
        else if (strcmp(engine_s, "sqlite") == 0)
            o.engine = DBK_ENGINE_SQLITE;
        else {
            free(files);
            return cli_usage(c, "--engine takes postgres or sqlite, got '%s'", engine_s);
        }
    }
    if (all && nfiles) {
        free(files);
        return cli_usage(c, "migrate lint: FILE arguments or --all, not both");
    }
    dbk_migrate_opts mo = DBK_MIGRATE_OPTS_INIT; /* the lock_timeout `up` will use */
    code = cli_migrate_env(c, &mo);
    if (code) {
        free(files);
        return code;
    }
    o.lock_timeout_ms = mo.statement_lock_timeout_ms;
    dbk_error err;
    dbk_error_clear(&err);
    dbk_lint_report *rep = NULL;
    size_t pending = 0;
    dbk_rc rc = DBK_OK;
    bool pending_mode = !all && nfiles == 0;
    if (pending_mode) {
        dbk_conn *conn = NULL;
        code = cli_connect(c, false, NULL, 0, &conn);
        if (code) {
            free(files);
            return code;
        }
        rc = cli_lint_pending(c, dbk_conn_db(conn), &rep, &pending, &err);
        dbk_conn_close(conn);
    } else if (all) {
        dbk_migrate_source src = dir_source(c);
        rc = dbk_lint_source(&src, &o, &rep, &err);
    } else {
        for (size_t k = 0; k < nfiles && rc == DBK_OK; k++) {
            char *text = NULL;
            size_t len = 0;
            rc = read_all(files[k], &text, &len, &err);
            dbk_lint_report *one = NULL;
            if (rc == DBK_OK)
                rc = dbk_lint_file(files[k], text, len, &o, &one, &err);
            free(text);
            if (rc)
                break;
            if (!rep) {
                rep = one;
                continue;
            }
            /* append one file's report to the whole */
            dbk_lint_finding *p =
                realloc(rep->items, (rep->count + one->count + 1) * sizeof *p);
            if (!p) {
                dbk_lint_report_free(one);
                rc = DBK_ENOMEM;
                break;
            }
            rep->items = p;
            if (one->count)
                memcpy(rep->items + rep->count, one->items, one->count * sizeof *p);
            rep->count += one->count;
            rep->files += one->files;
            rep->statements += one->statements;
            rep->ignored += one->ignored;
            dbk_lint_report_free(one);
        }
    }
    free(files);
    if (rc) {
        dbk_lint_report_free(rep);
        if (rc == DBK_ENOMEM && !err.message[0])
            snprintf(err.message, sizeof err.message, "out of memory");
        return cli_fail(c, rc, &err);
    }
    if (trace && rep->count) {
        code = lint_trace(c, rep);
        if (code) {
            dbk_lint_report_free(rep);
            return code;
        }
    }
    if (c->json)
        lint_json(rep, pending, pending_mode);
    else if (pending_mode && pending == 0 && !c->quiet)
        printf("no pending migrations to lint\n");
    else
        lint_text_out(c, rep);
    code = rep->count ? CLI_FINDINGS : CLI_OK;
    dbk_lint_report_free(rep);
    return code;
}

/* ---- dump ---- */

static int write_file_atomic(const char *path, const char *data, size_t len, dbk_error *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        snprintf(err->message, sizeof err->message, "cannot write %.300s: %s", tmp, strerror(errno));
        return -1;
    }
    size_t w = fwrite(data, 1, len, f);
    int bad = w != len || fflush(f) != 0;
    if (fclose(f) != 0)
        bad = 1;
    if (bad || rename(tmp, path) != 0) {
        snprintf(err->message, sizeof err->message, "cannot write %.300s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int sub_dump(cli *c, int argc, char **argv)
{
    const char *out = NULL;
    for (int i = 2; i < argc; i++) {
        int r;
        if ((r = cli_opt_value(c, argc, argv, &i, "--output", &out)) != 0 ||
            (r = cli_opt_value(c, argc, argv, &i, "-o", &out)) != 0) {
            if (r < 0)
                return CLI_USAGE;
        } else {
            return cli_usage(c, "migrate dump: unexpected argument '%s'", argv[i]);
        }
    }
    char def[4096];
    if (!out) {
        /* schema.sql beside the migrations folder: db/migrations -> db/schema.sql */
        const char *d = c->migrations_dir;
        size_t n = strlen(d);
        while (n > 1 && d[n - 1] == '/')
            n--;
        const char *slash = NULL;
        for (size_t k = 0; k < n; k++)
            if (d[k] == '/')
                slash = d + k;
        if (slash)
            snprintf(def, sizeof def, "%.*s/schema.sql", (int)(slash - d), d);
        else
            snprintf(def, sizeof def, "schema.sql");
        out = def;
    }
    dbk_conn *conn = NULL;
    int code = cli_connect(c, true, NULL, 0, &conn);
    if (code)
        return code;
    dbk_error err;
    dbk_error_clear(&err);
    char *text = NULL;
    size_t len = 0;
    dbk_rc rc = dbk_schema_dump(dbk_conn_db(conn), &text, &len, &err);
    dbk_conn_close(conn);
    if (rc)
        return cli_fail(c, rc, &err);
    if (strcmp(out, "-") == 0) {
        fwrite(text, 1, len, stdout);
        dbk_free(text);
        return CLI_OK;
    }
    if (write_file_atomic(out, text, len, &err) != 0) {
        dbk_free(text);
        err.code = DBK_EIO;
        return cli_fail(c, DBK_EIO, &err);
    }
    dbk_free(text);
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_kstr(&w, "file", out);
        jw_kint(&w, "bytes", (int64_t)len);
        jw_end_obj(&w);
    } else if (!c->quiet) {
        printf("wrote %s (%zu bytes)\n", out, len);
    }
    return CLI_OK;
}

int cmd_migrate(cli *c, int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (cli_is_help(argv[i])) {
            fputs(HELP, stdout);
            return CLI_OK;
        }
    if (argc < 2) {
        fputs(HELP, stderr);
        return CLI_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "new") == 0)
        return sub_new(c, argc, argv);
    if (strcmp(sub, "up") == 0)
        return run_change(c, argc, argv, 0);
    if (strcmp(sub, "down") == 0)
        return run_change(c, argc, argv, 1);
    if (strcmp(sub, "redo") == 0)
        return run_change(c, argc, argv, 2);
    if (strcmp(sub, "status") == 0)
        return sub_status(c, argc, argv, 0);
    if (strcmp(sub, "validate") == 0)
        return sub_status(c, argc, argv, 1);
    if (strcmp(sub, "repair") == 0)
        return sub_repair(c, argc, argv);
    if (strcmp(sub, "dump") == 0)
        return sub_dump(c, argc, argv);
    if (strcmp(sub, "lint") == 0)
        return sub_lint(c, argc, argv);
    if (strcmp(sub, "trace") == 0)
        return sub_trace(c, argc, argv);
    return cli_usage(c, "unknown migrate subcommand '%s'", sub);
}
