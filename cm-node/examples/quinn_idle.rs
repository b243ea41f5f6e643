//! `quinn_idle` (`cargo run --release -p cm-node --example quinn_idle`): what quinn alone needs per idle server-side connection on
//! this machine, the yardstick for longlink's idle-memory goal.
//!
//! The tool starts itself again as a bare quinn server (a child process, so
//! its memory is its own): it accepts connections, takes one bidirectional
//! stream each and waits on it in one task per connection, as the least a
//! server can do. The parent opens N connections with one stream each,
//! writes a few bytes, lets the server settle and reports the server's RSS
//! growth per connection, once with quinn's default transport settings and
//! once with the CM's settings for idle phones
//! (`cm_node::idle_phone_transport`). JSON lines on stdout, a line each on
//! stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(name = "quinn-idle", about = "RSS per idle quinn server connection")]
struct Cli {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Seconds to let the server settle before reading its memory.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// (internal) run as the server with these settings: default or phone.
    #[arg(long, hide = true)]
    serve: Option<String>,
    /// (internal) the server's certificate and key (DER), for --serve.
    #[arg(long, hide = true)]
    dir: Option<std::path::PathBuf>,
}

/// Resident memory of process `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn transport(kind: &str) -> quinn::TransportConfig {
    match kind {
        "phone" => cm_node::idle_phone_transport(Duration::from_secs(25), Duration::from_secs(90)),
        _ => quinn::TransportConfig::default(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let (Some(kind), Some(dir)) = (&cli.serve, &cli.dir) {
        return serve(kind, dir).await;
    }
    let dir = tempfile::tempdir()?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    std::fs::write(dir.path().join("cert.der"), cert.cert.der())?;
    std::fs::write(dir.path().join("key.der"), cert.signing_key.serialize_der())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let client = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
    for kind in ["default", "phone"] {
        measure(&cli, kind, dir.path(), &client).await?;
    }
    Ok(())
}

async fn measure(
    cli: &Cli,
    kind: &str,
    dir: &std::path::Path,
    client: &quinn::ClientConfig,
) -> Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve", kind, "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
    let server: SocketAddr = line.trim().parse().context("server address")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(child.id()).unwrap_or(0);
    let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into())?;
    endpoint.set_default_client_config(client.clone());
    let mut held = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        let conn = endpoint.connect(server, "localhost")?.await?;
        let (mut send, recv) = conn.open_bi().await?;
        send.write_all(b"hello").await?;
        held.push((conn, send, recv));
    }
    tokio::time::sleep(Duration::from_secs(cli.settle)).await;
    let after = rss_kib(child.id()).unwrap_or(0);
    let per = after.saturating_sub(before) as f64 / cli.connections as f64;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "quinn-idle", "transport": kind,
            "connections": cli.connections, "kib_per_connection": per,
        })
    );
    eprintln!(
        "quinn alone, {kind} transport: {} connections, server grew {} KiB → {per:.1} KiB per connection",
        cli.connections,
        after.saturating_sub(before)
    );
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

async fn serve(kind: &str, dir: &std::path::Path) -> Result<()> {
    let cert = rustls::pki_types::CertificateDer::from(std::fs::read(dir.join("cert.der"))?);
    let key = rustls::pki_types::PrivateKeyDer::try_from(std::fs::read(dir.join("key.der"))?)
        .map_err(|e| anyhow::anyhow!("key: {e}"))?;
    let mut config = quinn::ServerConfig::with_single_cert(vec![cert], key)?;
    config.transport_config(Arc::new(transport(kind)));
    let endpoint = quinn::Endpoint::server(config, ([127, 0, 0, 1], 0).into())?;
    println!("{}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((_send, mut recv)) = conn.accept_bi().await else {
                return;
            };
            while let Ok(Some(_)) = recv.read_chunk(4096, true).await {}
        });
    }
    Ok(())
}
