//! Running longlink: a whole local deployment (`up`) or one role.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

/// Arguments of `longlink up`.
#[derive(Args)]
pub struct UpArgs {
    /// Deployment directory (certificates, database, endpoints.json).
    #[arg(long, default_value = "dev-deploy")]
    dir: PathBuf,
    /// Number of CM nodes.
    #[arg(long, default_value_t = 2)]
    cms: u32,
    /// XMPP domain.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// First port: core on BASE, balancer on BASE+1 (clients), BASE+2 (CMs), BASE+3 (control),
    /// core admin on BASE+10, balancer admin on BASE+11, file upload (HTTPS,
    /// XEP-0363) on BASE+12, CM i on BASE+100+i (QUIC),
    /// BASE+200+i (TCP, STARTTLS), BASE+300+i (TCP, direct TLS), BASE+400+i
    /// (WebSocket over TLS) and BASE+500+i (admin: /metrics). 0 = ephemeral ports.
    #[arg(long, default_value_t = 5270)]
    port_base: u16,
    /// Number of cores. More than one makes a cluster of cores sharing the
    /// domain (their slot leases live in PostgreSQL): core i listens on
    /// BASE+20+i for CMs and peers, its admin on BASE+30+i, its file
    /// upload on BASE+50+i; core 1 keeps BASE, BASE+10 and BASE+12.
    #[arg(long, default_value_t = 1)]
    cores: u32,
    /// PostgreSQL connection string for the cores' store (needed by a
    /// cluster). With `--cores` above 1 and none given, a throwaway server
    /// is started in DIR/postgres with `scripts/postgres.sh` (port BASE+40)
    /// and stopped with the deployment.
    #[arg(long)]
    database: Option<String>,
}

/// A throwaway PostgreSQL server `longlink up` started, stopped on drop.
struct LocalPostgres {
    dir: PathBuf,
}

impl LocalPostgres {
    /// Starts one with `scripts/postgres.sh` (in the working directory) in
    /// `dir` on `port`; returns it and its connection string.
    fn start(dir: &Path, port: u16) -> Result<(Self, String)> {
        let script = Path::new("scripts/postgres.sh");
        anyhow::ensure!(
            script.exists(),
            "--cores above 1 needs --database, or scripts/postgres.sh in the working directory"
        );
        // The server runs as the postgres user (as root, the script
        // switches to it), which must be able to pass through the private
        // deployment directory to its own: let others traverse it (not
        // list or read it; what it holds keeps its own modes).
        if let Some(parent) = dir.parent() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
                .with_context(|| format!("opening {} to traversal", parent.display()))?;
        }
        let out = std::process::Command::new("bash")
            .arg(script)
            .args(["start", &dir.display().to_string(), &port.to_string()])
            .output()
            .context("running scripts/postgres.sh")?;
        anyhow::ensure!(
            out.status.success(),
            "scripts/postgres.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok((
            Self {
                dir: dir.to_path_buf(),
            },
            url,
        ))
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg("scripts/postgres.sh")
            .args(["stop", &self.dir.display().to_string()])
            .output();
    }
}

/// What `longlink up` started, as written to `DIR/endpoints.json`.
#[derive(Serialize, Deserialize)]
pub struct Endpoints {
    /// XMPP domain.
    pub domain: String,
    /// CA file clients must trust.
    pub ca: PathBuf,
    /// Core's CM-facing QUIC address.
    pub core: SocketAddr,
    /// Core admin HTTP address (token in `DIR/data/admin.token`).
    pub admin: SocketAddr,
    /// Each CM: its TCP and WebSocket client addresses, and the address it
    /// exchanges encapsulated datagrams with the balancer on (not for clients).
    pub cms: Vec<CmEndpoint>,
    /// The balancer: the one QUIC address clients use.
    #[serde(default)]
    pub lb: Option<LbEndpoints>,
}

/// The balancer in [`Endpoints`].
#[derive(Serialize, Deserialize)]
pub struct LbEndpoints {
    /// Public QUIC address for clients (ALPN xmpp-client).
    pub quic: SocketAddr,
    /// Admin HTTP (metrics; backends and drain with the admin token).
    pub admin: SocketAddr,
}

/// One CM in [`Endpoints`].
#[derive(Serialize, Deserialize)]
pub struct CmEndpoint {
    /// Node name.
    pub node: String,
    /// Where the CM takes datagrams the balancer encapsulated. Not a client
    /// address: the CM drops every datagram that does not come from the
    /// balancer; QUIC clients use [`LbEndpoints::quic`].
    pub balancer_encap: SocketAddr,
    /// TCP address for XMPP clients, STARTTLS required (RFC 6120).
    #[serde(default)]
    pub starttls: Option<SocketAddr>,
    /// TCP address for XMPP clients, direct TLS (XEP-0368).
    #[serde(default)]
    pub direct_tls: Option<SocketAddr>,
    /// WebSocket over TLS for browsers (RFC 7395, subprotocol `xmpp`).
    #[serde(default)]
    pub websocket: Option<SocketAddr>,
    /// Admin HTTP (`/metrics`).
    #[serde(default)]
    pub admin: Option<SocketAddr>,
}

