//! `send`: messages per second with C concurrent senders over R rooms,
//! and the latency of each send; verified by reading every room back.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Result, bail};

use super::{Ctx, bounded, room_messages};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    let (total, senders_n, rooms_n) = (s.send_messages, s.send_concurrency.max(1), s.send_rooms.max(1));
    o.param("messages", total);
    o.param("senders", senders_n);
    o.param("rooms", rooms_n);

    // Setup: senders, rooms, every sender in every room.
    let senders = ctx.pool_users(senders_n).await?;
    let owner = senders[0].clone();
    let mut rooms = Vec::new();
    for i in 0..rooms_n {
        rooms.push(ctx.server.create_room(&owner, &format!("bench send {i}"), s.room_version.as_deref()).await?);
    }
    let pairs: Vec<_> = senders[1..].iter().flat_map(|u| rooms.iter().map(move |r| (u.clone(), r.clone()))).collect();
    let server = ctx.server.clone();
    bounded(pairs, s.setup_concurrency, move |(u, r)| {
        let server = server.clone();
        async move { server.join(&u, &r).await }
    })
    .await?;

    // Measured: each sender sends its share, round-robin over the rooms.
    let marker = ctx.marker("send");
    let work: Vec<_> =
        senders.iter().enumerate().map(|(i, u)| (i, u.clone(), total / senders_n + usize::from(i < total % senders_n))).collect();
    let (server, rooms_shared, marker_shared) = (ctx.server.clone(), rooms.clone(), marker.clone());
    ctx.measure_begin();
    let started = Instant::now();
    let sent = bounded(work, senders_n, move |(i, u, count)| {
        let (server, rooms, marker) = (server.clone(), rooms_shared.clone(), marker_shared.clone());
        async move {
            let mut out = Vec::with_capacity(count);
            for k in 0..count {
                let room = (i + k) % rooms.len();
                let t = Instant::now();
                let id = server.send_text(&u, &rooms[room], &format!("{marker} {i} {k}")).await?;
                out.push((room, id, t.elapsed()));
            }
            Ok(out)
        }
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    ctx.measure_end("send", o).await;

    let mut lat = Samples::new();
    let mut expected: Vec<HashSet<String>> = vec![HashSet::new(); rooms_n];
    for (room, id, d) in sent.into_iter().flatten() {
        lat.push(d);
        expected[room].insert(id);
    }
    o.figure("msgs_per_s", total as f64 / elapsed, Better::Higher);
    o.figure("send_p50_ms", lat.percentile(50.0)?, Better::Lower);
    o.figure("send_p95_ms", lat.percentile(95.0)?, Better::Lower);
    o.figure("send_p99_ms", lat.percentile(99.0)?, Better::Lower);

    // Verify: /messages of each room holds exactly the events sent there.
    for (room, want) in rooms.iter().zip(&expected) {
        let found = room_messages(&ctx.server, &owner, room, &marker, want.len() * 2 + 1000).await?;
        let got: HashSet<String> = found.into_iter().map(|(id, _)| id).collect();
        if &got != want {
            bail!(
                "room {room}: sent {} messages, /messages shows {} ({} of ours missing)",
                want.len(),
                got.len(),
                want.difference(&got).count()
            );
        }
    }
    o.verified = format!("all {total} event ids read back through /messages of their room");
    Ok(())
}
