/*
 * Migrations, seeds and the schema dump, on SQLite and PostgreSQL.
 *
 * The parser, splitter and SHA-256 tests need no server. Everything else
 * runs on both engines through dbkt_each_engine(): a fresh SQLite file and
 * a fresh PostgreSQL database per test. Concurrency and crash tests fork
 * real processes (each opens its own connection after the fork) and kill
 * them with SIGKILL in the middle of a statement.
 */
#include "testutil.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"
#include "migrate/migrate_int.h"

/* ---- helpers ---- */

#define MF(name, text) {(name), (text), 0}

static dbk_migrate_source mem(const dbk_migration_file *files, size_t n)
{
    dbk_migrate_source s;
    memset(&s, 0, sizeof s);
    s.files = files;
    s.nfiles = n;
    return s;
}

/* Collects progress events. */
typedef struct events {
    int start, done, failed, skipped, warning, waiting;
    int fail_line;
    char fail_stmt[512];
    char fail_path[256];
    char last_warning[256];
    int notify_fd;       /* >= 0: write a byte here on START of notify_version */
    int64_t notify_version;
} events;

static void on_event(void *ctx, const dbk_migrate_event *ev)
{
    events *e = ctx;
    switch (ev->kind) {
    case DBK_MIGRATE_EVENT_START:
        e->start++;
        if (e->notify_fd >= 0 && ev->version == e->notify_version) {
            char b = 's';
            ssize_t w = write(e->notify_fd, &b, 1);
            (void)w;
        }
        break;
    case DBK_MIGRATE_EVENT_DONE:
        e->done++;
        break;
    case DBK_MIGRATE_EVENT_FAILED:
        e->failed++;
        e->fail_line = ev->line;
        snprintf(e->fail_stmt, sizeof e->fail_stmt, "%s", ev->statement ? ev->statement : "");
        snprintf(e->fail_path, sizeof e->fail_path, "%s", ev->path ? ev->path : "");
        break;
    case DBK_MIGRATE_EVENT_SKIPPED:
        e->skipped++;
        break;
    case DBK_MIGRATE_EVENT_WARNING:
        e->warning++;
        snprintf(e->last_warning, sizeof e->last_warning, "%s", ev->message ? ev->message : "");
        break;
    case DBK_MIGRATE_EVENT_WAITING:
        e->waiting++;
        break;
    }
}

static dbk_migrate_opts opts_with(events *e)
{
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    memset(e, 0, sizeof *e);
    e->notify_fd = -1;
    o.report = on_event;
    o.report_ctx = e;
    return o;
}

static bool table_exists(dbk_db *db, const char *name)
{
    dbk_error err;
    int64_t n = -1;
    dbk_value p = dbk_text(name);
    DBKT_OK(dbk_db_query_int64(db,
                               dbk_db_engine(db) == DBK_ENGINE_SQLITE
                                   ? "SELECT count(*) FROM sqlite_master WHERE name = $1"
                                   : "SELECT count(*) FROM (SELECT to_regclass($1) AS t) x "
                                     "WHERE t IS NOT NULL",
                               &p, 1, &n, &err),
            &err);
    return n > 0;
}

static int64_t count_rows(dbk_db *db, const char *sql)
{
    dbk_error err;
    int64_t n = -1;
    DBKT_OK(dbk_db_query_int64(db, sql, NULL, 0, &n, &err), &err);
    return n;
}

static dbk_migration_status *status_of(dbk_db *db, const dbk_migrate_source *src)
{
    dbk_error err;
    dbk_migration_status *st = NULL;
    DBKT_OK(dbk_migrate_status(db, src, &st, &err), &err);
    assert_non_null(st);
    return st;
}

static const dbk_migration_info *info_of(const dbk_migration_status *st, int64_t version)
{
    for (size_t i = 0; i < st->count; i++)
        if (st->items[i].version == version)
            return &st->items[i];
    fail_msg("version %lld not in status", (long long)version);
    return NULL;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static char *make_dir(const char *name)
{
    char *base = dbkt_tmpdir();
    size_t n = strlen(base) + strlen(name) + 2;
    char *d = malloc(n);
    assert_non_null(d);
    snprintf(d, n, "%s/%s", base, name);
    free(base);
    assert_true(mkdir(d, 0777) == 0 || errno == EEXIST);
    return d;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, hay);
}

/* ---- SHA-256 ---- */

