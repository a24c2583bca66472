// Step "bootstrap": a new device sets up cross-signing (uploading the keys
// through user-interactive auth with the password), secret storage under a
// new recovery key, and a new key backup; then sends an encrypted message
// in the room and waits until its room key is in the backup on the server.
//
//   node bootstrap.mjs --homeserver URL --user NAME --password PW --room ROOM_ID \
//       --send TEXT [--wait-ms 60000] [--timeout-ms 90000]
//
// Prints {"step":"bootstrap","user_id","device_id","room_id","recovery_key",
// "backup_version","backed_up_keys","sent_event_id","cross_signing_ready",
// "secret_storage_ready","master_key"}.

import {
    fail,
    joinEncryptedRoom,
    loginAndSync,
    must,
    parseOptions,
    passwordUia,
    sdk,
    sendEncrypted,
    succeed,
    waitFor,
} from "./lib.mjs";

const opts = parseOptions("bootstrap", { room: { type: "string" }, send: { type: "string" }, "wait-ms": { type: "string" } }, [
    "room",
    "send",
]);
const waitMs = Number(opts["wait-ms"] ?? 60000);

// Secret storage asks the application for the key of each secret it reads
// or writes: this device knows only the one it creates below.
const secretStorageKeys = new Map();
const cryptoCallbacks = {
    getSecretStorageKey: async ({ keys }) => {
        const keyId = Object.keys(keys).find((id) => secretStorageKeys.has(id));
        return keyId ? [keyId, secretStorageKeys.get(keyId)] : null;
    },
    cacheSecretStorageKey: (keyId, _keyInfo, key) => secretStorageKeys.set(keyId, key),
};

const client = await loginAndSync(opts, { cryptoCallbacks, deviceName: "js bootstrap" });
const crypto = client.getCrypto();

await must(
    "bootstrapping cross-signing",
    crypto.bootstrapCrossSigning({ setupNewCrossSigning: true, authUploadDeviceSigningKeys: passwordUia(opts) }),
);

let recoveryKey;
await must(
    "bootstrapping secret storage and a new key backup",
    crypto.bootstrapSecretStorage({
        setupNewSecretStorage: true,
        setupNewKeyBackup: true,
        createSecretStorageKey: async () => {
            const generated = await crypto.createRecoveryKeyFromPassphrase();
            recoveryKey = generated.encodedPrivateKey;
            return generated;
        },
    }),
);
if (!recoveryKey) fail("bootstrapSecretStorage made no recovery key");

const crossSigningReady = await must("checking cross-signing", crypto.isCrossSigningReady());
const secretStorageReady = await must("checking secret storage", crypto.isSecretStorageReady());
if (!crossSigningReady) fail("cross-signing is not ready after bootstrapCrossSigning");
if (!secretStorageReady) fail("secret storage is not ready after bootstrapSecretStorage");

const check = await must("checking the key backup", crypto.checkKeyBackupAndEnable());
const backupVersion = check?.backupInfo?.version;
if (!backupVersion) fail(`no key backup on the server after bootstrap: ${JSON.stringify(check)}`);
if (!check.trustInfo.trusted) fail(`the new key backup ${backupVersion} is not trusted`);
const active = await must("reading the active backup", crypto.getActiveSessionBackupVersion());
if (active !== backupVersion) fail(`the active backup is ${active}, not ${backupVersion}`);

await joinEncryptedRoom(client, opts.room, waitMs);
const sentEventId = await sendEncrypted(client, opts.room, opts.send);

// The Rust crypto uploads new room keys to the backup in the background:
// wait until the server holds a key for this room in this version.
const backedUpKeys = await waitFor("the room key in the server's key backup", waitMs, async () => {
    const path = `/room_keys/keys/${encodeURIComponent(opts.room)}`;
    const keys = await client.http.authedRequest(sdk.Method.Get, path, { version: backupVersion });
    const count = Object.keys(keys?.sessions ?? {}).length;
    return count > 0 ? count : undefined;
});

const masterKey = await must("reading the master key id", crypto.getCrossSigningKeyId());
client.stopClient();
succeed({
    user_id: client.getUserId(),
    device_id: client.getDeviceId(),
    room_id: opts.room,
    recovery_key: recoveryKey,
    backup_version: backupVersion,
    backed_up_keys: backedUpKeys,
    sent_event_id: sentEventId,
    cross_signing_ready: crossSigningReady,
    secret_storage_ready: secretStorageReady,
    master_key: masterKey,
});
