/*
 * pool_sql.c - the pool's statement classification: which statements may
 * change the session (and so need a reset before the next borrower), which
 * are a plain BEGIN (run as BEGIN IMMEDIATE on SQLite) and which certainly
 * do not write. Pure functions over the shared SQL scanner (core/sqlscan.h)
 * with a raw-word prefilter and one keyword table, so the common statement
 * costs no scan at all.
 */
#include <stdarg.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "../core/internal.h"
#include "../core/sqlscan.h"
#include "../db/db_int.h"
#include "../driver/driver.h"
#include "pool_int.h"
#include "pool_impl.h"

/* ---- statement classification ---- */

/* Every statement on a lent connection is read with the shared scanner
 * (src/core/sqlscan.c), by the rules of the engine that runs it, so that
 * quotes and comments neither hide a session change nor invent one. */

static void scan_sql(dbk__sqlscan *sc, const char *sql, dbk_engine engine)
{
    dbk__sqlscan_init(sc, sql, strlen(sql), 1, dbk__sqlscan_rules(engine));
}

/* The statement text from its first token on (for messages). */
const char *dbk__pool_first_token(const char *sql)
{
    dbk__sqlscan sc;
    scan_sql(&sc, sql, DBK_ENGINE_POSTGRES);
    return dbk__sqlscan_next(&sc) == DBK__SQLTOK_ERROR ? sql : sql + sc.off;
}

/* What a word can mean to the detector (bits). */
enum {
    K_PG_VERB = 1 << 0,     /* leads a PostgreSQL statement that changes the session */
    K_SQ_VERB = 1 << 1,     /* same on SQLite */
    K_PG_FUNC = 1 << 2,     /* a PostgreSQL function whose call changes the session or runs
                               SQL given as a string */
    K_SQ_FUNC = 1 << 3,     /* same on SQLite */
    K_SET = 1 << 4,         /* SET (PostgreSQL) */
    K_CREATE = 1 << 5,      /* CREATE */
    K_DECLARE = 1 << 6,     /* DECLARE (PostgreSQL) */
    K_TX_SCOPED = 1 << 7,   /* SET <this>: ends with the transaction */
    K_BEFORE_TEMP = 1 << 8, /* TEMP after this makes a temporary object */
    K_TEMP = 1 << 9,        /* TEMP, TEMPORARY */
    K_WITH = 1 << 10,
    K_HOLD = 1 << 11,
    K_PG_TEMP = 1 << 12,    /* pg_temp (a schema name) */
    K_SQ_TEMP = 1 << 13,    /* temp (a schema name on SQLite) */
};

static const struct keyword {
    const char *w;
    unsigned roles;
} KEYWORDS[] = {
    {"reset", K_PG_VERB},
    {"discard", K_PG_VERB},
    {"prepare", K_PG_VERB},
    {"listen", K_PG_VERB},
    {"do", K_PG_VERB},
    {"load", K_PG_VERB},
    {"pragma", K_SQ_VERB},
    {"attach", K_SQ_VERB},
    {"detach", K_SQ_VERB},
    {"set_config", K_PG_FUNC},
    {"pg_advisory_lock", K_PG_FUNC},
    {"pg_advisory_lock_shared", K_PG_FUNC},
    {"pg_try_advisory_lock", K_PG_FUNC},
    {"pg_try_advisory_lock_shared", K_PG_FUNC},
    {"query_to_xml", K_PG_FUNC},
    {"query_to_xmlschema", K_PG_FUNC},
    {"query_to_xml_and_xmlschema", K_PG_FUNC},
    {"dblink_connect", K_PG_FUNC},
    {"dblink_connect_u", K_PG_FUNC},
    {"load_extension", K_SQ_FUNC},
    {"set", K_SET},
    {"create", K_CREATE | K_BEFORE_TEMP},
    {"declare", K_DECLARE},
    {"local", K_TX_SCOPED | K_BEFORE_TEMP},
    {"transaction", K_TX_SCOPED},
    {"constraints", K_TX_SCOPED},
    {"replace", K_BEFORE_TEMP},
    {"global", K_BEFORE_TEMP},
    {"into", K_BEFORE_TEMP},
    {"temp", K_TEMP | K_SQ_TEMP},
    {"temporary", K_TEMP},
    {"with", K_WITH},
    {"hold", K_HOLD},
    {"pg_temp", K_PG_TEMP},
};

