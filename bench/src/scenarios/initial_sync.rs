//! `initial-sync`: a user in K rooms, each with other members and some
//! history; the time and size of a full initial `/sync` with lazy-loaded
//! members, each sample from a newly logged-in device (so no server-side
//! cache of an identical earlier request can answer it).

use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::{Ctx, PASSWORD, SYNC_FILTER, bounded, check_room_view};
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
        rooms.push(ctx.server.create_room(&user, &room_name(i), s.room_version.as_deref()).await?);
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

    // Measured: initial syncs from new devices. Every answer is verified
    // (after its timing): a smaller or faster answer counts only when it
    // carries what the client needs.
    let (mut took, mut bytes) = (Samples::new(), Samples::new());
    ctx.measure_begin();
    for sample in 0..s.initial_sync_samples {
        let device = ctx.server.login(&user.localpart, PASSWORD).await?;
        let t = Instant::now();
        let (v, len) = ctx.server.sync(&device, None, 0, SYNC_FILTER).await?;
        took.push(t.elapsed());
        bytes.push_ms(len as f64);
        verify(&v, &rooms, &last_bodies, 1 + extra).with_context(|| format!("initial sync sample {sample}"))?;
    }
    ctx.measure_end("initial-sync", o).await;
    o.figure("initial_sync_p50_ms", took.median()?, Better::Lower);
    o.figure("initial_sync_max_ms", took.max(), Better::Lower);
    o.figure("response_bytes", bytes.median()?, Better::Lower);
    o.verified = format!(
        "each of {} answers: all {k} rooms in rooms.join, each with its newest message last, create/power levels/join rules/name in its state, the member event of every timeline sender, summary joined count {}",
        s.initial_sync_samples,
        1 + extra
    );
    Ok(())
}

/// Every room is joined, shows its newest message last and carries the
/// state a client needs ([`check_room_view`]).
fn verify(v: &Value, rooms: &[String], last_bodies: &[Option<String>], joined_members: usize) -> Result<()> {
    let joined = v["rooms"]["join"].as_object().ok_or_else(|| anyhow!("initial sync has no rooms.join"))?;
    if joined.len() != rooms.len() {
        bail!("initial sync shows {} joined rooms, the user is in {}", joined.len(), rooms.len());
    }
    for (i, (room, last)) in rooms.iter().zip(last_bodies).enumerate() {
        let view = joined.get(room).ok_or_else(|| anyhow!("room {room} missing from the initial sync"))?;
        let events = view["timeline"]["events"].as_array().map(Vec::as_slice).unwrap_or_default();
        let newest = events.iter().rev().find(|e| e["type"] == "m.room.message").and_then(|e| e["content"]["body"].as_str());
        if newest != last.as_deref() {
            bail!("room {room}: newest message in the initial sync is {newest:?}, expected {last:?}");
        }
        check_room_view(view, &room_name(i), joined_members).with_context(|| format!("room {room}"))?;
    }
    Ok(())
}

fn room_name(i: usize) -> String {
    format!("bench initial sync {i}")
}