static void migrate_sha256_vectors(void **state)
{
    (void)state;
    char hex[65];
    /* FIPS 180-4 / NIST example vectors. */
    dbk__sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    dbk__sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    dbk__sha256_hex(m448, strlen(m448), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmno"
                       "pqklmnopqrlmnopqrsmnopqrstnopqrstu";
    dbk__sha256_hex(m896, strlen(m896), hex);
    assert_string_equal(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");

    /* One million 'a', fed in uneven pieces: exercises the block buffer. */
    static char a[1000];
    memset(a, 'a', sizeof a);
    dbk__sha256 s;
    dbk__sha256_init(&s);
    size_t left = 1000000, piece = 1;
    while (left) {
        size_t n = piece < left ? piece : left;
        if (n > sizeof a)
            n = sizeof a;
        dbk__sha256_update(&s, a, n);
        left -= n;
        piece = piece * 3 % 997 + 1;
    }
    unsigned char d[32];
    dbk__sha256_final(&s, d);
    char h2[65];
    for (int i = 0; i < 32; i++)
        snprintf(h2 + 2 * i, 3, "%02x", d[i]);
    assert_string_equal(h2, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

    /* Lengths around the padding boundary (55, 56, 63, 64 bytes) agree
     * between one-shot and byte-at-a-time hashing. */
    size_t lens[] = {55, 56, 57, 63, 64, 65, 119, 120};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        char one[65];
        dbk__sha256_hex(a, lens[k], one);
        dbk__sha256_init(&s);
        for (size_t i = 0; i < lens[k]; i++)
            dbk__sha256_update(&s, a + i, 1);
        dbk__sha256_final(&s, d);
        for (int i = 0; i < 32; i++)
            snprintf(h2 + 2 * i, 3, "%02x", d[i]);
        assert_string_equal(one, h2);
    }
}

/* ---- splitter ---- */

static void split_expect(const char *sql, dbk_engine engine, size_t n, const char *const *want,
                         const int *lines)
{
    dbk__stmt *st = NULL;
    size_t got = 0;
    dbk_error err;
    DBKT_OK(dbk__sql_split(sql, strlen(sql), 1, engine, &st, &got, &err), &err);
    if (got != n)
        fail_msg("expected %zu statements, got %zu in: %s", n, got, sql);
    for (size_t i = 0; i < n; i++) {
        char buf[1024];
        snprintf(buf, sizeof buf, "%.*s", (int)st[i].len, sql + st[i].off);
        assert_string_equal(buf, want[i]);
        if (lines)
            assert_int_equal(st[i].line, lines[i]);
    }
    free(st);
}

static void migrate_split_statements(void **state)
{
    (void)state;
    {
        const char *w[] = {"SELECT 'a;b'", "SELECT \"x;y\" FROM t", "SELECT 1"};
        int l[] = {1, 2, 4};
        split_expect("SELECT 'a;b';\nSELECT \"x;y\" FROM t;\n\nSELECT 1", 0, 3, w, l);
    }
    {
        /* doubled quotes, comments with semicolons, empty statements */
        const char *w[] = {"SELECT 'it''s; fine'", "SELECT 2 /* a; b */ + 1"};
        int l[] = {2, 5};
        split_expect("-- lead; comment\nSELECT 'it''s; fine';;\n/* block;\n comment */\n"
                     "SELECT 2 /* a; b */ + 1;\n-- trailing;\n",
                     0, 2, w, l);
    }
    {
        /* dollar quotes, with and without tag, and $1 parameters */
        const char *w[] = {"CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql",
                           "DO $body$ BEGIN PERFORM 1; RAISE NOTICE '$$;'; END $body$",
                           "SELECT $1, $2::text"};
        split_expect("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n"
                     "DO $body$ BEGIN PERFORM 1; RAISE NOTICE '$$;'; END $body$;\n"
                     "SELECT $1, $2::text;",
                     DBK_ENGINE_POSTGRES, 3, w, NULL);
    }
    {
        /* E'' strings take backslash escapes on PostgreSQL */
        const char *w[] = {"SELECT E'a\\';b'", "SELECT 2"};
        split_expect("SELECT E'a\\';b'; SELECT 2;", DBK_ENGINE_POSTGRES, 2, w, NULL);
    }
    {
        /* nested block comments on PostgreSQL, flat on SQLite */
        const char *w[] = {"SELECT 1"};
        split_expect("/* a /* b; */ c; */ SELECT 1;", DBK_ENGINE_POSTGRES, 1, w, NULL);
        const char *w2[] = {"c", "*/ SELECT 1"};
        split_expect("/* a /* b; */ c; */ SELECT 1;", DBK_ENGINE_SQLITE, 2, w2, NULL);
    }
    {
        /* SQLite trigger: BEGIN ... END with CASE ... END inside */
        const char *trig = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
                           "  UPDATE t SET x = CASE WHEN new.y > 0 THEN 1 ELSE 2 END;\n"
                           "  INSERT INTO log VALUES ('end;');\n"
                           "END";
        const char *w[] = {"CREATE TABLE t (x INTEGER, y INTEGER, \"end\" TEXT)", trig,
                           "SELECT new.end FROM t"};
        char sql[1024];
        snprintf(sql, sizeof sql, "CREATE TABLE t (x INTEGER, y INTEGER, \"end\" TEXT);\n%s;\n"
                                  "SELECT new.end FROM t;",
                 trig);
        int l[] = {1, 2, 6};
        split_expect(sql, DBK_ENGINE_SQLITE, 3, w, l);
    }
    {
        /* CREATE TEMP TRIGGER and PostgreSQL triggers (no BEGIN) */
        static const char trig[] = "CREATE TEMP TRIGGER IF NOT EXISTS x BEFORE DELETE ON t BEGIN "
                                   "SELECT 1; SELECT 2; END";
        const char *w[] = {trig,
                           "CREATE TRIGGER y AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
                           "SELECT 3"};
        split_expect("CREATE TEMP TRIGGER IF NOT EXISTS x BEFORE DELETE ON t BEGIN SELECT 1; "
                     "SELECT 2; END;\nCREATE TRIGGER y AFTER INSERT ON t FOR EACH ROW EXECUTE "
                     "FUNCTION f();\nSELECT 3",
                     0, 3, w, NULL);
    }
    {
        /* SQL-standard function body (PostgreSQL 14+) */
        const char *w[] = {"CREATE OR REPLACE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC "
                           "SELECT 1; SELECT 2; END",
                           "SELECT CASE WHEN true THEN 1 END"};
        split_expect("CREATE OR REPLACE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC "
                     "SELECT 1; SELECT 2; END; SELECT CASE WHEN true THEN 1 END;",
                     DBK_ENGINE_POSTGRES, 2, w, NULL);
    }
    {
        /* only comments and whitespace: no statement */
        dbk__stmt *st = NULL;
        size_t n = 99;
        dbk_error err;
        const char *s = "  -- nothing\n/* here */\n\n";
        DBKT_OK(dbk__sql_split(s, strlen(s), 1, 0, &st, &n, &err), &err);
        assert_int_equal(n, 0);
        free(st);
    }
}

static void migrate_split_unterminated(void **state)
{
    (void)state;
    struct {
        const char *sql;
        const char *msg;
    } cases[] = {
        {"SELECT 1;\nSELECT 'abc", "line 2: unterminated quoted string"},
        {"SELECT \"abc", "line 1: unterminated quoted identifier"},
        {"\n\nSELECT $x$ body", "line 3: unterminated dollar-quoted body"},
        {"SELECT 1 /* open", "line 1: unterminated /* comment"},
        {"SELECT $$ a $x$", "line 1: unterminated dollar-quoted body"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dbk__stmt *st = NULL;
        size_t n = 0;
        dbk_error err;
        DBKT_RC(DBK_EINVALID, dbk__sql_split(cases[i].sql, strlen(cases[i].sql), 1, 0, &st, &n,
                                             &err));
        assert_null(st);
        assert_string_equal(err.message, cases[i].msg);
    }
    /* arguments */
    dbk__stmt *st = NULL;
    dbk_error err;
    DBKT_RC(DBK_EMISUSE, dbk__sql_split("x", 1, 1, 0, &st, NULL, &err));
}

static void migrate_tx_control_detection(void **state)
{
    (void)state;
    const char *yes[] = {"BEGIN", "begin transaction", "START TRANSACTION", "COMMIT", "commit work",
                         "END", "ROLLBACK", "rollback transaction", "ABORT",
                         "/* c */ COMMIT"};
    const char *no[] = {"SAVEPOINT a", "ROLLBACK TO SAVEPOINT a", "ROLLBACK TRANSACTION TO a",
                        "RELEASE a", "BEGIN ATOMIC SELECT 1; END", "COMMIT PREPARED 'x'",
                        "SELECT 1", "CREATE TABLE begin_x (id INT)", "ENDX"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (!dbk__sql_is_tx_control(yes[i], strlen(yes[i])))
            fail_msg("'%s' should count as transaction control", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (dbk__sql_is_tx_control(no[i], strlen(no[i])))
            fail_msg("'%s' should not count as transaction control", no[i]);
}

/* ---- file parser ---- */

static dbk_rc parse_text(const char *fname, const char *text, size_t len, dbk__migfile *f,
                         dbk_error *err)
{
    memset(f, 0, sizeof *f);
    f->path = (char *)fname;
    f->filename = (char *)fname;
    f->text = (char *)text;
    f->len = len;
    return dbk__mig_parse(f, err);
}

static void migrate_parse_sections(void **state)
{
    (void)state;
    dbk__migfile f;
    dbk_error err;
    const char *t = "-- a comment before the sections\n"
                    "-- migrate:up transaction:false\n"
                    "CREATE INDEX CONCURRENTLY i ON t (x);\n"
                    "-- migrate:down\r\n"
                    "DROP INDEX i;\n";
    DBKT_OK(parse_text("1_x.sql", t, strlen(t), &f, &err), &err);
    assert_int_equal(f.nsec, 2);
    const dbk__section *up = dbk__mig_section(&f, DBK__DIR_UP, DBK_ENGINE_SQLITE);
    assert_non_null(up);
    assert_false(up->transactional);
    assert_int_equal(up->line, 3);
    const dbk__section *down = dbk__mig_section(&f, DBK__DIR_DOWN, DBK_ENGINE_POSTGRES);
    assert_non_null(down);
    assert_true(down->transactional);
    assert_int_equal(strlen(f.checksum), 64);

    /* per-engine sections */
    const char *e = "-- migrate:up engine:postgres\nSELECT 1;\n-- migrate:down engine:postgres\n"
                    "-- migrate:up engine:sqlite\nSELECT 2;\n-- migrate:down engine:sqlite\n"
                    "SELECT 3;\n";
    DBKT_OK(parse_text("2_y.sql", e, strlen(e), &f, &err), &err);
    assert_int_equal(f.nsec, 4);
    up = dbk__mig_section(&f, DBK__DIR_UP, DBK_ENGINE_SQLITE);
    assert_int_equal(up->engine, DBK_ENGINE_SQLITE);
    assert_int_equal(up->line, 5);
    assert_int_equal(dbk__mig_section(&f, DBK__DIR_UP, DBK_ENGINE_POSTGRES)->line, 2);

    /* a sqlite-only file has no section for postgres */
    const char *so = "-- migrate:up engine:sqlite\nSELECT 1;\n-- migrate:down engine:sqlite\n";
    DBKT_OK(parse_text("3_z.sql", so, strlen(so), &f, &err), &err);
    assert_null(dbk__mig_section(&f, DBK__DIR_UP, DBK_ENGINE_POSTGRES));
}

static void migrate_parse_malformed(void **state)
{
    (void)state;
    struct {
        const char *text;
        size_t len; /* 0: strlen */
        const char *msg;
    } cases[] = {
        {"", 0, "5_bad.sql: the file is empty"},
        {"  \n\t\n", 0, "5_bad.sql: the file is empty"},
        {"-- migrate:up\nSELECT 1;\n\0\x01\x02", 27, "5_bad.sql:3: the file contains a NUL byte"},
        {"-- migrate:up\nSELECT '\xff\xfe';\n-- migrate:down\n", 0,
         "5_bad.sql:2: the file is not valid UTF-8 text"},
        {"CREATE TABLE t (id int);\n", 0, "5_bad.sql: no -- migrate:up section"},
        {"-- migrate:down\nDROP TABLE t;\n", 0,
         "5_bad.sql:1: a -- migrate:down section without a -- migrate:up"},
        {"-- migrate:down\nSELECT 1;\n-- migrate:up\nSELECT 2;\n", 0,
         "5_bad.sql:1: -- migrate:down comes before -- migrate:up"},
        {"-- migrate:up\nSELECT 1;\n", 0, "5_bad.sql: no -- migrate:down section"},
        {"-- migrate:up\nSELECT 1;\n-- migrate:up\nSELECT 2;\n-- migrate:down\n", 0,
         "5_bad.sql:3: a second -- migrate:up section (the first is on line 1)"},
        {"-- migrate:upp\nSELECT 1;\n", 0, "5_bad.sql:1: unknown directive '-- migrate:upp'"},
        {"-- migrate:up transaction:maybe\nSELECT 1;\n-- migrate:down\n", 0,
         "5_bad.sql:1: unknown option 'transaction:maybe'"},
        {"SELECT 0;\n-- migrate:up\nSELECT 1;\n-- migrate:down\n", 0,
         "5_bad.sql:1: SQL before the first -- migrate:up line"},
        {"-- migrate:up\n-- nothing yet\n-- migrate:down\n", 0,
         "5_bad.sql:1: the -- migrate:up section is empty"},
        {"-- migrate:up\nBEGIN;\nSELECT 1;\nCOMMIT;\n-- migrate:down\n", 0,
         "5_bad.sql:2: 'BEGIN' inside a transactional section"},
        {"-- migrate:up\nSELECT 'open;\n-- migrate:down\n", 0,
         "5_bad.sql:2: unterminated quoted string"},
        {"-- migrate:up engine:sqlite\nSELECT 1;\n-- migrate:down engine:sqlite\n"
         "-- migrate:up\nSELECT 2;\n-- migrate:down\n",
         0, "5_bad.sql:4: -- migrate:up sections with and without engine"},
        {"-- migrate:up engine:sqlite\nSELECT 1;\n-- migrate:down engine:postgres\n", 0,
         "5_bad.sql: no -- migrate:down section engine:sqlite"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dbk__migfile f;
        dbk_error err;
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].text);
        dbk_rc rc = parse_text("5_bad.sql", cases[i].text, len, &f, &err);
        if (rc != DBK_EINVALID)
            fail_msg("case %zu: expected DBK_EINVALID, got %s", i, dbk_rc_name(rc));
        if (strncmp(err.message, cases[i].msg, strlen(cases[i].msg)) != 0)
            fail_msg("case %zu: expected \"%s...\", got \"%s\"", i, cases[i].msg, err.message);
    }
}

static void migrate_parse_filenames(void **state)
{
    (void)state;
    int64_t v = 0;
    char name[128];
    dbk_error err;
    DBKT_OK(dbk__mig_parse_filename("20240101120000_create_users.sql", &v, name, sizeof name,
                                    &err),
            &err);
    assert_int_equal(v, 20240101120000LL);
    assert_string_equal(name, "create_users");
    DBKT_OK(dbk__mig_parse_filename("007_a-b.sql", &v, name, sizeof name, &err), &err);
    assert_int_equal(v, 7);
    const char *bad[][2] = {
        {"create_users.sql", "create_users.sql: bad migration file name"},
        {"12x_y.sql", "12x_y.sql: bad migration file name"},
        {"0_zero.sql", "0_zero.sql: the version must be greater than zero"},
        {"1234567890123456789_long.sql", "1234567890123456789_long.sql: the version has more"},
        {"12_.sql", "12_.sql: the migration has no name"},
        {"12_a b.sql", "12_a b.sql: the migration name may only use"},
        {"12_x.txt", "12_x.txt: a migration file name must end in .sql"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        DBKT_RC(DBK_EINVALID, dbk__mig_parse_filename(bad[i][0], &v, name, sizeof name, &err));
        if (strncmp(err.message, bad[i][1], strlen(bad[i][1])) != 0)
            fail_msg("%s: got \"%s\"", bad[i][0], err.message);
    }
}

static void migrate_load_sets(void **state)
{
    (void)state;
    dbk_error err;
    dbk__migset set;
    /* A directory: sorted by version, other files ignored. */
    char *dir = make_dir("load_dir");
    char p[512];
    snprintf(p, sizeof p, "%s/20_second.sql", dir);
    write_text(p, "-- migrate:up\nSELECT 2;\n-- migrate:down\n");
    snprintf(p, sizeof p, "%s/3_first.sql", dir);
    write_text(p, "-- migrate:up\nSELECT 1;\n-- migrate:down\n");
    snprintf(p, sizeof p, "%s/README.md", dir);
    write_text(p, "not a migration");
    snprintf(p, sizeof p, "%s/.hidden.sql", dir);
    write_text(p, "garbage");
    dbk_migrate_source src;
    memset(&src, 0, sizeof src);
    src.dir = dir;
    DBKT_OK(dbk__migset_load(&src, &set, &err), &err);
    assert_int_equal(set.n, 2);
    assert_int_equal(set.files[0].version, 3);
    assert_int_equal(set.files[1].version, 20);
    dbk__migset_free(&set);

    /* Duplicate versions name both files. */
    snprintf(p, sizeof p, "%s/020_again.sql", dir);
    write_text(p, "-- migrate:up\nSELECT 2;\n-- migrate:down\n");
    DBKT_RC(DBK_EINVALID, dbk__migset_load(&src, &set, &err));
    assert_contains(err.message, "duplicate migration version 20");
    assert_contains(err.message, "020_again.sql");
    assert_contains(err.message, "20_second.sql");
    unlink(p);

    /* A malformed file is named with its directory. */
    snprintf(p, sizeof p, "%s/30_broken.sql", dir);
    write_text(p, "-- migrate:down\n");
    DBKT_RC(DBK_EINVALID, dbk__migset_load(&src, &set, &err));
    char want[600];
    snprintf(want, sizeof want, "%s/30_broken.sql:1:", dir);
    assert_contains(err.message, want);
    unlink(p);
    snprintf(p, sizeof p, "%s/x_broken.sql", dir);
    write_text(p, "-- migrate:up\nSELECT 1;\n-- migrate:down\n");
    DBKT_RC(DBK_EINVALID, dbk__migset_load(&src, &set, &err));
    snprintf(want, sizeof want, "%s/x_broken.sql: bad migration file name", dir);
    assert_contains(err.message, want);
    unlink(p);

    /* A missing directory. */
    src.dir = "/nonexistent/dbkit/migrations";
    DBKT_RC(DBK_EIO, dbk__migset_load(&src, &set, &err));
    assert_contains(err.message, "/nonexistent/dbkit/migrations");
    assert_true(err.hint[0] != '\0');

    /* Source misuse. */
    dbk_migration_file one[] = {MF("1_a.sql", "-- migrate:up\nSELECT 1;\n-- migrate:down\n")};
    src.files = one;
    src.nfiles = 1;
    DBKT_RC(DBK_EMISUSE, dbk__migset_load(&src, &set, &err));
    src.dir = NULL;
    DBKT_OK(dbk__migset_load(&src, &set, &err), &err);
    dbk__migset_free(&set);
    memset(&src, 0, sizeof src);
    DBKT_RC(DBK_EMISUSE, dbk__migset_load(&src, &set, &err));
    free(dir);
}

static void migrate_create_file(void **state)
{
    (void)state;
    char *base = make_dir("create");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/db/migrations", base); /* parents are created */
    char path[1024], path2[1024];
    dbk_error err;
    int64_t t = 1700000000; /* 2023-11-14 22:13:20 UTC */
    DBKT_OK(dbk_migrate_create(dir, "create users", t, path, sizeof path, &err), &err);
    char want[600];
    snprintf(want, sizeof want, "%s/20231114221320_create_users.sql", dir);
    assert_string_equal(path, want);
    /* same second: the version moves on by one */
    DBKT_OK(dbk_migrate_create(dir, "add_posts", t, path2, sizeof path2, &err), &err);
    snprintf(want, sizeof want, "%s/20231114221321_add_posts.sql", dir);
    assert_string_equal(path2, want);
    /* the template parses, but its up section is empty until written */
    char *text = NULL;
    size_t len = 0;
    DBKT_OK(dbk__read_file(path, &text, &len, &err), &err);
    dbk__migfile f;
    DBKT_RC(DBK_EINVALID, parse_text(path, text, len, &f, &err));
    assert_contains(err.message, "the -- migrate:up section is empty");
    free(text);
    DBKT_RC(DBK_EINVALID, dbk_migrate_create(dir, "bad/name", t, NULL, 0, &err));
    DBKT_RC(DBK_EINVALID, dbk_migrate_create(dir, "", t, NULL, 0, &err));
    DBKT_RC(DBK_EMISUSE, dbk_migrate_create(NULL, "x", t, NULL, 0, &err));
    free(base);
}

/* ---- up, down, redo, status on both engines ---- */

static const dbk_migration_file BASIC[] = {
    MF("1_create_a.sql", "-- migrate:up\nCREATE TABLE mig_a (id INTEGER PRIMARY KEY, v TEXT);\n"
                         "-- migrate:down\nDROP TABLE mig_a;\n"),
    MF("2_create_b.sql", "-- migrate:up\nCREATE TABLE mig_b (id INTEGER PRIMARY KEY);\n"
                         "INSERT INTO mig_b (id) VALUES (1);\n"
                         "-- migrate:down\nDROP TABLE mig_b;\n"),
    MF("3_add_col.sql", "-- migrate:up\nALTER TABLE mig_a ADD COLUMN w INTEGER;\n"
                        "-- migrate:down\nALTER TABLE mig_a DROP COLUMN w;\n"),
};

/* The DBK_MIGRATE_EV_* names, renamed DBK_MIGRATE_EVENT_* in 0.2, still
 * work for one release: a reporter switching on them sees each migration
 * start and finish. */
struct old_events {
    int start, done, other;
};

static void on_event_old_names(void *ctx, const dbk_migrate_event *ev)
{
    struct old_events *e = ctx;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    switch (ev->kind) {
    case DBK_MIGRATE_EV_START:
        e->start++;
        break;
    case DBK_MIGRATE_EV_DONE:
        e->done++;
        break;
    case DBK_MIGRATE_EV_FAILED:
    case DBK_MIGRATE_EV_SKIPPED:
    case DBK_MIGRATE_EV_WARNING:
    case DBK_MIGRATE_EV_WAITING:
        e->other++;
        break;
    }
#pragma GCC diagnostic pop
}

static void migrate_deprecated_event_names_still_work(void **state)
{
    (void)state;
    char *url = dbkt_sqlite_url("mig_old_events");
    dbk_conn *c = dbkt_open(url);
    dbk_migrate_source src = mem(BASIC, 3);
    struct old_events e = {0, 0, 0};
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    o.report = on_event_old_names;
    o.report_ctx = &e;
    dbk_error err;
    int n = -1;
    DBKT_OK(dbk_migrate_up(dbk_conn_db(c), &src, &o, &n, &err), &err);
    assert_int_equal(n, 3);
    assert_int_equal(e.start, 3);
    assert_int_equal(e.done, 3);
    assert_int_equal(e.other, 0);
    dbk_conn_close(c);
    free(url);
}

static void updown_body(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_migrate_source src = mem(BASIC, 3);
    events ev;
    dbk_migrate_opts o = opts_with(&ev);
    dbk_error err;
    int n = -1;

    dbk_migration_status *st = status_of(db, &src);
    assert_int_equal(st->pending, 3);
    assert_int_equal(st->current_version, 0);
    assert_false(table_exists(db, "dbkit_migrations")); /* status creates nothing */
    dbk_migrate_status_free(st);

    o.has_target = true;
    o.target = 2;
    DBKT_OK(dbk_migrate_up(db, &src, &o, &n, &err), &err);
    assert_int_equal(n, 2);
    assert_int_equal(ev.start, 2);
    assert_int_equal(ev.done, 2);
    assert_true(table_exists(db, "mig_b"));

    o.has_target = false;
    DBKT_OK(dbk_migrate_up(db, &src, &o, &n, &err), &err);
    assert_int_equal(n, 1);
    DBKT_OK(dbk_migrate_up(db, &src, &o, &n, &err), &err);
    assert_int_equal(n, 0);

    st = status_of(db, &src);
    assert_int_equal(st->applied, 3);
    assert_int_equal(st->pending, 0);
    assert_int_equal(st->current_version, 3);
    assert_int_equal(info_of(st, 2)->state, DBK_MIGRATION_APPLIED);
    assert_string_equal(info_of(st, 2)->file_checksum, info_of(st, 2)->applied_checksum);
    assert_true(info_of(st, 2)->applied_at_us > 1600000000000000LL);
    assert_string_equal(info_of(st, 2)->name, "create_b");
    dbk_migrate_status_free(st);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM dbkit_migrations"), 3);

    /* down: one step by default */
    DBKT_OK(dbk_migrate_down(db, &src, &o, &n, &err), &err);
    assert_int_equal(n, 1);
    st = status_of(db, &src);
    assert_int_equal(st->current_version, 2);
    assert_int_equal(info_of(st, 3)->state, DBK_MIGRATION_PENDING);
    dbk_migrate_status_free(st);

    /* redo: reverts and re-applies the newest (2) */
    DBKT_OK(dbk_migrate_redo(db, &src, &o, &err), &err);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM mig_b"), 1);

    /* down --to 0 reverts everything */
    o.has_target = true;
    o.target = 0;
    DBKT_OK(dbk_migrate_down(db, &src, &o, &n, &err), &err);
    assert_int_equal(n, 2);
    assert_false(table_exists(db, "mig_a"));
    assert_false(table_exists(db, "mig_b"));
    assert_int_equal(count_rows(db, "SELECT count(*) FROM dbkit_migrations"), 0);

    /* nothing to redo */
    DBKT_RC(DBK_ENOT_FOUND, dbk_migrate_redo(db, &src, NULL, &err));

    /* steps */
    o.has_target = false;
    DBKT_OK(dbk_migrate_up(db, &src, &o, &n, &err), &err);
    o.steps = 2;
    DBKT_OK(dbk_migrate_down(db, &src, &o, &n, &err), &err);
    assert_int_equal(n, 2);
    st = status_of(db, &src);
    assert_int_equal(st->current_version, 1);
    dbk_migrate_status_free(st);
    dbk_conn_close(c);
}

static void migrate_up_down_redo_status(void **state)
{
    (void)state;
    dbkt_each_engine("mig_updown", updown_body);
}

/* A failing statement: nothing of the migration stays, the error names the
 * file, the line and the server's message. */
static void failure_body(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_migration_file files[] = {
        BASIC[0],
        MF("2_two.sql", "-- migrate:up\n"
                        "CREATE TABLE f_one (id INTEGER);\n"
                        "INSERT INTO f_nosuch VALUES (1);\n"
                        "-- migrate:down\n"
                        "DROP TABLE f_one;\n"),
        MF("3_three.sql", "-- migrate:up\nCREATE TABLE f_three (id INTEGER);\n-- migrate:down\n"),
    };
    dbk_migrate_source src = mem(files, 3);
    events ev;
    dbk_migrate_opts o = opts_with(&ev);
    dbk_error err;
    int n = -1;
    dbk_rc rc = dbk_migrate_up(db, &src, &o, &n, &err);
    assert_int_equal(rc, DBK_ESCHEMA);
    assert_int_equal(n, 1);
    assert_contains(err.message, "2_two.sql:3: ");
    assert_contains(err.message, "f_nosuch");
    assert_true(err.hint[0] != '\0');
    assert_int_equal(ev.failed, 1);
    assert_int_equal(ev.fail_line, 3);
    assert_string_equal(ev.fail_stmt, "INSERT INTO f_nosuch VALUES (1)");
    assert_string_equal(ev.fail_path, "2_two.sql");
    /* rolled back: the first statement left nothing, the history has 1 */
    assert_false(table_exists(db, "f_one"));
    assert_false(table_exists(db, "f_three"));
    assert_int_equal(count_rows(db, "SELECT count(*) FROM dbkit_migrations"), 1);
    /* the connection is usable and idle afterwards */
    assert_int_equal(count_rows(db, "SELECT 1"), 1);
    dbk_conn_close(c);
}

static void migrate_failure_rolls_back(void **state)
{
    (void)state;
    dbkt_each_engine("mig_failure", failure_body);
}

static void tamper_body(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    char *dir = make_dir(engine == DBK_ENGINE_SQLITE ? "tamper_sqlite" : "tamper_pg");
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/1_a.sql", dir);
    snprintf(p2, sizeof p2, "%s/2_b.sql", dir);
    write_text(p1, "-- migrate:up\nCREATE TABLE tam_a (id INTEGER);\n-- migrate:down\nDROP TABLE "
                   "tam_a;\n");
    write_text(p2, "-- migrate:up\nCREATE TABLE tam_b (id INTEGER);\n-- migrate:down\nDROP TABLE "
                   "tam_b;\n");
    dbk_migrate_source src;
    memset(&src, 0, sizeof src);
    src.dir = dir;
    dbk_error err;
    DBKT_OK(dbk_migrate_up(db, &src, NULL, NULL, &err), &err);
    DBKT_OK(dbk_migrate_validate(db, &src, NULL, &err), &err);

    char old_sum[65];
    dbk_migration_status *st = status_of(db, &src);
    snprintf(old_sum, sizeof old_sum, "%s", info_of(st, 1)->applied_checksum);
    dbk_migrate_status_free(st);

    /* Someone edits an applied file. */
    write_text(p1, "-- migrate:up\nCREATE TABLE tam_a (id INTEGER, extra TEXT);\n"
                   "-- migrate:down\nDROP TABLE tam_a;\n");
    char new_sum[65];
    dbk__sha256_hex("-- migrate:up\nCREATE TABLE tam_a (id INTEGER, extra TEXT);\n"
                    "-- migrate:down\nDROP TABLE tam_a;\n",
                    strlen("-- migrate:up\nCREATE TABLE tam_a (id INTEGER, extra TEXT);\n"
                           "-- migrate:down\nDROP TABLE tam_a;\n"),
                    new_sum);
    /* a new pending migration must not be applied past the changed one */
    char p3[512];
    snprintf(p3, sizeof p3, "%s/3_c.sql", dir);
    write_text(p3, "-- migrate:up\nCREATE TABLE tam_c (id INTEGER);\n-- migrate:down\n"
                   "DROP TABLE tam_c;\n");
    DBKT_RC(DBK_EINVALID, dbk_migrate_up(db, &src, NULL, NULL, &err));
    assert_contains(err.message, p1);
    assert_contains(err.message, old_sum);
    assert_contains(err.message, new_sum);
    assert_contains(err.message, "changed after it was applied");
    assert_false(table_exists(db, "tam_c"));

    dbk_migration_status *vs = NULL;
    DBKT_RC(DBK_EINVALID, dbk_migrate_validate(db, &src, &vs, &err));
    assert_non_null(vs);
    assert_int_equal(vs->changed, 1);
    assert_int_equal(info_of(vs, 1)->state, DBK_MIGRATION_CHANGED);
    assert_string_equal(info_of(vs, 1)->file_checksum, new_sum);
    assert_string_equal(info_of(vs, 1)->applied_checksum, old_sum);
    assert_contains(err.message, new_sum);
    dbk_migrate_status_free(vs);

    /* down of the changed file is refused too (its down section may lie) */
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    o.has_target = true;
    o.target = 0;
    DBKT_RC(DBK_EINVALID, dbk_migrate_down(db, &src, &o, NULL, &err));

    /* Restoring the file makes everything well again. */
    write_text(p1, "-- migrate:up\nCREATE TABLE tam_a (id INTEGER);\n-- migrate:down\nDROP TABLE "
                   "tam_a;\n");
    DBKT_OK(dbk_migrate_up(db, &src, NULL, NULL, &err), &err);
    assert_true(table_exists(db, "tam_c"));

    /* A missing file: status and validate say so, up warns and goes on. */
    unlink(p2);
    st = status_of(db, &src);
    assert_int_equal(st->missing, 1);
    assert_int_equal(info_of(st, 2)->state, DBK_MIGRATION_MISSING);
    assert_string_equal(info_of(st, 2)->name, "b");
    dbk_migrate_status_free(st);
    DBKT_RC(DBK_EINVALID, dbk_migrate_validate(db, &src, NULL, &err));
    assert_contains(err.message, "file is missing");
    events ev;
    o = opts_with(&ev);
    DBKT_OK(dbk_migrate_up(db, &src, &o, NULL, &err), &err);
    assert_int_equal(ev.warning, 1);
    assert_contains(ev.last_warning, "its file is missing");
    /* and it cannot be reverted without its file */
    o.has_target = true;
    o.target = 1;
    DBKT_RC(DBK_EINVALID, dbk_migrate_down(db, &src, &o, NULL, &err));
    assert_contains(err.message, "its file is missing");
    assert_true(table_exists(db, "tam_c")); /* checked before anything ran */
    free(dir);
    dbk_conn_close(c);
}

static void migrate_tampered_and_missing_files(void **state)
{
    (void)state;
    dbkt_each_engine("mig_tamper", tamper_body);
}

static void dirty_body(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_migration_file files[] = {
        BASIC[0],
        MF("2_nontx.sql", "-- migrate:up transaction:false\n"
                          "CREATE TABLE d_one (id INTEGER);\n"
                          "INSERT INTO d_nosuch VALUES (1);\n"
                          "CREATE TABLE d_two (id INTEGER);\n"
                          "-- migrate:down transaction:false\n"
                          "DROP TABLE d_two;\nDROP TABLE d_one;\n"),
        MF("3_after.sql", "-- migrate:up\nCREATE TABLE d_three (id INTEGER);\n-- migrate:down\n"
                          "DROP TABLE d_three;\n"),
    };
    dbk_migrate_source src = mem(files, 3);
    dbk_error err;
    dbk_rc rc = dbk_migrate_up(db, &src, NULL, NULL, &err);
    assert_int_not_equal(rc, DBK_OK);
    assert_contains(err.message, "2_nontx.sql:3:");
    assert_true(table_exists(db, "d_one")); /* no transaction: it stays */
    dbk_migration_status *st = status_of(db, &src);
    const dbk_migration_info *it = info_of(st, 2);
    assert_int_equal(it->state, DBK_MIGRATION_DIRTY);
    assert_int_equal(it->dirty, 1);
    assert_int_equal(it->statements_done, 1);
    assert_false(it->transactional);
    assert_int_equal(st->dirty, 1);
    dbk_migrate_status_free(st);

    /* up refuses, with instructions */
    DBKT_RC(DBK_EINVALID, dbk_migrate_up(db, &src, NULL, NULL, &err));
    assert_contains(err.message, "is dirty");
    assert_contains(err.message, "after 1 statement");
    assert_contains(err.hint, "dbkit migrate repair");
    assert_false(table_exists(db, "d_three"));
    DBKT_RC(DBK_EINVALID, dbk_migrate_validate(db, &src, NULL, &err));

    /* repair of a clean migration is refused */
    DBKT_RC(DBK_ENOT_FOUND, dbk_migrate_repair(db, 1, true, NULL, &err));
    DBKT_RC(DBK_ENOT_FOUND, dbk_migrate_repair(db, 99, true, NULL, &err));

    /* finish it by hand, mark it applied, go on */
    DBKT_OK(dbk_db_exec(db, "CREATE TABLE d_two (id INTEGER)", NULL, 0, NULL, &err), &err);
    DBKT_OK(dbk_migrate_repair(db, 2, true, NULL, &err), &err);
    int n = 0;
    DBKT_OK(dbk_migrate_up(db, &src, NULL, &n, &err), &err);
    assert_int_equal(n, 1);
    assert_true(table_exists(db, "d_three"));

    /* a non-transactional down section works and clears the row */
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    o.steps = 2;
    DBKT_OK(dbk_migrate_down(db, &src, &o, &n, &err), &err);
    assert_int_equal(n, 2);
    assert_false(table_exists(db, "d_one"));
    assert_false(table_exists(db, "d_two"));
    dbk_conn_close(c);
}

static void migrate_dirty_nontransactional_and_repair(void **state)
{
    (void)state;
    dbkt_each_engine("mig_dirty", dirty_body);
}

/* ---- concurrency: four processes migrate at once ---- */

static int child_up(const char *url, const dbk_migrate_source *src, int start_fd)
{
    char b;
    if (read(start_fd, &b, 1) != 1)
        return 90;
    dbk_error err;
    dbk_config *cfg = NULL;
    dbk_conn *c = NULL;
    if (dbk_config_from(url, NULL, NULL, &cfg, &err) != DBK_OK)
        return 91;
    if (dbk_conn_open(cfg, &c, &err) != DBK_OK)
        return 92;
    dbk_config_free(cfg);
    int n = -1;
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    o.lock_timeout_ms = 60000;
    dbk_rc rc = dbk_migrate_up(dbk_conn_db(c), src, &o, &n, &err);
    dbk_conn_close(c);
    if (rc != DBK_OK) {
        fprintf(stderr, "child %ld: %s: %s\n", (long)getpid(), dbk_rc_name(rc), err.message);
        return 64 + (int)rc;
    }
    return n; /* 0..3 */
}

static void concurrent_body(const char *url, dbk_engine engine)
{
    (void)engine;
    /* CREATE TABLE without IF NOT EXISTS: a second application fails. */
    dbk_migration_file files[] = {
        MF("1_log.sql", "-- migrate:up\nCREATE TABLE c_log (v INTEGER NOT NULL);\n"
                        "INSERT INTO c_log VALUES (1);\n-- migrate:down\nDROP TABLE c_log;\n"),
        MF("2_slow.sql",
           "-- migrate:up engine:sqlite\n"
           "CREATE TABLE c_two (id INTEGER);\n"
           "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 300000) "
           "SELECT count(*) FROM r;\n"
           "INSERT INTO c_log VALUES (2);\n"
           "-- migrate:down engine:sqlite\nDROP TABLE c_two;\n"
           "-- migrate:up engine:postgres\n"
           "CREATE TABLE c_two (id INTEGER);\nSELECT pg_sleep(0.3);\n"
           "INSERT INTO c_log VALUES (2);\n"
           "-- migrate:down engine:postgres\nDROP TABLE c_two;\n"),
        MF("3_three.sql", "-- migrate:up\nCREATE TABLE c_three (id INTEGER);\n"
                          "INSERT INTO c_log VALUES (3);\n-- migrate:down\nDROP TABLE c_three;\n"),
    };
    dbk_migrate_source src = mem(files, 3);
    int start[2];
    assert_int_equal(pipe(start), 0);
    pid_t kids[4];
    for (int i = 0; i < 4; i++) {
        kids[i] = fork();
        assert_true(kids[i] >= 0);
        if (kids[i] == 0) {
            close(start[1]);
            _exit(child_up(url, &src, start[0]));
        }
    }
    close(start[0]);
    /* Release all four at once. */
    assert_int_equal(write(start[1], "gggg", 4), 4);
    close(start[1]);
    int total = 0;
    for (int i = 0; i < 4; i++) {
        int status = 0;
        assert_int_equal(waitpid(kids[i], &status, 0), kids[i]);
        assert_true(WIFEXITED(status));
        int code = WEXITSTATUS(status);
        if (code > 3)
            fail_msg("migrator %d failed with exit code %d", i, code);
        total += code;
    }
    assert_int_equal(total, 3); /* each migration applied by exactly one */
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM c_log"), 3);
    assert_int_equal(count_rows(db, "SELECT count(DISTINCT v) FROM c_log"), 3);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM dbkit_migrations WHERE dirty = 0"), 3);
    dbk_conn_close(c);
}

static void migrate_four_processes_apply_once(void **state)
{
    (void)state;
    dbkt_each_engine("mig_concurrent", concurrent_body);
}

/* ---- SIGKILL in the middle of a migration ---- */

static const char *long_stmt(dbk_engine engine)
{
    return engine == DBK_ENGINE_SQLITE
               ? "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < "
                 "2000000000) SELECT count(*) FROM r;\n"
               : "SELECT pg_sleep(3);\n";
}

/* Forks a migrator that applies src and is SIGKILLed 300 ms after it
 * starts `version`; with wait_progress, only once the history shows the
 * first statement of that (non-transactional) migration completed, so the
 * kill lands in its long second statement even on a loaded machine. */
static void kill_during(const char *url, const dbk_migrate_source *src, int64_t version,
                        bool wait_progress)
{
    int note[2];
    assert_int_equal(pipe(note), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(note[0]);
        dbk_error err;
        dbk_config *cfg = NULL;
        dbk_conn *c = NULL;
        if (dbk_config_from(url, NULL, NULL, &cfg, &err) || dbk_conn_open(cfg, &c, &err))
            _exit(2);
        events ev;
        dbk_migrate_opts o = opts_with(&ev);
        ev.notify_fd = note[1];
        ev.notify_version = version;
        dbk_migrate_up(dbk_conn_db(c), src, &o, NULL, &err);
        _exit(3); /* should have been killed before */
    }
    close(note[1]);
    struct pollfd pf = {note[0], POLLIN, 0};
    assert_int_equal(poll(&pf, 1, 20000), 1);
    char b;
    assert_int_equal(read(note[0], &b, 1), 1);
    close(note[0]);
    struct timespec ts = {0, 300 * 1000000L};
    nanosleep(&ts, NULL);
    if (wait_progress) {
        dbk_conn *c = dbkt_open(url);
        dbk_value v = dbk_int64(version);
        int64_t done = 0;
        int64_t deadline = dbk__now_ns() + 20000000000LL;
        while (done < 1 && dbk__now_ns() < deadline) {
            dbk_error err;
            if (dbk_db_query_int64(dbk_conn_db(c),
                                   "SELECT statements_done FROM dbkit_migrations WHERE version = "
                                   "$1",
                                   &v, 1, &done, &err) != DBK_OK)
                done = 0;
            struct timespec w = {0, 20 * 1000000L};
            nanosleep(&w, NULL);
        }
        dbk_conn_close(c);
        assert_true(done >= 1);
    }
    assert_int_equal(kill(pid, SIGKILL), 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
}

static void sigkill_body(const char *url, dbk_engine engine)
{
    char m2[512], m3[512];
    snprintf(m2, sizeof m2,
             "-- migrate:up\nCREATE TABLE k_t (id INTEGER);\n%s-- migrate:down\nDROP TABLE k_t;\n",
             long_stmt(engine));
    snprintf(m3, sizeof m3,
             "-- migrate:up transaction:false\nCREATE TABLE k_n1 (id INTEGER);\n%s"
             "CREATE TABLE k_n2 (id INTEGER);\n-- migrate:down\nDROP TABLE k_n2;\nDROP TABLE k_n1;\n",
             long_stmt(engine));
    dbk_migration_file slow[] = {BASIC[0], MF("2_tx.sql", m2), MF("3_nontx.sql", m3)};
    dbk_migrate_source src = mem(slow, 3);

    /* 1. Killed inside a transactional migration: rolled back. */
    kill_during(url, &src, 2, false);
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_migration_status *st = status_of(db, &src);
    assert_int_equal(info_of(st, 1)->state, DBK_MIGRATION_APPLIED);
    assert_int_equal(info_of(st, 2)->state, DBK_MIGRATION_PENDING);
    assert_int_equal(st->dirty, 0);
    dbk_migrate_status_free(st);
    assert_false(table_exists(db, "k_t"));

    /* The next run applies it (a quick edition: it was never applied). On
     * PostgreSQL the killed session may still hold the lock until its
     * statement ends; the migrator waits for it. */
    dbk_migration_file quick[] = {
        BASIC[0],
        MF("2_tx.sql", "-- migrate:up\nCREATE TABLE k_t (id INTEGER);\n-- migrate:down\n"
                       "DROP TABLE k_t;\n"),
        MF("3_nontx.sql", m3)};
    dbk_migrate_source qsrc = mem(quick, 3);
    dbk_error err;
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    o.has_target = true;
    o.target = 2;
    DBKT_OK(dbk_migrate_up(db, &qsrc, &o, NULL, &err), &err);
    assert_true(table_exists(db, "k_t"));

    /* 2. Killed inside a non-transactional migration: recorded dirty. */
    dbk_conn_close(c);
    kill_during(url, &qsrc, 3, true);
    c = dbkt_open(url);
    db = dbk_conn_db(c);
    DBKT_RC(DBK_EINVALID, dbk_migrate_up(db, &qsrc, NULL, NULL, &err));
    assert_contains(err.message, "3 (3_nontx.sql) is dirty");
    assert_contains(err.message, "after 1 statement");
    st = status_of(db, &qsrc);
    assert_int_equal(info_of(st, 3)->state, DBK_MIGRATION_DIRTY);
    assert_int_equal(info_of(st, 3)->statements_done, 1);
    assert_true(info_of(st, 3)->owner[0] != '\0');
    dbk_migrate_status_free(st);
    assert_true(table_exists(db, "k_n1"));
    assert_false(table_exists(db, "k_n2"));

    /* Undo the completed statement, mark it pending, run it again. */
    DBKT_OK(dbk_db_exec(db, "DROP TABLE k_n1", NULL, 0, NULL, &err), &err);
    DBKT_OK(dbk_migrate_repair(db, 3, false, NULL, &err), &err);
    dbk_migration_file fixed[] = {
        quick[0], quick[1],
        MF("3_nontx.sql", "-- migrate:up transaction:false\nCREATE TABLE k_n1 (id INTEGER);\n"
                          "CREATE TABLE k_n2 (id INTEGER);\n-- migrate:down\n")};
    dbk_migrate_source fsrc = mem(fixed, 3);
    int n = 0;
    DBKT_OK(dbk_migrate_up(db, &fsrc, NULL, &n, &err), &err);
    assert_int_equal(n, 1);
    assert_true(table_exists(db, "k_n2"));
    DBKT_OK(dbk_migrate_validate(db, &fsrc, NULL, &err), &err);
    dbk_conn_close(c);
}

static void migrate_sigkill_leaves_consistent_state(void **state)
{
    (void)state;
    dbkt_each_engine("mig_sigkill", sigkill_body);
}

/* ---- statements the splitter must keep whole, on the real engines ---- */

static const dbk_migration_file BODIES[] = {
    MF("1_bodies.sql",
       "-- migrate:up engine:sqlite\n"
       "CREATE TABLE b_audit (msg TEXT);\n"
       "CREATE TABLE b_items (id INTEGER PRIMARY KEY, name TEXT);\n"
       "CREATE TRIGGER b_items_ai AFTER INSERT ON b_items BEGIN\n"
       "  INSERT INTO b_audit VALUES ('added; ' || CASE WHEN new.name IS NULL THEN 'unnamed' "
       "ELSE new.name END);\n"
       "  INSERT INTO b_audit VALUES ('second;');\n"
       "END;\n"
       "INSERT INTO b_items (name) VALUES ('a;b');\n"
       "-- migrate:down engine:sqlite\n"
       "DROP TABLE b_items;\nDROP TABLE b_audit;\n"
       "-- migrate:up engine:postgres\n"
       "CREATE TABLE b_audit (msg TEXT);\n"
       "CREATE TABLE b_items (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name "
       "TEXT);\n"
       "CREATE FUNCTION b_items_ai() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
       "BEGIN\n"
       "  INSERT INTO b_audit VALUES ('added; ' || coalesce(NEW.name, 'unnamed'));\n"
       "  INSERT INTO b_audit VALUES ($$second;$$);\n"
       "  RETURN NEW;\n"
       "END;\n"
       "$body$;\n"
       "CREATE TRIGGER b_items_ai AFTER INSERT ON b_items FOR EACH ROW EXECUTE FUNCTION "
       "b_items_ai();\n"
       "INSERT INTO b_items (name) VALUES (E'a;b\\'c');\n"
       "DO $$ BEGIN PERFORM 1; END $$;\n"
       "-- migrate:down engine:postgres\n"
       "DROP TABLE b_items;\nDROP TABLE b_audit;\nDROP FUNCTION b_items_ai();\n"),
};

static void bodies_body(const char *url, dbk_engine engine)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_migrate_source src = mem(BODIES, 1);
    dbk_error err;
    DBKT_OK(dbk_migrate_up(db, &src, NULL, NULL, &err), &err);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM b_audit"), 2);
    char name[64];
    DBKT_OK(dbk_db_query_text(db, "SELECT name FROM b_items", NULL, 0, name, sizeof name, NULL,
                              &err),
            &err);
    assert_string_equal(name, engine == DBK_ENGINE_SQLITE ? "a;b" : "a;b'c");
    DBKT_OK(dbk_migrate_down(db, &src, NULL, NULL, &err), &err);
    assert_false(table_exists(db, "b_items"));
    dbk_conn_close(c);
}

static void migrate_trigger_and_dollar_bodies(void **state)
{
    (void)state;
    dbkt_each_engine("mig_bodies", bodies_body);
}

/* ---- PostgreSQL specifics ---- */

static void migrate_pg_lock_timeout_names_holder(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("mig_lock");
    dbk_conn *holder = dbkt_open(url);
    dbk_conn *c = dbkt_open(url);
    dbk_error err;
    dbk_value k = dbk_int64(DBK__LOCK_MIGRATE);
    DBKT_OK(dbk_db_exec(dbk_conn_db(holder), "SELECT pg_advisory_lock($1)", &k, 1, NULL, &err),
            &err);
    dbk_migrate_source src = mem(BASIC, 3);
    events ev;
    dbk_migrate_opts o = opts_with(&ev);
    o.lock_timeout_ms = 300;
    int64_t t0 = dbk__now_ns();
    DBKT_RC(DBK_EBUSY, dbk_migrate_up(dbk_conn_db(c), &src, &o, NULL, &err));
    int64_t ms = (dbk__now_ns() - t0) / 1000000;
    assert_true(ms >= 250 && ms < 5000);
    assert_contains(err.message, "timed out after 300 ms waiting for the migration lock");
    assert_contains(err.message, "held by server pid");
    assert_int_equal(ev.waiting, 1);
    /* nothing was touched: the history table does not even exist */
    assert_false(table_exists(dbk_conn_db(c), "dbkit_migrations"));
    /* released: the migration goes through */
    DBKT_OK(dbk_db_exec(dbk_conn_db(holder), "SELECT pg_advisory_unlock($1)", &k, 1, NULL, &err),
            &err);
    DBKT_OK(dbk_migrate_up(dbk_conn_db(c), &src, &o, NULL, &err), &err);
    /* our session no longer holds the lock afterwards */
    int64_t held = -1;
    DBKT_OK(dbk_db_query_int64(dbk_conn_db(holder),
                               "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database "
                               "= (SELECT oid FROM pg_database WHERE datname = current_database())",
                               NULL,
                               0, &held, &err),
            &err);
    assert_int_equal(held, 0);
    dbk_conn_close(holder);
    dbk_conn_close(c);
    free(url);
}

/* ---- SQLite lock timeout ---- */

/* Migrates (or seeds) on `db` while another connection holds the write
 * lock: the run must give up with the lock-timeout error although SQLite's
 * busy_timeout (5000 ms) is five times the lock timeout (1000 ms). The
 * bound on the elapsed time is a correctness bound (one busy_timeout per
 * BEGIN EXCLUSIVE attempt took 5.6 s), not a performance target. */
static void sqlite_lock_wait_bounded(dbk_db *db, bool seed)
{
    dbk_error err;
    dbk_migrate_source src = mem(BASIC, 3);
    events ev;
    dbk_migrate_opts o = opts_with(&ev);
    o.lock_timeout_ms = 1000;
    int64_t t0 = dbkt_mono_ms();
    dbk_rc rc = seed ? dbk_seed_run(db, &src, &o, NULL, &err)
                     : dbk_migrate_up(db, &src, &o, NULL, &err);
    int64_t ms = dbkt_mono_ms() - t0;
    DBKT_RC(DBK_EBUSY, rc);
    assert_contains(err.message, "timed out after 1000 ms");
    if (ms >= 1000 + 2000)
        fail_msg("the lock wait took %lld ms with lock_timeout 1000 ms", (long long)ms);
    /* the connection's own busy timeout is back */
    assert_int_equal(count_rows(db, "PRAGMA busy_timeout"), 5000);
}

static void migrate_sqlite_lock_timeout_caps_busy_timeout(void **state)
{
    (void)state;
    char *base = dbkt_sqlite_url("mig_sqlock");
    char url[1024];
    snprintf(url, sizeof url, "%s?busy_timeout=5000", base);
    free(base);
    dbk_conn *holder = dbkt_open(url);
    dbkt_exec(dbk_conn_db(holder), "CREATE TABLE held (v INTEGER)");
    dbkt_exec(dbk_conn_db(holder), "BEGIN EXCLUSIVE");
    dbkt_exec(dbk_conn_db(holder), "INSERT INTO held VALUES (1)");

    /* a plain connection */
    dbk_conn *c = dbkt_open(url);
    sqlite_lock_wait_bounded(dbk_conn_db(c), false);
    sqlite_lock_wait_bounded(dbk_conn_db(c), true);

    /* a pool, whose own busy retry must not stretch the wait either */
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &err), &err);
    dbk_pool *pool = NULL;
    dbk_pool_opts po = {.max_size = 1};
    DBKT_OK(dbk_pool_open(cfg, &po, &pool, &err), &err);
    dbk_config_free(cfg);
    sqlite_lock_wait_bounded(dbk_pool_db(pool), false);

    /* released: both go through */
    dbkt_exec(dbk_conn_db(holder), "COMMIT");
    dbk_migrate_source src = mem(BASIC, 3);
    int n = 0;
    DBKT_OK(dbk_migrate_up(dbk_pool_db(pool), &src, NULL, &n, &err), &err);
    assert_int_equal(n, 3);
    DBKT_OK(dbk_migrate_up(dbk_conn_db(c), &src, NULL, &n, &err), &err);
    assert_int_equal(n, 0);
    dbk_pool_close(pool, 1000);
    dbk_conn_close(c);
    dbk_conn_close(holder);
}

static void migrate_pg_create_index_concurrently(void **state)
{
    (void)state;
    char *url = dbkt_pg_fresh_db("mig_cic");
    dbk_conn *c = dbkt_open(url);
    dbk_migration_file files[] = {
        BASIC[0],
        MF("2_idx.sql", "-- migrate:up transaction:false\n"
                        "CREATE INDEX CONCURRENTLY mig_a_v_idx ON mig_a (v);\n"
                        "-- migrate:down transaction:false\n"
                        "DROP INDEX CONCURRENTLY mig_a_v_idx;\n"),
        /* the same inside a transaction fails, and is rolled back */
        MF("3_bad.sql", "-- migrate:up\nCREATE INDEX CONCURRENTLY mig_a_w_idx ON mig_a (id);\n"
                        "-- migrate:down\n"),
    };
    dbk_migrate_source src = mem(files, 3);
    dbk_error err;
    int n = 0;
    dbk_rc rc = dbk_migrate_up(dbk_conn_db(c), &src, NULL, &n, &err);
    assert_int_not_equal(rc, DBK_OK);
    assert_int_equal(n, 2);
    assert_contains(err.message, "3_bad.sql:2:");
    assert_true(table_exists(dbk_conn_db(c), "mig_a_v_idx"));
    dbk_migration_status *st = status_of(dbk_conn_db(c), &src);
    assert_int_equal(info_of(st, 2)->state, DBK_MIGRATION_APPLIED);
    assert_int_equal(info_of(st, 3)->state, DBK_MIGRATION_PENDING);
    dbk_migrate_status_free(st);
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    o.has_target = true;
    o.target = 1;
    dbk_migrate_source src2 = mem(files, 2);
    DBKT_OK(dbk_migrate_down(dbk_conn_db(c), &src2, &o, &n, &err), &err);
    assert_false(table_exists(dbk_conn_db(c), "mig_a_v_idx"));
    dbk_conn_close(c);
    free(url);
}

/* ---- seeds ---- */

static const dbk_migration_file SEED_SCHEMA[] = {
    MF("1_items.sql", "-- migrate:up\nCREATE TABLE s_items (code TEXT PRIMARY KEY, name TEXT NOT "
                      "NULL, qty INTEGER NOT NULL);\n-- migrate:down\nDROP TABLE s_items;\n"),
};

static char *fingerprint(dbk_db *db)
{
    dbk_error err;
    dbk_result *r = NULL;
    DBKT_OK(dbk_db_query(db, "SELECT code, name, qty FROM s_items ORDER BY code", NULL, 0, &r,
                         &err),
            &err);
    size_t cap = 4096, o = 0;
    char *s = calloc(1, cap);
    assert_non_null(s);
    for (size_t i = 0; i < dbk_result_nrows(r); i++) {
        const char *code = NULL, *name = NULL;
        int64_t q = 0;
        DBKT_OK(dbk_result_get_text(r, i, 0, &code, NULL, &err), &err);
        DBKT_OK(dbk_result_get_text(r, i, 1, &name, NULL, &err), &err);
        DBKT_OK(dbk_result_get_int64(r, i, 2, &q, &err), &err);
        o += (size_t)snprintf(s + o, cap - o, "%s=%s:%lld;", code, name, (long long)q);
        assert_true(o < cap);
    }
    dbk_result_free(r);
    return s;
}

static void seeds_body(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbk_migrate_source ms = mem(SEED_SCHEMA, 1);
    DBKT_OK(dbk_migrate_up(db, &ms, NULL, NULL, &err), &err);

    dbk_migration_file seeds[] = {
        MF("02_more.sql", "INSERT INTO s_items (code, name, qty) VALUES ('c', 'Gamma', 3)\n"
                          "ON CONFLICT (code) DO UPDATE SET name = excluded.name;\n"),
        MF("01_base.sql", "-- upsert on the natural key: a re-run changes nothing\n"
                          "INSERT INTO s_items (code, name, qty) VALUES\n"
                          "  ('a', 'Alpha; first', 1),\n  ('b', 'Beta', 2)\n"
                          "ON CONFLICT (code) DO UPDATE SET name = excluded.name;\n"
                          "UPDATE s_items SET qty = qty WHERE code = 'a';\n"),
        MF("dev/10_dev.sql", "INSERT INTO s_items (code, name, qty) VALUES ('d', 'Dev', 4)\n"
                             "ON CONFLICT (code) DO NOTHING;\n"),
        MF("test/10_test.sql", "INSERT INTO s_items (code, name, qty) VALUES ('t', 'Test', 5)\n"
                               "ON CONFLICT (code) DO NOTHING;\n"),
    };
    dbk_migrate_source src = mem(seeds, 4);
    events ev;
    dbk_migrate_opts o = opts_with(&ev);
    int ran = -1;
    DBKT_OK(dbk_seed_run(db, &src, &o, &ran, &err), &err);
    assert_int_equal(ran, 2); /* top level only */
    assert_int_equal(ev.done, 2);
    char *first = fingerprint(db);
    assert_string_equal(first, "a=Alpha; first:1;b=Beta:2;c=Gamma:3;");
    assert_int_equal(count_rows(db, "SELECT count(*) FROM dbkit_seeds"), 2);

    /* twice: unchanged seeds are skipped */
    o = opts_with(&ev);
    DBKT_OK(dbk_seed_run(db, &src, &o, &ran, &err), &err);
    assert_int_equal(ran, 0);
    assert_int_equal(ev.skipped, 2);

    /* forced: they run again and leave the same data */
    o = opts_with(&ev);
    o.force = true;
    DBKT_OK(dbk_seed_run(db, &src, &o, &ran, &err), &err);
    assert_int_equal(ran, 2);
    char *again = fingerprint(db);
    assert_string_equal(again, first);
    free(again);

    /* an environment adds its folder, after the top level */
    o = opts_with(&ev);
    o.env = "dev";
    DBKT_OK(dbk_seed_run(db, &src, &o, &ran, &err), &err);
    assert_int_equal(ran, 1);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM s_items WHERE code = 'd'"), 1);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM s_items WHERE code = 't'"), 0);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM dbkit_seeds WHERE name = "
                                    "'dev/10_dev.sql'"),
                     1);
    o.env = "../etc";
    DBKT_RC(DBK_EINVALID, dbk_seed_run(db, &src, &o, &ran, &err));

    /* a changed seed runs again */
    seeds[0].contents = "INSERT INTO s_items (code, name, qty) VALUES ('c', 'Gamma v2', 3)\n"
                        "ON CONFLICT (code) DO UPDATE SET name = excluded.name;\n";
    o = opts_with(&ev);
    DBKT_OK(dbk_seed_run(db, &src, &o, &ran, &err), &err);
    assert_int_equal(ran, 1);
    assert_int_equal(ev.skipped, 1);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM s_items WHERE name = 'Gamma v2'"), 1);

    /* a failing seed rolls back entirely and names file and line */
    dbk_migration_file bad[] = {
        MF("03_bad.sql", "INSERT INTO s_items (code, name, qty) VALUES ('z', 'Zed', 9);\n"
                         "\n"
                         "INSERT INTO s_items (code, name, qty) VALUES ('a', NULL, 1);\n"),
    };
    dbk_migrate_source bsrc = mem(bad, 1);
    o = opts_with(&ev);
    DBKT_RC(DBK_ENOT_NULL, dbk_seed_run(db, &bsrc, &o, &ran, &err));
    assert_contains(err.message, "03_bad.sql:3:");
    assert_int_equal(ev.failed, 1);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM s_items WHERE code = 'z'"), 0);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM dbkit_seeds WHERE name = "
                                    "'03_bad.sql'"),
                     0);

    /* malformed seeds */
    dbk_migration_file empty[] = {MF("04_empty.sql", "-- nothing\n")};
    dbk_migrate_source esrc = mem(empty, 1);
    DBKT_RC(DBK_EINVALID, dbk_seed_run(db, &esrc, NULL, &ran, &err));
    assert_contains(err.message, "04_empty.sql");
    dbk_migration_file txs[] = {MF("05_tx.sql", "BEGIN;\nSELECT 1;\nCOMMIT;\n")};
    dbk_migrate_source tsrc = mem(txs, 1);
    DBKT_RC(DBK_EINVALID, dbk_seed_run(db, &tsrc, NULL, &ran, &err));
    assert_contains(err.message, "05_tx.sql:1:");
    free(first);
    dbk_conn_close(c);
}

