/*
 * dbkit gen: the generated code is compiled (gcc and clang, -std=c11 -Wall
 * -Wextra -Werror) and run against a real database made from the same
 * migrations, on both engines: every type repo.h maps, NULLs, arrays and
 * JSON (PostgreSQL), outer joins, aggregates, RETURNING, named parameters,
 * :one/:many/:exec/:execrows/:batch/:copyfrom. A query that no longer
 * prepares fails generation with file:line; --check catches drift.
 */
#include "testutil.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char PG_SCHEMA[] =
    "-- migrate:up\n"
    "CREATE TABLE t (\n"
    "  id bigserial PRIMARY KEY,\n"
    "  i2 smallint NOT NULL, i4 integer, i8 bigint NOT NULL,\n"
    "  f4 real, f8 double precision NOT NULL,\n"
    "  b boolean NOT NULL, bn boolean,\n"
    "  s text NOT NULL, sn text,\n"
    "  ts timestamptz NOT NULL, tsn timestamp,\n"
    "  bl bytea, j jsonb, ia integer[], num numeric\n"
    ");\n"
    "CREATE TABLE c (id bigint PRIMARY KEY, t_id bigint NOT NULL REFERENCES t (id), note text NOT "
    "NULL);\n"
    "-- migrate:down\nDROP TABLE c;\nDROP TABLE t;\n";

static const char SQLITE_SCHEMA[] =
    "-- migrate:up\n"
    "CREATE TABLE t (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  i2 INTEGER NOT NULL, i4 INTEGER, i8 INTEGER NOT NULL,\n"
    "  f4 REAL, f8 REAL NOT NULL,\n"
    "  b BOOLEAN NOT NULL, bn BOOLEAN,\n"
    "  s TEXT NOT NULL, sn TEXT,\n"
    "  ts TIMESTAMP NOT NULL, tsn TIMESTAMP,\n"
    "  bl BLOB, j JSON, ia TEXT, num TEXT\n"
    ");\n"
    "CREATE TABLE c (id INTEGER PRIMARY KEY, t_id INTEGER NOT NULL REFERENCES t (id), note TEXT "
    "NOT NULL);\n"
    "-- migrate:down\nDROP TABLE c;\nDROP TABLE t;\n";

static const char QUERIES[] =
    "-- Queries over every type.\n"
    "\n"
    "-- name: InsertT :one\n"
    "INSERT INTO t (i2, i4, i8, f4, f8, b, bn, s, sn, ts, tsn, bl, j, ia, num)\n"
    "VALUES (@i2, @i4, @i8, @f4, @f8, @b, @bn, @s, @sn, @ts, @tsn, @bl, @j, @ia, @num)\n"
    "RETURNING id;\n"
    "\n"
    "-- name: GetT :one\n"
    "SELECT * FROM t WHERE id = $1;\n"
    "\n"
    "-- name: ListWithChildren :many\n"
    "SELECT t.id, t.s, c.note, c.id AS child_id\n"
    "FROM t LEFT JOIN c ON c.t_id = t.id\n"
    "ORDER BY t.id, c.id;\n"
    "\n"
    "-- name: Stats :one\n"
    "SELECT count(*) AS n, max(i8) AS top, avg(f8) AS mean FROM t;\n"
    "\n"
    "-- name: SetSn :execrows\n"
    "UPDATE t SET sn = sqlc.arg(sn) WHERE id = sqlc.arg(id);\n"
    "\n"
    "-- name: RenameT :one\n"
    "UPDATE t SET s = @s WHERE id = @id RETURNING id, s, sn;\n"
    "\n"
    "-- name: AddChildren :batch\n"
    "INSERT INTO c (id, t_id, note) VALUES ($1, $2, $3);\n"
    "\n"
    "-- name: CopyChildren :copyfrom\n"
    "INSERT INTO c (id, t_id, note) VALUES ($1, $2, $3);\n"
    "\n"
    "-- name: GetChild :one\n"
    "SELECT t_id, note FROM c WHERE id = $1;\n"
    "\n"
    "-- name: DeleteChildren :exec\n"
    "DELETE FROM c WHERE t_id = $1;\n"
    "\n"
    "-- name: SetI4 :execrows\n"
    "UPDATE t SET i4 = sqlc.narg(i4) WHERE id = @id;\n"
    "\n"
    "-- name: AddI8 :execrows\n"
    "UPDATE t SET i8 = i8 + @delta WHERE id = @id;\n";

