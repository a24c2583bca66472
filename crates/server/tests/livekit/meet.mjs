// Two headless Chromium pages running livekit-client meet through
// Chancery's built-in SFU: Alice publishes her fake camera, Bob must
// receive its video. Run by crates/server/tests/it/sfu.rs:
//   node meet.mjs --url ws://127.0.0.1:PORT/_chancery/livekit --key K --secret S [--simulcast 1]
// Prints a JSON summary and exits 0 when Bob received video within the
// time-out, 1 otherwise. CHROMIUM names the browser (default /usr/bin/chromium).
import { parseArgs } from 'node:util';
import { launch, mint, servePage } from './harness.mjs';

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

const { base, server } = await servePage();
const browser = await launch();
let ok = false;
const summary = {};
try {
  const context = await browser.newContext();
  const open = async (identity, publish) => {
    const page = await context.newPage();
    const query = new URLSearchParams({ url: args.url, token: mint(args.key, args.secret, identity, 'room'), publish, simulcast: args.simulcast });
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
