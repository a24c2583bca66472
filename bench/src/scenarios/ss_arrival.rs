//! `ss-arrival`: the time from the start of a send to the message arriving
//! on another user's waiting simplified sliding-sync connection (MSC4186):
//! after its first request, the receiver long-polls with `pos` and
//! `timeout` (`--sync-timeout-ms`, 30,000) and the same list and
//! extensions Element X's room list sends ([`super::sliding`]). One message
//! at a time, each sent once the receiver's long-poll is out (plus
//! `--e2e-gap-ms`), so every sample measures the wake-up path, as
//! `e2e-latency` does for `/sync` v2.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::sliding::{self, pos};
use super::{Ctx, Receivers, ms};
use crate::client::Session;
use crate::report::{Better, Outcome};
use crate::stats::Samples;

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    o.param("samples", s.ss_arrival_samples);
    o.param("gap_ms", s.e2e_gap_ms);
    o.param("timeout_ms", s.sync_timeout_ms);
    let users = ctx.pool_users(2).await?;
    let (sender, receiver) = (users[0].clone(), users[1].clone());
    let room = ctx.server.create_room(&sender, "bench ss-arrival", s.room_version.as_deref()).await?;
    ctx.server.join(&receiver, &room).await?;

    let marker = ctx.marker("ssarrival");
    let mut receivers = start_receiver(ctx, receiver, &room, &marker).await?;
    let result = measure(ctx, o, &sender, &room, &marker, &mut receivers).await;
    receivers.stop();
    result
}

/// The receiver's connection: a first request (setup: `timeout` 0, no
/// `pos`) that must show the room just joined (the most recently active of
/// the receiver's rooms, so in the window), then long-polls from each
/// answer's `pos` until stopped.
async fn start_receiver(ctx: &Ctx, user: Session, room: &str, marker: &str) -> Result<Receivers> {
    let body = sliding::request_body(marker);
    let (v, _) = ctx.server.sliding_sync(&user, None, 0, &body).await.context("the receiver's first sliding-sync request")?;
    if v["rooms"].get(room).is_none() {
        bail!("{} does not see the room in its first sliding-sync answer", user.user_id);
    }
    let first_pos = pos(&v)?;
    let (server, room, marker, timeout_ms) = (ctx.server.clone(), room.to_owned(), marker.to_owned(), ctx.sizes.sync_timeout_ms);
    Ok(Receivers::spawn(vec![(user, first_pos)], move |(user, mut pos_now), link| {
        let (server, room, marker, body) = (server.clone(), room.clone(), marker.clone(), body.clone());
        async move {
            while !link.stopping() {
                let (answer, at) = link.poll(server.sliding_sync(&user, Some(&pos_now), timeout_ms, &body)).await;
                let (v, _) = answer?;
                link.report(&v["rooms"][&room]["timeline"], &marker, at);
                pos_now = pos(&v).map_err(|e| anyhow!("long-poll: {e}"))?;
            }
            Ok(())
        }
    }))
}

async fn measure(
    ctx: &Ctx,
    o: &mut Outcome,
    sender: &Session,
    room: &str,
    marker: &str,
    receivers: &mut Receivers,
) -> Result<()> {
    let s = &ctx.sizes;
    let mut from_start = Samples::new();
    ctx.measure_begin();
    // Sample 0 is a warm-up, not counted.
    for i in 0..=s.ss_arrival_samples {
        receivers.wait_parked(1, Duration::from_millis(s.e2e_gap_ms), Duration::from_secs(30)).await?;
        let body = format!("{marker} {i}");
        let t0 = Instant::now();
        let event_id = ctx.server.send_text(sender, room, &body).await?;
        let arrival = loop {
            let a = receivers.next(Duration::from_secs(30)).await?;
            if a.body == body {
                break a;
            }
        };
        if arrival.event_id != event_id {
            bail!("sample {i}: the receiver got event {} but the send returned {event_id}", arrival.event_id);
        }
        if i > 0 {
            from_start.push_ms(ms(arrival.at - t0));
        }
    }
    ctx.measure_end("ss-arrival", o).await;

    o.figure("send_to_arrival_p50_ms", from_start.median()?, Better::Lower);
    o.figure("send_to_arrival_p90_ms", from_start.percentile(90.0)?, Better::Lower);
    o.verified = format!(
        "{} of {} messages arrived in the timeline of the room in the receiver's sliding-sync long-poll with the sent event id",
        from_start.len(),
        s.ss_arrival_samples
    );
    Ok(())
}
