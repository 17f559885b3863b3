// Repositories in the seeds' style: parameterized queries on a pg.Pool, the
// page and its COUNT run in parallel with Promise.all, the transfer in one
// transaction on a checked-out client with BEGIN / COMMIT / ROLLBACK.
'use strict';

const { HttpError, USER_COLUMNS, USER_ORDERS, withRetry } = require('./api');

class UserRepository {
  constructor(db) {
    this.db = db;
  }

  async findById(id) {
    const result = await this.db.query(
      `SELECT ${USER_COLUMNS} FROM users WHERE id = $1`,
      [id]
    );
    return result.rows[0] || null;
  }

  async findAll(limit, offset, order, status) {
    const where = status === undefined ? '' : 'WHERE status = $3';
    const countWhere = status === undefined ? '' : 'WHERE status = $1';
    const pageParams = status === undefined ? [limit, offset] : [limit, offset, status];
    const countParams = status === undefined ? [] : [status];
    const [usersResult, countResult] = await Promise.all([
      this.db.query(
        `SELECT ${USER_COLUMNS} FROM users ${where} ORDER BY ${USER_ORDERS[order]} LIMIT $1 OFFSET $2`,
        pageParams
      ),
      this.db.query(`SELECT COUNT(*) FROM users ${countWhere}`, countParams),
    ]);
    return {
      users: usersResult.rows,
      total: parseInt(countResult.rows[0].count, 10),
    };
  }
}

class AccountRepository {
  constructor(db) {
    this.db = db;
  }

  async transfer(fromId, toId, amountCents) {
    return withRetry(() => this.transferOnce(fromId, toId, amountCents));
  }

  async transferOnce(fromId, toId, amountCents) {
    const client = await this.db.connect();
    let broken = false;
    try {
      await client.query('BEGIN');
      // Lock both rows in id order so two opposite transfers cannot deadlock.
      const locked = await client.query(
        'SELECT id, balance_cents FROM accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE',
        [fromId, toId]
      );
      const from = locked.rows.find((r) => r.id === fromId);
      const to = locked.rows.find((r) => r.id === toId);
      if (!from || !to) {
        throw new HttpError(404, 'not_found', `account ${from ? toId : fromId} not found`);
      }
      if (from.balance_cents < amountCents) {
        throw new HttpError(409, 'insufficient_funds', `account ${fromId} has insufficient funds`);
      }
      const debited = await client.query(
        'UPDATE accounts SET balance_cents = balance_cents - $1, updated_at = now() WHERE id = $2 RETURNING id, balance_cents',
        [amountCents, fromId]
      );
      const credited = await client.query(
        'UPDATE accounts SET balance_cents = balance_cents + $1, updated_at = now() WHERE id = $2 RETURNING id, balance_cents',
        [amountCents, toId]
      );
      await client.query('COMMIT');
      return { from: debited.rows[0], to: credited.rows[0] };
    } catch (error) {
      // A client whose ROLLBACK fails is broken: destroy it, do not pool it.
      await client.query('ROLLBACK').catch(() => {
        broken = true;
      });
      throw error;
    } finally {
      client.release(broken);
    }
  }
}

module.exports = { UserRepository, AccountRepository };
