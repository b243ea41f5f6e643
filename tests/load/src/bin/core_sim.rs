//! `core-sim`: one core loaded with millions of simulated sessions (see
//! `longlink_bench::core_sim`). `core-sim run --help` for the options;
//! `core-sim host` is the child it starts.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use longlink_bench::core_sim::{self, Mix, SimOptions, fixture::Population};

/// mimalloc, as in the longlink binary, whose core this host stands for
/// (docs/SCALING.md says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "core-sim",
    about = "One longlink core under millions of simulated sessions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the simulation; JSON lines on stdout, a summary on stderr.
    Run {
        /// Sessions at each hold step, ascending (comma-separated); the
        /// last is the population.
        #[arg(long, value_delimiter = ',', default_value = "100000")]
        steps: Vec<u32>,
        /// Contacts per user.
        #[arg(long, default_value_t = 50)]
        contacts: u32,
        /// Simulated CM nodes.
        #[arg(long, default_value_t = 8)]
        nodes: u32,
        /// Seconds per load step.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Messages per second, alone (0 skips).
        #[arg(long, default_value_t = 5000.0)]
        messages: f64,
        /// Presence broadcasts per second, alone (0 skips).
        #[arg(long, default_value_t = 500.0)]
        presences: f64,
        /// Reconnects per second, alone (0 skips).
        #[arg(long, default_value_t = 500.0)]
        reconnects: f64,
        /// The mix, per session per second: messages (receipts and chat
        /// states counted as messages), presence broadcasts, reconnects.
        /// The defaults are the average of docs/SCALING.md's traffic model.
        #[arg(long, value_delimiter = ',', default_value = "0.0075,0.0012,0.001")]
        mix: Vec<f64>,
        /// Multiples of the mix to step through (comma-separated); the run
        /// stops at the first whose p99 is over 50 ms.
        #[arg(long, value_delimiter = ',', default_value = "0.5,1,2")]
        mix_scales: Vec<f64>,
        /// Skip the restart-and-rebuild step.
        #[arg(long)]
        no_rebuild: bool,
        /// Working directory (PKI, core data); default a fresh temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// What a group chat message costs the core for rooms of each size,
    /// with the per-CM fan-out frame and with a frame per occupant, side
    /// by side; JSON lines on stdout, a summary on stderr.
    Rooms {
        /// Occupants of each room measured (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        sizes: Vec<u32>,
        /// Simulated CM nodes (the occupants are spread over them).
        #[arg(long, default_value_t = 20)]
        nodes: u32,
        /// Copies delivered per room measured (a room of N occupants gets
        /// COPIES / N messages, at least 20).
        #[arg(long, default_value_t = 2_000_000)]
        copies: u64,
        /// Working directory (PKI, core data); default a fresh temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// (internal) The core on the fixture store.
    Host {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        users: u32,
        #[arg(long)]
        contacts: u32,
        /// A frame per occupant for room stanzas (measurement).
        #[arg(long)]
        muc_per_session: bool,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match Cli::parse().command {
        Command::Host {
            dir,
            users,
            contacts,
            muc_per_session,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(core_sim::host(
                &dir,
                Population { users, contacts },
                muc_per_session,
            )),
        Command::Rooms {
            sizes,
            nodes,
            copies,
            dir,
        } => {
            let (dir, _temp) = match dir {
                Some(d) => (d, None),
                None => {
                    let t = tempfile::tempdir()?;
                    (t.path().to_owned(), Some(t))
                }
            };
            let opts = core_sim::rooms::RoomOptions {
                sizes,
                nodes,
                copies,
                dir,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(core_sim::rooms::run(opts))
        }
        Command::Run {
            steps,
            contacts,
            nodes,
            secs,
            messages,
            presences,
            reconnects,
            mix,
            mix_scales,
            no_rebuild,
            dir,
        } => {
            let (dir, _temp) = match dir {
                Some(d) => (d, None),
                None => {
                    let t = tempfile::tempdir()?;
                    (t.path().to_owned(), Some(t))
                }
            };
            let mix = Mix {
                messages: mix.first().copied().unwrap_or(0.0),
                presences: mix.get(1).copied().unwrap_or(0.0),
                reconnects: mix.get(2).copied().unwrap_or(0.0),
            };
            let opts = SimOptions {
                steps,
                contacts,
                nodes,
                secs,
                alone: [messages, presences, reconnects],
                mix,
                mix_scales,
                rebuild: !no_rebuild,
                dir,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(core_sim::run(opts))
        }
    }
}