impl Endpoints {
    /// Reads `DIR/endpoints.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("endpoints.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

fn port(base: u16, offset: u16) -> u16 {
    if base == 0 { 0 } else { base + offset }
}

/// Makes `data` (accounts with their SCRAM keys, messages, the admin token
/// and SM key) private whatever the umask: the directory 0700, every file
/// already in it 0600. Files made later are private through the umask
/// [`private_umask`] set.
pub fn private_data_dir(data: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let private = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("restricting {}", path.display()))
    };
    private(data, 0o700)?;
    for entry in std::fs::read_dir(data).with_context(|| format!("reading {}", data.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            private(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

/// Sets the process umask to 077, so that every file the process creates
/// (the database and its `-wal`/`-shm`, tokens, keys) is readable by its
/// owner only, whatever umask it was started with. Call it before any
/// thread starts.
pub fn private_umask() {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot
    // fail and touches no memory.
    unsafe {
        libc::umask(0o077);
    }
}

/// `longlink up`.
pub async fn up(args: UpArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    private_data_dir(&dir.join("data"))?;
    let pki = dir.join("pki");
    let report = certs::init(&pki, &args.domain, args.cms, false).context("making certificates")?;
    if !report.created.is_empty() {
        tracing::info!(dir = %pki.display(), files = report.created.len(), "made dev certificates");
    }
    let local = |offset| SocketAddr::from(([127, 0, 0, 1], port(args.port_base, offset)));
    let cores = args.cores.max(1);
    let mut postgres = None;
    let database = match (&args.database, cores) {
        (Some(url), _) => Some(url.clone()),
        (None, 1) => None,
        (None, _) => {
            let pg_port = match port(args.port_base, 40) {
                // (ephemeral: a free one now)
                0 => std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port(),
                p => p,
            };
            let (pg, url) = LocalPostgres::start(&dir.join("postgres"), pg_port)?;
            postgres = Some(pg);
            Some(url)
        }
    };
    let mut core_handles = Vec::new();
    for i in 1..=cores {
        let data = match i {
            1 => dir.join("data"),
            _ => dir.join(format!("data-{i}")),
        };
        private_data_dir(&data)?;
        let mut core_config = im_core::CoreConfig::new(&args.domain, data, pki.clone());
        let (listen, admin) = match i {
            1 => (local(0), local(10)),
            _ => (local(20 + i as u16), local(30 + i as u16)),
        };
        core_config.listen = listen;
        core_config.admin_listen = admin;
        // file upload (XEP-0363): each core serves the slots it grants
        let upload = match i {
            1 => local(12),
            _ => local(50 + i as u16),
        };
        core_config.upload = Some(im_core::upload::UploadConfig::new(upload));
        core_config.database_url = database.clone();
        if cores > 1 {
            // (an ephemeral port is only known once bound: name it first)
            let advertise = match listen.port() {
                0 => std::net::UdpSocket::bind(listen)?.local_addr()?,
                _ => listen,
            };
            core_config.listen = advertise;
            core_config.cluster = Some(im_core::config::ClusterConfig::new(
                &format!("core-{i}"),
                &advertise.to_string(),
            ));
        }
        core_handles.push(
            im_core::start(core_config)
                .await
                .with_context(|| format!("starting core {i}"))?,
        );
    }
    let core = core_handles.remove(0);
    let mut lb_settings = lb::settings::LbSettings::local(pki.clone());
    lb_settings.listen = vec![local(1)];
    if std::net::UdpSocket::bind("[::1]:0").is_ok() {
        lb_settings.listen.push(SocketAddr::from((
            std::net::Ipv6Addr::LOCALHOST,
            port(args.port_base, 1),
        )));
    }
    lb_settings.backend_listen = local(2);
    lb_settings.control_listen = local(3);
    lb_settings.admin_listen = local(11);
    // One deployment, one admin token: `longlink drain` reads the core's.
    lb_settings.admin_token_file = Some(dir.join("data").join("admin.token"));
    let balancer = lb::server::start(lb_settings)
        .await
        .context("starting the balancer")?;
    let mut cms = Vec::new();
    for i in 1..=args.cms {
        let node = format!("cm-{i}");
        let mut config = cm_node::CmConfig::new(
            &node,
            &args.domain,
            local(100 + i as u16),
            core.quic_addr,
            pki.clone(),
        );
        config.balancer = Some(cm_node::config::BalancerLink {
            control: balancer.control_addr,
            encap: balancer.backend_addr,
        });
        config.tcp_listen = Some(local(200 + i as u16));
        config.tls_listen = Some(local(300 + i as u16));
        config.ws_listen = Some(local(400 + i as u16));
        config.admin_listen = Some(local(500 + i as u16));
        cms.push(
            cm_node::start(config)
                .await
                .with_context(|| format!("starting {node}"))?,
        );
    }
    let lb_public = balancer.public_addrs[0];
    let endpoints = Endpoints {
        domain: args.domain.clone(),
        ca: pki.join("ca.pem"),
        core: core.quic_addr,
        admin: core.admin_addr,
        cms: cms
            .iter()
            .map(|c| CmEndpoint {
                node: c.node.clone(),
                balancer_encap: c.client_addr,
                starttls: c.tcp_addr,
                direct_tls: c.tls_addr,
                websocket: c.ws_addr,
                admin: c.admin_addr,
            })
            .collect(),
        lb: Some(LbEndpoints {
            quic: lb_public,
            admin: balancer.admin_addr,
        }),
    };
    let json = serde_json::to_string_pretty(&endpoints)?;
    std::fs::write(dir.join("endpoints.json"), &json)?;
    println!("longlink is up for domain {}", args.domain);
    println!("  clients           quic://{lb_public} (the balancer; ALPN xmpp-client)");
    println!(
        "  balancer admin    http://{} (/metrics; /backends, drain with the admin token)",
        balancer.admin_addr
    );
    println!("  core (CM links)   quic://{}", core.quic_addr);
    if let Some(upload) = core.upload_addr {
        println!(
            "  file upload       https://{upload} (XEP-0363, service upload.{})",
            args.domain
        );
    }
    for (i, c) in core_handles.iter().enumerate() {
        println!(
            "  core-{:<12} quic://{} (admin http://{})",
            i + 2,
            c.quic_addr,
            c.admin_addr
        );
    }
    if cores > 1 {
        println!(
            "  slot map          longlink routes --dir {} (its \"cluster\" field)",
            dir.display()
        );
    }
    println!(
        "  admin             http://{} (/metrics; /routes, /users with the admin token)",
        core.admin_addr
    );
    println!(
        "  admin token       {}",
        dir.join("data").join("admin.token").display()
    );
    for c in &endpoints.cms {
        println!(
            "  {:<17} behind the balancer (encapsulated datagrams at {})",
            c.node, c.balancer_encap
        );
        if let (Some(tcp), Some(tls)) = (c.starttls, c.direct_tls) {
            println!(
                "  {:<17} TCP clients: {tcp} (STARTTLS), {tls} (direct TLS)",
                ""
            );
        }
        if let Some(ws) = c.websocket {
            println!("  {:<17} WebSocket: wss://{ws}/ (subprotocol xmpp)", "");
        }
        if let Some(admin) = c.admin {
            println!("  {:<17} admin: http://{admin} (/metrics)", "");
        }
    }
    println!("  CA                {}", endpoints.ca.display());
    println!(
        "  endpoints         {}",
        dir.join("endpoints.json").display()
    );
    println!(
        "Add a user: longlink adduser alice@{} --password secret --dir {}",
        args.domain,
        dir.display()
    );
    println!("Ctrl-C (or SIGTERM) stops everything.");
    stop_signal().await?;
    tracing::info!("stopping");
    for cm in cms {
        cm.shutdown().await;
    }
    balancer.shutdown().await;
    for c in core_handles {
        c.shutdown().await;
    }
    core.shutdown().await;
    drop(postgres);
    Ok(())
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM (what systemd and most
/// supervisors send): either stops a process cleanly.
async fn stop_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

/// `longlink core --config FILE`.
pub async fn run_core(
    config: &Path,
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut cfg: im_core::CoreConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(a) = admin {
        cfg.admin_listen = a;
    }
    private_data_dir(&cfg.data_dir)?;
    let core = im_core::start(cfg).await.context("starting the core")?;
    stop_signal().await?;
    core.shutdown().await;
    Ok(())
}

/// `longlink cm --config FILE`.
pub async fn run_cm(
    config: &Path,
    listen: Option<SocketAddr>,
    core: Option<SocketAddr>,
    admin: Option<SocketAddr>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut cfg: cm_node::CmConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(c) = core {
        cfg.core = c;
    }
    if admin.is_some() {
        cfg.admin_listen = admin;
    }
    let cm = cm_node::start(cfg).await.context("starting the CM")?;
    stop_signal().await?;
    cm.shutdown().await;
    Ok(())
}

/// `longlink lb --config FILE`.
pub async fn run_lb(config: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let cfg: lb::settings::LbSettings =
        toml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let balancer = lb::server::start(cfg)
        .await
        .context("starting the balancer")?;
    stop_signal().await?;
    balancer.shutdown().await;
    Ok(())
}