/* Uses the generated API; its output is compared line by line. */
static const char MAIN_C[] =
    "#include <inttypes.h>\n"
    "#include <stdio.h>\n"
    "#include <string.h>\n"
    "#include \"matrix.h\"\n"
    "#include \"models.h\"\n"
    "#include \"ints.h\"\n"
    "#define CK(x) do { dbk_rc rc_ = (x); if (rc_ != DBK_OK) { printf(\"FAIL %s: %s\\n\", #x, "
    "err.message); return 1; } } while (0)\n"
    "int main(int argc, char **argv)\n"
    "{\n"
    "    (void)argc;\n"
    "    dbk_error err;\n"
    "    dbk_config *cfg = NULL;\n"
    "    dbk_conn *c = NULL;\n"
    "    CK(dbk_config_from_url(argv[1], &cfg, &err));\n"
    "    CK(dbk_conn_open(cfg, &c, &err));\n"
    "    dbk_db *db = dbk_conn_db(c);\n"
    "    dbk_arena *a = dbk_arena_new(0);\n"
    "    int64_t ts = 1700000000123456;\n"
    "    dbk_bytes bl = {\"\\x00\\x01z\", 3};\n"
    "    dbk_bytes nobl = {NULL, 0};\n"
    "    insert_t_row id1, id2;\n"
    "    CK(insert_t(db, 2, 4, 8, 1.5, 2.25, true, false, \"hello\", \"sn\", ts, ts, bl,\n"
    "                \"{\\\"k\\\": [1, 2]}\", \"{1,2,3}\", \"12.50\", a, &id1, &err));\n"
    "    CK(insert_t(db, 3, 0, 9, 0, 4.75, false, false, \"bye\", NULL, ts + 1, 0, nobl, NULL,\n"
    "                NULL, NULL, a, &id2, &err));\n"
    "    printf(\"ids %\" PRId64 \" %\" PRId64 \"\\n\", id1.id, id2.id);\n"
    "    get_t_row g;\n"
    "    CK(get_t(db, id1.id, a, &g, &err));\n"
    "    printf(\"get i2=%\" PRId64 \" i4=%\" PRId64 \"/%d i8=%\" PRId64 \" f4=%.2f f8=%.2f b=%d "
    "bn=%d/%d\\n\", g.i2, g.i4, g.i4_null, g.i8, g.f4, g.f8, g.b, g.bn, g.bn_null);\n"
    "    printf(\"get s=%s sn=%s ts=%d tsn_null=%d bl=%zu:%d j=%s ia=%s num=%s\\n\", g.s, g.sn,\n"
    "           g.ts == ts, g.tsn_null, g.bl.len, g.bl.ptr ? ((const unsigned char *)g.bl.ptr)[2] : "
    "0, g.j ? \"json\" : \"NULL\", g.ia, g.num);\n"
    "    /* types: these assignments only compile with the mapped C types */\n"
    "    int64_t *pi = &g.i8; double *pd = &g.f8; bool *pb = &g.b; const char **ps = &g.s;\n"
    "    dbk_bytes *pbl = &g.bl; bool *pn = &g.i4_null; int64_t *pts = &g.ts;\n"
    "    (void)pi; (void)pd; (void)pb; (void)ps; (void)pbl; (void)pn; (void)pts;\n"
    "    t_model m; m.i8 = 1; m.i4_null = true; (void)m;\n"
    "    CK(get_t(db, id2.id, a, &g, &err));\n"
    "    printf(\"get2 i4_null=%d f4_null=%d bn=%d sn=%s tsn_null=%d bl=%s j=%s ia=%s num=%s\\n\",\n"
    "           g.i4_null, g.f4_null, g.bn_null, g.sn ? g.sn : \"NULL\", g.tsn_null,\n"
    "           g.bl.ptr ? \"set\" : \"NULL\", g.j ? g.j : \"NULL\", g.ia ? g.ia : \"NULL\",\n"
    "           g.num ? g.num : \"NULL\");\n"
    "    add_children_params kids[] = {{1, id1.id, \"one\"}, {2, id1.id, \"two\"}};\n"
    "    int64_t n = 0;\n"
    "    CK(add_children(db, kids, 2, &n, &err));\n"
    "    printf(\"batch %\" PRId64 \"\\n\", n);\n"
    "    copy_children_params more[] = {{3, id1.id, \"three\"}};\n"
    "    CK(copy_children(db, more, 1, &n, &err));\n"
    "    printf(\"copy %\" PRId64 \"\\n\", n);\n"
    "    add_children_params dup[] = {{4, id1.id, \"four\"}, {1, id1.id, \"dup\"}};\n"
    "    dbk_rc drc = add_children(db, dup, 2, &n, &err);\n"
    "    printf(\"batch dup %s\\n\", dbk_rc_name(drc));\n"
    "    list_with_children_row *rows = NULL;\n"
    "    size_t nrows = 0;\n"
    "    CK(list_with_children(db, a, &rows, &nrows, &err));\n"
    "    for (size_t i = 0; i < nrows; i++)\n"
    "        printf(\"row %s %s %d\\n\", rows[i].s, rows[i].note ? rows[i].note : \"NULL\",\n"
    "               rows[i].child_id_null);\n"
    "    stats_row st;\n"
    "    CK(stats(db, a, &st, &err));\n"
    "    printf(\"stats n=%\" PRId64 \" top=%\" PRId64 \"/%d mean=%.3f/%d\\n\", st.n, st.top, "
    "st.top_null, st.mean, st.mean_null);\n"
    "    CK(set_sn(db, \"changed\", id2.id, &n, &err));\n"
    "    printf(\"execrows %\" PRId64 \"\\n\", n);\n"
    "    rename_t_row rn;\n"
    "    CK(rename_t(db, \"renamed\", id2.id, a, &rn, &err));\n"
    "    printf(\"rename %s %s\\n\", rn.s, rn.sn ? rn.sn : \"NULL\");\n"
    "    drc = get_t(db, 999999, a, &g, &err);\n"
    "    printf(\"missing %s\\n\", dbk_rc_name(drc));\n"
    "    CK(delete_children(db, id1.id, &err));\n"
    "    CK(list_with_children(db, a, &rows, &nrows, &err));\n"
    "    printf(\"after delete %zu\\n\", nrows);\n"
    "    copy_children_params esc[] = {{5, id1.id, \"tab\\there\"}, {6, id1.id, "
    "\"back\\\\slash\\nnew\\rline\"}, {7, id1.id, \"\\\\N\"}};\n"
    "    CK(copy_children(db, esc, 3, &n, &err));\n"
    "    printf(\"copy esc %\" PRId64 \"\\n\", n);\n"
    "    int same = 0;\n"
    "    for (int i = 0; i < 3; i++) {\n"
    "        get_child_row gc;\n"
    "        CK(get_child(db, esc[i].id, a, &gc, &err));\n"
    "        same += strcmp(gc.note, esc[i].note) == 0 && gc.t_id == id1.id;\n"
    "    }\n"
    "    printf(\"copy round trip %d\\n\", same);\n"
    "    copy_children_params bad[] = {{8, id1.id, \"eight\"}, {9, id1.id, \"nine\"}, "
    "{5, id1.id, \"dup\"}};\n"
    "    n = -1;\n"
    "    drc = copy_children(db, bad, 3, &n, &err);\n"
    "    CK(list_with_children(db, a, &rows, &nrows, &err));\n"
    "    printf(\"copy dup %s %\" PRId64 \" rows %zu\\n\", dbk_rc_name(drc), n, nrows);\n"
    "    CK(copy_children(db, NULL, 0, &n, &err));\n"
    "    printf(\"copy none %\" PRId64 \"\\n\", n);\n"
    "    CK(delete_children(db, id1.id, &err));\n"
    "    printf(\"sql %d\\n\", strstr(get_t_sql, \"WHERE id = $1\") != NULL);\n"
    "    int64_t seven = 7;\n"
    "    CK(set_i4(db, &seven, id1.id, &n, &err));\n"
    "    CK(set_i4(db, NULL, id2.id, &n, &err));\n"
    "    get_t_row g1, g2;\n"
    "    CK(get_t(db, id1.id, a, &g1, &err));\n"
    "    CK(get_t(db, id2.id, a, &g2, &err));\n"
    "    printf(\"narg %\" PRId64 \"/%d %d\\n\", g1.i4, g1.i4_null, g2.i4_null);\n"
    "    count_t_row ct;\n"
    "    CK(count_t(db, a, &ct, &err));\n"
    "    printf(\"count %\" PRId64 \"\\n\", ct.n);\n"
    "    dbk_arena_free(a);\n"
    "    dbk_conn_close(c);\n"
    "    dbk_config_free(cfg);\n"
    "    return 0;\n"
    "}\n";

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t len = 0;
    char chunk[4096];
    size_t got;
    dbkt_append(&buf, &len, "", 0);
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        dbkt_append(&buf, &len, chunk, got);
    fclose(f);
    return buf;
}

