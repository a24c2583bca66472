// Two headless Chromium pages running livekit-client meet through
// Chancery's built-in SFU: Alice publishes her fake camera, Bob must
// receive its video. Run by crates/server/tests/it/sfu.rs:
//   node meet.mjs --url ws://127.0.0.1:PORT/_chancery/livekit --key K --secret S [--simulcast 1]
// Prints a JSON summary and exits 0 when Bob received video within the
// time-out, 1 otherwise. CHROMIUM names the browser (default /usr/bin/chromium).
import crypto from 'node:crypto';
import http from 'node:http';
import { parseArgs } from 'node:util';
import * as esbuild from 'esbuild';
import { chromium } from 'playwright-core';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    key: { type: 'string' },
    secret: { type: 'string' },
    simulcast: { type: 'string', default: '0' },
    'timeout-ms': { type: 'string', default: '45000' },
  },
});
const timeoutMs = Number(args['timeout-ms']);
// The whole run is bounded, whatever hangs.
setTimeout(() => { console.error('meet.mjs: overall time-out'); process.exit(2); }, timeoutMs + 30000).unref();

// A token as Chancery's token service mints it (lk-jwt-service's claims).
function mint(identity, room) {
  const b64 = (s) => Buffer.from(s).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const header = b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const video = { roomJoin: true, room, canPublish: true, canSubscribe: true, canUpdateOwnMetadata: true };
  const payload = b64(JSON.stringify({ exp: now + 3600, iss: args.key, nbf: now, sub: identity, video }));
  const signature = crypto.createHmac('sha256', args.secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

const bundle = await esbuild.build({
  entryPoints: [new URL('page.js', import.meta.url).pathname],
  bundle: true,
  write: false,
  format: 'iife',
  logLevel: 'warning',
});
const pageJs = bundle.outputFiles[0].contents;
const server = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (path === '/') {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><html><body><script src="page.js"></script></body></html>');
  } else if (path === '/page.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' });
    res.end(pageJs);
  } else {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  ],
});
let ok = false;
const summary = {};
try {
  const context = await browser.newContext();
  const open = async (identity, publish) => {
    const page = await context.newPage();
    const query = new URLSearchParams({ url: args.url, token: mint(identity, 'room'), publish, simulcast: args.simulcast });
    await page.goto(`${base}?${query}`);
    return page;
  };
  const alice = await open('alice', '1');
  const bob = await open('bob', '0');
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    summary.alice = await alice.evaluate(() => window.state);
    summary.bob = await bob.evaluate(() => window.state);
    // Fake-camera VP8 runs at tens of KB a second: this is seconds of video.
    if (summary.bob.subscribed > 0 && summary.bob.bytes > 10000) {
      ok = true;
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify({ ok, ...summary }));
process.exit(ok ? 0 : 1);