static void migrate_seeds_tracked_and_idempotent(void **state)
{
    (void)state;
    dbkt_each_engine("mig_seeds", seeds_body);
}

/* The example set shipped in examples/db: every migration applies, reverts
 * and re-applies on both engines, and its seeds are idempotent. */
static void examples_body(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbk_migrate_source src, seeds;
    memset(&src, 0, sizeof src);
    memset(&seeds, 0, sizeof seeds);
    src.dir = DBKIT_SOURCE_DIR "/examples/db/migrations";
    seeds.dir = DBKIT_SOURCE_DIR "/examples/db/seeds";
    int n = 0;
    DBKT_OK(dbk_migrate_up(db, &src, NULL, &n, &err), &err);
    assert_true(n >= 5);
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    o.env = "dev";
    DBKT_OK(dbk_seed_run(db, &seeds, &o, &n, &err), &err);
    int64_t users = count_rows(db, "SELECT count(*) FROM users");
    int64_t items = count_rows(db, "SELECT count(*) FROM order_items");
    assert_true(users >= 4);
    assert_int_equal(items, 2);
    o.force = true;
    DBKT_OK(dbk_seed_run(db, &seeds, &o, &n, &err), &err);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM users"), users);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM order_items"), items);
    assert_int_equal(count_rows(db, "SELECT count(*) FROM posts"), 3);
    char name[64];
    dbk_value one = dbk_int64(1);
    DBKT_OK(dbk_db_query_text(db, "SELECT name FROM users WHERE id = $1", &one, 1, name,
                              sizeof name, NULL, &err),
            &err);
    assert_string_equal(name, "Ada Lovelace");
    memset(&o, 0, sizeof o);
    o.has_target = true;
    o.target = 0;
    DBKT_OK(dbk_migrate_down(db, &src, &o, &n, &err), &err);
    assert_false(table_exists(db, "users"));
    DBKT_OK(dbk_migrate_up(db, &src, NULL, &n, &err), &err);
    DBKT_OK(dbk_migrate_validate(db, &src, NULL, &err), &err);
    dbk_conn_close(c);
}