/* A project: <tmp>/<name>/db/{migrations,queries} and gen output in db/gen. */
static char *project(const char *name, const char *schema, const char *queries)
{
    char *base = dbkt_tmpdir();
    char *dir = malloc(strlen(base) + strlen(name) + 64);
    assert_non_null(dir);
    sprintf(dir, "%s/%s", base, name);
    free(base);
    char p[1024];
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/db", dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/db/migrations", dir);
    mkdir(p, 0755);
    write_file(p, "1_schema.sql", schema);
    snprintf(p, sizeof p, "%s/db/queries", dir);
    mkdir(p, 0755);
    write_file(p, "matrix.sql", queries);
    /* a file whose rows hold numbers only (no arena copies in its code) */
    write_file(p, "ints.sql", "-- name: CountT :one\nSELECT count(*) AS n FROM t;\n");
    return dir;
}

static dbk_config *server_cfg(dbk_engine engine, const char *name)
{
    dbk_config *cfg = NULL;
    dbk_error err;
    char *url = engine == DBK_ENGINE_POSTGRES ? strdup(dbkt_pg_admin_url()) : dbkt_sqlite_url(name);
    DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &err), &err);
    free(url);
    return cfg;
}

static dbk_rc gen(const dbk_config *cfg, const char *dir, bool check, dbk_gen_report *rep,
                  dbk_error *err)
{
    char mig[1024], q[1024], out[1024];
    snprintf(mig, sizeof mig, "%s/db/migrations", dir);
    snprintf(q, sizeof q, "%s/db/queries", dir);
    snprintf(out, sizeof out, "%s/db/gen", dir);
    dbk_gen_opts o;
    memset(&o, 0, sizeof o);
    o.cfg = cfg;
    o.migrations_dir = mig;
    o.queries_dir = q;
    o.out_dir = out;
    o.check = check;
    return dbk_gen_run(&o, rep, err);
}

