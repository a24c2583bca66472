// Three headless Chromium pages running livekit-client meet through
// Chancery's built-in SFU, each publishing its fake camera (simulcast) and
// microphone (a steady tone), with dynacast and adaptive stream on as
// Element Call has them. Every page must see, through getStats(), the
// inbound audio and video of both others grow (video frames decoded, audio
// samples received with little concealment), and livekit-client must report
// both others as active speakers. Then Carol's page closes and Alice and
// Bob must see her leave. Run by crates/server/tests/it/sfu.rs:
//   node call3.mjs --url ws://127.0.0.1:PORT/_chancery/livekit --key K --secret S
// Prints a JSON summary and exits 0 on success, 1 otherwise.
import { parseArgs } from 'node:util';
import { launch, mint, servePage, toneWav } from './harness.mjs';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    key: { type: 'string' },
    secret: { type: 'string' },
    'timeout-ms': { type: 'string', default: '60000' },
  },
});
const timeoutMs = Number(args['timeout-ms']);
// The whole run is bounded, whatever hangs.
setTimeout(() => { console.error('call3.mjs: overall time-out'); process.exit(2); }, timeoutMs + 30000).unref();

const names = ['alice', 'bob', 'carol'];
const { base, server } = await servePage();
const browser = await launch(toneWav());
const summary = { phase: 'media' };
let ok = false;

// Polls every page's state until `done(states)` holds or the deadline passes.
async function until(pages, deadline, done) {
  while (Date.now() < deadline) {
    const states = {};
    for (const [name, page] of Object.entries(pages)) states[name] = await page.evaluate(() => window.state);
    summary.states = states;
    if (done(states)) return true;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  return false;
}

try {
  const context = await browser.newContext();
  const pages = {};
  for (const name of names) {
    const page = await context.newPage();
    const query = new URLSearchParams({
      url: args.url, token: mint(args.key, args.secret, name, 'room'),
      publish: '1', audio: '1', simulcast: '1', dynacast: '1', adaptive: '1',
    });
    await page.goto(`${base}?${query}`);
    pages[name] = page;
  }
  const deadline = Date.now() + timeoutMs;
  // A figure counts as growing once it is above the first positive value seen.
  const first = {};
  const grows = (page, key, metric, value) => {
    const id = `${page}/${key}/${metric}`;
    if (!(value > 0)) return false;
    if (first[id] === undefined) first[id] = value;
    return value > first[id];
  };
  const media = await until(pages, deadline, (states) => {
    let all = true;
    summary.missing = [];
    for (const name of names) {
      const s = states[name];
      for (const other of names.filter((n) => n !== name)) {
        const video = s.inbound[`${other} video`] || {};
        const audio = s.inbound[`${other} audio`] || {};
        const checks = {
          videoBytes: grows(name, other, 'vb', video.bytes),
          framesDecoded: grows(name, other, 'fd', video.framesDecoded),
          audioBytes: grows(name, other, 'ab', audio.bytes),
          samples: grows(name, other, 'as', audio.samples),
          // Received audio plays mostly real samples, not concealment.
          concealment: audio.samples > 0 && audio.concealed < 0.5 * audio.samples,
          speaker: s.speakers.includes(other),
        };
        for (const [check, passed] of Object.entries(checks)) {
          if (!passed) {
            all = false;
            summary.missing.push(`${name} ← ${other}: ${check}`);
          }
        }
      }
    }
    return all;
  });
  if (media) {
    summary.phase = 'leave';
    await pages.carol.close();
    delete pages.carol;
    ok = await until(pages, deadline, (states) => ['alice', 'bob'].every((n) => states[n].left.includes('carol')));
  }
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify({ ok, ...summary }));
process.exit(ok ? 0 : 1);
