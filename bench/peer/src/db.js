// PostgreSQL pool, configured the way the seeds' config/database.ts does it:
// one pg.Pool with max 20, idle and connect timeouts, a statement timeout.
// BIGINT (int8) columns are read as JavaScript numbers, as most services do,
// so ids and totals come out as numbers in JSON like the C service's.
'use strict';

const { Pool, types } = require('pg');

types.setTypeParser(20, (v) => parseInt(v, 10));

const pool = new Pool({
  connectionString: process.env.DATABASE_URL,
  max: parseInt(process.env.PG_POOL_MAX || '20', 10),
  idleTimeoutMillis: 30000,
  connectionTimeoutMillis: 2000,
  statement_timeout: 30000,
});

// An idle client losing its server (e.g. a PostgreSQL restart) is reported
// here; the pool drops that client and opens a new one on demand.
pool.on('error', (err) => {
  console.error('Unexpected error on idle client', err.message);
});

async function closeDatabase() {
  await pool.end();
}

module.exports = { pool, closeDatabase };
