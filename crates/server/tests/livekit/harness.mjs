// What meet.mjs and call3.mjs share: tokens as Chancery's token service
// mints them, the bundled test page served on 127.0.0.1, and headless
// Chromium with fake media devices.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import * as esbuild from 'esbuild';
import { chromium } from 'playwright-core';

// A token as Chancery's token service mints it (lk-jwt-service's claims).
export function mint(key, secret, identity, room) {
  const b64 = (s) => Buffer.from(s).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const header = b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const video = { roomJoin: true, room, canPublish: true, canSubscribe: true, canUpdateOwnMetadata: true };
  const payload = b64(JSON.stringify({ exp: now + 3600, iss: key, nbf: now, sub: identity, video }));
  const signature = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

// Serves page.js (bundled with livekit-client) and a page loading it.
// Returns the base URL and the server (to close).
export async function servePage() {
  const bundle = await esbuild.build({
    entryPoints: [new URL('page.js', import.meta.url).pathname],
    bundle: true,
    write: false,
    format: 'iife',
    logLevel: 'warning',
  });
  const pageJs = bundle.outputFiles[0].contents;
  const server = http.createServer((req, res) => {
    const p = new URL(req.url, 'http://localhost').pathname;
    if (p === '/') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><html><body><script src="page.js"></script></body></html>');
    } else if (p === '/page.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(pageJs);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { base: `http://127.0.0.1:${server.address().port}/`, server };
}

// A WAV file of a steady 440 Hz tone at about −9 dBov RMS, for Chromium's
// fake microphone (which loops it): its own default, a 20 ms beep twice a
// second, is too short to count as speech (livekit-server wants 40 % of
// each 400 ms window above −35 dBov). Returns the path.
export function toneWav() {
  const rate = 48000;
  const samples = rate * 2;
  const data = Buffer.alloc(samples * 2);
  for (let i = 0; i < samples; i++) {
    data.writeInt16LE(Math.round(0.5 * 32767 * Math.sin((2 * Math.PI * 440 * i) / rate)), i * 2);
  }
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVEfmt ', 8);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write('data', 36);
  header.writeUInt32LE(data.length, 40);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chancery-tone-'));
  const file = path.join(dir, 'tone.wav');
  fs.writeFileSync(file, Buffer.concat([header, data]));
  return file;
}

// Headless Chromium with fake camera and microphone (the microphone
// playing `audioFile` when given).
export function launch(audioFile) {
  const args = [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
  ];
  if (audioFile) args.push(`--use-file-for-fake-audio-capture=${audioFile}`);
  return chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args });
}
