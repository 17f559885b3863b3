// The Fastify peer's data layer on postgres.js, written for speed the way
// its documentation suggests: one `sql` pool whose queries are prepared
// statements (postgres.js prepares every static query by default) and which,
// once every connection is busy, pipelines further queries onto the open
// connections instead of making them wait for one to be free. The pool has
// the Express peer's size (PG_POOL_MAX, 20), idle timeout (30 s), wait for a
// connection (2 s) and statement timeout (30 s); int8 is read as a number,
// so the JSON is the Express peer's and the shop's. Same SQL, same rules
// as src/repositories.js: the page and its COUNT in parallel, the transfer
// in one transaction that locks both rows in id order, retried on
// serialization failures and deadlocks.
'use strict';

const { HttpError, USER_ORDERS, withRetry } = require('./api');

// postgres.js 4 is an ES module: loaded with import() from this CommonJS code.
async function openDatabase() {
  const { default: postgres } = await import('postgres');
  const sql = postgres(process.env.DATABASE_URL, {
    max: parseInt(process.env.PG_POOL_MAX || '20', 10),
    idle_timeout: 30,
    connect_timeout: 2,
    queue_timeout: 2,
    connection: { statement_timeout: 30000 },
    onnotice: () => {},
    types: {
      bigint: { to: 20, from: [20], serialize: (x) => String(x), parse: (x) => parseInt(x, 10) },
    },
  });
  return { sql, users: new UserRepository(sql), accounts: new AccountRepository(sql) };
}

class UserRepository {
  constructor(sql) {
    this.sql = sql;
  }

  async findById(id) {
    const [row] = await this.sql`SELECT id, name, email, status, created_at FROM users WHERE id = ${id}`;
    return row || null;
  }

  async findAll(limit, offset, order, status) {
    const sql = this.sql;
    const where = () => (status === undefined ? sql`` : sql`WHERE status = ${status}`);
    const [rows, [{ count }]] = await Promise.all([
      sql`SELECT id, name, email, status, created_at FROM users ${where()}
          ORDER BY ${sql.unsafe(USER_ORDERS[order])} LIMIT ${limit} OFFSET ${offset}`,
      sql`SELECT COUNT(*) AS count FROM users ${where()}`,
    ]);
    return { users: rows, total: count };
  }
}

class AccountRepository {
  constructor(sql) {
    this.sql = sql;
  }

  transfer(fromId, toId, amountCents) {
    return withRetry(() =>
      this.sql.begin(async (sql) => {
        // Lock both rows in id order so two opposite transfers cannot deadlock.
        const locked = await sql`SELECT id, balance_cents FROM accounts
                                 WHERE id IN (${fromId}, ${toId}) ORDER BY id FOR UPDATE`;
        const from = locked.find((r) => r.id === fromId);
        const to = locked.find((r) => r.id === toId);
        if (!from || !to) {
          throw new HttpError(404, 'not_found', `account ${from ? toId : fromId} not found`);
        }
        if (from.balance_cents < amountCents) {
          throw new HttpError(409, 'insufficient_funds', `account ${fromId} has insufficient funds`);
        }
        // Both UPDATEs go out in one pipeline; they run in this order.
        const [[debited], [credited]] = await Promise.all([
          sql`UPDATE accounts SET balance_cents = balance_cents - ${amountCents}, updated_at = now()
              WHERE id = ${fromId} RETURNING id, balance_cents`,
          sql`UPDATE accounts SET balance_cents = balance_cents + ${amountCents}, updated_at = now()
              WHERE id = ${toId} RETURNING id, balance_cents`,
        ]);
        return { from: debited, to: credited };
      })
    );
  }
}

module.exports = { openDatabase };
