/*
 * dbkit gen: typed C functions from annotated SQL, with the types taken
 * from the real server.
 *
 * Why the server and not a parser. The types of a query's parameters and
 * columns are decided by the schema the migrations build and by the
 * engine's own rules (operators, casts, function overloads). A throwaway
 * database made from the migrations (dbk_testdb) and the engine's
 * prepare/describe give the same answer the running service will meet,
 * and a query that no longer matches the schema fails here, at generation
 * time, with its file and line, instead of at run time.
 *
 * What the server does not say is filled in from the statement's tokens,
 * conservatively: nullability (PostgreSQL's describe has no nullability;
 * a column is NOT NULL only when it comes straight from a NOT NULL table
 * column that no outer join can blank, or is a count), SQLite's parameter
 * and expression types (SQLite has none), and parameter names.
 *
 * Output is a pure function of the inputs: files in sorted order, queries
 * in file order, no timestamps or paths that vary, so `--check` can compare
 * bytes.
 *
 * The work is split by concern: gen_tokens.c, gen_qfile.c and gen_emit.c
 * (gen_int.h); this file describes each query and drives a run.
 */
#include "gen_int.h"

const char *const dbk__gen_kind_names[] = {"",         "one",   "many",    "exec",
                                           "execrows", "batch", "copyfrom"};

/* ---- describing one query ---- */

static int line_of(const char *sql, int pos, int first)
{
    int line = first;
    for (int i = 0; i < pos && sql[i]; i++)
        if (sql[i] == '\n')
            line++;
    return line;
}

