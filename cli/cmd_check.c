/*
 * `dbkit check [--repo DIR]`: the project checkpoints as one command with a
 * non-zero exit when any fails, so a CI job can run it.
 *
 *   migrations    every file under the migrations directory is committed to
 *                 git (untracked, ignored, modified or staged-only fails);
 *   secrets       no password in tracked source or config files: URLs with
 *                 a password in the user part, and password = "..." style
 *                 assignments with a literal value;
 *   fk-indexes    every foreign key's columns lead some index (live schema);
 *   primary-keys  every table has a primary key (live schema).
 *
 * git runs as a child process with an argv (no shell), in the repository
 * directory. The secret scanner is line based and deliberately simple: it
 * looks for literal values only (a value read from the environment is the
 * fix, not a finding) and skips obvious placeholders ("***", "${VAR}",
 * "$VAR", "<password>", "changeme", ...). A secret is never printed: a
 * finding shows file:line and the match with the secret replaced by "***".
 */
#include <ctype.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit check [--repo DIR] [--migrations] [--secrets] [--fk-indexes]\n"
    "                   [--primary-keys] [--lint] [--exclude GLOB ...]\n"
    "\n"
    "Runs the checkpoints and exits 6 when any fails (0 when all pass):\n"
    "  --migrations    migration files are all committed to git\n"
    "  --secrets       no passwords or URLs with passwords in tracked files\n"
    "                  (.c .h .js .ts .json .yml .yaml .env .toml .ini .conf)\n"
    "  --fk-indexes    every foreign key has an index on its columns (database)\n"
    "  --primary-keys  every table has a primary key (database)\n"
    "  --lint          the pending migrations pass `dbkit migrate lint` (database)\n"
    "  --exclude GLOB  skip tracked files matching GLOB in the secrets scan (repeatable,\n"
    "                  e.g. --exclude 'tests/*'); a line containing dbkit:allow-secret\n"
    "                  is skipped too (test fixtures)\n"
    "Without a selection all five run. --repo DIR is the git work tree (default: the\n"
    "current directory); a relative --migrations-dir is taken inside it.\n";

typedef struct problem {
    int check;
    char msg[600];
    char hint[300];
} problem;

enum { C_MIGRATIONS, C_SECRETS, C_FK, C_PK, C_LINT, C_COUNT };
static const char *const CHECK_NAMES[C_COUNT] = {"migrations", "secrets", "fk-indexes",
                                                 "primary-keys", "migration-lint"};

typedef struct report {
    problem *v;
    size_t n, cap;
    bool ran[C_COUNT];
    char note[C_COUNT][300]; /* what passed, or why a check could not run */
    bool broken[C_COUNT];    /* the check itself could not run */
} report;

static problem *add_problem(report *r, int check)
{
    if (r->n == r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 16;
        problem *p = realloc(r->v, nc * sizeof *p);
        if (!p)
            return NULL;
        r->v = p;
        r->cap = nc;
    }
    problem *p = &r->v[r->n++];
    memset(p, 0, sizeof *p);
    p->check = check;
    return p;
}

static size_t count_problems(const report *r, int check)
{
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++)
        n += r->v[i].check == check;
    return n;
}

/* ---- migrations committed ---- */

