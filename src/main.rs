//! `longlink`: run a local deployment or one role, manage accounts, and talk
//! to a server from the command line.

mod accounts;
mod deploy;
mod interop;
mod talk;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// mimalloc, not glibc's malloc: under core-sim the core held 3.5 KB per
/// session on it against glibc's 5.0 after a burst of logins, and took
/// them twice as fast (ARCHITECTURE.md, Threads and memory); a CM's idle
/// QUIC session costs about 3 % more.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "longlink",
    version,
    about = "An XMPP server whose client connections live on connection-manager nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Runtime worker threads. Default: 1 for `core` (its router is one
    /// task; a single-threaded runtime spares it a cross-thread wakeup per
    /// message), one per CPU for everything else.
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Cluster PKI.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Start a complete local deployment in the foreground (core, embedded storage, CMs).
    Up(deploy::UpArgs),
    /// Run the IM core alone.
    Core {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Override the CM-facing UDP address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override the admin HTTP address.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Run one CM node alone.
    Cm {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Override the client UDP address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override the core address.
        #[arg(long)]
        core: Option<SocketAddr>,
        /// Serve the admin HTTP endpoint (`/metrics`) here (overrides
        /// `admin_listen` of the configuration).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Run the UDP load balancer alone.
    Lb {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Stop sending new connections to a CM (its connections continue).
    Drain {
        /// Node name, e.g. cm-2.
        node: String,
        /// Deployment directory (as given to `longlink up`).
        #[arg(long, default_value = "dev-deploy")]
        dir: PathBuf,
        /// Undo: take new connections again.
        #[arg(long)]
        undo: bool,
    },
    /// Send one chat message.
    Send(talk::SendArgs),
    /// Receive messages, one JSON object per line on stdout.
    Recv(talk::RecvArgs),
    /// Create an account.
    Adduser(accounts::AccountArgs),
    /// Delete an account.
    Deluser(accounts::AccountArgs),
    /// Change an account's password.
    Passwd(accounts::AccountArgs),
    /// Run the conformance suite against any XMPP server.
    Interop(interop::InteropArgs),
    /// Print the core's routing table.
    Routes {
        /// Deployment directory (as given to `longlink up`).
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Make a private CA and the core and CM certificates.
    Init {
        /// Directory for the PEM files.
        #[arg(long)]
        dir: PathBuf,
        /// XMPP domain the CMs serve.
        #[arg(long)]
        domain: String,
        /// Number of CM nodes (cm-1 .. cm-N).
        #[arg(long, default_value_t = 2)]
        cm: u32,
        /// Re-issue everything, replacing existing keys.
        #[arg(long)]
        force: bool,
    },
}

/// Logs go to stderr, in colour only when it is a terminal and `NO_COLOR`
/// is unset (<https://no-color.org>): a log file gets no escape codes.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .init();
}

/// Whether log lines may carry colour codes.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Up(_)
            | Command::Core { .. }
            | Command::Lb { .. }
            | Command::Adduser(_)
            | Command::Deluser(_)
            | Command::Passwd(_)
    ) {
        // Before any thread: what these make (database, tokens) is private.
        deploy::private_umask();
    }
    init_tracing();
    let threads = cli.threads.unwrap_or(match cli.command {
        Command::Core { .. } => 1,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Certs {
            command:
                CertsCommand::Init {
                    dir,
                    domain,
                    cm,
                    force,
                },
        } => {
            let report = certs::init(&dir, &domain, cm, force).context("making certificates")?;
            for p in &report.created {
                println!("created {}", p.display());
            }
            for p in &report.kept {
                println!("kept    {}", p.display());
            }
            Ok(())
        }
        Command::Up(args) => deploy::up(args).await,
        Command::Core {
            config,
            listen,
            admin_listen,
        } => deploy::run_core(&config, listen, admin_listen).await,
        Command::Cm {
            config,
            listen,
            core,
            admin_listen,
        } => deploy::run_cm(&config, listen, core, admin_listen).await,
        Command::Lb { config } => deploy::run_lb(&config).await,
        Command::Drain { node, dir, undo } => accounts::drain(&dir, &node, undo).await,
        Command::Send(args) => talk::send(args).await,
        Command::Recv(args) => talk::recv(args).await,
        Command::Adduser(args) => accounts::adduser(args).await,
        Command::Deluser(args) => accounts::deluser(args).await,
        Command::Passwd(args) => accounts::passwd(args).await,
        Command::Routes { dir } => accounts::routes(&dir).await,
        Command::Interop(args) => interop::run(args).await,
    }
}
