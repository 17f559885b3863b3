// The HTTP layer: the endpoints of examples/shop that make bench drives,
// with the same JSON shapes and status codes. Errors are
// {"error":{"code":"...","message":"..."}}.
'use strict';

const express = require('express');
const { cached } = require('./cache');
const { UserRepository, AccountRepository, HttpError, USER_ORDERS } = require('./repositories');

function positiveId(text) {
  if (!/^[0-9]{1,18}$/.test(text)) return null;
  const n = Number(text);
  return n > 0 && Number.isSafeInteger(n) ? n : null;
}

function intParam(value, fallback) {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !/^[0-9]{1,9}$/.test(value)) return NaN;
  return Number(value);
}

function createApp({ db, redis }) {
  const users = new UserRepository(db);
  const accounts = new AccountRepository(db);
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.use(express.json({ limit: '64kb' }));

  app.get('/health', async (req, res) => {
    try {
      await db.query('SELECT 1');
      res.json({ status: 'ok', database: 'postgres', cache: redis ? 'redis' : 'off' });
    } catch (error) {
      res.status(503).json({ error: { code: 'unavailable', message: 'the database is unavailable, retry later' } });
    }
  });

  app.get('/users', async (req, res) => {
    const limit = intParam(req.query.limit, 20);
    const offset = intParam(req.query.offset, 0);
    const order = req.query.order === undefined ? '-created_at' : req.query.order;
    const status = req.query.status;
    if (!(limit >= 1 && limit <= 100)) throw new HttpError(400, 'invalid_parameter', '"limit" must be 1..100');
    if (!(offset >= 0)) throw new HttpError(400, 'invalid_parameter', '"offset" must be >= 0');
    if (!Object.hasOwn(USER_ORDERS, order)) throw new HttpError(400, 'invalid_parameter', '"order" must be created_at, -created_at, name or -name');
    if (status !== undefined && !['active', 'suspended', 'closed'].includes(status)) throw new HttpError(400, 'invalid_parameter', '"status" must be active, suspended or closed');
    const { users: rows, total } = await users.findAll(limit, offset, order, status);
    res.json({ users: rows, total, limit, offset });
  });

  app.get('/users/:id', async (req, res) => {
    const id = positiveId(req.params.id);
    if (id === null) throw new HttpError(400, 'invalid_id', 'the id must be a positive integer');
    const user = redis
      ? await cached(redis, `user:${id}`, () => users.findById(id))
      : await users.findById(id);
    if (!user) throw new HttpError(404, 'not_found', 'user not found');
    res.json(user);
  });

  app.post('/transfers', async (req, res) => {
    const body = req.body;
    if (!body || typeof body !== 'object' || Array.isArray(body)) {
      throw new HttpError(400, 'invalid_json', 'the body must be a JSON object');
    }
    for (const key of Object.keys(body)) {
      if (!['from_account', 'to_account', 'amount_cents'].includes(key)) {
        throw new HttpError(400, 'unknown_field', `unknown field "${key}"`);
      }
    }
    for (const key of ['from_account', 'to_account', 'amount_cents']) {
      if (body[key] === undefined) throw new HttpError(400, 'missing_field', `"${key}" is required`);
      if (!Number.isSafeInteger(body[key])) throw new HttpError(400, 'invalid_type', `"${key}" must be an integer`);
    }
    const { from_account: from, to_account: to, amount_cents: amount } = body;
    if (from < 1 || to < 1) throw new HttpError(400, 'invalid_value', 'account ids must be positive');
    if (amount <= 0) throw new HttpError(400, 'invalid_value', '"amount_cents" must be positive');
    if (from === to) throw new HttpError(400, 'invalid_value', 'the two accounts must differ');
    const result = await accounts.transfer(from, to, amount);
    res.json({ from: result.from, to: result.to, amount_cents: amount });
  });

  app.use((req, res) => {
    res.status(404).json({ error: { code: 'not_found', message: 'no such route' } });
  });

  // eslint-disable-next-line no-unused-vars
  app.use((err, req, res, next) => {
    if (err instanceof HttpError) {
      res.status(err.status).json({ error: { code: err.code, message: err.message } });
    } else if (err.type === 'entity.parse.failed') {
      res.status(400).json({ error: { code: 'invalid_json', message: 'malformed JSON' } });
    } else if (err.type === 'entity.too.large') {
      res.status(413).json({ error: { code: 'too_large', message: 'body too large' } });
    } else if (err.code === 'ECONNREFUSED' || err.code === '57P01' || /timeout|terminat|Connection/i.test(err.message)) {
      res.status(503).json({ error: { code: 'unavailable', message: 'the database is unavailable, retry later' } });
    } else {
      console.error(err);
      res.status(500).json({ error: { code: 'internal', message: 'internal error' } });
    }
  });

  return app;
}

module.exports = { createApp };
