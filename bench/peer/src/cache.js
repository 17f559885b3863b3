// Redis cache-aside, as in the seeds' getCachedUser: GET the key, on a miss
// load from the repository and SET it with EX 3600. CACHE=redis turns it on
// (REDIS_URL gives the server); CACHE=off (the default) reads the database.
'use strict';

const Redis = require('ioredis');

const TTL_SECONDS = 3600;

function createCache() {
  if ((process.env.CACHE || 'off') !== 'redis') {
    return null;
  }
  return new Redis(process.env.REDIS_URL || 'redis://127.0.0.1:6379/0', {
    maxRetriesPerRequest: 2,
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

module.exports = { createCache, cached };
