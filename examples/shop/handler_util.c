/*
 * handler_util.c - the helpers every endpoint shares: input validation (only the
 * allowed fields, strings and integers within bounds), the reply paths that
 * end a database call, and the transaction runner with the automatic retry.
 *
 * Each handler validates its input completely before touching the database:
 * unknown fields, wrong JSON types, out-of-range numbers, bad e-mail
 * addresses and over-long strings are 400s with a code naming the problem, so
 * a database error reaching the client is always a real one (a conflict, a
 * missing row, an outage). Values only ever travel as parameters: no handler
 * builds SQL from input.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "handlers.h"

/* ---- small helpers ---- */

int64_t shop_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void shop_random_hex(char *out, size_t nbytes)
{
    unsigned char raw[16];
    if (nbytes > sizeof raw)
        nbytes = sizeof raw;
    randombytes_buf(raw, nbytes);
    for (size_t i = 0; i < nbytes; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* Rejects any member not in `allowed`. */
bool shop_only_fields(shop_resp *rs, json_t *o, const char *const *allowed, size_t n)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        (void)v;
        bool ok = false;
        for (size_t i = 0; i < n && !ok; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (!ok) {
            char shown[64];
            snprintf(shown, sizeof shown, "%s", key);
            for (char *p = shown; *p; p++)
                if ((unsigned char)*p < 0x20)
                    *p = '?';
            shop_reply_error(rs, 400, "unknown_field", "unknown field \"%s\"", shown);
            return false;
        }
    }
    return true;
}

/* 1: present and valid (*out set), 0: absent and optional, -1: replied. */
int shop_get_str(shop_resp *rs, json_t *o, const char *name, bool required, size_t minlen,
                   size_t maxlen, bool multiline, const char **out)
{
    json_t *v = json_object_get(o, name);
    if (!v) {
        if (!required)
            return 0;
        shop_reply_error(rs, 400, "missing_field", "field \"%s\" is required", name);
        return -1;
    }
    if (!json_is_string(v)) {
        shop_reply_error(rs, 400, "invalid_type", "field \"%s\" must be a string", name);
        return -1;
    }
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (len < minlen || len > maxlen || strlen(s) != len) {
        shop_reply_error(rs, 400, "invalid_value", "field \"%s\" must be %zu to %zu bytes", name,
                         minlen, maxlen);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && !(multiline && (c == '\n' || c == '\r' || c == '\t'))) || c == 0x7F) {
            shop_reply_error(rs, 400, "invalid_value",
                             "field \"%s\" contains a control character", name);
            return -1;
        }
    }
    *out = s;
    return 1;
}

int shop_get_int(shop_resp *rs, json_t *o, const char *name, bool required, int64_t min,
                   int64_t max, int64_t *out)
{
    json_t *v = json_object_get(o, name);
    if (!v) {
        if (!required)
            return 0;
        shop_reply_error(rs, 400, "missing_field", "field \"%s\" is required", name);
        return -1;
    }
    if (!json_is_integer(v)) {
        shop_reply_error(rs, 400, "invalid_type", "field \"%s\" must be an integer", name);
        return -1;
    }
    json_int_t n = json_integer_value(v);
    if (n < min || n > max) {
        shop_reply_error(rs, 400, "out_of_range", "field \"%s\" is out of range: %lld..%lld", name,
                         (long long)min, (long long)max);
        return -1;
    }
    *out = (int64_t)n;
    return 1;
}

void shop_tx_fail_set(shop_tx_fail *f, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    f->status = status;
    f->code = code;
}

/* Runs closure fn in a transaction with the automatic retry (each retry
 * counted in /metrics) and answers a failure: the closure's own reason when
 * it recorded one in *f, else the mapped rc with 404s naming `what`. True
 * when the transaction committed and the caller is to reply. */
bool shop_run_tx(shop_resp *rs, dbk_tx_fn fn, void *ctx, shop_tx_fail *f, const char *what)
{
    dbk_tx_opts o = DBK_TX_OPTS_INIT;
    o.on_retry = shop_on_tx_retry;
    dbk_error err;
    dbk_rc rc = dbk_tx_run(shop.db, fn, ctx, &o, &err);
    if (rc == DBK_OK)
        return true;
    if (f->status)
        shop_reply_error(rs, f->status, f->code, "%s", f->msg);
    else
        shop_reply_rc(rs, rc, &err, what);
    return false;
}

/* The reply path every handler ends a database call with: when rc is not
 * DBK_OK, answers with the mapped error (404s name `what`) and returns true,
 * so the caller just returns. Handlers map the codes they expect (a unique
 * or foreign-key violation) themselves before calling this. */
bool shop_reply_failed(shop_resp *rs, dbk_rc rc, const dbk_error *err, const char *what)
{
    if (rc == DBK_OK)
        return false;
    shop_reply_rc(rs, rc, err, what);
    return true;
}

/* Answers a failure the handler expects and names itself (a unique or
 * foreign-key violation): when rc is `expected`, replies `status` with
 * `code` and `msg` and returns true. */
bool shop_reply_expected(shop_resp *rs, dbk_rc rc, dbk_rc expected, int status, const char *code,
                           const char *msg)
{
    if (rc != expected)
        return false;
    shop_reply_error(rs, status, code, "%s", msg);
    return true;
}

/* Reads row `id` of entity e straight from the repository into *row (a
 * struct of the entity's type, allocated by the caller), through the
 * request's read executor; false when it failed and the error has been
 * answered, 404 naming `what`. */
bool shop_find_or_reply(shop_req *rq, shop_resp *rs, const dbk_entity *e, int64_t id,
                          void *row, const char *what)
{
    dbk_error err;
    dbk_rc rc = dbk_repo_find_by_id(shop_read_db(rq), e, dbk_int64(id), row, rq->arena, &err);
    return !shop_reply_failed(rs, rc, &err, what);
}
