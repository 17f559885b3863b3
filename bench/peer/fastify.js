// The second peer: the same service as server.js (same endpoints, status
// codes and JSON) on the fastest mainstream Node.js stack, written for
// speed: Fastify with its logger off, postgres.js (prepared statements,
// queries pipelined onto busy connections; src/pgjs.js) and ioredis with
// auto-pipelining (every command issued in the same tick goes out in one
// write). One Node.js process, like the Express peer. Environment as
// server.js: DATABASE_URL, CACHE=redis|off, REDIS_URL, PORT (8082),
// HOST (127.0.0.1), PG_POOL_MAX (20).
'use strict';

const Fastify = require('fastify');
const { createCache, cachedText } = require('./src/cache');
const { openDatabase } = require('./src/pgjs');
const { HttpError, UNAVAILABLE, positiveId, listQuery, transferBody, isUnavailable } = require('./src/api');

function errorBody(code, message) {
  return { error: { code, message } };
}

// Response schemas: Fastify compiles them into a serializer
// (fast-json-stringify) for the 200 answers; a Date becomes its ISO text
// as with JSON.stringify. The other answers are serialized as usual.
const USER = {
  type: 'object',
  properties: {
    id: { type: 'integer' },
    name: { type: 'string' },
    email: { type: 'string' },
    status: { type: 'string' },
    created_at: { type: 'string', format: 'date-time' },
  },
};
const USER_PAGE = {
  type: 'object',
  properties: {
    users: { type: 'array', items: USER },
    total: { type: 'integer' },
    limit: { type: 'integer' },
    offset: { type: 'integer' },
  },
};

async function main() {
  const { sql, users, accounts } = await openDatabase();
  const redis = createCache({ enableAutoPipelining: true });
  const app = Fastify({ logger: false, bodyLimit: 64 * 1024, keepAliveTimeout: 65000 });

  app.get('/health', async (req, reply) => {
    try {
      await sql`SELECT 1`;
      return { status: 'ok', database: 'postgres', cache: redis ? 'redis' : 'off' };
    } catch (error) {
      return reply.code(503).send(UNAVAILABLE);
    }
  });

  app.get('/users', { schema: { response: { 200: USER_PAGE } } }, async (req) => {
    const { limit, offset, order, status } = listQuery(req.query);
    const { users: rows, total } = await users.findAll(limit, offset, order, status);
    return { users: rows, total, limit, offset };
  });

  app.get('/users/:id', { schema: { response: { 200: USER } } }, async (req, reply) => {
    const id = positiveId(req.params.id);
    if (id === null) throw new HttpError(400, 'invalid_id', 'the id must be a positive integer');
    if (redis) {
      const text = await cachedText(redis, `user:${id}`, () => users.findById(id));
      if (text === null) throw new HttpError(404, 'not_found', 'user not found');
      // A string with a JSON content type is sent as it is, not serialized
      // again (nor through the response schema).
      return reply.type('application/json; charset=utf-8').send(text);
    }
    const user = await users.findById(id);
    if (!user) throw new HttpError(404, 'not_found', 'user not found');
    return user;
  });

  app.post('/transfers', async (req) => {
    const { from, to, amount } = transferBody(req.body);
    const result = await accounts.transfer(from, to, amount);
    return { from: result.from, to: result.to, amount_cents: amount };
  });

  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(errorBody('not_found', 'no such route'));
  });

  app.setErrorHandler((err, req, reply) => {
    if (err instanceof HttpError) {
      reply.code(err.status).send(errorBody(err.code, err.message));
    } else if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      reply.code(413).send(errorBody('too_large', 'body too large'));
    } else if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      // Express's JSON parser skips other content types, leaving no body.
      reply.code(400).send(errorBody('invalid_json', 'the body must be a JSON object'));
    } else if (err.statusCode === 400 && (err instanceof SyntaxError || /^FST_ERR_CTP_/.test(err.code || ''))) {
      reply.code(400).send(errorBody('invalid_json', 'malformed JSON'));
    } else if (isUnavailable(err)) {
      reply.code(503).send(UNAVAILABLE);
    } else {
      console.error(err);
      reply.code(500).send(errorBody('internal', 'internal error'));
    }
  });

  const port = parseInt(process.env.PORT || '8082', 10);
  const host = process.env.HOST || '127.0.0.1';
  try {
    await app.listen({ port, host });
  } catch (error) {
    console.error(`peer (fastify): cannot listen on ${host}:${port}: ${error.message}`);
    process.exit(1);
  }
  console.log(`peer (fastify) listening on http://${host}:${port} (cache ${redis ? 'redis' : 'off'})`);

  async function shutdown() {
    await app.close();
    await sql.end({ timeout: 5 });
    if (redis) redis.disconnect();
    process.exit(0);
  }
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

main().catch((error) => {
  console.error(`peer (fastify): ${error.message}`);
  process.exit(1);
});