static void migrate_example_set_both_engines(void **state)
{
    (void)state;
    dbkt_each_engine("mig_examples", examples_body);
}

/* ---- schema dump ---- */

static void dump_body(const char *url, dbk_engine engine)
{
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    dbk_error err;
    dbk_migration_file files[] = {
        BASIC[0], BASIC[1],
        MF("3_view.sql", "-- migrate:up\nCREATE INDEX mig_a_v_idx ON mig_a (v);\n"
                         "CREATE VIEW mig_v AS SELECT id, v FROM mig_a;\n-- migrate:down\n"
                         "DROP VIEW mig_v;\nDROP INDEX mig_a_v_idx;\n"),
    };
    dbk_migrate_source src = mem(files, 3);
    DBKT_OK(dbk_migrate_up(db, &src, NULL, NULL, &err), &err);
    char *text = NULL;
    size_t len = 0;
    DBKT_OK(dbk_schema_dump(db, &text, &len, &err), &err);
    assert_int_equal(strlen(text), len);
    assert_contains(text, "--   3 view\n");
    assert_contains(text, "mig_a_v_idx");
    assert_contains(text, "mig_v");
    assert_contains(text, engine == DBK_ENGINE_SQLITE ? "CREATE TABLE mig_a"
                                                      : "CREATE TABLE public.mig_a");
    /* deterministic */
    char *again = NULL;
    DBKT_OK(dbk_schema_dump(db, &again, NULL, &err), &err);
    assert_string_equal(text, again);
    dbk_free(again);

    /* loading the dump into an empty database gives the same schema */
    char *url2 = engine == DBK_ENGINE_SQLITE ? dbkt_sqlite_url("mig_dump_copy")
                                             : dbkt_pg_fresh_db("mig_dump_copy");
    dbk_conn *c2 = dbkt_open(url2);
    DBKT_OK(dbk_db_exec_script(dbk_conn_db(c2), text, &err), &err);
    DBKT_OK(dbk_schema_dump(dbk_conn_db(c2), &again, NULL, &err), &err);
    /* everything after the header (the copy has no applied migrations) */
    const char *body1 = strstr(text, "\n\n");
    const char *body2 = strstr(again, "\n\n");
    assert_non_null(body1);
    assert_non_null(body2);
    assert_string_equal(body1, body2);
    dbk_free(again);
    dbk_conn_close(c2);
    free(url2);
    dbk_free(text);
    DBKT_RC(DBK_EMISUSE, dbk_schema_dump(db, NULL, NULL, &err));
    dbk_conn_close(c);
}

