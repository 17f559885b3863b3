/*
 * accounts.c - the /accounts and /transfers endpoints. A transfer is a closure
 * run by dbk_tx_run() with its automatic retry, like an order; when it
 * gives up (unknown account, not enough money) it records why and returns a
 * non-OK code, which rolls everything back.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "handlers.h"

/* ---- accounts and transfers ---- */

void shop_accounts_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"owner_id", "balance_cents", "name"};
    if (!shop_only_fields(rs, rq->body, allowed, 3))
        return;
    int64_t owner, balance = 0;
    const char *name = NULL;
    if (shop_get_int(rs, rq->body, "owner_id", true, 1, SHOP_MAX_ID, &owner) < 0 ||
        shop_get_int(rs, rq->body, "balance_cents", false, 0, 1000000000000000LL, &balance) < 0 ||
        shop_get_str(rs, rq->body, "name", false, 1, 100, false, &name) < 0)
        return;
    shop_user u;
    if (!shop_user_find(rq, rs, owner, &u, "owner"))
        return;
    char gen[48];
    if (!name) {
        snprintf(gen, sizeof gen, "acct-%lld-", (long long)owner);
        shop_random_hex(gen + strlen(gen), 4);
        name = gen;
    }
    shop_account in = {0}, out;
    in.name = name;
    in.user_id = owner;
    in.balance_cents = balance;
    dbk_error err;
    dbk_rc rc = dbk_repo_create(shop.db, &shop_account_entity, &in, &out, rq->arena, &err);
    if (shop_reply_expected(rs, rc, DBK_EUNIQUE, 409, "name_taken",
                       "an account with this name already exists"))
        return;
    if (shop_reply_expected(rs, rc, DBK_EFOREIGN_KEY, 404, "not_found", "owner not found"))
        return;
    if (shop_reply_failed(rs, rc, &err, "account"))
        return;
    shop_reply_json(rs, 201, shop_account_json(&out));
}

void shop_accounts_get(shop_req *rq, shop_resp *rs, int64_t id)
{
    shop_account a;
    if (shop_find_or_reply(rq, rs, &shop_account_entity, id, &a, "account"))
        shop_reply_json(rs, 200, shop_account_json(&a));
}

typedef struct xfer_ctx {
    int64_t from, to, amount;
    int64_t from_balance, to_balance;
    shop_tx_fail fail;
} xfer_ctx;

static dbk_rc transfer_tx(dbk_db *tx, void *vctx, dbk_error *err)
{
    xfer_ctx *c = vctx;
    c->fail.status = 0;
    /* Both rows are locked before either changes, lower id first (the
     * ORDER BY sits below the row locking in PostgreSQL's plan), so two
     * opposite transfers queue instead of deadlocking. SQLite's BEGIN
     * IMMEDIATE already holds the database write lock. */
    const char *sql = dbk_db_engine(tx) == DBK_ENGINE_POSTGRES
                          ? "SELECT id, balance_cents FROM accounts WHERE id IN ($1, $2) "
                            "ORDER BY id FOR UPDATE"
                          : "SELECT id, balance_cents FROM accounts WHERE id IN ($1, $2) "
                            "ORDER BY id";
    dbk_value p[2] = {dbk_int64(c->from), dbk_int64(c->to)};
    dbk_result *r = NULL;
    dbk_rc rc = dbk_db_query(tx, sql, p, 2, &r, err);
    if (rc != DBK_OK)
        return rc;
    bool have_from = false, have_to = false;
    int64_t from_bal = 0, to_bal = 0;
    for (size_t i = 0; i < dbk_result_nrows(r); i++) {
        int64_t id = 0, bal = 0;
        if (dbk_result_get_int64(r, i, 0, &id, err) != DBK_OK ||
            dbk_result_get_int64(r, i, 1, &bal, err) != DBK_OK) {
            dbk_result_free(r);
            return DBK_EINTERNAL;
        }
        if (id == c->from) {
            have_from = true;
            from_bal = bal;
        } else if (id == c->to) {
            have_to = true;
            to_bal = bal;
        }
    }
    dbk_result_free(r);
    if (!have_from || !have_to) {
        shop_tx_fail_set(&c->fail, 404, "not_found", "account %lld not found",
                    (long long)(have_from ? c->to : c->from));
        return DBK_ENOT_FOUND;
    }
    if (from_bal < c->amount) {
        shop_tx_fail_set(&c->fail, 409, "insufficient_funds",
                    "account %lld has insufficient funds", (long long)c->from);
        return DBK_ECHECK;
    }
    /* Both balances in one statement: one round trip fewer than two. */
    int64_t changed = 0;
    rc = move_balances(tx, c->from, c->amount, shop_now_us(), c->to, &changed, err);
    if (rc != DBK_OK)
        return rc;
    if (changed != 2) { /* cannot happen with both rows locked; never half a transfer */
        shop_tx_fail_set(&c->fail, 500, "internal", "internal error");
        fprintf(stderr, "shop: transfer updated %lld rows instead of 2\n", (long long)changed);
        return DBK_EINTERNAL;
    }
    c->from_balance = from_bal - c->amount;
    c->to_balance = to_bal + c->amount;
    return DBK_OK;
}

void shop_transfers_create(shop_req *rq, shop_resp *rs)
{
    static const char *const allowed[] = {"from_account", "to_account", "amount_cents"};
    if (!shop_only_fields(rs, rq->body, allowed, 3))
        return;
    xfer_ctx c;
    memset(&c, 0, sizeof c);
    if (shop_get_int(rs, rq->body, "from_account", true, 1, SHOP_MAX_ID, &c.from) < 0 ||
        shop_get_int(rs, rq->body, "to_account", true, 1, SHOP_MAX_ID, &c.to) < 0 ||
        shop_get_int(rs, rq->body, "amount_cents", true, 1, 1000000000000000LL, &c.amount) < 0)
        return;
    if (c.from == c.to) {
        shop_reply_error(rs, 400, "invalid_value", "the two accounts must differ");
        return;
    }
    /* As shop_run_tx(), except for a COMMIT lost with its connection (a
     * failover): the transfer may or may not be applied, which is no
     * internal error but a passing failure, 503 like the others, with a
     * code of its own so that a client reads the balances before it sends
     * the transfer again. */
    dbk_tx_opts o = DBK_TX_OPTS_INIT;
    o.on_retry = shop_on_tx_retry;
    dbk_error err;
    dbk_rc rc = dbk_tx_run(shop.db, transfer_tx, &c, &o, &err);
    if (rc == DBK_ECOMMIT_UNKNOWN) {
        fprintf(stderr, "shop: transfer outcome unknown: %s\n", err.message);
        shop_reply_error(rs, 503, "commit_unknown",
                         "the transfer may or may not have been applied: check the balances "
                         "before retrying");
        return;
    }
    if (rc != DBK_OK) {
        if (c.fail.status)
            shop_reply_error(rs, c.fail.status, c.fail.code, "%s", c.fail.msg);
        else
            shop_reply_rc(rs, rc, &err, "account");
        return;
    }
    shop_reply_json(rs, 200,
                    json_pack("{s:{s:I,s:I},s:{s:I,s:I},s:I}", "from", "id", (json_int_t)c.from,
                              "balance_cents", (json_int_t)c.from_balance, "to", "id",
                              (json_int_t)c.to, "balance_cents", (json_int_t)c.to_balance,
                              "amount_cents", (json_int_t)c.amount));
}