#define KW_MAXLEN 32
#define NKEYWORDS (sizeof KEYWORDS / sizeof KEYWORDS[0])

/* kw_first[n]: bit (c - 'a') set when a keyword of length n starts with c.
 * Most words of a statement (SELECT, FROM, column names) fail this test;
 * the others are compared with the at most KW_PER_SLOT keywords of their
 * length and first letter. */
#define KW_PER_SLOT 3
static uint32_t kw_first[KW_MAXLEN];
static uint8_t kw_slot[KW_MAXLEN][26][KW_PER_SLOT]; /* index + 1 into KEYWORDS; 0: none */
static pthread_once_t kw_once = PTHREAD_ONCE_INIT;

static void kw_init(void)
{
    for (size_t i = 0; i < NKEYWORDS; i++) {
        size_t n = strlen(KEYWORDS[i].w);
        unsigned c = (unsigned)(KEYWORDS[i].w[0] - 'a');
        kw_first[n] |= 1u << c;
        for (int k = 0; k < KW_PER_SLOT; k++) {
            if (!kw_slot[n][c][k]) {
                kw_slot[n][c][k] = (uint8_t)(i + 1);
                break;
            }
        }
    }
}

static inline char ascii_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

/* The roles of the word w[0, n) (any case; 0 for none). */
static unsigned kw_match(const char *w, size_t n)
{
    unsigned c = (unsigned)(unsigned char)ascii_lower(w[0]) - 'a';
    if (n == 0 || n >= KW_MAXLEN || c >= 26 || !(kw_first[n] & (1u << c)))
        /* pg_temp_3: the temporary schema by its own name */
        return n > 8 && strncasecmp(w, "pg_temp_", 8) == 0 ? K_PG_TEMP : 0;
    for (int k = 0; k < KW_PER_SLOT && kw_slot[n][c][k]; k++) {
        const struct keyword *kw = &KEYWORDS[kw_slot[n][c][k] - 1];
        size_t i = 1;
        while (i < n && ascii_lower(w[i]) == kw->w[i])
            i++;
        if (i == n)
            return kw->roles;
    }
    return n > 8 && strncasecmp(w, "pg_temp_", 8) == 0 ? K_PG_TEMP : 0;
}

/* The roles of the current WORD or QNAME token (0 for anything else). */
static unsigned kw_roles(const dbk__sqlscan *sc)
{
    const char *p = sc->text + sc->off;
    if (sc->tok == DBK__SQLTOK_WORD)
        return kw_match(p, sc->n);
    if (sc->tok != DBK__SQLTOK_QNAME)
        return 0;
    char buf[KW_MAXLEN];
    size_t n = 0;
    char q = p[0];
    for (size_t i = 1; i + 1 < sc->n; i++) {
        if (n == KW_MAXLEN - 1)
            return 0;
        buf[n++] = p[i];
        if (q != '[' && p[i] == q)
            i++; /* a doubled quote stands for one */
    }
    return kw_match(buf, n);
}

static inline bool word_byte(unsigned char c)
{
    return dbk__sqlscan_cls[c] & DBK__SQLSCAN_C_TAG;
}

/* Could w[0, n) be a keyword? (one shift and mask for most words) */
static inline bool kw_candidate(const char *w, size_t n)
{
    unsigned c = (unsigned)(((unsigned char)w[0] | 0x20) - 'a');
    if (n >= KW_MAXLEN)
        return c == 'p' - 'a'; /* pg_temp_<n> */
    return c < 26 && ((kw_first[n] >> c & 1) || (n > 8 && c == 'p' - 'a'));
}

/* The fast path: every way a statement changes the session needs one of
 * the `needed` words (a leading verb, SET, a function, TEMP, HOLD, a
 * temporary schema) or a U&"..." name. Runs of letters, digits, '_' and
 * bytes >= 0x80 cut from the raw text, quotes and comments included, are a
 * superset of the words the scanner would find (a word of the scanner is
 * such a run, or contains '$' and then holds more runs), so when none of
 * them is needed the scan cannot flag anything and is skipped. */