static void has(const char *text, const char *needle)
{
    if (!strstr(text, needle))
        fail_msg("expected to find:\n%s\nin:\n%s", needle, text);
}

/* Compiles gen output + MAIN_C with `cc` and runs it on a fresh database. */
static void compile_and_run(const char *dir, const char *cc, const dbk_config *cfg,
                            const char *expected[])
{
    char gendir[900], mainc[1024], exe[1024], genc[1024], intsc[1024];
    snprintf(gendir, sizeof gendir, "%s/db/gen", dir);
    write_file(gendir, "main.c", MAIN_C);
    snprintf(mainc, sizeof mainc, "%s/main.c", gendir);
    snprintf(genc, sizeof genc, "%s/matrix.c", gendir);
    snprintf(intsc, sizeof intsc, "%s/ints.c", gendir);
    const char *ccbase = strrchr(cc, '/') ? strrchr(cc, '/') + 1 : cc;
    snprintf(exe, sizeof exe, "%s/prog_%s", gendir, ccbase);
    char inc1[1100], inc2[1100], rpath[1100], gi[1100];
    snprintf(inc1, sizeof inc1, "-I%s/include", DBKIT_SOURCE_DIR);
    snprintf(inc2, sizeof inc2, "-I%s/include", DBKIT_BINARY_DIR);
    snprintf(gi, sizeof gi, "-I%s", gendir);
    snprintf(rpath, sizeof rpath, "-Wl,-rpath,%s", DBKIT_LIB_DIR);
    const char *args[] = {"-std=c11", "-Wall", "-Wextra", "-Werror", "-Wshadow",
                          "-Wstrict-prototypes", "-Wmissing-prototypes",
                          "-Wno-missing-prototypes", inc1, inc2, gi, mainc, genc, intsc,
                          DBKIT_LIB_FILE, rpath, DBKIT_GEN_SAN, "-o", exe, NULL};
    /* an empty sanitizer flag would be read as a file name */
    const char *argv2[32];
    int k = 0;
    for (int i = 0; args[i]; i++)
        if (args[i][0])
            argv2[k++] = args[i];
    argv2[k] = NULL;
    int o, e;
    pid_t pid = dbkt_spawn(cc, NULL, argv2, NULL, NULL, &o, &e);
    dbkt_proc r = dbkt_collect(pid, o, e, 120000, cc);
    if (r.code != 0)
        fail_msg("%s failed (%d):\n%s%s", cc, r.code, r.out, r.err);
    dbkt_proc_free(&r);

    char mig[1024];
    snprintf(mig, sizeof mig, "%s/db/migrations", dir);
    dbk_testdb *t = NULL;
    dbk_error err;
    DBKT_OK(dbk_testdb_new(cfg, mig, NULL, &t, &err), &err);
    const char *rargs[] = {dbk_testdb_url(t), NULL};
    pid = dbkt_spawn(exe, NULL, rargs, NULL, NULL, &o, &e);
    r = dbkt_collect(pid, o, e, 60000, "generated program");
    if (r.code != 0)
        fail_msg("generated program exit %d:\n%s%s", r.code, r.out, r.err);
    for (int i = 0; expected[i]; i++)
        has(r.out, expected[i]);
    dbkt_proc_free(&r);
    DBKT_OK(dbk_testdb_drop(t, &err), &err);
}

