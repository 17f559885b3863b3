/*
 * gen_int.h - what the files of `dbkit gen` share: the query model (one
 * gquery per annotated query of a qfile), the statement tokens and what
 * they say, and the functions each file gives the others. gen.c drives
 * (reads the query files, describes each query on a throwaway database,
 * writes the outputs); gen_tokens.c reads SQL tokens; gen_qfile.c parses
 * query files and makes C names; gen_emit.c writes the C.
 */
#ifndef DBK_GEN_INT_H
#define DBK_GEN_INT_H

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "dbkit/db.h"
#include "dbkit/gen.h"
#include "dbkit/result.h"
#include "dbkit/testdb.h"

#include "../core/config_int.h"
#include "../core/internal.h"
#include "../core/sb.h"
#include "../core/url.h"
#include "../driver/describe.h"
#include "../driver/dialect.h"

enum { K_ONE = 1, K_MANY, K_EXEC, K_EXECROWS, K_BATCH, K_COPYFROM };
/* The annotation names by kind (index K_*; [0] is ""), in gen.c. */
extern const char *const dbk__gen_kind_names[];

#define GMAX_PARAMS 64
#define IDLEN 64

typedef struct gfield {
    char name[IDLEN]; /* C identifier */
    dbk_type type;
    bool nullable;
    char sqltype[64];
} gfield;

typedef struct gquery {
    char name[128];
    char fn[128];
    int kind;
    int line;     /* of the "-- name:" line */
    int sql_line; /* of the first line of SQL */
    char *sql;    /* with named parameters rewritten to $n */
    gfield params[GMAX_PARAMS];
    size_t nparams;
    gfield *cols;
    size_t ncols;
    /* :copyfrom: INSERT INTO copy_table (copy_cols) VALUES ($a, $b, ...);
     * copy_param[k] is the index in params of column k's value */
    char copy_table[IDLEN];
    char copy_cols[GMAX_PARAMS][IDLEN];
    int copy_param[GMAX_PARAMS];
    size_t ncopy;
} gquery;

/* ---- a growable string: the library's one builder (core/sb.h) ---- */

typedef dbk__sb sb;
#define sb_addn dbk__sb_putn
#define sb_add dbk__sb_puts
#define sb_addf dbk__sb_printf

enum { T_IDENT = 1, T_PARAM, T_NUM, T_STR, T_PUNCT };

typedef struct tok {
    int kind;
    char text[IDLEN]; /* identifiers lower-cased (quoted ones kept); params: the number */
    int num;          /* T_PARAM: n */
} tok;

typedef struct toks {
    tok *v;
    size_t n, cap;
} toks;

#define MAX_TABLES 16

typedef struct shape {
    char tables[MAX_TABLES][IDLEN]; /* in order of appearance */
    bool outer[MAX_TABLES];         /* on the nullable side of a LEFT JOIN */
    size_t ntables;
    bool all_nullable; /* RIGHT or FULL join */
    bool dml;          /* INSERT / UPDATE / DELETE: tables[0] is the target */
} shape;

/* The items of the select list (or RETURNING list): token ranges. */
typedef struct item {
    size_t a, b; /* [a, b) without the alias */
} item;

typedef struct qfile {
    char *path; /* as given: dir/name.sql */
    char base[128];
    gquery *q;
    size_t nq;
} qfile;

/* ---- gen_tokens.c: SQL tokens and what they say ---- */
bool dbk__gen_ident_char(int c);
bool dbk__gen_ident_start(int c);
bool dbk__gen_is_kw(const tok *k, const char *kw);
bool dbk__gen_is_p(const tok *k, const char *p);
bool dbk__gen_lookup(dbk__describer *d, const shape *sh, const char *col, dbk__desc_col *out);
void dbk__gen_param_context(const toks *t, size_t i, const shape *sh, char *col, dbk_type *ptype,
                            bool *typed);
int dbk__gen_placeholder_num(const char *s);
size_t dbk__gen_select_items(const toks *t, item *items, size_t max);
void dbk__gen_shape_of(const toks *t, shape *sh);
size_t dbk__gen_skip_quoted(const char *s, size_t i);
bool dbk__gen_tokenize(const char *s, toks *out);
dbk_type dbk__gen_type_of_name(const char *t);

/* ---- gen_qfile.c: query files, named parameters, C names ---- */
void dbk__gen_c_ident(const char *in, char *out, size_t n);
void dbk__gen_c_ident_in(const char *in, char *out, size_t n, bool param);
int dbk__gen_max_param(const char *sql);
dbk_rc dbk__gen_parse_file(qfile *qf, dbk_error *err);
char *dbk__gen_rewrite_named(const char *sql, char names[][IDLEN], bool *narg, size_t *nnames,
                             int base);
void dbk__gen_uniq(gfield *f, size_t n);

/* ---- gen_emit.c: the generated header, source and models.h ---- */
void dbk__gen_emit_header(sb *b, const qfile *qf, const char *guard);
dbk_rc dbk__gen_emit_models(dbk_conn *c, dbk__describer *d, sb *b, dbk_error *err);
void dbk__gen_emit_source(sb *b, const qfile *qf);

#endif
