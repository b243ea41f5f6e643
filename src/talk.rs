//! `longlink send` and `longlink recv`: a client from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use client_sdk::{Client, ClientError, ConnectOptions};

/// Connection arguments shared by send and recv.
#[derive(Args)]
pub struct Login {
    /// CM (or balancer) QUIC address.
    #[arg(long)]
    server: SocketAddr,
    /// Bare JID to log in as.
    #[arg(long)]
    jid: String,
    /// Password.
    #[arg(long)]
    password: String,
    /// CA certificate file to trust.
    #[arg(long)]
    ca: PathBuf,
    /// Resource to bind.
    #[arg(long)]
    resource: Option<String>,
}

impl Login {
    async fn connect(&self) -> Result<Client> {
        let mut opts =
            ConnectOptions::new(self.server, &self.jid, &self.password).with_ca_file(&self.ca);
        if let Some(r) = &self.resource {
            opts = opts.with_resource(r);
        }
        Client::connect(opts).await.context("logging in")
    }
}

/// Arguments of `longlink send`.
#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    login: Login,
    /// Recipient JID.
    #[arg(long)]
    to: String,
    /// Message text.
    #[arg(long)]
    body: String,
}

/// Arguments of `longlink recv`.
#[derive(Args)]
pub struct RecvArgs {
    #[command(flatten)]
    login: Login,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds without a message.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// `longlink send`.
pub async fn send(args: SendArgs) -> Result<()> {
    let client = args.login.connect().await?;
    let id = client.send_message(&args.to, &args.body).await?;
    // A ping round trip proves the server has taken the message.
    client.ping().await.context("waiting for the server")?;
    println!(
        "{}",
        serde_json::json!({ "id": id, "from": client.jid(), "to": args.to })
    );
    client.disconnect().await;
    Ok(())
}

/// `longlink recv`.
pub async fn recv(args: RecvArgs) -> Result<()> {
    let mut client = args.login.connect().await?;
    client.send_presence(0).await?;
    let mut received = 0usize;
    while args.count.is_none_or(|c| received < c) {
        match client.next_message(Duration::from_secs(args.timeout)).await {
            Ok(m) => {
                received += 1;
                println!(
                    "{}",
                    serde_json::json!({
                        "id": m.id, "from": m.from, "to": m.to, "type": m.kind,
                        "body": m.body, "delay": m.delay, "error": m.error,
                    })
                );
            }
            Err(ClientError::Timeout) => break,
            Err(e) => return Err(e.into()),
        }
    }
    client.disconnect().await;
    if let Some(c) = args.count
        && received < c
    {
        anyhow::bail!("received {received} of {c} messages before the timeout");
    }
    Ok(())
}