static bool may_change_session(const char *sql, unsigned needed)
{
    const unsigned char *p = (const unsigned char *)sql;
    for (;;) {
        while (*p && !word_byte(*p)) {
            if (*p == '&')
                return true;
            p++;
        }
        if (!*p)
            return false;
        const unsigned char *w = p;
        while (word_byte(*p))
            p++;
        size_t n = (size_t)(p - w);
        if (kw_candidate((const char *)w, n) && (kw_match((const char *)w, n) & needed))
            return true;
    }
}

enum { LEAD_NONE, LEAD_OTHER, LEAD_SET, LEAD_CREATE, LEAD_DECLARE };

static bool changes_session(const char *sql, dbk_engine engine)
{
    pthread_once(&kw_once, kw_init);
    const bool pg = engine != DBK_ENGINE_SQLITE;
    const unsigned verb = pg ? K_PG_VERB : K_SQ_VERB, func = pg ? K_PG_FUNC : K_SQ_FUNC;
    const unsigned temp_schema = pg ? K_PG_TEMP : K_SQ_TEMP;
    if (!may_change_session(sql, verb | func | temp_schema | K_TEMP |
                                     (pg ? K_SET | K_HOLD : 0)))
        return false;
    dbk__sqlscan sc;
    scan_sql(&sc, sql, engine);
    int lead = LEAD_NONE, pos = 0;
    bool set_scoped = false; /* SET LOCAL ...: unless the next token is '.' */
    unsigned prev = 0;       /* roles of the previous token */
    bool prev_uname = false; /* the previous token was a U&"..." name */
    for (;;) {
        dbk__sqltok tok = dbk__sqlscan_next(&sc);
        if (tok == DBK__SQLTOK_ERROR)
            return true; /* unreadable: assume the worst, it only costs a reset */
        if (tok == DBK__SQLTOK_END)
            return false;
        if (tok == DBK__SQLTOK_SEMI) {
            lead = LEAD_NONE;
            pos = 0;
            set_scoped = prev_uname = false;
            prev = 0;
            continue;
        }
        unsigned k = kw_roles(&sc);
        bool word = tok == DBK__SQLTOK_WORD;
        if (!word)
            k &= func | temp_schema; /* a quoted name is never a keyword */
        if (pos == 0) {
            lead = LEAD_OTHER;
            if (k & verb)
                return true;
            if (pg && (k & K_SET))
                lead = LEAD_SET;
            else if (k & K_CREATE)
                lead = LEAD_CREATE;
            else if (pg && (k & K_DECLARE))
                lead = LEAD_DECLARE;
        } else if (lead == LEAD_SET && pos == 1) {
            if (!(k & K_TX_SCOPED))
                return true;
            set_scoped = true;
        } else if (set_scoped && pos == 2) {
            if (dbk__sqlscan_punct(&sc, '.'))
                return true; /* SET local.x = ...: a setting named local.x */
            set_scoped = false;
        }
        if (tok == DBK__SQLTOK_PUNCT) {
            char ch = sql[sc.off];
            if (ch == '(' && ((prev & func) || prev_uname))
                return true;
            if (ch == '.' && (prev & temp_schema))
                return true;
        }
        if ((k & K_TEMP) && (lead == LEAD_CREATE || (prev & K_BEFORE_TEMP)))
            return true;
        if (lead == LEAD_DECLARE && (prev & K_WITH) && (k & K_HOLD))
            return true;
        /* U&"..." names may spell anything with escapes: any call counts. */
        prev_uname = pg && tok == DBK__SQLTOK_QNAME && sc.off > 0 && sql[sc.off - 1] == '&';
        prev = k;
        pos++;
    }
}

static bool plain_begin(const char *sql)
{
    dbk__sqlscan sc;
    scan_sql(&sc, sql, DBK_ENGINE_SQLITE);
    dbk__sqlscan_next(&sc);
    if (!dbk__sqlscan_is(&sc, "begin"))
        return false;
    dbk__sqlscan_next(&sc);
    if (dbk__sqlscan_is(&sc, "transaction"))
        dbk__sqlscan_next(&sc);
    if (sc.tok == DBK__SQLTOK_SEMI)
        dbk__sqlscan_next(&sc);
    return sc.tok == DBK__SQLTOK_END;
}

