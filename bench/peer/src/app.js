// The HTTP layer: the endpoints of examples/shop that make bench drives,
// with the same JSON shapes and status codes. Errors are
// {"error":{"code":"...","message":"..."}}.
'use strict';

const express = require('express');
const { cached } = require('./cache');
const { UserRepository, AccountRepository } = require('./repositories');
const { HttpError, UNAVAILABLE, positiveId, listQuery, transferBody, isUnavailable } = require('./api');

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
      res.status(503).json(UNAVAILABLE);
    }
  });

  app.get('/users', async (req, res) => {
    const { limit, offset, order, status } = listQuery(req.query);
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
    const { from, to, amount } = transferBody(req.body);
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
    } else if (isUnavailable(err)) {
      res.status(503).json(UNAVAILABLE);
    } else {
      console.error(err);
      res.status(500).json({ error: { code: 'internal', message: 'internal error' } });
    }
  });

  return app;
}

module.exports = { createApp };
