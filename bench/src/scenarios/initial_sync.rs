//! `initial-sync`: a user in K rooms, each with other members and some
//! history; the time and size of a full initial `/sync` with lazy-loaded
//! members, each sample from a newly logged-in device (so no server-side
//! cache of an identical earlier request can answer it).

use std::time::Instant;

use anyhow::{Result, anyhow, bail};

use super::{Ctx, PASSWORD, SYNC_FILTER, bounded};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    let (k, history, extra) = (s.initial_sync_rooms, s.initial_sync_history, s.initial_sync_members);
    o.param("rooms", k);
    o.param("messages_per_room", history);
    o.param("other_members", extra);
    o.param("samples", s.initial_sync_samples);

    // Setup: a fresh user (so it is in these rooms only), K rooms, the
    // other members in each, then `history` messages per room from them all.
    let user = ctx.fresh_users(1).await?.remove(0);
    let others = ctx.pool_users(extra).await?;
    let marker = ctx.marker("isync");
    // One after another, as a client creates its rooms: in room version 12
    // the room id is the hash of the create event, and one user's
    // concurrent creates within a millisecond may collide on some servers.
    let mut rooms = Vec::with_capacity(k);
    for i in 0..k {
        rooms.push(ctx.server.create_room(&user, &format!("bench initial sync {i}"), s.room_version.as_deref()).await?);
    }
    let pairs: Vec<_> = others.iter().flat_map(|u| rooms.iter().map(move |r| (u.clone(), r.clone()))).collect();
    let server = ctx.server.clone();
    bounded(pairs, s.setup_concurrency, move |(u, r)| {
        let server = server.clone();
        async move { server.join(&u, &r).await }
    })
    .await?;
    let mut speakers = vec![user.clone()];
    speakers.extend(others);
    let (server, m) = (ctx.server.clone(), marker.clone());
    let last_bodies = bounded(rooms.clone(), s.setup_concurrency, move |r| {
        let (server, m, speakers) = (server.clone(), m.clone(), speakers.clone());
        async move {
            let mut last = None;
            for j in 0..history {
                let body = format!("{m} {j}");
                server.send_text(&speakers[j % speakers.len()], &r, &body).await?;
                last = Some(body);
            }
            Ok(last)
        }
    })
    .await?;

    // Measured: initial syncs from new devices.
    let (mut took, mut bytes) = (Samples::new(), Samples::new());
    let mut last_response = None;
    ctx.measure_begin();
    for _ in 0..s.initial_sync_samples.max(1) {
        let device = ctx.server.login(&user.localpart, PASSWORD).await?;
        let t = Instant::now();
        let (v, len) = ctx.server.sync(&device, None, 0, SYNC_FILTER).await?;
        took.push(t.elapsed());
        bytes.push_ms(len as f64);
        last_response = Some(v);
    }
    ctx.measure_end("initial-sync", o).await;
    o.figure("initial_sync_p50_ms", took.median(), Better::Lower);
    o.figure("initial_sync_max_ms", took.max(), Better::Lower);
    o.figure("response_bytes", bytes.median(), Better::Lower);

    // Verify: every room is joined and shows its newest message last.
    let v = last_response.ok_or_else(|| anyhow!("no sample ran"))?;
    let joined = v["rooms"]["join"].as_object().ok_or_else(|| anyhow!("initial sync has no rooms.join"))?;
    if joined.len() != k {
        bail!("initial sync shows {} joined rooms, the user is in {k}", joined.len());
    }
    for (room, last) in rooms.iter().zip(&last_bodies) {
        let events = joined.get(room).ok_or_else(|| anyhow!("room {room} missing from the initial sync"))?["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let newest = events.iter().rev().find(|e| e["type"] == "m.room.message").and_then(|e| e["content"]["body"].as_str());
        if newest != last.as_deref() {
            bail!("room {room}: newest message in the initial sync is {newest:?}, expected {last:?}");
        }
    }
    o.verified = format!("all {k} rooms in rooms.join, each with its newest message last in the timeline");
    Ok(())
}
