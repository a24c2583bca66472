//! `history`: send latency as one room grows to each of the given sizes
//! (e.g. 10^3, 10^4, 10^5 events), to show how the cost of a send grows.
//! The room is filled over HTTP too, which is slow at large sizes: the
//! fill rate is reported so the time a bigger size would take is known.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Result, bail};

use super::{Ctx, bounded, room_messages};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    let mut sizes = s.history_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    o.param("sizes", sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","));
    o.param("samples", s.history_samples);
    o.param("fill_concurrency", s.history_fill_concurrency);

    let user = ctx.pool_users(1).await?.remove(0);
    let room = ctx.server.create_room(&user, "bench history", s.room_version.as_deref()).await?;
    let marker = ctx.marker("history");
    let mut sent = 0usize;
    let mut sample_ids = HashSet::new();
    let mut p50s = Vec::new();
    ctx.measure_begin();
    for &size in &sizes {
        // Fill (F senders in the same room) up to `size` messages.
        let fill = size.saturating_sub(sent);
        let f = s.history_fill_concurrency.max(1);
        let shares: Vec<_> = (0..f).map(|i| (i, fill / f + usize::from(i < fill % f))).collect();
        let (server, u, r, m) = (ctx.server.clone(), user.clone(), room.clone(), marker.clone());
        let started = Instant::now();
        bounded(shares, f, move |(i, count)| {
            let (server, u, r, m) = (server.clone(), u.clone(), r.clone(), m.clone());
            async move {
                for k in 0..count {
                    server.send_text(&u, &r, &format!("{m} fill {i} {k}")).await?;
                }
                Ok(())
            }
        })
        .await?;
        let fill_s = started.elapsed().as_secs_f64();
        sent += fill;
        eprintln!("  [{}] history: room filled to {sent} messages ({fill} in {fill_s:.1} s)", ctx.server.label);

        // Measured: sends one after another at this size.
        let mut lat = Samples::new();
        for j in 0..s.history_samples {
            let t = Instant::now();
            let id = ctx.server.send_text(&user, &room, &format!("{marker} sample {size} {j}")).await?;
            lat.push(t.elapsed());
            sample_ids.insert(id);
        }
        sent += s.history_samples;
        o.figure(format!("h{size}_send_p50_ms"), lat.percentile(50.0)?, Better::Lower);
        o.figure(format!("h{size}_send_p95_ms"), lat.percentile(95.0)?, Better::Lower);
        o.figure(format!("h{size}_send_p99_ms"), lat.percentile(99.0)?, Better::Lower);
        if fill > 0 {
            o.figure(format!("h{size}_fill_msgs_per_s"), fill as f64 / fill_s, Better::Higher);
        }
        p50s.push(lat.percentile(50.0)?);
    }
    ctx.measure_end("history", o).await;
    if let (Some(first), Some(last)) = (p50s.first(), p50s.last())
        && p50s.len() > 1
    {
        o.figure("p50_growth_last_over_first", last / first, Better::Lower);
    }

    // Verify: /messages holds every message sent, samples included.
    let found = room_messages(&ctx.server, &user, &room, &marker, sent + 1000).await?;
    let ids: HashSet<String> = found.iter().map(|(id, _)| id.clone()).collect();
    if ids.len() != sent || found.len() != sent {
        bail!("sent {sent} messages into the room, /messages shows {} ({} distinct)", found.len(), ids.len());
    }
    if !sample_ids.is_subset(&ids) {
        bail!("{} measured sends are missing from /messages", sample_ids.difference(&ids).count());
    }
    o.verified = format!("all {sent} messages read back through /messages");
    Ok(())
}