static void matrix(dbk_engine engine, const char *name)
{
    char *dir = project(name, engine == DBK_ENGINE_POSTGRES ? PG_SCHEMA : SQLITE_SCHEMA, QUERIES);
    dbk_config *cfg = server_cfg(engine, name);
    dbk_error err;
    dbk_gen_report rep;
    DBKT_OK(gen(cfg, dir, false, &rep, &err), &err);
    assert_int_equal(rep.queries, 13);
    assert_int_equal(rep.files, 5);

    char path[1024];
    snprintf(path, sizeof path, "%s/db/gen/matrix.h", dir);
    char *h = read_file(path);
    assert_non_null(h);
    /* NOT NULL table columns have no null flag; nullable ones do */
    has(h, "typedef struct get_t_row {");
    has(h, "    int64_t i8;");
    has(h, "    bool i4_null;");
    assert_null(strstr(h, "bool i8_null;"));
    assert_null(strstr(h, "bool s_null;"));
    /* the LEFT JOIN's nullable side: NOT NULL columns become nullable */
    has(h, "bool child_id_null;");
    /* count is never NULL, max and avg are */
    assert_null(strstr(h, "bool n_null;"));
    has(h, "bool top_null;");
    has(h, "    double mean;");
    /* named parameters become C parameter names */
    has(h, "dbk_rc set_sn(dbk_db *db, const char *sn, int64_t id, int64_t *affected");
    has(h, "dbk_rc insert_t(dbk_db *db, int64_t i2, int64_t i4, int64_t i8, double f4, double "
           "f8, bool b_, bool bn, const char *s, const char *sn, int64_t ts, int64_t tsn, "
           "dbk_bytes bl, const char *j, const char *ia, const char *num, dbk_arena *arena");
    has(h, "typedef struct add_children_params {");
    has(h, "dbk_rc copy_children(dbk_db *db, const copy_children_params *params, size_t n, "
           "int64_t *affected,");
    /* sqlc.narg(): a nullable number parameter, passed by pointer */
    has(h, "dbk_rc set_i4(dbk_db *db, const int64_t *i4, int64_t id, int64_t *affected");
    /* an arithmetic operand takes the column's type (SQLite has no other source) */
    has(h, "dbk_rc add_i8(dbk_db *db, int64_t delta, int64_t id, int64_t *affected");
    free(h);
    /* :copyfrom runs on COPY (dbk_db_copy_from), not a batch of INSERTs */
    snprintf(path, sizeof path, "%s/db/gen/matrix.c", dir);
    h = read_file(path);
    assert_non_null(h);
    has(h, "static const char *const cols[3] = {\"id\", \"t_id\", \"note\"};");
    has(h, "dbk_rc rc = dbk_db_copy_from(db, \"c\", cols, 3, v, n, affected, err);");
    free(h);

    const char *expected[] = {
        "ids 1 2",
        "get i2=2 i4=4/0 i8=8 f4=1.50 f8=2.25 b=1 bn=0/0",
        "get s=hello sn=sn ts=1 tsn_null=0 bl=3:122 j=json ia={1,2,3} num=12.50",
        "get2 i4_null=0 f4_null=0 bn=0 sn=NULL tsn_null=0 bl=NULL j=NULL ia=NULL num=NULL",
        "batch 2",
        "copy 1",
        "batch dup DBK_EUNIQUE",
        "row hello one 0\nrow hello two 0\nrow hello three 0\nrow bye NULL 1",
        "stats n=2 top=9/0 mean=3.500/0",
        "execrows 1",
        "rename renamed changed",
        "missing DBK_ENOT_FOUND",
        "after delete 2",
        "copy esc 3",
        "copy round trip 3",
        "copy dup DBK_EUNIQUE 0 rows 4",
        "copy none 0",
        "sql 1",
        "narg 7/0 1",
        "count 2",
        NULL};
    if (DBKIT_GEN_SAN[0]) {
        /* a sanitizer runtime must match the library's: its compiler only */
        compile_and_run(dir, DBKIT_GEN_CC, cfg, expected);
    } else {
        compile_and_run(dir, "gcc", cfg, expected);
        compile_and_run(dir, "clang", cfg, expected);
    }
    dbk_config_free(cfg);
    free(dir);
}

