// What the three steps share: arguments, a bounded deadline for the whole
// step, logging kept off stdout, login, the Rust crypto and a running sync.
//
// Contract with the caller (crates/server/tests/it/js_client.rs): a step
// prints exactly one JSON line on stdout and exits 0, or prints a message
// starting with "FAILED:" on stderr and exits non-zero. Everything else,
// including the SDK's own logs, goes to stderr.

import { format, parseArgs } from "node:util";

// matrix-js-sdk (through loglevel) and the crypto WebAssembly log with
// console.log/info/debug, which write to stdout: send every console line to
// stderr so that stdout carries the result line alone.
for (const level of ["log", "info", "debug", "trace", "warn", "error"]) {
    console[level] = (...args) => process.stderr.write(format(...args) + "\n");
}

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
// The SDK's debug logs are many megabytes per step; warnings are enough to
// explain a failure. CHANCERY_JS_LOG=debug brings them back.
logger.setLevel(process.env.CHANCERY_JS_LOG || "warn");

export { sdk };

let phase = "starting";
let stepName = "step";

/** Names what the step is doing, for the message of a failure or time-out. */
export function setPhase(text) {
    phase = text;
    process.stderr.write(`[${stepName}] ${text}\n`);
}

/** Fails the step: one clear line on stderr, exit status 1. */
export function fail(message) {
    process.stderr.write(`FAILED: ${stepName}: ${message} (while: ${phase})\n`);
    process.exit(1);
}

/** Prints the step's result line and exits 0. */
export function succeed(result) {
    process.stdout.write(JSON.stringify({ step: stepName, ...result }) + "\n", () => process.exit(0));
}

/**
 * Parses `--name value` options; `required` names must be present. Every
 * step also takes --homeserver, --user, --password and --timeout-ms (the
 * bound on the whole step, default 90000). Each option can also come from
 * the environment as CHANCERY_JS_<NAME> (upper case, dashes as underscores).
 */
export function parseOptions(step, spec, required) {
    stepName = step;
    const options = {
        homeserver: { type: "string" },
        user: { type: "string" },
        password: { type: "string" },
        "timeout-ms": { type: "string" },
        ...spec,
    };
    let values;
    try {
        ({ values } = parseArgs({ args: process.argv.slice(2), options, strict: true }));
    } catch (e) {
        fail(`bad arguments: ${e.message}`);
    }
    for (const name of Object.keys(options)) {
        const env = process.env[`CHANCERY_JS_${name.toUpperCase().replaceAll("-", "_")}`];
        if (values[name] === undefined && env !== undefined) values[name] = env;
    }
    for (const name of ["homeserver", "user", "password", ...required]) {
        if (values[name] === undefined) fail(`missing --${name}`);
    }
    const timeoutMs = Number(values["timeout-ms"] ?? 90000);
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) fail(`bad --timeout-ms ${values["timeout-ms"]}`);
    // The bound on the whole step: whatever hangs, the process ends.
    setTimeout(() => fail(`timed out after ${timeoutMs} ms`), timeoutMs).unref();
    return values;
}

process.on("unhandledRejection", (e) => fail(`unhandled rejection: ${describe(e)}`));
process.on("uncaughtException", (e) => fail(`uncaught exception: ${describe(e)}`));

/** A readable one-line description of an error, with the Matrix errcode when there is one. */
export function describe(e) {
    if (e && e.errcode) return `${e.httpStatus ?? ""} ${e.errcode}: ${e.data?.error ?? e.message}`;
    return e?.stack ?? String(e);
}

/** Awaits `promise`, failing the step with `what` if it rejects. */
export async function must(what, promise) {
    setPhase(what);
    try {
        return await promise;
    } catch (e) {
        fail(`${what}: ${describe(e)}`);
    }
}

/**
 * Polls `check` every 100 ms until it returns a value other than
 * undefined/false, for at most `ms`; fails the step with `what` otherwise.
 */