static void migrate_schema_dump(void **state)
{
    (void)state;
    dbkt_each_engine("mig_dump", dump_body);
}

/* ---- executors: a pool works, a transaction is refused ---- */

static dbk_rc in_tx(dbk_db *tx, void *ctx, dbk_error *err)
{
    dbk_migrate_source *src = ctx;
    dbk_rc rc = dbk_migrate_up(tx, src, NULL, NULL, err);
    assert_int_equal(rc, DBK_EMISUSE);
    assert_contains(err->message, "transaction");
    return DBK_OK;
}

static void executors_body(const char *url, dbk_engine engine)
{
    (void)engine;
    dbk_error err;
    dbk_config *cfg = NULL;
    DBKT_OK(dbk_config_from(url, NULL, NULL, &cfg, &err), &err);
    dbk_pool *pool = NULL;
    DBKT_OK(dbk_pool_open(cfg, NULL, &pool, &err), &err);
    dbk_config_free(cfg);
    dbk_db *db = dbk_pool_db(pool);
    dbk_migrate_source src = mem(BASIC, 3);
    int n = 0;
    DBKT_OK(dbk_migrate_up(db, &src, NULL, &n, &err), &err);
    assert_int_equal(n, 3);
    dbk_migration_status *st = status_of(db, &src);
    assert_int_equal(st->applied, 3);
    dbk_migrate_status_free(st);
    DBKT_OK(dbk_tx_run(db, in_tx, &src, NULL, &err), &err);

    /* a connection inside a transaction is refused */
    dbk_conn *c = dbkt_open(url);
    DBKT_OK(dbk_db_exec(dbk_conn_db(c), "BEGIN", NULL, 0, NULL, &err), &err);
    DBKT_RC(DBK_EMISUSE, dbk_migrate_up(dbk_conn_db(c), &src, NULL, NULL, &err));
    DBKT_OK(dbk_db_exec(dbk_conn_db(c), "ROLLBACK", NULL, 0, NULL, &err), &err);
    dbk_conn_close(c);
    dbk_pool_close(pool, 1000);
}

