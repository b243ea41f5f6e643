//! `idle`: N users log in, send initial presence and stay; after settling,
//! the memory each watched process grew by, per session.

use std::time::Duration;

use serde::Serialize;

use crate::procstat::{Watched, rss_kib};
use crate::report::emit;
use crate::user::{Setup, next};

#[derive(Serialize)]
struct Row {
    scenario: &'static str,
    transport: String,
    users: usize,
    process: String,
    rss_before_kib: u64,
    rss_after_kib: u64,
    kib_per_session: f64,
}

/// Runs the scenario.
pub async fn run(
    setup: Setup,
    watched: Vec<Watched>,
    users: usize,
    settle: u64,
) -> anyhow::Result<()> {
    let before: Vec<Option<u64>> = watched.iter().map(|w| rss_kib(w.pid)).collect();
    let quic = setup.dialer.transport() == client_sdk::transport::Transport::Quic;
    let endpoints = crate::endpoints(&setup, if quic { users } else { 0 }, false)?;
    let online = crate::login_all(&setup, users, &endpoints).await?;
    // Keep reading (the servers' presence echoes), then let them settle.
    // Each user closes its stream when told (so the servers end the
    // sessions at once, not at their idle timeouts).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut keep = Vec::new();
    let users = online.len();
    for (_, mut u) in online {
        let mut stopped = stopped.clone();
        keep.push(tokio::spawn(async move {
            let told = tokio::select! {
                told = stopped.wait_for(|stop| *stop) => told.is_ok(),
                _ = async { while next(&mut u.reader).await.is_some() {} } => false,
            };
            if told {
                u.close().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let transport = format!("{:?}", setup.dialer.transport()).to_lowercase();
    for (w, before) in watched.iter().zip(before) {
        let (Some(b), Some(a)) = (before, rss_kib(w.pid)) else {
            continue;
        };
        let row = Row {
            scenario: "idle",
            transport: transport.clone(),
            users,
            process: w.name.clone(),
            rss_before_kib: b,
            rss_after_kib: a,
            kib_per_session: (a as f64 - b as f64) / users as f64,
        };
        let human = format!(
            "idle {users} users over {transport}: {} grew {} KiB → {:.1} KiB per session",
            w.name,
            a as i64 - b as i64,
            row.kib_per_session
        );
        emit(&row, human);
    }
    let _ = stop.send(true);
    for k in keep {
        let _ = k.await;
    }
    crate::close_endpoints(&endpoints).await;
    Ok(())
}
