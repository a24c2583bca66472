//! `register`: N accounts through the `/register` dummy flow, then N
//! password logins; accounts and logins per second.

use std::time::Instant;

use anyhow::{Result, bail};

use super::{Ctx, PASSWORD, bounded};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let (n, concurrency) = (ctx.sizes.register_users, ctx.sizes.register_concurrency);
    o.param("users", n);
    o.param("concurrency", concurrency);
    let names: Vec<String> = (0..n).map(|_| ctx.localpart()).collect();

    ctx.measure_begin();
    let server = ctx.server.clone();
    let started = Instant::now();
    let registered = bounded(names.clone(), concurrency, move |name| {
        let server = server.clone();
        async move {
            let t = Instant::now();
            let session = server.register(&name, PASSWORD).await?;
            Ok((session, t.elapsed()))
        }
    })
    .await?;
    let register_s = started.elapsed().as_secs_f64();

    let server = ctx.server.clone();
    let started = Instant::now();
    let logged_in = bounded(names.clone(), concurrency, move |name| {
        let server = server.clone();
        async move {
            let t = Instant::now();
            let session = server.login(&name, PASSWORD).await?;
            Ok((session, t.elapsed()))
        }
    })
    .await?;
    let login_s = started.elapsed().as_secs_f64();
    ctx.measure_end("register", o).await;

    let (mut reg_lat, mut login_lat) = (Samples::new(), Samples::new());
    registered.iter().for_each(|(_, d)| reg_lat.push(*d));
    logged_in.iter().for_each(|(_, d)| login_lat.push(*d));
    o.figure("registrations_per_s", n as f64 / register_s, Better::Higher);
    o.figure("register_p50_ms", reg_lat.median()?, Better::Lower);
    o.figure("logins_per_s", n as f64 / login_s, Better::Higher);
    o.figure("login_p50_ms", login_lat.median()?, Better::Lower);

    // Verify: every login's token answers /whoami with the account it
    // logged into, whose id names the localpart registered.
    for ((reg, _), (login, _)) in registered.iter().zip(&logged_in) {
        let who = ctx.server.whoami(login).await?;
        if who != reg.user_id || !who.starts_with(&format!("@{}:", reg.localpart)) {
            bail!("login for {} answers whoami {who}", reg.user_id);
        }
    }
    o.verified = format!("{n} accounts: each login token answers /whoami with its account");
    let sessions: Vec<_> = registered.into_iter().map(|(s, _)| s).collect();
    ctx.add_to_pool(&sessions).await;
    Ok(())
}