static void check_migrations(report *r, const char *repo, const char *dir)
{
    struct stat st;
    char full[4096];
    if (dir[0] == '/')
        snprintf(full, sizeof full, "%s", dir);
    else
        snprintf(full, sizeof full, "%s/%s", repo, dir);
    if (stat(full, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(r->note[C_MIGRATIONS], sizeof r->note[0], "no migrations directory (%.250s)", full);
        return;
    }
    dg_buf out = {0};
    int status = -1;
    const char *st_argv[] = {"git",         "status", "--porcelain=v1",    "-z",
                             "--untracked-files=all", "--ignored=matching", "--",
                             dir,           NULL};
    if (!dg_run(repo, st_argv, &out, &status) || status != 0) {
        problem *p = add_problem(r, C_MIGRATIONS);
        if (p) {
            snprintf(p->msg, sizeof p->msg, "%s is not inside a git work tree%s", repo,
                     status == -1 ? " (or git could not run)" : "");
            snprintf(p->hint, sizeof p->hint,
                     "git init && git add %s && git commit: migrations belong in version "
                     "control",
                     dir);
        }
        dg_buf_free(&out);
        return;
    }
    size_t nbad = 0;
    for (size_t i = 0; i + 3 < out.len;) {
        const char *e = out.s + i;
        size_t len = strlen(e);
        char x = e[0], y = e[1];
        const char *path = e + 3;
        const char *why = x == '?' ? "untracked (never committed)"
                          : x == '!' ? "ignored by .gitignore (never committed)"
                          : (x == 'A' && y == ' ') ? "added but not committed"
                          : y != ' ' ? "modified since the last commit"
                                     : "staged but not committed";
        problem *p = add_problem(r, C_MIGRATIONS);
        if (p) {
            snprintf(p->msg, sizeof p->msg, "%s: %s", path, why);
            snprintf(p->hint, sizeof p->hint, "git add '%s' && git commit", path);
        }
        nbad++;
        i += len + 1;
        if (x == 'R' || x == 'C') /* renames carry the old path too */
            i += strlen(out.s + i) + 1;
    }
    dg_buf_free(&out);
    if (!nbad) {
        const char *ls_argv[] = {"git", "ls-files", "-z", "--", dir, NULL};
        size_t n = 0;
        if (dg_run(repo, ls_argv, &out, &status) && status == 0)
            for (size_t i = 0; i < out.len; i++)
                n += out.s[i] == '\0';
        dg_buf_free(&out);
        snprintf(r->note[C_MIGRATIONS], sizeof r->note[0], "%zu migration file%s, all committed",
                 n, n == 1 ? "" : "s");
    }
}

/* ---- secrets ---- */

/* True when the file name in `path` is an environment file (.env,
 * .env.local, .env.production) or ends with one of the extensions in ext
 * (NULL-terminated) after at least one other character. */
static bool env_or_ext(const char *path, const char *const *ext)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strncmp(base, ".env", 4) == 0)
        return true;
    size_t n = strlen(base);
    for (int i = 0; ext[i]; i++) {
        size_t m = strlen(ext[i]);
        if (n > m && strcmp(base + n - m, ext[i]) == 0)
            return true;
    }
    return false;
}

static bool scanned_file(const char *path)
{
    static const char *const ext[] = {".c",   ".h",    ".js",  ".ts",  ".json", ".yml", ".yaml",
                                      ".env", ".toml", ".ini", ".conf", ".mjs", ".cjs", NULL};
    return env_or_ext(path, ext);
}

/* Code files need a quoted literal; config files also take bare values. */
static bool bare_values_allowed(const char *path)
{
    static const char *const ext[] = {".env", ".yml", ".yaml", ".toml", ".ini", ".conf", NULL};
    return env_or_ext(path, ext);
}

static bool placeholder(const char *v, size_t n)
{
    static const char *const words[] = {"changeme", "change-me", "change_me", "password",
                                        "secret",   "example",   "redacted",  "null",
                                        "none",     "true",      "false",     "todo",
                                        "xxx",      "your-password", "your_password", NULL};
    if (n == 0)
        return true;
    if (v[0] == '$' || v[0] == '%' || (n >= 2 && v[0] == '{' && v[1] == '{'))
        return true; /* ${VAR}, $VAR, %(name)s, {{ var }} */
    if (v[0] == '<' && v[n - 1] == '>')
        return true;
    bool stars = true, xs = true, dots = true;
    for (size_t i = 0; i < n; i++) {
        stars &= v[i] == '*';
        xs &= v[i] == 'x' || v[i] == 'X';
        dots &= v[i] == '.';
    }
    if (stars || xs || dots)
        return true;
    for (int i = 0; words[i]; i++)
        if (strlen(words[i]) == n && strncasecmp(v, words[i], n) == 0)
            return true;
    if (memchr(v, '%', n) && n < 4)
        return true;
    return false;
}

