// Entry point of the peer service: one Node.js process (as the seeds run
// it), listening on HOST:PORT. Environment: DATABASE_URL, CACHE=redis|off,
// REDIS_URL, PORT (8081), HOST (127.0.0.1), PG_POOL_MAX (20).
'use strict';

const { pool, closeDatabase } = require('./src/db');
const { createCache } = require('./src/cache');
const { createApp } = require('./src/app');

const redis = createCache();
const app = createApp({ db: pool, redis });
const port = parseInt(process.env.PORT || '8081', 10);
const host = process.env.HOST || '127.0.0.1';

const server = app.listen(port, host, (error) => {
  // Express 5 hands a listen error (e.g. EADDRINUSE) to this callback.
  if (error) {
    console.error(`peer: cannot listen on ${host}:${port}: ${error.message}`);
    process.exit(1);
  }
  console.log(`peer listening on http://${host}:${port} (cache ${redis ? 'redis' : 'off'})`);
});
server.keepAliveTimeout = 65000;

async function shutdown() {
  server.close();
  server.closeIdleConnections();
  await closeDatabase();
  if (redis) redis.disconnect();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
