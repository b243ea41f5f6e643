//! Idle sessions (not a test): logs N users in at a CM over QUIC (SCRAM,
//! bind, stream management, presence), prints "ready" and holds them until
//! stdin closes. `bench/idle.sh` reads the CM's and the core's memory before
//! and after.
//!
//! Usage: idle CM CA_FILE DOMAIN N (users u0..u{N-1}, password "pw")

use std::io::BufRead;

use client_sdk::{Client, ConnectOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        return Err("usage: idle CM CA DOMAIN N".into());
    }
    let cm = args[1].parse()?;
    let (ca, domain) = (args[2].clone(), args[3].clone());
    let n: usize = args[4].parse()?;
    let mut clients = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let logins = chunk.iter().map(|i| {
            let opts = ConnectOptions::new(cm, &format!("u{i}@{domain}"), "pw").with_ca_file(&ca);
            tokio::spawn(async move {
                let c = Client::connect(opts).await?;
                c.send_presence(0).await?;
                c.ping().await?;
                Ok::<_, client_sdk::ClientError>(c)
            })
        });
        for l in logins.collect::<Vec<_>>() {
            clients.push(l.await??);
        }
    }
    println!("ready {}", clients.len());
    // hold the sessions until told to stop
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    })
    .await?;
    drop(clients);
    Ok(())
}