static bool url_scheme_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '+' || ch == '.' || ch == '-';
}

/* A URL with a password in its user part. Fills a redacted rendering. */
static bool find_url_password(const char *line, char *red, size_t rlen)
{
    for (const char *p = strstr(line, "://"); p; p = strstr(p + 3, "://")) {
        const char *s = p;
        while (s > line && url_scheme_char(s[-1]))
            s--;
        if (s == p || !isalpha((unsigned char)*s))
            continue;
        const char *u = p + 3;
        size_t ulen = strcspn(u, "/@ \t\"'`?#<>");
        if (u[ulen] != '@')
            continue;
        const char *colon = memchr(u, ':', ulen);
        if (!colon || memchr(u, '[', ulen) || memchr(u, ']', ulen))
            continue; /* no password, or a syntax template like [user[:password]@] */
        const char *pw = colon + 1;
        size_t pwlen = (size_t)(u + ulen - pw);
        if (placeholder(pw, pwlen))
            continue;
        const char *host = u + ulen + 1;
        size_t hlen = strcspn(host, "/ \t\"'`?#<>,;");
        snprintf(red, rlen, "%.*s%.*s:***@%.*s", (int)(p + 3 - s), s, (int)(colon - u), u,
                 (int)hlen, host);
        return true;
    }
    return false;
}

static bool key_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '_' || ch == '-' || ch == '.';
}

/* An assignment of a literal to a password-named key (code: a quoted
 * literal; config files: also a bare value). Fills a redacted rendering. */
static bool find_password_assignment(const char *line, bool bare_ok, char *red, size_t rlen)
{
    static const char *const keys[] = {"password", "passwd", "pwd", NULL};
    size_t n = strlen(line);
    for (size_t i = 0; i < n; i++) {
        size_t klen = 0;
        for (int k = 0; keys[k]; k++) {
            size_t m = strlen(keys[k]);
            if (strncasecmp(line + i, keys[k], m) == 0) {
                klen = m;
                break;
            }
        }
        if (!klen)
            continue;
        /* The whole key around the word: db_password, DB_PASSWORD, "password". */
        size_t ks = i, ke = i + klen;
        while (ks > 0 && key_char(line[ks - 1]))
            ks--;
        while (ke < n && key_char(line[ke]))
            ke++;
        const char *q = line + ke;
        if (*q == '"' || *q == '\'') {
            /* A quoted key ("password": ...) must open with the same quote. */
            if (ks == 0 || line[ks - 1] != *q) {
                i = ke;
                continue;
            }
            q++;
        }
        /* Not the secret itself: a hash, a file name, a variable name. */
        static const char *const not_secret[] = {"hash", "file", "path", "env", "var",
                                                 "policy", "reset", "length", "min", "max",
                                                 "prompt", "field", "column", NULL};
        bool skip = false;
        for (int k = 0; not_secret[k] && !skip; k++) {
            size_t m = strlen(not_secret[k]);
            for (size_t j = ks; j + m <= ke && !skip; j++)
                skip = strncasecmp(line + j, not_secret[k], m) == 0;
        }
        if (skip) {
            i = ke;
            continue;
        }
        while (*q == ' ' || *q == '\t')
            q++;
        if (*q == ':' && q[1] == '=')
            q += 2;
        else if ((*q == '=' && q[1] != '=') || *q == ':')
            q++;
        else {
            i = ke;
            continue;
        }
        while (*q == ' ' || *q == '\t')
            q++;
        const char *v;
        size_t vlen;
        if (*q == '"' || *q == '\'' || *q == '`') {
            char quote = *q++;
            const char *e = strchr(q, quote);
            if (!e) {
                i = ke;
                continue;
            }
            v = q;
            vlen = (size_t)(e - q);
        } else if (bare_ok) {
            v = q;
            vlen = strcspn(q, " \t#;,\r\n");
        } else {
            i = ke;
            continue;
        }
        if (placeholder(v, vlen)) {
            i = ke;
            continue;
        }
        snprintf(red, rlen, "%.*s = \"***\"", (int)(ke - ks), line + ks);
        return true;
    }
    return false;
}

