//! `join-large`: a new user joins a room of M members; the time of the
//! join and of the joiner's first `/sync` that shows the room.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::{Ctx, SYNC_FILTER, bounded, check_room_view};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

const ROOM_NAME: &str = "bench join large";

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    let m = s.join_members.max(1);
    o.param("members", m);
    o.param("samples", s.join_samples);

    // Setup: a public room that M users are in.
    let members = ctx.pool_users(m).await?;
    let owner = members[0].clone();
    let room = ctx.server.create_room(&owner, ROOM_NAME, s.room_version.as_deref()).await?;
    let (server, r) = (ctx.server.clone(), room.clone());
    bounded(members[1..].to_vec(), s.setup_concurrency, move |u| {
        let (server, r) = (server.clone(), r.clone());
        async move { server.join(&u, &r).await }
    })
    .await?;
    let before = ctx.server.joined_members_count(&owner, &room).await?;
    if before != m {
        bail!("room has {before} joined members after setup, expected {m}");
    }
    let joiners = ctx.fresh_users(s.join_samples).await?;

    // Measured: each joiner joins, then syncs until the room shows.
    let (mut join_ms, mut sync_ms, mut sync_bytes) = (Samples::new(), Samples::new(), Samples::new());
    ctx.measure_begin();
    for (i, j) in joiners.iter().enumerate() {
        let t0 = Instant::now();
        ctx.server.join(j, &room).await?;
        let t1 = Instant::now();
        join_ms.push(t1 - t0);
        let (mut v, mut len) = ctx.server.sync(j, None, 0, SYNC_FILTER).await?;
        let limit = t1 + Duration::from_secs(60);
        while v["rooms"]["join"].get(&room).is_none() {
            if Instant::now() >= limit {
                bail!("{} joined but its sync did not show the room within 60 s", j.user_id);
            }
            let since = v["next_batch"].as_str().ok_or_else(|| anyhow!("sync without next_batch"))?.to_owned();
            let next = ctx.server.sync(j, Some(&since), 5_000, SYNC_FILTER).await?;
            (v, len) = (next.0, len + next.1);
        }
        sync_ms.push(t1.elapsed());
        sync_bytes.push_ms(len as f64);
        // After the timing: the room as the joiner first sees it.
        check_room_view(&v["rooms"]["join"][&room], ROOM_NAME, m + i + 1)
            .with_context(|| format!("{}'s first sync of the room", j.user_id))?;
    }
    ctx.measure_end("join-large", o).await;
    o.figure("join_p50_ms", join_ms.median()?, Better::Lower);
    o.figure("join_max_ms", join_ms.max(), Better::Lower);
    o.figure("first_sync_p50_ms", sync_ms.median()?, Better::Lower);
    o.figure("first_sync_bytes", sync_bytes.median()?, Better::Lower);

    let after = ctx.server.joined_members_count(&owner, &room).await?;
    if after != m + joiners.len() {
        bail!("room has {after} joined members, expected {}", m + joiners.len());
    }
    o.verified = format!(
        "joined_members went {m} → {after}; each joiner's first sync shows the room with create/power levels/join rules/name, the timeline senders' member events and the joined count"
    );
    Ok(())
}
