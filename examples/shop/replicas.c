/*
 * replicas.c - the shop on a primary with read replicas
 * (DATABASE_REPLICA_URLS set; dbkit/replica.h does the routing).
 *
 * The rule is per request, by method: GET and HEAD read through the
 * cluster's read executors; every other method reads and writes on the
 * primary, so the checks a write makes (does the author exist?) never see
 * a replica's older state. Cached user reads load from the primary in any
 * case: a load from a replica that has not yet replayed the write that
 * invalidated the entry would put the old row back into the cache for its
 * whole lifetime.
 *
 * Read-your-writes across requests: after a write request answered 2xx the
 * shop takes the primary's position token (dbk_cluster_token, one round
 * trip) and hands it to the client in the cookie dbkit_pos (HttpOnly,
 * SameSite=Lax, Path=/, Max-Age SHOP_POS_MAX_AGE seconds, default 5: longer
 * than the replicas' lag limit, after which every replica in the rotation
 * has replayed the write anyway). A GET that carries it reads from a
 * replica that has replayed that position, or, after the bounded wait
 * (DB_READ_YOUR_WRITES_WAIT_MS), from the primary. The cookie is client
 * input: it is used only if dbk_token_parse() accepts it (at most
 * DBK_TOKEN_MAX - 1 bytes of "hex/hex"); anything else is ignored as if
 * absent, never an error, and it never reaches SQL text. A client that
 * forges a position far ahead costs itself the bounded wait and a primary
 * read, nothing more.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "shop.h"

static bool is_read_method(const char *method)
{
    return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
}

dbk_db *shop_read_db(shop_req *rq)
{
    if (rq->rdb)
        return rq->rdb;
    if (!shop.cluster || !is_read_method(rq->method)) {
        rq->rdb = shop.db;
        return rq->rdb;
    }
    const char *tok =
        rq->conn ? MHD_lookup_connection_value(rq->conn, MHD_COOKIE_KIND, SHOP_POS_COOKIE) : NULL;
    if (tok && strlen(tok) < DBK_TOKEN_MAX && dbk_token_parse(tok, NULL)) {
        dbk_error err;
        dbk_db *db = NULL;
        if (dbk_cluster_read_db_after(shop.cluster, tok, &db, &err) == DBK_OK && db) {
            rq->rdb = db;
            return db;
        }
    }
    rq->rdb = dbk_cluster_read_db(shop.cluster);
    return rq->rdb;
}

bool shop_pos_cookie(const char *method, int status, char *buf, size_t buflen)
{
    if (!shop.cluster || is_read_method(method) || status < 200 || status > 299)
        return false;
    char tok[DBK_TOKEN_MAX];
    dbk_error err;
    if (dbk_cluster_token(shop.cluster, tok, sizeof tok, &err) != DBK_OK)
        return false; /* the write stands; this client's next read may be older */
    int n = snprintf(buf, buflen, "%s=%s; Max-Age=%d; Path=/; HttpOnly; SameSite=Lax",
                     SHOP_POS_COOKIE, tok, shop.pos_max_age);
    return n > 0 && (size_t)n < buflen;
}