static void scan_file(report *r, const char *repo, const char *path, size_t *nfiles)
{
    char full[4096];
    snprintf(full, sizeof full, "%s/%s", repo, path);
    FILE *f = fopen(full, "rb");
    if (!f)
        return; /* deleted in the work tree */
    char line[8192];
    size_t head = fread(line, 1, sizeof line, f);
    if (memchr(line, '\0', head) || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f); /* binary */
        return;
    }
    (*nfiles)++;
    bool bare = bare_values_allowed(path);
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (strstr(line, "dbkit:allow-secret"))
            continue; /* a test fixture, marked as such on its line */
        char red[400];
        bool url = find_url_password(line, red, sizeof red);
        if (url || find_password_assignment(line, bare, red, sizeof red)) {
            problem *p = add_problem(r, C_SECRETS);
            if (!p)
                break;
            snprintf(p->msg, sizeof p->msg, "%s:%d: %s: %s", path, lineno,
                     url ? "URL with a password" : "hard-coded password", red);
            snprintf(p->hint, sizeof p->hint,
                     "read it from the environment (DATABASE_URL, DB_PASSWORD_FILE) or a "
                     "secret store, and rotate the password: it is in the git history");
        }
    }
    fclose(f);
}

static bool excluded(const char *path, char **excl, size_t nexcl)
{
    for (size_t i = 0; i < nexcl; i++)
        if (fnmatch(excl[i], path, 0) == 0)
            return true;
    return false;
}

static void check_secrets(report *r, const char *repo, char **excl, size_t nexcl)
{
    dg_buf out = {0};
    int status = -1;
    const char *argv[] = {"git", "ls-files", "-z", NULL};
    if (!dg_run(repo, argv, &out, &status) || status != 0) {
        r->broken[C_SECRETS] = true;
        snprintf(r->note[C_SECRETS], sizeof r->note[0],
                 "cannot list tracked files: %s is not a git work tree", repo);
        dg_buf_free(&out);
        return;
    }
    size_t nfiles = 0;
    for (size_t i = 0; i < out.len;) {
        const char *path = out.s + i;
        if (scanned_file(path) && !excluded(path, excl, nexcl))
            scan_file(r, repo, path, &nfiles);
        i += strlen(path) + 1;
    }
    dg_buf_free(&out);
    if (!count_problems(r, C_SECRETS))
        snprintf(r->note[C_SECRETS], sizeof r->note[0],
                 "%zu tracked source/config file%s, no password found", nfiles,
                 nfiles == 1 ? "" : "s");
}

/* ---- schema checks ---- */

