// The browser page: joins the room given in its query with livekit-client,
// publishes the (fake) camera, and with `audio=1` the (fake) microphone too,
// and keeps what it saw in `window.state` for meet.mjs / call3.mjs to read:
// bytes of video received from others, per remote participant and kind the
// inbound-rtp figures of getStats(), the speakers livekit-client reported
// active, connection qualities and who left.
import { Room, RoomEvent } from 'livekit-client';
const q = new URLSearchParams(location.search);
window.state = {
  connected: false, published: 0, subscribed: 0, bytes: 0, inbound: {}, speakers: [], qualities: {}, left: [], log: [],
};
const log = (m) => { window.state.log.push(String(m)); };
(async () => {
  try {
    const room = new Room({
      publishDefaults: { simulcast: q.get('simulcast') === '1' },
      dynacast: q.get('dynacast') === '1',
      adaptiveStream: q.get('adaptive') === '1',
    });
    room.on(RoomEvent.TrackSubscribed, (track) => {
      window.state.subscribed++;
      const el = track.attach(); el.muted = true; document.body.appendChild(el);
      log('subscribed ' + track.kind);
    });
    room.on(RoomEvent.ActiveSpeakersChanged, (speakers) => {
      for (const p of speakers) if (!window.state.speakers.includes(p.identity)) window.state.speakers.push(p.identity);
    });
    room.on(RoomEvent.ConnectionQualityChanged, (quality, p) => { window.state.qualities[p.identity] = quality; });
    room.on(RoomEvent.ParticipantDisconnected, (p) => { window.state.left.push(p.identity); });
    room.on(RoomEvent.Disconnected, (r) => log('disconnected ' + r));
    await room.connect(q.get('url'), q.get('token'));
    window.state.connected = true;
    log('connected');
    if (q.get('publish') === '1') {
      await room.localParticipant.setCameraEnabled(true);
      window.state.published++;
      log('published');
    }
    if (q.get('audio') === '1') {
      // No processing: the fake microphone's tone must reach the SFU as is.
      await room.localParticipant.setMicrophoneEnabled(true, {
        echoCancellation: false, noiseSuppression: false, autoGainControl: false,
      });
      window.state.published++;
      log('published audio');
    }
    window.room = room;
    setInterval(async () => {
      let bytes = 0;
      const inbound = {};
      for (const p of room.remoteParticipants.values()) for (const pub of p.trackPublications.values()) {
        const t = pub.track; if (!t || !t.receiver) continue;
        const stats = await t.receiver.getStats();
        stats.forEach((s) => {
          if (s.type !== 'inbound-rtp') return;
          if (t.kind === 'video') bytes += s.bytesReceived || 0;
          const key = p.identity + ' ' + t.kind;
          inbound[key] = {
            bytes: s.bytesReceived || 0, framesDecoded: s.framesDecoded || 0,
            samples: s.totalSamplesReceived || 0, concealed: s.concealedSamples || 0,
          };
        });
      }
      window.state.bytes = bytes;
      window.state.inbound = inbound;
    }, 500);
  } catch (e) { log('error ' + e + ' ' + (e.stack || '')); }
})();
