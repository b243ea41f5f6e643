//! A quick throughput probe (not a test): PAIRS senders on one CM each send
//! MESSAGES chat messages to a receiver on another CM; prints messages per
//! second delivered end to end. The load tool proper comes with the
//! benchmarking issue; `bench/quick.sh` drives this.
//!
//! Usage: flood CM_A CM_B CA_FILE DOMAIN PAIRS MESSAGES (users u0..u{2*PAIRS-1}, password "pw");
//! `FLOOD_SM=0` in the environment turns stream management off (to measure its cost).

use std::time::{Duration, Instant};

use client_sdk::{Client, ConnectOptions};

/// Messages a sender has in flight before waiting for a round trip.
const WINDOW: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        return Err("usage: flood CM_A CM_B CA DOMAIN PAIRS MESSAGES".into());
    }
    let (cm_a, cm_b) = (args[1].parse()?, args[2].parse()?);
    let (ca, domain) = (args[3].clone(), args[4].clone());
    let pairs: usize = args[5].parse()?;
    let messages: usize = args[6].parse()?;
    let sm = std::env::var("FLOOD_SM").map_or(true, |v| v != "0");
    let opts = |addr, user: String| {
        let o = ConnectOptions::new(addr, &format!("{user}@{domain}"), "pw")
            .with_ca_file(&ca)
            .with_receipts(false);
        if sm { o } else { o.without_stream_management() }
    };
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..pairs {
        let s = Client::connect(opts(cm_a, format!("u{}", 2 * i))).await?;
        let r = Client::connect(opts(cm_b, format!("u{}", 2 * i + 1))).await?;
        r.send_presence(0).await?;
        r.ping().await?;
        senders.push(s);
        receivers.push(r);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut r) in receivers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while n < messages {
                if r.next_message(Duration::from_secs(30)).await.is_err() {
                    break;
                }
                n += 1;
            }
            (i, n)
        }));
    }
    // Senders run concurrently, each with at most WINDOW messages in flight:
    // a ping round trip closes each window, like clients waiting for acks.
    let mut sending = Vec::new();
    for (i, s) in senders.into_iter().enumerate() {
        let to = format!("u{}@{domain}", 2 * i + 1);
        sending.push(tokio::spawn(async move {
            for k in 0..messages {
                let body =
                    format!("message {k} with some padding to be about a hundred bytes long......");
                if s.send_message(&to, &body).await.is_err() {
                    break;
                }
                if k % WINDOW == WINDOW - 1 && s.ping().await.is_err() {
                    break;
                }
            }
            s
        }));
    }
    let mut senders = Vec::new();
    for t in sending {
        senders.push(t.await?);
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += t.await?.1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(senders);
    println!(
        "{{\"pairs\":{pairs},\"sent\":{},\"delivered\":{delivered},\"seconds\":{secs:.3},\"per_second\":{:.0}}}",
        pairs * messages,
        delivered as f64 / secs
    );
    Ok(())
}
