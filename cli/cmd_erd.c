/*
 * `dbkit erd [--format mermaid|dot] [--output FILE] [--all]`: the entity
 * relationship diagram of the live schema.
 *
 * The schema comes from the catalog (dg_schema_load), not from migration
 * files, so the diagram shows what the database really holds. Each foreign
 * key is one relation from the referencing (many) side to the referenced
 * (one) side; when the FK columns carry a unique index the relation is
 * one-to-one, and a nullable FK makes the parent side optional. The text is
 * built in memory first so that --output writes a complete file or none.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char HELP[] =
    "usage: dbkit erd [--format mermaid|dot] [--output FILE] [--all]\n"
    "\n"
    "Draws the live schema: tables, columns (type, PK, FK, nullable) and foreign-key\n"
    "relations (many-to-one; one-to-one when the FK columns are unique).\n"
    "  --format mermaid   a Mermaid erDiagram (default)\n"
    "  --format dot       a Graphviz digraph: dot -Tsvg erd.dot -o erd.svg\n"
    "  --output FILE      write to FILE instead of stdout\n"
    "  --all              include dbkit's own tables (dbkit_migrations, dbkit_seeds)\n"
    "With --json: {\"ok\":true,\"format\":...,\"tables\":N,\"relations\":N,\"text\":...}.\n";

/* Mermaid names: letters, digits, '_' and '-'; anything else becomes '_'. */
static void mm_name(dg_buf *b, const char *s)
{
    for (; *s; s++) {
        char ch = *s;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
        dg_addn(b, ok ? &ch : "_", 1);
    }
}

/* Mermaid attribute types: no spaces or commas ("timestamp with time zone"
 * becomes timestamp_with_time_zone, numeric(10,2) numeric(10_2)). */
static void mm_type(dg_buf *b, const char *s)
{
    if (!*s)
        s = "any";
    for (; *s; s++) {
        char ch = *s;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '(' || ch == ')' ||
                  ch == '[' || ch == ']';
        dg_addn(b, ok ? &ch : "_", 1);
    }
}

static bool col_is_fk(const dg_table *t, const char *col)
{
    for (size_t i = 0; i < t->nfks; i++)
        for (size_t j = 0; j < t->fks[i].ncols; j++)
            if (strcmp(t->fks[i].cols[j], col) == 0)
                return true;
    return false;
}

static void fk_label(dg_buf *b, const dg_fk *f)
{
    for (size_t j = 0; j < f->ncols; j++) {
        if (j)
            dg_add(b, ", ");
        dg_add(b, f->cols[j]);
    }
}

static size_t mermaid(const dg_schema *s, dg_buf *b)
{
    size_t nrel = 0;
    dg_add(b, "erDiagram\n");
    for (size_t i = 0; i < s->n; i++) {
        const dg_table *t = &s->t[i];
        dg_add(b, "    ");
        mm_name(b, t->name);
        dg_add(b, " {\n");
        for (size_t j = 0; j < t->ncols; j++) {
            const dg_col *c = &t->cols[j];
            dg_add(b, "        ");
            mm_type(b, c->type);
            dg_add(b, " ");
            mm_name(b, c->name);
            bool fk = col_is_fk(t, c->name);
            if (c->pk || fk)
                dg_addf(b, " %s%s%s", c->pk ? "PK" : "", c->pk && fk ? ", " : "", fk ? "FK" : "");
            if (!c->notnull && !c->pk)
                dg_add(b, " \"nullable\"");
            dg_add(b, "\n");
        }
        dg_add(b, "    }\n");
    }
    for (size_t i = 0; i < s->n; i++) {
        const dg_table *t = &s->t[i];
        for (size_t k = 0; k < t->nfks; k++) {
            const dg_fk *f = &t->fks[k];
            /* parent side: exactly one, or zero-or-one for a nullable FK;
             * child side: zero-or-many, or zero-or-one when unique. */
            dg_add(b, "    ");
            mm_name(b, f->ref_table);
            dg_addf(b, " %s--%s ", dg_fk_nullable(t, f) ? "|o" : "||",
                    dg_fk_unique(t, f) ? "o|" : "o{");
            mm_name(b, t->name);
            dg_add(b, " : \"");
            fk_label(b, f);
            dg_add(b, "\"\n");
            nrel++;
        }
    }
    return nrel;
}

/* Text for an HTML-like DOT label. */
static void dot_html(dg_buf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<':
            dg_add(b, "&lt;");
            break;
        case '>':
            dg_add(b, "&gt;");
            break;
        case '&':
            dg_add(b, "&amp;");
            break;
        case '"':
            dg_add(b, "&quot;");
            break;
        default:
            dg_addn(b, s, 1);
        }
    }
}

/* A quoted DOT identifier. */
static void dot_id(dg_buf *b, const char *s)
{
    dg_add(b, "\"");
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            dg_add(b, "\\");
        dg_addn(b, s, 1);
    }
    dg_add(b, "\"");
}