static void gen_pg_types_matrix(void **state)
{
    (void)state;
    matrix(DBK_ENGINE_POSTGRES, "gen_pg_types_matrix");
}

static void gen_sqlite_types_matrix(void **state)
{
    (void)state;
    matrix(DBK_ENGINE_SQLITE, "gen_sqlite_types_matrix");
}

/* A migration that drops a column a query uses: generation fails naming
 * the query file and the line of the query. */
static void unpreparable(dbk_engine engine, const char *name)
{
    char *dir = project(name, engine == DBK_ENGINE_POSTGRES ? PG_SCHEMA : SQLITE_SCHEMA, QUERIES);
    dbk_config *cfg = server_cfg(engine, name);
    dbk_error err;
    DBKT_OK(gen(cfg, dir, false, NULL, &err), &err);
    char p[1024];
    snprintf(p, sizeof p, "%s/db/migrations", dir);
    write_file(p, "2_drop_note.sql", "-- migrate:up\nALTER TABLE c DROP COLUMN note;\n"
                                     "-- migrate:down\n");
    DBKT_RC(DBK_EINVALID, gen(cfg, dir, false, NULL, &err));
    /* ListWithChildren: its SELECT list is on line 12 of matrix.sql */
    has(err.message, "matrix.sql:12: query ListWithChildren does not prepare");
    has(err.message, "note");
    dbk_config_free(cfg);
    free(dir);
}

static void gen_pg_unpreparable_query_fails(void **state)
{
    (void)state;
    unpreparable(DBK_ENGINE_POSTGRES, "gen_pg_unpreparable");
}

static void gen_sqlite_unpreparable_query_fails(void **state)
{
    (void)state;
    unpreparable(DBK_ENGINE_SQLITE, "gen_sqlite_unpreparable");
}

/* A :copyfrom query that dbk_db_copy_from cannot run as written (an
 * expression, a repeated parameter, RETURNING, ON CONFLICT, a column
 * without a value) fails generation naming the file and line. */
static void copyfrom_shape(dbk_engine engine, const char *name)
{
    static const char *const bodies[] = {
        "INSERT INTO c (id, t_id, note) VALUES ($1, $2, upper($3));",
        "INSERT INTO c (id, t_id, note) VALUES ($1, $1, $2);",
        "INSERT INTO c (id, t_id, note) VALUES ($1, $2, $3) RETURNING id;",
        "INSERT INTO c (id, t_id, note) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING;",
        "INSERT INTO c (id, t_id, note) VALUES ($1, $2, 'x');",
        "DELETE FROM c WHERE id = $1;",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        char q[512], nm[128];
        snprintf(q, sizeof q, "-- name: CopyBad :copyfrom\n%s\n", bodies[i]);
        snprintf(nm, sizeof nm, "%s_%zu", name, i);
        char *dir = project(nm, engine == DBK_ENGINE_POSTGRES ? PG_SCHEMA : SQLITE_SCHEMA, q);
        dbk_config *cfg = server_cfg(engine, nm);
        dbk_error err;
        DBKT_RC(DBK_EINVALID, gen(cfg, dir, false, NULL, &err));
        has(err.message, "matrix.sql:1: query CopyBad is :copyfrom but not INSERT INTO");
        dbk_config_free(cfg);
        free(dir);
    }
}

