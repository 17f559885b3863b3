/*
 * gen_qfile.c - one query file: its "-- name: Fn :kind" annotations and
 * the SQL under each, sqlc.arg()/sqlc.narg() named parameters rewritten
 * to $n, and the C identifiers made from SQL names (reserved words and the
 * generated code's own locals avoided, duplicates numbered).
 */
#include "gen_int.h"

/* ---- naming ---- */

static const char *const C_RESERVED[] = {
    "auto",     "break",  "case",   "char",     "const",    "continue", "default",  "do",
    "double",   "else",   "enum",   "extern",   "float",    "for",      "goto",     "if",
    "inline",   "int",    "long",   "register", "restrict", "return",   "short",    "signed",
    "sizeof",   "static", "struct", "switch",   "typedef",  "union",    "unsigned", "void",
    "volatile", "while",  "bool",   "true",     "false",    NULL};

/* Names the generated functions use for themselves: parameters avoid them. */
static const char *const C_LOCALS[] = {"db",    "arena",    "out", "err", "rows",
                                       "nrows", "affected", "r",   "rc",  "i",
                                       "p",     "b",        "n",   "v",   NULL};

void dbk__gen_c_ident_in(const char *in, char *out, size_t n, bool param)
{
    size_t k = 0;
    if (isdigit((unsigned char)in[0]) || !in[0]) {
        out[k++] = 'c';
        out[k++] = '_';
    }
    for (size_t i = 0; in[i] && k + 2 < n; i++) {
        unsigned char c = (unsigned char)in[i];
        out[k++] = isalnum(c) ? (char)tolower(c) : '_';
    }
    out[k] = '\0';
    for (int i = 0; C_RESERVED[i]; i++)
        if (strcmp(out, C_RESERVED[i]) == 0 && k + 2 < n) {
            out[k++] = '_';
            out[k] = '\0';
        }
    for (int i = 0; param && C_LOCALS[i]; i++)
        if (strcmp(out, C_LOCALS[i]) == 0 && k + 2 < n) {
            out[k++] = '_';
            out[k] = '\0';
        }
}

void dbk__gen_c_ident(const char *in, char *out, size_t n)
{
    dbk__gen_c_ident_in(in, out, n, false);
}

static void snake(const char *in, char *out, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; in[i] && k + 2 < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (isupper(c) && i > 0 &&
            (islower((unsigned char)in[i - 1]) || isdigit((unsigned char)in[i - 1]) ||
             (in[i + 1] && islower((unsigned char)in[i + 1]) &&
              isupper((unsigned char)in[i - 1]))) &&
            out[k - 1] != '_')
            out[k++] = '_';
        out[k++] = isalnum(c) ? (char)tolower(c) : '_';
    }
    out[k] = '\0';
}

void dbk__gen_uniq(gfield *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(f[i].name, f[j].name) == 0) {
                char tmp[IDLEN + 16];
                snprintf(tmp, sizeof tmp, "%.40s_%zu", f[i].name, i + 1);
                dbk__strlcpy(f[i].name, tmp, IDLEN);
                j = (size_t)-1; /* again from the start */
                break;
            }
}

/* ---- query files ---- */

static char *read_all(const char *path, dbk_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        dbk__err(err, DBK_EIO, "cannot read %.256s: %.128s", path, strerror(errno));
        return NULL;
    }
    sb b = {0};
    char chunk[8192];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        sb_addn(&b, chunk, got);
    fclose(f);
    if (b.oom || !b.p) {
        free(b.p);
        if (b.oom) {
            dbk__err(err, DBK_ENOMEM, "out of memory reading %.256s", path);
            return NULL;
        }
        return strdup("");
    }
    return b.p;
}

/* Rewrites @name and sqlc.arg(name) / sqlc.narg(name) to $n; names[] gets
 * the name of each new parameter (after the highest $n already there). */
char *dbk__gen_rewrite_named(const char *sql, char names[][IDLEN], bool *narg, size_t *nnames,
                             int base)
{
    sb out = {0};
    size_t n = strlen(sql), i = 0;
    while (i < n) {
        size_t j = dbk__gen_skip_quoted(sql, i);
        if (j != i) {
            sb_addn(&out, sql + i, j - i);
            i = j;
            continue;
        }
        char name[IDLEN] = "";
        bool is_narg = false;
        size_t next = i;
        if (sql[i] == '@' && dbk__gen_ident_start((unsigned char)sql[i + 1]) &&
            (i == 0 || !dbk__gen_ident_char((unsigned char)sql[i - 1]))) {
            size_t e = i + 1;
            while (e < n && (isalnum((unsigned char)sql[e]) || sql[e] == '_'))
                e++;
            snprintf(name, sizeof name, "%.*s", (int)(e - i - 1), sql + i + 1);
            next = e;
        } else if ((strncasecmp(sql + i, "sqlc.arg(", 9) == 0 ||
                    strncasecmp(sql + i, "sqlc.narg(", 10) == 0) &&
                   (i == 0 || !dbk__gen_ident_char((unsigned char)sql[i - 1]))) {
            is_narg = !(sql[i + 5] == 'a' || sql[i + 5] == 'A');
            size_t s = i + (is_narg ? 10 : 9);
            while (sql[s] == ' ' || sql[s] == '\'')
                s++;
            size_t e = s;
            while (e < n && (isalnum((unsigned char)sql[e]) || sql[e] == '_'))
                e++;
            size_t close = e;
            while (close < n && sql[close] != ')')
                close++;
            if (close < n && e > s) {
                snprintf(name, sizeof name, "%.*s", (int)(e - s), sql + s);
                next = close + 1;
            }
        }
        if (name[0]) {
            size_t k = 0;
            while (k < *nnames && strcmp(names[k], name) != 0)
                k++;
            if (k == *nnames && *nnames < GMAX_PARAMS) {
                narg[*nnames] = false;
                dbk__strlcpy(names[(*nnames)++], name, IDLEN);
            }
            if (k < *nnames && is_narg)
                narg[k] = true;
            sb_addf(&out, "$%d", base + (int)k + 1);
            i = next;
            continue;
        }
        sb_addn(&out, sql + i, 1);
        i++;
    }
    if (out.oom) {
        free(out.p);
        return NULL;
    }
    return out.p ? out.p : strdup("");
}

