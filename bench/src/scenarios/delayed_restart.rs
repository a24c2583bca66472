//! `delayed-restart`: what Element Call asks of a server during a call.
//! Each call member holds a delayed "leave" state event (MSC4140) and
//! restarts it every few seconds; the server must keep up with every
//! member of every call at once. Here M members each schedule one (with a
//! delay far longer than the run) and then restart it back to back, all
//! members at once, without an access token (by delay id, as
//! lk-jwt-service does): restarts per second sustained and their latency.
//!
//! Verified by reading the listing back: each member's event is still
//! scheduled (none fired), restarted during the run (its `running_since`
//! is after the run began). The events are cancelled afterwards.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use serde_json::json;

use super::{Ctx, bounded};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";
/// Far past the run: nothing fires while it is measured.
const DELAY_MS: u64 = 3_600_000;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    let (members, restarts) = (s.delayed_members, s.delayed_restarts);
    o.param("members", members);
    o.param("restarts_per_member", restarts);
    o.param("delay_ms", DELAY_MS);
    let users = ctx.pool_users(members).await?;
    let room = ctx.server.create_room_open_to(&users[0], "bench call", s.room_version.as_deref(), CALL_MEMBER).await?;
    let server = ctx.server.clone();
    let joining: Vec<_> = users.iter().skip(1).cloned().collect();
    let joined_room = room.clone();
    bounded(joining, s.setup_concurrency, move |u| {
        let (server, room) = (server.clone(), joined_room.clone());
        async move { server.join(&u, &room).await }
    })
    .await?;
    let mut delay_ids = Vec::with_capacity(members);
    for u in &users {
        let key = format!("_{}_{}_m.call", u.user_id, u.device_id);
        delay_ids.push(ctx.server.schedule_delayed_state(u, &room, CALL_MEMBER, &key, DELAY_MS, &json!({})).await?);
    }

    let began_ms = unix_ms();
    ctx.measure_begin();
    let started = Instant::now();
    let server = ctx.server.clone();
    let timings = bounded(delay_ids.clone(), members, move |delay_id| {
        let server = server.clone();
        async move {
            let mut taken = Vec::with_capacity(restarts);
            for _ in 0..restarts {
                let t = Instant::now();
                server.delayed_event_action(&delay_id, "restart").await?;
                taken.push(t.elapsed());
            }
            Ok(taken)
        }
    })
    .await?;
    let elapsed_s = started.elapsed().as_secs_f64();
    ctx.measure_end("delayed-restart", o).await;

    let mut latency = Samples::new();
    timings.iter().flatten().for_each(|d| latency.push(*d));
    o.figure("restarts_per_s", latency.len() as f64 / elapsed_s, Better::Higher);
    o.figure("restart_p50_ms", latency.percentile(50.0)?, Better::Lower);
    o.figure("restart_p99_ms", latency.percentile(99.0)?, Better::Lower);

    // Verify, then clean up.
    for (u, delay_id) in users.iter().zip(&delay_ids) {
        let listed = ctx.server.delayed_events(u).await?;
        let Some(mine) = listed.iter().find(|e| e["delay_id"] == json!(delay_id)) else {
            bail!("{}'s delayed event is no longer scheduled", u.user_id);
        };
        let since = mine["running_since"].as_u64().unwrap_or(0);
        if since < began_ms {
            bail!("{}'s delayed event was not restarted during the run (running_since {since})", u.user_id);
        }
        ctx.server.delayed_event_action(delay_id, "cancel").await?;
    }
    o.verified = format!(
        "{} restarts of {members} members' delayed events, every one answered 200; each event still scheduled and restarted during the run, then cancelled",
        latency.len()
    );
    Ok(())
}
