// Starts the MongoDB-compatible test server (CongoDB from
// @push.rocks/smartmongo, pinned by package-lock.json) on 127.0.0.1:<port>,
// in memory. Usage: node start.mjs <port>. Prints "ready <port>" once it
// listens; stops on SIGTERM / SIGINT.
//
// Where the emulator differs from MongoDB in ways dbkit's tests depend on,
// the fix lives here (see fixes.mjs), never in dbkit.
import { congodb } from '@push.rocks/smartmongo';
import { applyFixes } from './fixes.mjs';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node start.mjs <port>');
  process.exit(2);
}
const server = new congodb.CongoServer({ port, host: '127.0.0.1', storage: 'memory' });
applyFixes(server);
await server.start();
console.log(`ready ${port}`);
const stop = async () => {
  await server.stop();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