static size_t dot(const dg_schema *s, dg_buf *b)
{
    size_t nrel = 0;
    dg_add(b, "digraph erd {\n"
              "    graph [rankdir=LR, fontname=\"Helvetica\"];\n"
              "    node [shape=plaintext, fontname=\"Helvetica\"];\n"
              "    edge [fontname=\"Helvetica\", fontsize=10];\n");
    for (size_t i = 0; i < s->n; i++) {
        const dg_table *t = &s->t[i];
        dg_add(b, "    ");
        dot_id(b, t->name);
        dg_add(b, " [label=<<TABLE BORDER=\"0\" CELLBORDER=\"1\" CELLSPACING=\"0\">"
                  "<TR><TD BGCOLOR=\"lightgrey\" COLSPAN=\"3\"><B>");
        dot_html(b, t->name);
        dg_add(b, "</B></TD></TR>");
        for (size_t j = 0; j < t->ncols; j++) {
            const dg_col *c = &t->cols[j];
            bool fk = col_is_fk(t, c->name);
            dg_add(b, "<TR><TD ALIGN=\"LEFT\" PORT=\"");
            dot_html(b, c->name);
            dg_add(b, "\">");
            dot_html(b, c->name);
            dg_add(b, "</TD><TD ALIGN=\"LEFT\">");
            dot_html(b, c->type[0] ? c->type : "any");
            if (!c->notnull && !c->pk)
                dg_add(b, " NULL");
            dg_addf(b, "</TD><TD>%s%s%s</TD></TR>", c->pk ? "PK" : "", c->pk && fk ? " " : "",
                    fk ? "FK" : "");
        }
        dg_add(b, "</TABLE>>];\n");
    }
    for (size_t i = 0; i < s->n; i++) {
        const dg_table *t = &s->t[i];
        for (size_t k = 0; k < t->nfks; k++) {
            const dg_fk *f = &t->fks[k];
            dg_add(b, "    ");
            dot_id(b, t->name);
            dg_add(b, " -> ");
            dot_id(b, f->ref_table);
            dg_add(b, " [label=");
            dg_buf l = {0};
            fk_label(&l, f);
            dot_id(b, dg_str(&l));
            dg_buf_free(&l);
            dg_addf(b, ", taillabel=\"%s\", headlabel=\"%s\"];\n", dg_fk_unique(t, f) ? "0..1" : "*",
                    dg_fk_nullable(t, f) ? "0..1" : "1");
            nrel++;
        }
    }
    dg_add(b, "}\n");
    return nrel;
}

int cmd_erd(cli *c, int argc, char **argv)
{
    const char *format = "mermaid", *output = NULL;
    bool all = false;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int r;
        if (cli_is_help(argv[i])) {
            fputs(HELP, stdout);
            return CLI_OK;
        } else if (strcmp(argv[i], "--all") == 0) {
            all = true;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--format", &v)) != 0) {
            if (r < 0)
                return CLI_USAGE;
            format = v;
        } else if ((r = cli_opt_value(c, argc, argv, &i, "--output", &v)) != 0) {
            if (r < 0)
                return CLI_USAGE;
            output = v;
        } else {
            return cli_usage(c, "unexpected argument '%s'", argv[i]);
        }
    }
    bool is_dot = strcmp(format, "dot") == 0;
    if (!is_dot && strcmp(format, "mermaid") != 0)
        return cli_usage(c, "--format is mermaid or dot, got '%s'", format);

    dbk_conn *conn = NULL;
    int code = cli_connect(c, false, NULL, 0, &conn);
    if (code)
        return code;
    dbk_error err;
    dbk_error_clear(&err);
    dg_schema s;
    dbk_rc rc = dg_schema_load(dbk_conn_db(conn), all, &s, &err);
    dbk_conn_close(conn);
    if (rc)
        return cli_fail(c, rc, &err);
    dg_buf b = {0};
    size_t nrel = is_dot ? dot(&s, &b) : mermaid(&s, &b);
    size_t ntables = s.n;
    dg_schema_free(&s);
    if (b.oom) {
        dg_buf_free(&b);
        dbk_error_clear(&err);
        snprintf(err.message, sizeof err.message, "out of memory drawing the diagram");
        return cli_fail(c, DBK_ENOMEM, &err);
    }
    if (output && strcmp(output, "-") != 0) {
        FILE *f = fopen(output, "wb");
        bool ok = f && fwrite(dg_str(&b), 1, b.len, f) == b.len;
        if (f && fclose(f) != 0)
            ok = false;
        if (!ok) {
            int e = errno;
            dg_buf_free(&b);
            dbk_error_clear(&err);
            snprintf(err.message, sizeof err.message, "cannot write %s: %s", output, strerror(e));
            return cli_fail(c, DBK_EIO, &err);
        }
    }
    if (c->json) {
        jw w;
        jw_init(&w, stdout);
        jw_obj(&w);
        jw_kbool(&w, "ok", true);
        jw_kstr(&w, "format", is_dot ? "dot" : "mermaid");
        jw_kint(&w, "tables", (int64_t)ntables);
        jw_kint(&w, "relations", (int64_t)nrel);
        if (output && strcmp(output, "-") != 0)
            jw_kstr(&w, "output", output);
        else
            jw_kstr(&w, "text", dg_str(&b));
        jw_end_obj(&w);
    } else if (!output || strcmp(output, "-") == 0) {
        fwrite(dg_str(&b), 1, b.len, stdout);
    } else {
        cli_info(c, "wrote %s (%zu tables, %zu relations)", output, ntables, nrel);
    }
    dg_buf_free(&b);
    return CLI_OK;
}
