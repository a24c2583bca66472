//! `e2e-latency`: the time from the start of a send to the message arriving
//! in another user's long-poll `/sync`. One message at a time, each sent
//! once the receiver is parked in its long-poll, so every sample measures
//! the wake-up path rather than a queue.
//!
//! The headline counts from the start of the send: a server may wake the
//! receiver before it answers the sender, and a figure counted from the
//! answer would score such arrivals as 0 ms. The answer-relative figure is
//! kept, named as such, as a secondary one.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{Ctx, Receivers, ms};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    o.param("samples", s.e2e_samples);
    o.param("gap_ms", s.e2e_gap_ms);
    let users = ctx.pool_users(2).await?;
    let (sender, receiver) = (users[0].clone(), users[1].clone());
    let room = ctx.server.create_room(&sender, "bench e2e", s.room_version.as_deref()).await?;
    ctx.server.join(&receiver, &room).await?;

    let marker = ctx.marker("e2e");
    let mut receivers = Receivers::start(ctx, vec![receiver], &room, &marker).await?;
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
    let (mut from_start, mut from_answer) = (Samples::new(), Samples::new());
    let mut before_answer = 0usize;
    ctx.measure_begin();
    // Sample 0 is a warm-up, not counted.
    for i in 0..=s.e2e_samples {
        receivers.wait_parked(1, Duration::from_millis(s.e2e_gap_ms), Duration::from_secs(30)).await?;
        let body = format!("{marker} {i}");
        let t0 = Instant::now();
        let event_id = ctx.server.send_text(sender, room, &body).await?;
        let answered = Instant::now();
        let arrival = loop {
            let a = receivers.next(Duration::from_secs(30)).await?;
            if a.body == body {
                break a;
            }
        };
        if arrival.event_id != event_id {
            bail!("sample {i}: receiver got event {} but the send returned {event_id}", arrival.event_id);
        }
        if i == 0 {
            continue;
        }
        if arrival.at < answered {
            before_answer += 1;
        }
        from_start.push_ms(ms(arrival.at - t0));
        from_answer.push(arrival.at.saturating_duration_since(answered));
    }
    ctx.measure_end("e2e-latency", o).await;

    o.figure("send_to_arrival_p50_ms", from_start.percentile(50.0)?, Better::Lower);
    o.figure("send_to_arrival_p95_ms", from_start.percentile(95.0)?, Better::Lower);
    o.figure("send_to_arrival_p99_ms", from_start.percentile(99.0)?, Better::Lower);
    o.figure("answer_to_arrival_p50_ms", from_answer.percentile(50.0)?, Better::Lower);
    o.figure("answer_to_arrival_p99_ms", from_answer.percentile(99.0)?, Better::Lower);
    o.verified = format!(
        "{} of {} messages arrived in the receiver's long-poll with the sent event id ({before_answer} before the send was answered: 0 ms in answer_to_arrival)",
        from_start.len(),
        s.e2e_samples
    );
    Ok(())
}
