// What the two peers (Express in server.js, Fastify in fastify.js) share so
// they answer every request alike: the parsing and validation of parameters
// and bodies with their error codes and messages, the error type, the user
// list orders, the test for "the database is unavailable" and the retry of
// a transfer. Each peer keeps only its framework's and its driver's code.
'use strict';

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const USER_COLUMNS = 'id, name, email, status, created_at';

// ORDER BY clauses for the ?order= values the API accepts; anything else is
// rejected before it gets near SQL.
const USER_ORDERS = {
  created_at: 'created_at ASC, id ASC',
  '-created_at': 'created_at DESC, id DESC',
  name: 'name ASC, id ASC',
  '-name': 'name DESC, id DESC',
};

const UNAVAILABLE = { error: { code: 'unavailable', message: 'the database is unavailable, retry later' } };

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

// GET /users?limit&offset&order&status -> { limit, offset, order, status }.
function listQuery(query) {
  const limit = intParam(query.limit, 20);
  const offset = intParam(query.offset, 0);
  const order = query.order === undefined ? '-created_at' : query.order;
  const status = query.status;
  if (!(limit >= 1 && limit <= 100)) throw new HttpError(400, 'invalid_parameter', '"limit" must be 1..100');
  if (!(offset >= 0)) throw new HttpError(400, 'invalid_parameter', '"offset" must be >= 0');
  if (!Object.hasOwn(USER_ORDERS, order)) throw new HttpError(400, 'invalid_parameter', '"order" must be created_at, -created_at, name or -name');
  if (status !== undefined && !['active', 'suspended', 'closed'].includes(status)) throw new HttpError(400, 'invalid_parameter', '"status" must be active, suspended or closed');
  return { limit, offset, order, status };
}

// The POST /transfers body -> { from, to, amount }.
function transferBody(body) {
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
  return { from, to, amount };
}

// Errors that mean "no database right now" (answered 503), from either
// driver: node-postgres and ioredis name them in the message, postgres.js
// by its own codes; 57P0x are the server shutting down or starting.
const UNAVAILABLE_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', '57P01', '57P02', '57P03',
  'CONNECTION_CLOSED', 'CONNECTION_DESTROYED', 'CONNECTION_ENDED', 'CONNECT_TIMEOUT', 'QUEUE_TIMEOUT',
]);

function isUnavailable(err) {
  return UNAVAILABLE_CODES.has(err.code) || /timeout|terminat|Connection/i.test(err.message);
}

// Serialization failures and deadlocks are worth another try; anything else
// is the caller's problem.
const RETRYABLE = new Set(['40001', '40P01']);
const MAX_ATTEMPTS = 5;

async function withRetry(once) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await once();
    } catch (error) {
      if (!RETRYABLE.has(error.code) || attempt >= MAX_ATTEMPTS) throw error;
      await new Promise((r) => setTimeout(r, Math.random() * 5 * attempt));
    }
  }
}

module.exports = {
  HttpError,
  USER_COLUMNS,
  USER_ORDERS,
  UNAVAILABLE,
  positiveId,
  listQuery,
  transferBody,
  isUnavailable,
  withRetry,
};
