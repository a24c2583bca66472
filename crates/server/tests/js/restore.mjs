// Step "restore": a fresh device (a new login) given only the recovery key
// unlocks secret storage, takes the cross-signing keys from it (so the
// device is cross-signed), loads the key backup's decryption key from it,
// restores the backup, then reads the room's history with /messages and
// decrypts the event asked for.
//
//   node restore.mjs --homeserver URL --user NAME --password PW --room ROOM_ID \
//       --recovery-key KEY --event EVENT_ID [--timeout-ms 90000]
//
// Prints {"step":"restore","user_id","device_id","room_id","backup_version",
// "total","imported","cross_signing_ready","device_cross_signed",
// "event":{"event_id","sender","body"},"history":[{"event_id","sender","body"}],
// "undecryptable":[event ids]}.

import { fail, loginAndSync, must, parseOptions, sdk, setPhase, succeed, waitFor } from "./lib.mjs";

const opts = parseOptions(
    "restore",
    { room: { type: "string" }, "recovery-key": { type: "string" }, event: { type: "string" } },
    ["room", "recovery-key", "event"],
);

const { decodeRecoveryKey } = await import("matrix-js-sdk/lib/crypto-api/index.js");
let recoveryKey;
try {
    recoveryKey = decodeRecoveryKey(opts["recovery-key"]);
} catch (e) {
    fail(`the recovery key does not decode: ${e.message}`);
}

let secretStorageKeyAsked = false;
const cryptoCallbacks = {
    // Secret storage names the keys that can open a secret; the recovery
    // key is the default one. The SDK checks it against the key's MAC
    // before use, so a wrong key fails there with a clear error.
    getSecretStorageKey: async ({ keys }) => {
        secretStorageKeyAsked = true;
        const defaultKeyId = await client.secretStorage.getDefaultKeyId();
        const keyId = defaultKeyId && keys[defaultKeyId] ? defaultKeyId : Object.keys(keys)[0];
        if (!(await client.secretStorage.checkKey(recoveryKey, keys[keyId]))) {
            throw new Error(`the recovery key does not open secret storage key ${keyId}`);
        }
        return [keyId, recoveryKey];
    },
};

const client = await loginAndSync(opts, { cryptoCallbacks, deviceName: "js restore" });
const crypto = client.getCrypto();

// The public cross-signing identity must be known before private keys can
// be checked against it: fetch it (/keys/query) rather than wait for the
// sync to.
const hasIdentity = await must(
    "downloading this user's cross-signing keys",
    crypto.userHasCrossSigningKeys(client.getUserId(), true),
);
if (!hasIdentity) fail("the server has no cross-signing keys for this user");
// Secret storage holds the cross-signing private keys: bootstrapping with
// them signs this new device with the self-signing key.
await must("importing cross-signing keys from secret storage", crypto.bootstrapCrossSigning({}));
if (!secretStorageKeyAsked) fail("the cross-signing keys were not read from secret storage");
const crossSigningReady = await must("checking cross-signing", crypto.isCrossSigningReady());
// The signature on this device comes back through the server: the upload
// moves this user in the device-list stream, the sync says so, and the
// /keys/query that follows returns the signed device.
await waitFor("this device cross-signed, as the server returns it", 30000, async () => {
    const status = await crypto.getDeviceVerificationStatus(client.getUserId(), client.getDeviceId());
    return status?.crossSigningVerified;
});

await must("loading the backup key from secret storage", crypto.loadSessionBackupPrivateKeyFromSecretStorage());
const check = await must("checking the key backup", crypto.checkKeyBackupAndEnable());
const backupVersion = check?.backupInfo?.version;
if (!backupVersion) fail("no key backup on the server");
const restored = await must("restoring the key backup", crypto.restoreKeyBackup());
if (restored.imported < 1) fail(`the backup held ${restored.total} keys and none was imported`);

// The room's history as the server serves it, decrypted with the restored
// keys (not the live timeline: this device joined nothing and saw no
// to-device key for those messages).
const messages = await must(
    "reading the room's history",
    client.createMessagesRequest(opts.room, null, 100, sdk.Direction.Backward),
);
const mapper = client.getEventMapper({ decrypt: false });
const history = [];
const undecryptable = [];
setPhase("decrypting the history");
for (const raw of messages.chunk) {
    if (raw.type !== "m.room.encrypted") continue;
    const ev = mapper(raw);
    await client.decryptEventIfNeeded(ev);
    if (ev.isDecryptionFailure()) {
        undecryptable.push(ev.getId());
    } else {
        history.push({ event_id: ev.getId(), sender: ev.getSender(), body: ev.getContent().body });
    }
}
const event = history.find((e) => e.event_id === opts.event);
if (!event) {
    const where = undecryptable.includes(opts.event) ? "it did not decrypt" : "it is not among the encrypted events served";
    fail(`event ${opts.event}: ${where} (${history.length} decrypted, ${undecryptable.length} not)`);
}

client.stopClient();
succeed({
    user_id: client.getUserId(),
    device_id: client.getDeviceId(),
    room_id: opts.room,
    backup_version: backupVersion,
    total: restored.total,
    imported: restored.imported,
    cross_signing_ready: crossSigningReady,
    device_cross_signed: true,
    event,
    history,
    undecryptable,
});