export async function waitFor(what, ms, check) {
    setPhase(`waiting for ${what}`);
    const deadline = Date.now() + ms;
    let lastError;
    for (;;) {
        try {
            const value = await check();
            if (value !== undefined && value !== false && value !== null) return value;
        } catch (e) {
            lastError = e;
        }
        if (Date.now() >= deadline) {
            fail(`no ${what} within ${ms} ms${lastError ? ` (last error: ${describe(lastError)})` : ""}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
}

/** The localpart of `@name:server`, or `name` itself. */
function localpart(user) {
    return user.startsWith("@") ? user.slice(1).split(":")[0] : user;
}

/** The `m.login.password` auth dict for user-interactive auth. */
export function passwordAuth(opts, session) {
    return {
        type: "m.login.password",
        identifier: { type: "m.id.user", user: localpart(opts.user) },
        password: opts.password,
        ...(session ? { session } : {}),
    };
}

/**
 * A UIA callback for uploading cross-signing keys: first without auth (a
 * server may allow the first upload without it), then, if asked, with the
 * password in the session the server opened.
 */
export function passwordUia(opts) {
    return async (makeRequest) => {
        try {
            return await makeRequest(null);
        } catch (e) {
            const session = e?.data?.session;
            if (e?.httpStatus !== 401 || !e?.data?.flows) throw e;
            return await makeRequest(passwordAuth(opts, session));
        }
    };
}

/**
 * Logs in with the password (a new device each time), starts the Rust
 * crypto in memory and the sync loop, and waits for the first sync.
 * `cryptoCallbacks` are handed to the client (secret storage keys).
 */
export async function loginAndSync(opts, { cryptoCallbacks = {}, deviceName, syncMs = 30000 } = {}) {
    const anonymous = sdk.createClient({ baseUrl: opts.homeserver });
    const login = await must(
        "logging in",
        anonymous.loginRequest({ ...passwordAuth(opts), initial_device_display_name: deviceName }),
    );
    const client = sdk.createClient({
        baseUrl: opts.homeserver,
        userId: login.user_id,
        deviceId: login.device_id,
        accessToken: login.access_token,
        cryptoCallbacks,
    });
    // In memory: every step is a fresh device, nothing is kept between runs.
    await must("initialising the Rust crypto", client.initRustCrypto({ useIndexedDB: false }));
    const prepared = new Promise((resolve, reject) => {
        client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
            if (state === sdk.SyncState.Prepared || state === sdk.SyncState.Syncing) resolve();
            if (state === sdk.SyncState.Error) reject(data?.error ?? new Error("sync error"));
        });
    });
    await must("starting the client", client.startClient({ initialSyncLimit: 20, lazyLoadMembers: false }));
    await withTimeout("first sync", syncMs, prepared);
    // The crypto uploads this device's keys in the background. Until that
    // upload has answered, bootstrapping cross-signing uploads the device
    // keys again, with the new self-signing key's signature added, which a
    // server that stores device keys once and compares bytes (Chancery)
    // refuses while Synapse takes it. Wait, so that each step sends its
    // requests in one order; that race is a server question, not this test's.
    const userId = client.getUserId();
    const deviceId = client.getDeviceId();
    await waitFor("this device's keys on the server", syncMs, async () => {
        const body = { device_keys: { [userId]: [deviceId] } };
        const answer = await client.http.authedRequest(sdk.Method.Post, "/keys/query", undefined, body);
        return answer?.device_keys?.[userId]?.[deviceId];
    });
    return client;
}

/** Awaits `promise` for at most `ms`, failing the step with `what` otherwise. */
export async function withTimeout(what, ms, promise) {
    setPhase(what);
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`not done within ${ms} ms`)), ms);
    });
    try {
        return await Promise.race([promise, timeout]);
    } catch (e) {
        fail(`${what}: ${describe(e)}`);
    } finally {
        clearTimeout(timer);
    }
}

/**
 * Joins `roomId` (idempotent when already joined) and waits until the sync
 * has shown this client the room as joined and encrypted, so that what it
 * sends next is encrypted rather than sent in the clear.
 */
export async function joinEncryptedRoom(client, roomId, ms) {
    await must(`joining ${roomId}`, client.joinRoom(roomId));
    await waitFor(`the room ${roomId} joined and encrypted in the sync`, ms, async () => {
        const room = client.getRoom(roomId);
        return room?.getMyMembership() === "join" && (await client.getCrypto().isEncryptionEnabledInRoom(roomId));
    });
}

/**
 * Sends an encrypted text message and checks that the server stored it as
 * `m.room.encrypted`; returns its event id.
 */
export async function sendEncrypted(client, roomId, body) {
    const { event_id } = await must("sending an encrypted message", client.sendTextMessage(roomId, body));
    const raw = await must("fetching the sent event back", client.fetchRoomEvent(roomId, event_id));
    if (raw.type !== "m.room.encrypted") fail(`the message was stored as ${raw.type}, not m.room.encrypted`);
    return event_id;
}
