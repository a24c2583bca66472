//! `fanout`: one message in a room whose M members are all parked in a
//! long-poll `/sync`; the time from the send until each member has it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{Ctx, Receivers, bounded, ms};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    let m = s.fanout_members;
    o.param("members", m);
    o.param("rounds", s.fanout_rounds);
    let users = ctx.pool_users(m + 1).await?;
    let sender = users[0].clone();
    let members = users[1..].to_vec();
    let room = ctx.server.create_room(&sender, "bench fanout", s.room_version.as_deref()).await?;
    let (server, r) = (ctx.server.clone(), room.clone());
    bounded(members.clone(), s.setup_concurrency, move |u| {
        let (server, r) = (server.clone(), r.clone());
        async move { server.join(&u, &r).await }
    })
    .await?;

    let marker = ctx.marker("fanout");
    let mut receivers = Receivers::start(ctx, members, &room, &marker).await?;
    let result = measure(ctx, o, &sender, &room, &marker, &mut receivers).await;
    receivers.stop();
    result
}

async fn measure(
    ctx: &Ctx,
    o: &mut Outcome,
    sender: &crate::client::Session,
    room: &str,
    marker: &str,
    receivers: &mut Receivers,
) -> Result<()> {
    let s = &ctx.sizes;
    let m = s.fanout_members;
    let (mut round_p50, mut round_max, mut send_lat) = (Samples::new(), Samples::new(), Samples::new());
    let all_in = Duration::from_secs(60);
    ctx.measure_begin();
    // Round 0 is a warm-up, not counted: every member then has its
    // connection open and has been through one wake-up.
    for round in 0..=s.fanout_rounds {
        receivers.wait_parked(m, Duration::from_millis(s.fanout_gap_ms), all_in).await?;
        let body = format!("{marker} {round}");
        let t0 = Instant::now();
        let event_id = ctx.server.send_text(sender, room, &body).await?;
        if round > 0 {
            send_lat.push(t0.elapsed());
        }
        let mut got = HashSet::new();
        let mut lat = Samples::new();
        let deadline = Instant::now() + all_in;
        while got.len() < m {
            let left = deadline.saturating_duration_since(Instant::now());
            let a = match receivers.next(left).await {
                Ok(a) => a,
                Err(e) => bail!("round {round}: {} of {m} members have the message: {e:#}", got.len()),
            };
            if a.body != body || !got.insert(a.receiver) {
                continue;
            }
            if a.event_id != event_id {
                bail!("round {round}: member {} got event {} but the send returned {event_id}", a.receiver, a.event_id);
            }
            lat.push_ms(ms(a.at - t0));
        }
        if round > 0 {
            round_p50.push_ms(lat.median()?);
            round_max.push_ms(lat.max());
        }
    }
    ctx.measure_end("fanout", o).await;

    o.figure("fanout_p50_ms", round_p50.median()?, Better::Lower);
    o.figure("fanout_all_ms", round_max.median()?, Better::Lower);
    o.figure("fanout_all_worst_ms", round_max.max(), Better::Lower);
    o.figure("send_p50_ms", send_lat.median()?, Better::Lower);
    o.verified = format!("each of {} rounds: all {m} members' long-polls returned the sent event id", s.fanout_rounds);
    Ok(())
}
