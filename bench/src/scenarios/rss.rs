//! `rss`: the server's resident memory idle (before the first scenario of
//! the run, and now), and its peak during `send` and `fanout` (taken from
//! those scenarios when they ran in this run, else run here).

use anyhow::{Context, Result, bail};

use super::{Ctx, fanout, send};
use crate::report::{Better, Outcome};
use crate::rss::{hwm_kb, rss_kb};

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let Some(pid) = ctx.server.pid else { bail!("rss needs the server's process id (--pid / --a-pid / --b-pid)") };
    o.param("pid", pid);
    if let Some(kb) = ctx.idle_rss_kb {
        o.figure("idle_start_rss_kb", kb as f64, Better::Lower);
    }
    for name in ["send", "fanout"] {
        let known = ctx.peaks_kb.lock().expect("peaks lock").get(name).copied();
        let peak = match known {
            Some(kb) => kb,
            None => {
                eprintln!("  [{}] rss: running {name} to measure its peak", ctx.server.label);
                let mut inner = Outcome::new("rss", &ctx.server.label, ctx.server.base.as_str());
                let ran = if name == "send" { send::run(ctx, &mut inner).await } else { fanout::run(ctx, &mut inner).await };
                ran.with_context(|| format!("{name} (run by rss)"))?;
                inner.rss_peak_kb.context("no peak sampled")?
            }
        };
        o.figure(format!("{name}_peak_rss_kb"), peak as f64, Better::Lower);
    }
    o.figure("idle_end_rss_kb", rss_kb(pid)? as f64, Better::Lower);
    o.figure("lifetime_peak_rss_kb", hwm_kb(pid)? as f64, Better::Lower);
    o.verified = format!("read from /proc/{pid}/status (VmRSS sampled every 20 ms, VmHWM)");
    Ok(())
}
