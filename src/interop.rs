//! `longlink interop`: the conformance suite of the `interop` crate against any
//! XMPP server, one line per case.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use interop::compliance::run_compliance;
use interop::{Target, Transport, run_suite};

/// Which suite `longlink interop` runs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Suite {
    /// The protocol cases: logins, messages, offline delivery, errors, SM.
    Conformance,
    /// The features XEP-0479 asks of a server, by lookup (one account).
    Compliance,
}

/// Arguments of `longlink interop`.
#[derive(clap::Args)]
pub struct InteropArgs {
    /// Server address, HOST:PORT.
    #[arg(long)]
    server: String,
    /// XMPP domain (also the TLS server name).
    #[arg(long)]
    domain: String,
    /// tcp (STARTTLS), tls (direct TLS) or quic.
    #[arg(long)]
    transport: Transport,
    /// CA certificates to trust (PEM); the system's if absent.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// An existing account, USER:PASSWORD (give two).
    #[arg(long = "account", num_args = 1)]
    accounts: Vec<String>,
    /// The suite to run.
    #[arg(long, value_enum, default_value = "conformance")]
    suite: Suite,
}

/// Runs the suite; fails if any case failed.
pub async fn run(args: InteropArgs) -> Result<()> {
    let server: SocketAddr = tokio::net::lookup_host(&args.server)
        .await
        .with_context(|| format!("resolving {}", args.server))?
        .next()
        .with_context(|| format!("{} resolves to nothing", args.server))?;
    let accounts: Vec<(String, String)> = args
        .accounts
        .iter()
        .filter_map(|a| a.split_once(':'))
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
        .collect();
    let [first, second] = <[(String, String); 2]>::try_from(accounts)
        .map_err(|_| anyhow::anyhow!("give two accounts: --account USER:PASSWORD twice"))?;
    let target = Target {
        server,
        domain: args.domain,
        transport: args.transport,
        ca: args.ca,
        accounts: [first, second],
    };
    let outcomes = match args.suite {
        Suite::Conformance => run_suite(&target).await,
        Suite::Compliance => run_compliance(&target).await,
    };
    let mut failed = 0;
    for o in &outcomes {
        match &o.result {
            Ok(()) => println!("PASS  {}", o.name),
            Err(why) => {
                failed += 1;
                println!("FAIL  {}: {why}", o.name);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} cases failed", outcomes.len());
    }
    Ok(())
}