static void check_schema(report *r, const dg_schema *s, bool fk, bool pk)
{
    size_t nfk = 0;
    for (size_t i = 0; i < s->n; i++) {
        const dg_table *t = &s->t[i];
        if (pk && !t->has_pk) {
            problem *p = add_problem(r, C_PK);
            if (p) {
                snprintf(p->msg, sizeof p->msg, "table %s has no primary key", t->name);
                snprintf(p->hint, sizeof p->hint,
                         "ALTER TABLE %s ADD PRIMARY KEY (...) on its identifying columns, "
                         "or add an id column",
                         t->name);
            }
        }
        for (size_t k = 0; fk && k < t->nfks; k++) {
            const dg_fk *f = &t->fks[k];
            nfk++;
            if (dg_fk_indexed(t, f))
                continue;
            dg_buf c = {0};
            for (size_t j = 0; j < f->ncols; j++) {
                if (j)
                    dg_add(&c, ", ");
                dg_add(&c, f->cols[j]);
            }
            problem *p = add_problem(r, C_FK);
            if (p) {
                snprintf(p->msg, sizeof p->msg,
                         "foreign key %s (%s) -> %s has no index on its column%s", t->name,
                         dg_str(&c), f->ref_table, f->ncols == 1 ? "" : "s");
                dg_buf nm = {0};
                dg_add(&nm, t->name);
                for (size_t j = 0; j < f->ncols; j++) {
                    dg_add(&nm, "_");
                    dg_add(&nm, f->cols[j]);
                }
                snprintf(p->hint, sizeof p->hint,
                         "CREATE INDEX %.59s_idx ON %s (%s); joins and ON DELETE of %s rows "
                         "scan %s without it",
                         dg_str(&nm), t->name, dg_str(&c), f->ref_table, t->name);
                dg_buf_free(&nm);
            }
            dg_buf_free(&c);
        }
    }
    if (pk && !count_problems(r, C_PK))
        snprintf(r->note[C_PK], sizeof r->note[0], "%zu table%s, all with a primary key", s->n,
                 s->n == 1 ? "" : "s");
    if (fk && !count_problems(r, C_FK))
        snprintf(r->note[C_FK], sizeof r->note[0], "%zu foreign key%s, all indexed", nfk,
                 nfk == 1 ? "" : "s");
}

/* The pending migrations through the migration linter (cmd_migrate.c). */
static int check_lint(const cli *c0, const char *repo, report *r)
{
    /* A relative migrations directory is taken inside the repository, as
     * for the migrations check. */
    cli cc = *c0;
    const cli *c = &cc;
    char dir[4096];
    if (c0->migrations_dir[0] != '/' && strcmp(repo, ".") != 0) {
        snprintf(dir, sizeof dir, "%s/%s", repo, c0->migrations_dir);
        cc.migrations_dir = dir;
    }
    dbk_conn *conn = NULL;
    int code = cli_connect(c, false, NULL, 0, &conn);
    if (code)
        return code;
    dbk_error err;
    dbk_error_clear(&err);
    dbk_lint_report *lr = NULL;
    size_t pending = 0;
    dbk_rc rc = cli_lint_pending(c, dbk_conn_db(conn), &lr, &pending, &err);
    dbk_conn_close(conn);
    if (rc)
        return cli_fail(c, rc, &err);
    r->ran[C_LINT] = true;
    for (size_t i = 0; i < lr->count; i++) {
        const dbk_lint_finding *f = &lr->items[i];
        problem *p = add_problem(r, C_LINT);
        if (!p)
            break;
        snprintf(p->msg, sizeof p->msg, "%.250s:%d: [%s] %.300s", f->file, f->line, f->rule->id,
                 f->message);
        snprintf(p->hint, sizeof p->hint, "%.290s", f->rule->fix);
    }
    if (!lr->count)
        snprintf(r->note[C_LINT], sizeof r->note[0], "%zu pending migration%s, no findings",
                 pending, pending == 1 ? "" : "s");
    dbk_lint_report_free(lr);
    return CLI_OK;
}

