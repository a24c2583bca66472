// Step "exchange": a new device joins an encrypted room, sends an encrypted
// message, then waits for an encrypted message from another user and
// decrypts it.
//
//   node exchange.mjs --homeserver URL --user NAME --password PW --room ROOM_ID \
//       --send TEXT [--expect-from @other:server] [--wait-ms 60000] [--timeout-ms 90000]
//
// Without --expect-from it only sends ("received" is null).
// Prints {"step":"exchange","user_id","device_id","room_id","sent_event_id",
// "received":{"event_id","sender","body","sender_device"}}.

import { joinEncryptedRoom, loginAndSync, parseOptions, sendEncrypted, succeed, waitFor } from "./lib.mjs";

const opts = parseOptions(
    "exchange",
    { room: { type: "string" }, send: { type: "string" }, "expect-from": { type: "string" }, "wait-ms": { type: "string" } },
    ["room", "send"],
);
const waitMs = Number(opts["wait-ms"] ?? 60000);

const client = await loginAndSync(opts, { deviceName: "js exchange" });
await joinEncryptedRoom(client, opts.room, waitMs);
const sentEventId = await sendEncrypted(client, opts.room, opts.send);

// The other side answers once it has decrypted ours; its room key comes by
// to-device message, possibly after the event: the Rust crypto retries
// decryption when the key arrives, so polling the timeline sees it then.
const expectFrom = opts["expect-from"];
const received = expectFrom && await waitFor(`a decrypted message from ${expectFrom}`, waitMs, async () => {
    const room = client.getRoom(opts.room);
    for (const ev of room?.getLiveTimeline().getEvents() ?? []) {
        if (ev.getSender() !== expectFrom || !ev.isEncrypted()) continue;
        if (ev.isBeingDecrypted()) await ev.getDecryptionPromise();
        if (ev.isDecryptionFailure() || ev.getType() !== "m.room.message") continue;
        return ev;
    }
});

client.stopClient();
succeed({
    user_id: client.getUserId(),
    device_id: client.getDeviceId(),
    room_id: opts.room,
    sent_event_id: sentEventId,
    received: received
        ? {
              event_id: received.getId(),
              sender: received.getSender(),
              body: received.getContent().body,
              sender_device: received.getWireContent().device_id ?? null,
          }
        : null,
});
