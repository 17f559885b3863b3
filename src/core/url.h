/*
 * URL pieces shared by every parser of a connection URL: the database
 * configuration (src/core/config.c: postgres://, sqlite://) and the cache
 * (redis://, redis-sentinel://, redis-cluster://).
 *
 * Each parser keeps its own grammar and messages (which parameters exist,
 * what a path means, how an error is worded); what they share lives here:
 * cutting a URL into its spans, walking a comma-separated host list, one
 * host[:port] with IPv6 in brackets, a bounded decimal, and percent-decoding.
 * Nothing here allocates except dbk__pct_decode_dup, nothing quotes input in
 * a message (there are no messages: callers word their own, and decide what
 * may be shown), and every function reads exactly the bytes it is given.
 * All functions are pure and thread-safe.
 */
#ifndef DBK_URL_H
#define DBK_URL_H

#include <stdbool.h>
#include <stddef.h>

/* A piece of the input: p[0..n), not NUL-terminated; p is NULL when absent. */
struct dbk__span {
    const char *p;
    size_t n;
};

/* The value of hex digit c (0-9, a-f, A-F), or -1. Inline: the bytea
 * decoder calls it twice per byte. */
static inline int dbk__hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Results of the percent-decoders. */
enum {
    DBK__PCT_OK = 0,
    DBK__PCT_BAD = 1,     /* '%' not followed by two hex digits (at *bad) */
    DBK__PCT_NUL = 2,     /* %00 (at *bad): no decoded piece may hold a NUL */
    DBK__PCT_TOOLONG = 3, /* the decoded text and its NUL do not fit in dstsz */
    DBK__PCT_NOMEM = 4,   /* dbk__pct_decode_dup: out of memory */
};

/* Percent-decodes s[0..n) into dst (dstsz bytes, NUL-terminated on
 * DBK__PCT_OK). On DBK__PCT_BAD / DBK__PCT_NUL, *bad (when not NULL) is the
 * offset in s of the offending '%'. On any failure dst holds no partial
 * text (it is zeroed: the piece may be a password). '+' is not a space. */
int dbk__pct_decode(const char *s, size_t n, char *dst, size_t dstsz, size_t *bad);

/* As dbk__pct_decode into a new malloc'd string (*out, freed with free();
 * NULL on failure, and wiped before it is freed). */
int dbk__pct_decode_dup(const char *s, size_t n, char **out, size_t *bad);

/* The spans of scheme://[user[:password]@]hosts[/path][?query].
 *
 * The authority (userinfo and hosts) ends at the first '/' or '?' after
 * "://"; the userinfo ends at the LAST '@' inside the authority, and
 * n_at counts the '@' there so a caller that finds more than one ambiguous
 * can say so. user and password are split at the first ':' of the userinfo.
 * path is what follows the '/' that ends the authority, up to '?' (without
 * the slash); query is what follows the first '?' (without it). A '#' is
 * not special. Nothing is decoded. */
struct dbk__url {
    struct dbk__span scheme; /* before "://" */
    bool has_userinfo;
    struct dbk__span user;
    bool has_password;
    struct dbk__span password;
    unsigned n_at;          /* '@' bytes in the authority */
    struct dbk__span hosts; /* the host list, possibly empty */
    bool has_path;
    struct dbk__span path;
    bool has_query;
    struct dbk__span query;
};

/* Cuts url[0..n) into *out. False when it has no "scheme://" (a scheme is a
 * letter followed by letters, digits, '+', '-' or '.'). */
bool dbk__url_split(const char *url, size_t n, struct dbk__url *out);

/* Takes the next item of a `sep`-separated list: *item is the text before
 * the next separator (possibly empty), *list what follows it. False when
 * the list is exhausted (list->p == NULL). An empty list gives one empty
 * item, "a," gives "a" and "". */
bool dbk__list_next(struct dbk__span *list, char sep, struct dbk__span *item);

/* Results of dbk__url_hostport. */
enum {
    DBK__HOSTPORT_OK = 0,
    DBK__HOSTPORT_BAD_BRACKET = 1, /* '[' without ']', or an empty [] */
    DBK__HOSTPORT_JUNK = 2,        /* something other than ':port' after ']' */
    DBK__HOSTPORT_BAD_PORT = 3,    /* the port is not a number in 1..65535 */
};

/* One host[:port] of s[0..n): "[v6]" and "[v6]:port" (host without the
 * brackets), else the host runs to the first ':'. *port is 0 when there is
 * no port; *has_port says whether a ':' was present. An empty host is
 * returned as such (the caller picks its default). */
int dbk__url_hostport(const char *s, size_t n, struct dbk__span *host, int *port, bool *has_port);

/* Parses s[0..n) as a decimal without sign in lo..hi (at most 18 digits).
 * False when empty, not all digits, or out of range. */
bool dbk__parse_decimal(const char *s, size_t n, long long lo, long long hi, long long *out);

#endif
