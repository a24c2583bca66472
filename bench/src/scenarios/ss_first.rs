//! `ss-first`: the first simplified sliding-sync answer (MSC4186) Element
//! X's room list waits for, for a user in N rooms: a fresh connection (no
//! `pos`, a new `conn_id` each sample, `timeout` 0) with the `all_rooms`
//! list's first window of 20 rooms, `timeline_limit` 1, and the
//! extensions enabled ([`super::sliding`]). The first screen of a user in
//! 2,000 rooms (issue 14's goal).
//!
//! Setup knows which rooms are the most recently active: after every room
//! was created and given its messages, 20 rooms spread over the creation
//! order get one more message each, one after another and in the reverse
//! of their creation order, so neither the first nor the last created
//! rooms are the window, and the window's order is known.

use std::time::Instant;

use anyhow::{Context, Result};

use super::sliding::{self, ExpectedRoom, WINDOW};
use super::{Ctx, bounded};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    let (n, messages) = (s.ss_first_rooms.max(1), s.ss_first_messages);
    o.param("rooms", n);
    o.param("messages_per_room", messages);
    o.param("samples", s.ss_first_samples);

    // Setup: a fresh user (so it is in these rooms only) creates N named
    // rooms one after another (one user's concurrent creates within a
    // millisecond may collide in room version 12), then the messages go
    // out `setup_concurrency` at a time.
    let user = ctx.fresh_users(1).await?.remove(0);
    let marker = ctx.marker("ssfirst");
    let started = Instant::now();
    let mut rooms = Vec::with_capacity(n);
    for i in 0..n {
        rooms.push(ctx.server.create_room(&user, &room_name(i), s.room_version.as_deref()).await?);
        if (i + 1) % 500 == 0 && i + 1 < n {
            eprintln!(
                "  [{}] ss-first: {} of {n} rooms created ({:.0} s)",
                ctx.server.label,
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let items: Vec<(usize, String)> = rooms.iter().cloned().enumerate().collect();
    let (server, u, m) = (ctx.server.clone(), user.clone(), marker.clone());
    bounded(items, s.setup_concurrency, move |(i, room)| {
        let (server, u, m) = (server.clone(), u.clone(), m.clone());
        async move {
            for j in 0..messages {
                server.send_text(&u, &room, &format!("{m} {i} {j}")).await?;
            }
            Ok(())
        }
    })
    .await
    .context("sending the rooms' messages")?;
    // The window: its rooms get the last messages, one after another, the
    // most recent last.
    let picks = window_picks(n, WINDOW);
    let mut newest = Vec::with_capacity(picks.len());
    for &i in picks.iter().rev() {
        let event_id = ctx.server.send_text(&user, &rooms[i], &format!("{marker} {i} last")).await?;
        newest.push(ExpectedRoom { room_id: rooms[i].clone(), name: room_name(i), newest_event_id: event_id });
    }
    newest.reverse();
    eprintln!("  [{}] ss-first: setup of {n} rooms done in {:.0} s", ctx.server.label, started.elapsed().as_secs_f64());

    // Measured: each sample a new connection. Every answer is verified
    // after its timing.
    let (mut took, mut bytes) = (Samples::new(), Samples::new());
    let mut with_bump_stamp = usize::MAX;
    ctx.measure_begin();
    for sample in 0..s.ss_first_samples {
        let body = sliding::request_body(&format!("{marker}-{sample}"));
        let t = Instant::now();
        let (v, len) = ctx.server.sliding_sync(&user, None, 0, &body).await?;
        took.push(t.elapsed());
        bytes.push_ms(len as f64);
        let stamped = sliding::check_first_answer(&v, &user.user_id, n, &newest)
            .with_context(|| format!("first sliding-sync answer, sample {sample}"))?;
        with_bump_stamp = with_bump_stamp.min(stamped);
    }
    ctx.measure_end("ss-first", o).await;
    o.figure("first_answer_p50_ms", took.median()?, Better::Lower);
    o.figure("first_answer_p90_ms", took.percentile(90.0)?, Better::Lower);
    o.figure("response_bytes", bytes.median()?, Better::Lower);
    o.verified = format!(
        "each of {} answers: lists.{}.count {n}, exactly the {} most recently active rooms, each with one timeline event (the newest sent) and create/name/power levels/join rules/history visibility/own member in required_state; bump_stamp never against the activity order (at least {} of {} rooms carried one)",
        s.ss_first_samples,
        sliding::LIST_NAME,
        newest.len(),
        with_bump_stamp,
        newest.len()
    );
    Ok(())
}

/// The indices of `window` rooms (all of them when there are fewer),
/// spread evenly over the `total` created, in creation order.
fn window_picks(total: usize, window: usize) -> Vec<usize> {
    let w = window.min(total);
    if w == 0 {
        return Vec::new();
    }
    let stride = total / w;
    (0..w).map(|j| j * stride + stride / 2).collect()
}

fn room_name(i: usize) -> String {
    format!("bench ss-first {i}")
}

#[cfg(test)]
mod tests {
    use super::window_picks;

    #[test]
    fn picks_are_spread_distinct_and_in_range() {
        assert_eq!(window_picks(2000, 20)[..3], [50, 150, 250]);
        assert_eq!(*window_picks(2000, 20).last().unwrap(), 1950);
        assert_eq!(window_picks(20, 20), (0..20).collect::<Vec<_>>());
        assert_eq!(window_picks(3, 20), vec![0, 1, 2]);
        assert!(window_picks(0, 20).is_empty());
        for total in [1, 19, 20, 21, 39, 41, 999, 2000, 2017] {
            let p = window_picks(total, 20);
            assert_eq!(p.len(), total.min(20));
            assert!(p.windows(2).all(|w| w[0] < w[1]), "{total}: {p:?}");
            assert!(p.iter().all(|&i| i < total), "{total}: {p:?}");
        }
    }
}
