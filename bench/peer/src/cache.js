// Redis cache-aside, as in the seeds' getCachedUser: GET the key, on a miss
// load from the repository and SET it with EX 3600. CACHE=redis turns it on
// (REDIS_URL gives the server); CACHE=off (the default) reads the database.
// Both peers use it: Express with `cached` (the value parsed from and
// stringified to JSON, as the seeds do), Fastify with `cachedText` (the same
// keys, TTL and order of commands; the cached JSON text goes to the client
// as it is, with no parse and stringify on a hit) and ioredis's
// auto-pipelining on (createCache's options).
'use strict';

const Redis = require('ioredis');

const TTL_SECONDS = 3600;

function createCache(options = {}) {
  if ((process.env.CACHE || 'off') !== 'redis') {
    return null;
  }
  return new Redis(process.env.REDIS_URL || 'redis://127.0.0.1:6379/0', {
    maxRetriesPerRequest: 2,
    ...options,
  });
}

async function cached(redis, key, load) {
  const hit = await redis.get(key);
  if (hit) return JSON.parse(hit);

  const value = await load();
  if (value) {
    await redis.set(key, JSON.stringify(value), 'EX', TTL_SECONDS);
  }
  return value;
}

// As `cached`, but returns the value's JSON text (null when load finds nothing).
async function cachedText(redis, key, load) {
  const hit = await redis.get(key);
  if (hit) return hit;

  const value = await load();
  if (!value) return null;
  const text = JSON.stringify(value);
  await redis.set(key, text, 'EX', TTL_SECONDS);
  return text;
}

module.exports = { createCache, cached, cachedText };