int cmd_check(cli *c, int argc, char **argv)
{
    const char *repo = ".";
    bool sel[C_COUNT] = {false}, any = false;
    char *excl[64];
    size_t nexcl = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int r;
        if (cli_is_help(argv[i])) {
            fputs(HELP, stdout);
            return CLI_OK;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--repo", &v)) != 0) {
            if (r < 0)
                return CLI_USAGE;
            repo = v;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--exclude", &v)) != 0) {
            if (r < 0)
                return CLI_USAGE;
            if (nexcl < 64)
                excl[nexcl++] = (char *)v;
        } else if (strcmp(argv[i], "--migrations") == 0) {
            sel[C_MIGRATIONS] = any = true;
        } else if (strcmp(argv[i], "--secrets") == 0) {
            sel[C_SECRETS] = any = true;
        } else if (strcmp(argv[i], "--fk-indexes") == 0) {
            sel[C_FK] = any = true;
        } else if (strcmp(argv[i], "--primary-keys") == 0) {
            sel[C_PK] = any = true;
        } else if (strcmp(argv[i], "--lint") == 0) {
            sel[C_LINT] = any = true;
        } else {
            return cli_usage(c, "unexpected argument '%s'", argv[i]);
        }
    }
    if (!any)
        for (int k = 0; k < C_COUNT; k++)
            sel[k] = true;

    report rep;
    memset(&rep, 0, sizeof rep);
    if (sel[C_MIGRATIONS]) {
        rep.ran[C_MIGRATIONS] = true;
        check_migrations(&rep, repo, c->migrations_dir);
    }
    if (sel[C_SECRETS]) {
        rep.ran[C_SECRETS] = true;
        check_secrets(&rep, repo, excl, nexcl);
    }
    if (sel[C_FK] || sel[C_PK]) {
        dbk_conn *conn = NULL;
        int code = cli_connect(c, false, NULL, 0, &conn);
        if (code) {
            free(rep.v);
            return code;
        }
        dbk_error err;
        dbk_error_clear(&err);
        dg_schema s;
        dbk_rc rc = dg_schema_load(dbk_conn_db(conn), false, &s, &err);
        dbk_conn_close(conn);
        if (rc) {
            free(rep.v);
            return cli_fail(c, rc, &err);
        }
        rep.ran[C_FK] = sel[C_FK];
        rep.ran[C_PK] = sel[C_PK];
        check_schema(&rep, &s, sel[C_FK], sel[C_PK]);
        dg_schema_free(&s);
    }
    if (sel[C_LINT]) {
        int code = check_lint(c, repo, &rep);
        if (code) {
            free(rep.v);
            return code;
        }
    }

    size_t failed = 0;
    for (int k = 0; k < C_COUNT; k++)
        if (rep.ran[k] && (count_problems(&rep, k) || rep.broken[k]))
            failed++;
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", failed == 0);
        jw_key(&w, "checks");
        jw_arr(&w);
        for (int k = 0; k < C_COUNT; k++) {
            if (!rep.ran[k])
                continue;
            jw_obj(&w);
            jw_kstr(&w, "check", CHECK_NAMES[k]);
            jw_kbool(&w, "ok", !count_problems(&rep, k) && !rep.broken[k]);
            if (rep.note[k][0])
                jw_kstr(&w, "note", rep.note[k]);
            jw_key(&w, "problems");
            jw_arr(&w);
            for (size_t i = 0; i < rep.n; i++) {
                if (rep.v[i].check != k)
                    continue;
                jw_obj(&w);
                jw_kstr(&w, "message", rep.v[i].msg);
                jw_kstr(&w, "hint", rep.v[i].hint);
                jw_end_obj(&w);
            }
            jw_end_arr(&w);
            jw_end_obj(&w);
        }
        jw_end_arr(&w);
        jw_kint(&w, "problems", (int64_t)rep.n);
        jw_end_obj(&w);
    } else {
        for (int k = 0; k < C_COUNT; k++) {
            if (!rep.ran[k])
                continue;
            for (size_t i = 0; i < rep.n; i++) {
                if (rep.v[i].check != k)
                    continue;
                printf("FAIL %-13s %s\n", CHECK_NAMES[k], rep.v[i].msg);
                printf("     %-13s hint: %s\n", "", rep.v[i].hint);
            }
            if (rep.broken[k])
                printf("FAIL %-13s %s\n", CHECK_NAMES[k], rep.note[k]);
            else if (!count_problems(&rep, k) && !c->quiet)
                printf("ok   %-13s %s\n", CHECK_NAMES[k], rep.note[k]);
        }
        if (!c->quiet) {
            if (failed)
                printf("%zu of the checks failed (%zu problem%s)\n", failed, rep.n,
                       rep.n == 1 ? "" : "s");
            else
                printf("all checks passed\n");
        }
    }
    free(rep.v);
    return failed ? CLI_FINDINGS : CLI_OK;
}