static void gen_copyfrom_needs_plain_insert(void **state)
{
    (void)state;
    copyfrom_shape(DBK_ENGINE_SQLITE, "gen_sqlite_copyfrom_shape");
    copyfrom_shape(DBK_ENGINE_POSTGRES, "gen_pg_copyfrom_shape");
}

/* Same input, byte-identical output; --check (API and CLI) finds drift. */
static void gen_check_detects_drift(void **state)
{
    (void)state;
    char *dir = project("gen_check", SQLITE_SCHEMA, QUERIES);
    dbk_config *cfg = server_cfg(DBK_ENGINE_SQLITE, "gen_check");
    dbk_error err;
    dbk_gen_report rep;
    DBKT_OK(gen(cfg, dir, false, &rep, &err), &err);
    assert_int_equal(rep.written, 5);
    DBKT_OK(gen(cfg, dir, false, &rep, &err), &err);
    assert_int_equal(rep.written, 0); /* deterministic: nothing changed */
    DBKT_OK(gen(cfg, dir, true, &rep, &err), &err);
    assert_int_equal(rep.drift, 0);

    char url[1024];
    snprintf(url, sizeof url, "sqlite:%s/x.db", dir);
    const char *args[] = {"--url", url, "gen", "--check", NULL};
    int o, e;
    pid_t pid = dbkt_spawn(DBKIT_CLI_PATH, dir, args, NULL, NULL, &o, &e);
    dbkt_proc r = dbkt_collect(pid, o, e, 60000, "dbkit gen --check");
    if (r.code != 0)
        fail_msg("dbkit gen --check: %d: %s", r.code, r.err);
    dbkt_proc_free(&r);

    /* a changed query: drift */
    char p[1024];
    snprintf(p, sizeof p, "%s/db/queries", dir);
    write_file(p, "matrix.sql", "-- name: Only :many\nSELECT id FROM t;\n");
    DBKT_OK(gen(cfg, dir, true, &rep, &err), &err);
    assert_true(rep.drift >= 1);
    pid = dbkt_spawn(DBKIT_CLI_PATH, dir, args, NULL, NULL, &o, &e);
    r = dbkt_collect(pid, o, e, 60000, "dbkit gen --check");
    assert_int_equal(r.code, 6);
    has(r.err, "out of date");
    dbkt_proc_free(&r);
    /* a new migration changes models.h: drift too */
    write_file(p, "matrix.sql", QUERIES);
    snprintf(p, sizeof p, "%s/db/migrations", dir);
    write_file(p, "2_more.sql", "-- migrate:up\nCREATE TABLE more (id INTEGER PRIMARY KEY);\n"
                                "-- migrate:down\nDROP TABLE more;\n");
    DBKT_OK(gen(cfg, dir, true, &rep, &err), &err);
    assert_int_equal(rep.drift, 1);
    has(rep.first_drift, "models.h");
    dbk_config_free(cfg);
    free(dir);
}

/* The example service's committed generated code is what its migrations
 * and queries give today (`dbkit gen --check`, as CI would run it). */
static void gen_example_shop_up_to_date(void **state)
{
    (void)state;
    const char *args[] = {"--url", dbkt_pg_admin_url(), "--migrations-dir",
                          DBKIT_SOURCE_DIR "/examples/db/migrations", "gen", "--check",
                          "--queries", DBKIT_SOURCE_DIR "/examples/db/queries", "--out",
                          DBKIT_SOURCE_DIR "/examples/shop/gen", NULL};
    int o, e;
    pid_t pid = dbkt_spawn(DBKIT_CLI_PATH, NULL, args, NULL, NULL, &o, &e);
    dbkt_proc r = dbkt_collect(pid, o, e, 60000, "dbkit gen --check (examples)");
    if (r.code != 0)
        fail_msg("dbkit gen --check on the example service: exit %d: %s%s", r.code, r.out, r.err);
    has(r.out, "3 queries, 3 files up to date");
    dbkt_proc_free(&r);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gen_pg_types_matrix),
        cmocka_unit_test(gen_sqlite_types_matrix),
        cmocka_unit_test(gen_pg_unpreparable_query_fails),
        cmocka_unit_test(gen_sqlite_unpreparable_query_fails),
        cmocka_unit_test(gen_copyfrom_needs_plain_insert),
        cmocka_unit_test(gen_check_detects_drift),
        cmocka_unit_test(gen_example_shop_up_to_date),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