/* A name that can go into a C string as is and be quoted as an identifier. */
static bool plain_name(const char *s)
{
    if (!s[0])
        return false;
    for (const char *p = s; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            return false;
    return true;
}

/* :copyfrom rows go through dbk_db_copy_from, which takes a table, its
 * columns and one value per column: the query must be exactly
 * INSERT INTO t (c1, ..., ck) VALUES ($a1, ..., $ak), every parameter used
 * once, alone. False otherwise. */
static bool copy_shape(const toks *t, gquery *q)
{
    const tok *v = t->v;
    size_t n = t->n, i = 3;
    if (n && dbk__gen_is_p(&v[n - 1], ";"))
        n--;
    if (n < 9 || !dbk__gen_is_kw(&v[0], "insert") || !dbk__gen_is_kw(&v[1], "into") ||
        v[2].kind != T_IDENT || !plain_name(v[2].text) || !dbk__gen_is_p(&v[3], "("))
        return false;
    dbk__strlcpy(q->copy_table, v[2].text, sizeof q->copy_table);
    q->ncopy = 0;
    for (i = 4; i < n; i += 2) {
        if (v[i].kind != T_IDENT || !plain_name(v[i].text) || q->ncopy == GMAX_PARAMS)
            return false;
        dbk__strlcpy(q->copy_cols[q->ncopy++], v[i].text, IDLEN);
        if (i + 1 < n && dbk__gen_is_p(&v[i + 1], ")"))
            break;
        if (i + 1 >= n || !dbk__gen_is_p(&v[i + 1], ","))
            return false;
    }
    i += 2;
    if (i + 1 >= n || !dbk__gen_is_kw(&v[i], "values") || !dbk__gen_is_p(&v[i + 1], "("))
        return false;
    bool used[GMAX_PARAMS] = {false};
    size_t k = 0;
    for (i += 2; i < n; i += 2) {
        if (v[i].kind != T_PARAM || v[i].num < 1 || (size_t)v[i].num > q->nparams ||
            used[v[i].num - 1] || k == q->ncopy)
            return false;
        used[v[i].num - 1] = true;
        q->copy_param[k++] = v[i].num - 1;
        if (i + 1 < n && dbk__gen_is_p(&v[i + 1], ")"))
            break;
        if (i + 1 >= n || !dbk__gen_is_p(&v[i + 1], ","))
            return false;
    }
    return k == q->ncopy && k == q->nparams && i + 2 == n;
}

static dbk_rc describe_query(dbk__describer *d, dbk_engine engine, const qfile *qf, gquery *q,
                             dbk_error *err)
{
    const dbk__dialect *dia = dbk__dialect_of(engine);
    char names[GMAX_PARAMS][IDLEN];
    bool narg[GMAX_PARAMS];
    size_t nnames = 0;
    int base = dbk__gen_max_param(q->sql);
    char *sql = dbk__gen_rewrite_named(q->sql, names, narg, &nnames, base);
    if (!sql)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    free(q->sql);
    q->sql = sql;

    dbk__desc desc;
    int errpos = -1;
    dbk_error e;
    dbk_rc rc = dbk__describe(d, sql, &desc, &errpos, &e);
    if (rc) {
        int line = errpos >= 0 ? line_of(sql, errpos, q->sql_line) : q->sql_line;
        dbk__err(err, DBK_EINVALID, "%.256s:%d: query %s %s", qf->path, line, q->name, e.message);
        if (e.hint[0])
            dbk__err_hint(err, "%s", e.hint);
        return DBK_EINVALID;
    }
    if (desc.nparams > GMAX_PARAMS) {
        dbk__desc_free(&desc);
        return dbk__err(err, DBK_EINVALID, "%.256s:%d: query %s has more than %d parameters",
                        qf->path, q->line, q->name, GMAX_PARAMS);
    }
    toks t = {0};
    if (!dbk__gen_tokenize(sql, &t)) {
        dbk__desc_free(&desc);
        free(t.v);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    shape sh;
    dbk__gen_shape_of(&t, &sh);

    /* parameters */
    q->nparams = desc.nparams;
    for (size_t i = 0; i < desc.nparams; i++) {
        gfield *f = &q->params[i];
        f->type = desc.params[i].type;
        dbk__strlcpy(f->sqltype, desc.params[i].sqltype, sizeof f->sqltype);
        f->nullable = false; /* set below for sqlc.narg() */
        int num = (int)i + 1;
        if (!dia->describes_params) {
            /* SQLite numbers "$N" parameters in order of first use */
            num = desc.params[i].name[0] == '$' ? dbk__gen_placeholder_num(desc.params[i].name + 1)
                                                : 0;
        }
        char ctxcol[IDLEN] = "";
        dbk_type ptype = DBK_TYPE_TEXT;
        bool typed = false;
        for (size_t k = 0; k < t.n; k++)
            if (t.v[k].kind == T_PARAM && t.v[k].num == num) {
                dbk__gen_param_context(&t, k, &sh, ctxcol, &ptype, &typed);
                if (ctxcol[0] || typed)
                    break;
            }
        if (!dia->describes_params) {
            dbk__desc_col c;
            if (typed) {
                f->type = ptype;
            } else if (ctxcol[0] && dbk__gen_lookup(d, &sh, ctxcol, &c)) {
                f->type = c.type;
                dbk__strlcpy(f->sqltype, c.sqltype, sizeof f->sqltype);
            }
        }
        char nm[IDLEN];
        if (num > base && num - base - 1 < (int)nnames) {
            dbk__strlcpy(nm, names[num - base - 1], sizeof nm);
            f->nullable = narg[num - base - 1];
        } else if (ctxcol[0])
            dbk__strlcpy(nm, ctxcol, sizeof nm);
        else
            snprintf(nm, sizeof nm, "arg%d", num);
        dbk__gen_c_ident_in(nm, f->name, sizeof f->name, true);
    }
    if (!dia->describes_params) {
        /* reorder by $n so that params[k] is $k+1 */
        gfield sorted[GMAX_PARAMS];
        memset(sorted, 0, sizeof sorted);
        for (size_t i = 0; i < desc.nparams; i++) {
            int num = desc.params[i].name[0] == '$'
                          ? dbk__gen_placeholder_num(desc.params[i].name + 1)
                          : 0;
            if (num < 1 || (size_t)num > desc.nparams) {
                free(t.v);
                dbk__desc_free(&desc);
                return dbk__err(err, DBK_EINVALID,
                                "%.256s:%d: query %s: parameters must be $1..$%zu without gaps",
                                qf->path, q->line, q->name, desc.nparams);
            }
            sorted[num - 1] = q->params[i];
        }
        memcpy(q->params, sorted, sizeof sorted);
    }
    dbk__gen_uniq(q->params, q->nparams);
    if (q->kind == K_COPYFROM && !copy_shape(&t, q)) {
        free(t.v);
        dbk__desc_free(&desc);
        dbk__err(err, DBK_EINVALID,
                 "%.256s:%d: query %s is :copyfrom but not INSERT INTO table (columns) VALUES "
                 "($1, ...) with one parameter per column",
                 qf->path, q->line, q->name);
        dbk__err_hint(err, "a :copyfrom query lists the columns and gives each one parameter "
                           "alone (no expressions, casts, schema prefix, RETURNING or ON "
                           "CONFLICT); use :batch for anything else");
        return DBK_EINVALID;
    }

    /* columns */
    item items[256];
    size_t nitems = dbk__gen_select_items(&t, items, 256);
    bool mapped = nitems == desc.ncols;
    q->ncols = desc.ncols;
    q->cols = calloc(desc.ncols + 1, sizeof *q->cols);
    if (!q->cols) {
        free(t.v);
        dbk__desc_free(&desc);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    for (size_t j = 0; j < desc.ncols; j++) {
        dbk__desc_col c = desc.cols[j];
        gfield *f = &q->cols[j];
        bool count = false;
        if (mapped) {
            const tok *a = &t.v[items[j].a];
            size_t len = items[j].b - items[j].a;
            if (len >= 3 && dbk__gen_is_kw(a, "count") && dbk__gen_is_p(a + 1, "(")) {
                count = true;
                c.type = DBK_TYPE_INT64;
                c.known = true;
            } else if (!c.known && len >= 6 && dbk__gen_is_kw(a, "cast") &&
                       dbk__gen_is_kw(&t.v[items[j].b - 3], "as")) {
                c.type = dbk__gen_type_of_name(t.v[items[j].b - 2].text);
                c.known = true;
            } else if (!c.known && len >= 3 &&
                       (dbk__gen_is_kw(a, "avg") || dbk__gen_is_kw(a, "total"))) {
                c.type = DBK_TYPE_DOUBLE;
                c.known = true;
            } else if (!c.known && len == 4 &&
                       (dbk__gen_is_kw(a, "sum") || dbk__gen_is_kw(a, "min") ||
                        dbk__gen_is_kw(a, "max")) &&
                       a[2].kind == T_IDENT) {
                dbk__desc_col lc;
                if (dbk__gen_lookup(d, &sh, a[2].text, &lc)) {
                    c.type = lc.type;
                    c.known = true;
                }
            } else if (!c.table[0] && sh.dml &&
                       (len == 1 || (len == 3 && dbk__gen_is_p(a + 1, "."))) &&
                       t.v[items[j].b - 1].kind == T_IDENT && sh.ntables > 0) {
                /* RETURNING col: the target table's column */
                bool found = false;
                dbk__desc_col lc;
                dbk_error ignored;
                if (dbk__describe_column(d, sh.tables[0], t.v[items[j].b - 1].text, &lc, &found,
                                         &ignored) == DBK_OK &&
                    found) {
                    if (!c.known) {
                        c.type = lc.type;
                        dbk__strlcpy(c.sqltype, lc.sqltype, sizeof c.sqltype);
                    }
                    c.known = true;
                    c.notnull = lc.notnull;
                    dbk__strlcpy(c.table, lc.table, sizeof c.table);
                }
            }
        }
        f->type = c.type;
        dbk__strlcpy(f->sqltype, c.sqltype, sizeof f->sqltype);
        f->nullable = !(c.table[0] && c.notnull);
        if (count)
            f->nullable = false;
        if (sh.all_nullable)
            f->nullable = true;
        for (size_t x = 0; x < sh.ntables; x++)
            if (sh.outer[x] && strcmp(sh.tables[x], c.table) == 0)
                f->nullable = true;
        dbk__gen_c_ident(c.name, f->name, sizeof f->name);
    }
    dbk__gen_uniq(q->cols, q->ncols);
    free(t.v);
    dbk__desc_free(&desc);
    if (q->kind == K_ONE || q->kind == K_MANY) {
        if (q->ncols == 0)
            return dbk__err(err, DBK_EINVALID, "%.256s:%d: query %s is :%s but returns no columns",
                            qf->path, q->line, q->name, dbk__gen_kind_names[q->kind]);
    }
    return DBK_OK;
}

/* ---- files ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static dbk_rc list_queries(const char *dir, char ***out, size_t *n, dbk_error *err)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return dbk__err(err, DBK_EIO, "cannot read queries directory %.256s: %.128s", dir,
                        strerror(errno));
    size_t cap = 0;
    struct dirent *e;
    dbk_rc rc = DBK_OK;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 5 || strcmp(e->d_name + len - 4, ".sql") != 0)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            char **v = realloc(*out, cap * sizeof *v);
            if (!v) {
                rc = dbk__err(err, DBK_ENOMEM, "out of memory");
                break;
            }
            *out = v;
        }
        if (!((*out)[*n] = strdup(e->d_name))) {
            rc = dbk__err(err, DBK_ENOMEM, "out of memory");
            break;
        }
        (*n)++;
    }
    closedir(d);
    if (!rc && *n)
        qsort(*out, *n, sizeof **out, cmp_str);
    return rc;
}

/* Writes (or, with check, compares) one output file. */
static dbk_rc put_file(const dbk_gen_opts *o, const char *dir, const char *name, const sb *b,
                       dbk_gen_report *rep, dbk_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (b->oom)
        return dbk__err(err, DBK_ENOMEM, "out of memory generating %.256s", path);
    rep->files++;
    const char *want = b->p ? b->p : "";
    bool same = false;
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t wl = strlen(want);
        char *have = malloc(wl + 2);
        if (have) {
            size_t got = fread(have, 1, wl + 1, f);
            same = got == wl && memcmp(have, want, wl) == 0;
            free(have);
        }
        fclose(f);
    }
    if (same)
        return DBK_OK;
    if (o->check) {
        if (!rep->drift++)
            dbk__strlcpy(rep->first_drift, path, sizeof rep->first_drift);
        return DBK_OK;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f)
        return dbk__err(err, DBK_EIO, "cannot write %.256s: %.128s", tmp, strerror(errno));
    size_t wl = strlen(want);
    bool ok = fwrite(want, 1, wl, f) == wl;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return dbk__err(err, DBK_EIO, "cannot write %.256s", path);
    }
    rep->written++;
    return DBK_OK;
}

DBK__OPTS_INIT_FN(dbk_gen_opts, DBK_GEN_OPTS_VERSION)

DBK_API dbk_rc dbk_gen_run(const dbk_gen_opts *opts, dbk_gen_report *rep, dbk_error *err)
{
    dbk_gen_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (!opts || !opts->cfg)
        return dbk__err(err, DBK_EMISUSE, "dbk_gen_run: opts and opts->cfg must not be NULL");
    if (dbk__opts_check(opts->version, DBK_GEN_OPTS_VERSION, "dbk_gen_opts", err))
        return DBK_EMISUSE;
    dbk_gen_opts o = *opts;
    if (!o.migrations_dir)
        o.migrations_dir = "db/migrations";
    if (!o.queries_dir)
        o.queries_dir = "db/queries";
    if (!o.out_dir)
        o.out_dir = "db/gen";

    char **names = NULL;
    size_t nnames = 0;
    qfile *files = NULL;
    dbk_testdb *tdb = NULL;
    dbk__describer *d = NULL;
    dbk_conn *conn = NULL;
    dbk_rc rc = list_queries(o.queries_dir, &names, &nnames, err);
    if (rc)
        goto out;
    files = calloc(nnames + 1, sizeof *files);
    if (!files) {
        rc = dbk__err(err, DBK_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nnames && !rc; i++) {
        qfile *qf = &files[i];
        size_t len = strlen(o.queries_dir) + strlen(names[i]) + 2;
        if (!(qf->path = malloc(len))) {
            rc = dbk__err(err, DBK_ENOMEM, "out of memory");
            break;
        }
        snprintf(qf->path, len, "%s/%s", o.queries_dir, names[i]);
        snprintf(qf->base, sizeof qf->base, "%.*s", (int)(strlen(names[i]) - 4), names[i]);
        rc = dbk__gen_parse_file(qf, err);
    }
    if (rc)
        goto out;

    dbk_testdb_opts to;
    memset(&to, 0, sizeof to);
    rc = dbk_testdb_new(o.cfg, o.migrations_dir, &to, &tdb, err);
    if (rc)
        goto out;
    rc = dbk__describer_open(dbk_testdb_config(tdb), &d, err);
    if (rc)
        goto out;
    for (size_t i = 0; i < nnames && !rc; i++)
        for (size_t k = 0; k < files[i].nq && !rc; k++) {
            rc = describe_query(d, o.cfg->engine, &files[i], &files[i].q[k], err);
            rep->queries++;
        }
    if (rc)
        goto out;
    if (!o.check && mkdir(o.out_dir, 0755) != 0 && errno != EEXIST) {
        rc = dbk__err(err, DBK_EIO, "cannot create %.256s: %.128s", o.out_dir, strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < nnames && !rc; i++) {
        qfile *qf = &files[i];
        char guard[200], fname[160];
        snprintf(guard, sizeof guard, "DBKIT_GEN_");
        for (size_t k = 0; qf->base[k] && strlen(guard) + 4 < sizeof guard; k++) {
            size_t gl = strlen(guard);
            guard[gl] = isalnum((unsigned char)qf->base[k])
                            ? (char)toupper((unsigned char)qf->base[k])
                            : '_';
            guard[gl + 1] = '\0';
        }
        size_t glen = strlen(guard);
        snprintf(guard + glen, sizeof guard - glen, "_H");
        sb h = {0}, c = {0};
        dbk__gen_emit_header(&h, qf, guard);
        dbk__gen_emit_source(&c, qf);
        snprintf(fname, sizeof fname, "%s.h", qf->base);
        rc = put_file(&o, o.out_dir, fname, &h, rep, err);
        snprintf(fname, sizeof fname, "%s.c", qf->base);
        if (!rc)
            rc = put_file(&o, o.out_dir, fname, &c, rep, err);
        free(h.p);
        free(c.p);
    }
    if (rc)
        goto out;
    rc = dbk_conn_open(dbk_testdb_config(tdb), &conn, err);
    if (!rc) {
        sb m = {0};
        rc = dbk__gen_emit_models(conn, d, &m, err);
        if (!rc)
            rc = put_file(&o, o.out_dir, "models.h", &m, rep, err);
        free(m.p);
    }
out:
    dbk_conn_close(conn);
    dbk__describer_close(d);
    if (tdb) {
        dbk_error ignored;
        dbk_testdb_drop(tdb, &ignored);
    }
    for (size_t i = 0; files && i < nnames; i++) {
        for (size_t k = 0; k < files[i].nq; k++) {
            free(files[i].q[k].sql);
            free(files[i].q[k].cols);
        }
        free(files[i].q);
        free(files[i].path);
    }
    free(files);
    for (size_t i = 0; i < nnames; i++)
        free(names[i]);
    free(names);
    return rc;
}