int dbk__gen_max_param(const char *sql)
{
    int m = 0;
    size_t n = strlen(sql);
    for (size_t i = 0; i < n;) {
        size_t j = dbk__gen_skip_quoted(sql, i);
        if (j != i) {
            i = j;
            continue;
        }
        if (sql[i] == '$' && isdigit((unsigned char)sql[i + 1])) {
            int v = dbk__gen_placeholder_num(sql + i + 1);
            if (v > m)
                m = v;
        }
        i++;
    }
    return m;
}

static void trim_sql(char *s)
{
    size_t n = strlen(s);
    while (n && (isspace((unsigned char)s[n - 1]) || s[n - 1] == ';'))
        s[--n] = '\0';
}

dbk_rc dbk__gen_parse_file(qfile *qf, dbk_error *err)
{
    char *text = read_all(qf->path, err);
    if (!text)
        return err ? err->code : DBK_EIO;
    dbk_rc rc = DBK_OK;
    int line = 0;
    char *p = text;
    gquery *cur = NULL;
    sb body = {0};
    size_t cap = 0;
    while (*p) {
        char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        line++;
        const char *s = p;
        while (*s == ' ' || *s == '\t')
            s++;
        if (strncmp(s, "-- name:", 8) == 0) {
            if (cur) {
                cur->sql = body.p ? body.p : strdup("");
                body = (sb){0};
            }
            if (qf->nq == cap) {
                cap = cap ? cap * 2 : 8;
                gquery *v = realloc(qf->q, cap * sizeof *v);
                if (!v) {
                    rc = dbk__err(err, DBK_ENOMEM, "out of memory");
                    break;
                }
                qf->q = v;
            }
            cur = &qf->q[qf->nq++];
            memset(cur, 0, sizeof *cur);
            cur->line = line;
            char name[128] = "", kind[32] = "";
            char lbuf[512];
            snprintf(lbuf, sizeof lbuf, "%.*s", (int)(len - (size_t)(s - p)), s + 8);
            if (sscanf(lbuf, " %127s :%31s", name, kind) != 2) {
                rc = dbk__err(err, DBK_EINVALID, "%.256s:%d: expected \"-- name: Name :kind\"",
                              qf->path, line);
                break;
            }
            for (int k = K_ONE; k <= K_COPYFROM; k++)
                if (strcmp(kind, dbk__gen_kind_names[k]) == 0)
                    cur->kind = k;
            if (!cur->kind) {
                rc = dbk__err(err, DBK_EINVALID,
                              "%.256s:%d: unknown kind :%s (one, many, exec, execrows, batch, "
                              "copyfrom)",
                              qf->path, line, kind);
                break;
            }
            for (size_t k = 0; name[k]; k++)
                if (!isalnum((unsigned char)name[k]) && name[k] != '_') {
                    rc =
                        dbk__err(err, DBK_EINVALID, "%.256s:%d: query name %s is not an identifier",
                                 qf->path, line, name);
                    break;
                }
            if (rc)
                break;
            dbk__strlcpy(cur->name, name, sizeof cur->name);
            snake(name, cur->fn, sizeof cur->fn);
            for (size_t k = 0; k + 1 < qf->nq; k++)
                if (strcmp(qf->q[k].fn, cur->fn) == 0) {
                    rc = dbk__err(err, DBK_EINVALID, "%.256s:%d: query %s defined twice", qf->path,
                                  line, name);
                    break;
                }
            if (rc)
                break;
        } else if (cur) {
            bool blank = true;
            for (size_t k = 0; k < len; k++)
                if (!isspace((unsigned char)p[k]))
                    blank = false;
            if (!body.p && blank) {
                /* leading blank lines */
            } else {
                if (!body.p)
                    cur->sql_line = line;
                sb_addn(&body, p, len);
                sb_add(&body, "\n");
            }
        } else {
            bool blank_or_comment = true;
            for (size_t k = 0; k < len; k++)
                if (!isspace((unsigned char)p[k])) {
                    blank_or_comment = strncmp(p + k, "--", 2) == 0;
                    break;
                }
            if (!blank_or_comment) {
                rc = dbk__err(err, DBK_EINVALID,
                              "%.256s:%d: SQL before the first \"-- name:\" annotation", qf->path,
                              line);
                break;
            }
        }
        p = nl ? nl + 1 : p + len;
    }
    if (cur && !rc) {
        cur->sql = body.p ? body.p : strdup("");
        body = (sb){0};
    }
    free(body.p);
    free(text);
    if (!rc && body.oom)
        rc = dbk__err(err, DBK_ENOMEM, "out of memory");
    for (size_t k = 0; !rc && k < qf->nq; k++) {
        if (!qf->q[k].sql)
            return dbk__err(err, DBK_ENOMEM, "out of memory");
        trim_sql(qf->q[k].sql);
        if (!qf->q[k].sql[0])
            rc = dbk__err(err, DBK_EINVALID, "%.256s:%d: query %s has no SQL", qf->path,
                          qf->q[k].line, qf->q[k].name);
    }
    return rc;
}