bool dbk__pool_sql_is_read(const char *sql)
{
    if (!sql)
        return false;
    dbk__sqlscan sc;
    scan_sql(&sc, sql, DBK_ENGINE_SQLITE);
    dbk__sqlscan_next(&sc);
    return dbk__sqlscan_is(&sc, "select") || dbk__sqlscan_is(&sc, "values") ||
           dbk__sqlscan_is(&sc, "explain");
}

static bool pipelinable(const char *sql)
{
    /* Only plain queries and DML ride: transaction control, COPY, CALL
     * (a procedure may commit), utility statements that refuse to run in
     * a transaction block, and anything that changes the session run on a
     * connection of their own, as before. */
    dbk__sqlscan sc;
    scan_sql(&sc, sql, DBK_ENGINE_POSTGRES);
    dbk__sqlscan_next(&sc);
    if (!(dbk__sqlscan_is(&sc, "select") || dbk__sqlscan_is(&sc, "insert") ||
          dbk__sqlscan_is(&sc, "update") || dbk__sqlscan_is(&sc, "delete") ||
          dbk__sqlscan_is(&sc, "with") || dbk__sqlscan_is(&sc, "values") ||
          dbk__sqlscan_is(&sc, "table")))
        return false;
    return !changes_session(sql, DBK_ENGINE_POSTGRES);
}

/*
 * A service runs the same few statements over and over, and a statement
 * through the pool is classified two or three times (may it ride a pipeline?
 * does it change the session? on SQLite, is it a plain BEGIN?). Each thread remembers the answers for the last
 * statements it classified, keyed by the whole text (compared byte for
 * byte, so a caller's buffer reused for another statement is classified
 * anew): a repeat costs a strlen and a memcmp instead of a scan.
 * Statements longer than MEMO_TEXT are not remembered.
 */
enum { MEMO_WAYS = 8, MEMO_TEXT = 200 };
enum { M_CHANGES_PG = 1, M_CHANGES_SQ = 2, M_PIPE = 4, M_BEGIN = 8 }; /* answers known... */
struct sql_memo {
    uint32_t len;
    uint8_t known, yes; /* ... and their values */
    char text[MEMO_TEXT];
};
static _Thread_local struct sql_memo memo[MEMO_WAYS];

static struct sql_memo *memo_find(const char *sql, size_t len)
{
    if (len >= MEMO_TEXT)
        return NULL;
    struct sql_memo *m = &memo[(len ^ (unsigned char)sql[len / 2]) % MEMO_WAYS];
    if (m->len != len || memcmp(m->text, sql, len) != 0) {
        m->len = (uint32_t)len;
        m->known = m->yes = 0;
        memcpy(m->text, sql, len);
    }
    return m;
}

static bool memo_answer(const char *sql, unsigned what, dbk_engine engine)
{
    struct sql_memo *m = memo_find(sql, strlen(sql));
    if (m && (m->known & what))
        return (m->yes & what) != 0;
    bool yes = what == M_PIPE    ? pipelinable(sql)
               : what == M_BEGIN ? plain_begin(sql)
                                 : changes_session(sql, engine);
    if (m) {
        m->known |= (uint8_t)what;
        if (yes)
            m->yes |= (uint8_t)what;
    }
    return yes;
}

bool dbk__pool_sql_changes_session(const char *sql, dbk_engine engine)
{
    if (!sql)
        return false;
    return memo_answer(sql, engine == DBK_ENGINE_SQLITE ? M_CHANGES_SQ : M_CHANGES_PG, engine);
}

bool dbk__pool_sql_is_plain_begin(const char *sql)
{
    return sql && memo_answer(sql, M_BEGIN, DBK_ENGINE_SQLITE);
}

bool dbk__pool_sql_pipelinable(const char *sql)
{
    return sql && memo_answer(sql, M_PIPE, DBK_ENGINE_POSTGRES);
}