static void migrate_through_pool_not_transaction(void **state)
{
    (void)state;
    dbkt_each_engine("mig_exec", executors_body);
}

static void migrate_misuse(void **state)
{
    (void)state;
    dbk_error err;
    dbk_migrate_source src = mem(BASIC, 3);
    dbk_migration_status *st = NULL;
    DBKT_RC(DBK_EMISUSE, dbk_migrate_up(NULL, &src, NULL, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_migrate_down(NULL, &src, NULL, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_migrate_redo(NULL, &src, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_migrate_status(NULL, &src, &st, &err));
    DBKT_RC(DBK_EMISUSE, dbk_migrate_validate(NULL, &src, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_migrate_repair(NULL, 1, true, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_seed_run(NULL, &src, NULL, NULL, &err));
    char *url = dbkt_sqlite_url("mig_misuse");
    dbk_conn *c = dbkt_open(url);
    dbk_db *db = dbk_conn_db(c);
    DBKT_RC(DBK_EMISUSE, dbk_migrate_up(db, NULL, NULL, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_migrate_status(db, &src, NULL, &err));
    DBKT_RC(DBK_EMISUSE, dbk_migrate_repair(db, 0, true, NULL, &err));
    dbk_migrate_opts o;
    memset(&o, 0, sizeof o);
    o.lock_timeout_ms = -1;
    DBKT_RC(DBK_EMISUSE, dbk_migrate_up(db, &src, &o, NULL, &err));
    o.lock_timeout_ms = 0;
    o.steps = -2;
    DBKT_RC(DBK_EMISUSE, dbk_migrate_down(db, &src, &o, NULL, &err));
    dbk_migration_file nul[] = {{"1_x.sql", NULL, 0}};
    dbk_migrate_source ns = mem(nul, 1);
    DBKT_RC(DBK_EMISUSE, dbk_migrate_up(db, &ns, NULL, NULL, &err));
    dbk_migration_file slash[] = {MF("a/1_x.sql", "-- migrate:up\nSELECT 1;\n-- migrate:down\n")};
    ns = mem(slash, 1);
    DBKT_RC(DBK_EINVALID, dbk_migrate_up(db, &ns, NULL, NULL, &err));
    /* nothing was created by the refused calls */
    assert_false(table_exists(db, "dbkit_migrations"));
    dbk_migrate_status_free(NULL);
    assert_string_equal(dbk_migration_state_name(DBK_MIGRATION_DIRTY), "dirty");
    dbk_conn_close(c);
    free(url);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(migrate_sha256_vectors),
    cmocka_unit_test(migrate_split_statements),
    cmocka_unit_test(migrate_split_unterminated),
    cmocka_unit_test(migrate_tx_control_detection),
    cmocka_unit_test(migrate_parse_sections),
    cmocka_unit_test(migrate_parse_malformed),
    cmocka_unit_test(migrate_parse_filenames),
    cmocka_unit_test(migrate_load_sets),
    cmocka_unit_test(migrate_create_file),
    cmocka_unit_test(migrate_up_down_redo_status),
    cmocka_unit_test(migrate_deprecated_event_names_still_work),
    cmocka_unit_test(migrate_failure_rolls_back),
    cmocka_unit_test(migrate_tampered_and_missing_files),
    cmocka_unit_test(migrate_dirty_nontransactional_and_repair),
    cmocka_unit_test(migrate_four_processes_apply_once),
    cmocka_unit_test(migrate_sigkill_leaves_consistent_state),
    cmocka_unit_test(migrate_trigger_and_dollar_bodies),
    cmocka_unit_test(migrate_pg_lock_timeout_names_holder),
    cmocka_unit_test(migrate_sqlite_lock_timeout_caps_busy_timeout),
    cmocka_unit_test(migrate_pg_create_index_concurrently),
    cmocka_unit_test(migrate_seeds_tracked_and_idempotent),
    cmocka_unit_test(migrate_example_set_both_engines),
    cmocka_unit_test(migrate_schema_dump),
    cmocka_unit_test(migrate_through_pool_not_transaction),
    cmocka_unit_test(migrate_misuse),
};

DBKT_MAIN(tests)
