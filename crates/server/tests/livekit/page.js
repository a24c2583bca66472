// The browser page: joins the room given in its query with livekit-client,
// publishes the (fake) camera when asked, and keeps what it saw in
// `window.state` (bytes of video received from others) for meet.mjs to read.
import { Room, RoomEvent } from 'livekit-client';
const q = new URLSearchParams(location.search);
window.state = { connected: false, published: 0, subscribed: 0, bytes: 0, log: [] };
const log = (m) => { window.state.log.push(String(m)); };
(async () => {
  try {
    const room = new Room({ publishDefaults: { simulcast: q.get('simulcast') === '1' } });
    room.on(RoomEvent.TrackSubscribed, (track) => {
      window.state.subscribed++;
      const el = track.attach(); el.muted = true; document.body.appendChild(el);
      log('subscribed ' + track.kind);
    });
    room.on(RoomEvent.Disconnected, (r) => log('disconnected ' + r));
    await room.connect(q.get('url'), q.get('token'));
    window.state.connected = true;
    log('connected');
    if (q.get('publish') === '1') {
      await room.localParticipant.setCameraEnabled(true);
      window.state.published++;
      log('published');
    }
    window.room = room;
    setInterval(async () => {
      let bytes = 0;
      for (const p of room.remoteParticipants.values()) for (const pub of p.trackPublications.values()) {
        const t = pub.track; if (!t || !t.receiver) continue;
        const stats = await t.receiver.getStats();
        stats.forEach((s) => { if (s.type === 'inbound-rtp') bytes += s.bytesReceived || 0; });
      }
      window.state.bytes = bytes;
    }, 500);
  } catch (e) { log('error ' + e + ' ' + (e.stack || '')); }
})();
