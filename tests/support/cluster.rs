//! Support for end-to-end tests: a whole cluster (core with embedded
//! storage, CM nodes, cluster PKI) started in-process on loopback, with real
//! QUIC, TLS and SQLite, and torn down when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use client_sdk::{Client, ClientError, ConnectOptions};
use cm_node::{CmConfig, CmHandle};
use im_core::{CoreConfig, CoreHandle};

/// The XMPP domain of test clusters.
pub const DOMAIN: &str = "longlink.test";

/// How long a test waits for one expected event.
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs a test body with an overall deadline of `secs` seconds.
pub async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test finished in time");
}

/// `user@DOMAIN`.
pub fn jid(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

/// A running test cluster.
pub struct Cluster {
    /// Holds the PKI and data directories.
    pub dir: tempfile::TempDir,
    /// The core, when running.
    pub core: Option<CoreHandle>,
    /// CM nodes (index 0 is cm-1); `None` once stopped.
    pub cms: Vec<Option<CmHandle>>,
    /// The balancer, for clusters started with one.
    pub lb: Option<lb::server::LbHandle>,
    lb_addrs: Option<lb::settings::LbSettings>,
    core_addr: SocketAddr,
    admin_addr: SocketAddr,
    database_url: Option<String>,
    registration: bool,
    configure: Option<Configure>,
}

/// A change to the core's configuration, made every time it starts.
pub type Configure = std::sync::Arc<dyn Fn(&mut CoreConfig) + Send + Sync>;

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();
}

impl Cluster {
    /// Starts a core and `cms` CM nodes.
    pub async fn start(cms: usize) -> Cluster {
        Self::start_inner(cms, false, None, false).await
    }

    /// Starts a core, a balancer and `cms` CM nodes behind it.
    pub async fn start_with_lb(cms: usize) -> Cluster {
        Self::start_inner(cms, true, None, false).await
    }

    /// Starts a core whose store is the PostgreSQL database `url`, and
    /// `cms` CM nodes.
    pub async fn start_on_postgres(cms: usize, url: String) -> Cluster {
        Self::start_inner(cms, false, Some(url), false).await
    }

    /// Starts a core that offers in-band registration, and `cms` CM nodes.
    pub async fn start_with_registration(cms: usize) -> Cluster {
        Self::start_inner(cms, false, None, true).await
    }

    /// Starts a core whose configuration `configure` changes (every time
    /// it starts), and `cms` CM nodes.
    pub async fn start_configured(cms: usize, configure: Configure) -> Cluster {
        Self::start_with(cms, false, None, false, Some(configure)).await
    }

    async fn start_inner(
        cms: usize,
        with_lb: bool,
        database_url: Option<String>,
        registration: bool,
    ) -> Cluster {
        Self::start_with(cms, with_lb, database_url, registration, None).await
    }

    async fn start_with(
        cms: usize,
        with_lb: bool,
        database_url: Option<String>,
        registration: bool,
        configure: Option<Configure>,
    ) -> Cluster {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        certs::init(&dir.path().join("pki"), DOMAIN, cms as u32, false).expect("certs");
        let mut cluster = Cluster {
            dir,
            core: None,
            cms: Vec::new(),
            lb: None,
            lb_addrs: None,
            core_addr: "127.0.0.1:0".parse().expect("addr"),
            admin_addr: "127.0.0.1:0".parse().expect("addr"),
            database_url,
            registration,
            configure,
        };
        cluster.start_core().await;
        if with_lb {
            let mut settings = lb::settings::LbSettings::local(cluster.pki());
            // IPv4 and, where the machine has it, IPv6.
            if std::net::UdpSocket::bind("[::1]:0").is_ok() {
                settings.listen.push("[::1]:0".parse().expect("addr"));
            }
            cluster.lb_addrs = Some(settings);
            cluster.start_lb().await;
        }
        for _ in 0..cms {
            cluster.add_cm().await;
        }
        cluster
    }

    /// The PKI directory.
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// The cluster CA file clients trust.
    pub fn ca(&self) -> PathBuf {
        self.pki().join("ca.pem")
    }

    fn core_config(&self) -> CoreConfig {
        let mut c = CoreConfig::new(DOMAIN, self.dir.path().join("data"), self.pki());
        c.listen = self.core_addr;
        c.admin_listen = self.admin_addr;
        c.node_grace_ms = 1000;
        c.database_url = self.database_url.clone();
        c.registration = self.registration;
        if let Some(configure) = &self.configure {
            configure(&mut c);
        }
        c
    }

    /// Starts the core (on the same addresses as before, if it ran).
    pub async fn start_core(&mut self) {
        // A stopped core's UDP socket is released once its closing
        // connections have drained; retry the bind for a few seconds.
        let mut attempt = 0;
        let core = loop {
            match im_core::start(self.core_config()).await {
                Ok(core) => break core,
                Err(e) if attempt < 50 && e.to_string().contains("in use") => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("core starts: {e}"),
            }
        };
        self.core_addr = core.quic_addr;
        self.admin_addr = core.admin_addr;
        self.core = Some(core);
    }

    /// Stops the core.
    pub async fn stop_core(&mut self) {
        if let Some(core) = self.core.take() {
            core.shutdown().await;
        }
    }

    /// Starts the balancer (on the same addresses as before, if it ran).
    pub async fn start_lb(&mut self) {
        let settings = self.lb_addrs.clone().expect("cluster has a balancer");
        let mut attempt = 0;
        let lb = loop {
            match lb::server::start(settings.clone()).await {
                Ok(lb) => break lb,
                Err(e) if attempt < 50 && e.to_string().contains("in use") => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("balancer starts: {e}"),
            }
        };
        let mut fixed = settings;
        fixed.listen = lb.public_addrs.clone();
        fixed.backend_listen = lb.backend_addr;
        fixed.control_listen = lb.control_addr;
        fixed.admin_listen = lb.admin_addr;
        self.lb_addrs = Some(fixed);
        self.lb = Some(lb);
    }

    /// Stops the balancer.
    pub async fn stop_lb(&mut self) {
        if let Some(lb) = self.lb.take() {
            lb.shutdown().await;
        }
    }

    /// The balancer's public address.
    pub fn lb_addr(&self) -> SocketAddr {
        self.lb_addrs
            .as_ref()
            .expect("cluster has a balancer")
            .listen[0]
    }

    /// The balancer's public IPv6 address, if it listens on one.
    pub fn lb_addr_v6(&self) -> Option<SocketAddr> {
        self.lb_addrs
            .as_ref()?
            .listen
            .iter()
            .find(|a| a.is_ipv6())
            .copied()
    }

    /// Names of the CMs in the balancer's table.
    pub fn lb_backends(&self) -> Vec<String> {
        self.lb
            .as_ref()
            .map(|l| l.backends().into_iter().map(|b| b.name).collect())
            .unwrap_or_default()
    }

    /// Waits until the balancer has exactly these backends (or panics after 15 s).
    pub async fn wait_backends(&self, n: usize) {
        for _ in 0..150 {
            if self.lb_backends().len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("balancer never had {n} backends: {:?}", self.lb_backends());
    }

    /// Connection options for `user` through the balancer.
    pub fn options_lb(&self, user: &str, password: &str) -> ConnectOptions {
        ConnectOptions::new(self.lb_addr(), &format!("{user}@{DOMAIN}"), password)
            .with_ca_file(self.ca())
    }

    /// Logs `user` in through the balancer and sends initial presence.
    pub async fn login_lb(&self, user: &str, resource: &str) -> Client {
        let client = Client::connect(self.options_lb(user, "secret").with_resource(resource))
            .await
            .unwrap_or_else(|e| panic!("{user} logs in through the balancer: {e}"));
        client.send_presence(0).await.expect("presence");
        client
    }

    /// Client QUIC handshakes each CM completed so far (unlike
    /// [`accepted`](Self::accepted), attempts refused or never completed
    /// do not count).
    pub fn handshakes_completed(&self) -> Vec<u64> {
        self.cms
            .iter()
            .map(|c| {
                c.as_ref()
                    .map(|c| c.metrics.quic_handshakes_completed.get())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Client QUIC connection attempts each CM took up so far, admitted
    /// or refused (not those answered with a Retry).
    pub fn accepted(&self) -> Vec<u64> {
        self.cms
            .iter()
            .map(|c| {
                c.as_ref()
                    .map(|c| c.accepted.load(std::sync::atomic::Ordering::Relaxed))
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Datagrams from the balancer each CM's encapsulating socket handed to
    /// QUIC so far (0 for a CM without a balancer).
    pub fn encap_received(&self) -> Vec<u64> {
        self.cms
            .iter()
            .map(|c| {
                c.as_ref()
                    .and_then(|c| c.encap_socket.as_ref())
                    .map(|s| s.received.load(std::sync::atomic::Ordering::Relaxed))
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The balancer's settings as running (its bound addresses).
    pub fn lb_settings(&self) -> &lb::settings::LbSettings {
        self.lb_addrs.as_ref().expect("cluster has a balancer")
    }

    /// Starts one more CM node (`cm-N`), issuing its certificate if needed.
    pub async fn add_cm(&mut self) -> usize {
        self.add_cm_with(|_| {}).await
    }

    /// Starts one more CM node with a configuration tweak.
    pub async fn add_cm_with(&mut self, tweak: impl FnOnce(&mut CmConfig)) -> usize {
        let cm = self.start_cm(self.cms.len() + 1, tweak).await;
        self.cms.push(Some(cm));
        self.cms.len() - 1
    }

    /// Crashes CM `index` (0-based) and starts a new process of the same
    /// node at once (on a new client address: the crashed one may still hold
    /// its socket for a moment).
    pub async fn restart_cm(&mut self, index: usize) {
        self.crash_cm(index);
        self.cms[index] = Some(self.start_cm(index + 1, |_| {}).await);
    }

    /// Crashes CM `index` (0-based); returns the client address it had.
    pub fn crash_cm(&mut self, index: usize) -> SocketAddr {
        let old = self.cms[index].take().expect("cm running");
        let addr = old.client_addr;
        old.abort();
        addr
    }

    /// Starts a new process of CM `index` on client address `addr` (some
    /// time after [`Cluster::crash_cm`], once the old socket is released).
    pub async fn revive_cm(&mut self, index: usize, addr: SocketAddr) {
        self.revive_cm_with(index, addr, |_| {}).await;
    }

    /// [`Cluster::revive_cm`], configured by `tweak` too.
    pub async fn revive_cm_with(
        &mut self,
        index: usize,
        addr: SocketAddr,
        tweak: impl FnOnce(&mut CmConfig),
    ) {
        // (the aborted CM's tasks let go of the socket shortly after)
        for _ in 0..100 {
            if std::net::UdpSocket::bind(addr).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cm = self
            .start_cm(index + 1, |c| {
                tweak(c);
                c.listen = addr;
            })
            .await;
        self.cms[index] = Some(cm);
    }

    async fn start_cm(&self, n: usize, tweak: impl FnOnce(&mut CmConfig)) -> CmHandle {
        let node = format!("cm-{n}");
        certs::ensure_cm(&self.pki(), DOMAIN, &node, false).expect("cm cert");
        let mut config = CmConfig::new(
            &node,
            DOMAIN,
            "127.0.0.1:0".parse().expect("addr"),
            self.core_addr,
            self.pki(),
        );
        if let Some(lb) = &self.lb {
            config.balancer = Some(cm_node::config::BalancerLink {
                control: lb.control_addr,
                encap: lb.backend_addr,
            });
        }
        tweak(&mut config);
        cm_node::start(config).await.expect("cm starts")
    }

    /// The `/metrics` text of CM `i` (0-based), from its admin endpoint
    /// (the CM must have been started with `admin_listen`).
    pub async fn cm_metrics(&self, i: usize) -> String {
        let addr = self.cm(i).admin_addr.expect("the CM serves /metrics");
        let url = format!("http://{addr}/metrics");
        tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .call()
                .expect("metrics")
                .body_mut()
                .read_to_string()
                .expect("text")
        })
        .await
        .expect("join")
    }

    /// CM `i` (0-based).
    pub fn cm(&self, i: usize) -> &CmHandle {
        self.cms[i].as_ref().expect("cm running")
    }

    /// Client address of CM `i` (0-based).
    pub fn cm_addr(&self, i: usize) -> SocketAddr {
        self.cms[i].as_ref().expect("cm running").client_addr
    }

    /// Creates an account (directly in the database, like `longlink adduser`
    /// on a stopped core; the database serializes with the running core).
    pub fn add_user(&self, user: &str, password: &str) {
        let (url, dir) = (self.database_url.clone(), self.dir.path().join("data"));
        let (user, password) = (user.to_owned(), password.to_owned());
        // on a thread of its own: the PostgreSQL client runs its own runtime
        std::thread::spawn(move || {
            let mut db = im_core::storage::open(url.as_deref(), &dir, 10_000).expect("db");
            let creds = xmpp_sasl::StoredCredentials::new(&password, 4096);
            db.add_user(&user, &creds).expect("add user");
        })
        .join()
        .expect("add user");
    }

    /// Sets a user's password in storage, as `longlink passwd` does (which
    /// also ends the user's FAST tokens).
    pub fn set_password(&self, user: &str, password: &str) {
        let (url, dir) = (self.database_url.clone(), self.dir.path().join("data"));
        let (user, password) = (user.to_owned(), password.to_owned());
        std::thread::spawn(move || {
            let mut db = im_core::storage::open(url.as_deref(), &dir, 10_000).expect("db");
            let creds = xmpp_sasl::StoredCredentials::new(&password, 4096);
            assert!(db.set_credentials(&user, &creds).expect("set password"));
        })
        .join()
        .expect("set password");
    }

    /// Connection options for `user` at CM `cm`.
    pub fn options(&self, cm: usize, user: &str, password: &str) -> ConnectOptions {
        ConnectOptions::new(self.cm_addr(cm), &format!("{user}@{DOMAIN}"), password)
            .with_ca_file(self.ca())
    }

    /// Logs in as [`Cluster::login`] does, trying again for up to 5 s
    /// while the CM's links to a restarted core come back.
    pub async fn login_retrying(&self, cm: usize, user: &str, resource: &str) -> Client {
        for _ in 0..50 {
            if let Ok(client) = self.try_login(cm, user, "secret", resource).await {
                client.send_presence(0).await.expect("presence");
                return client;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{user} could not log in within 5 s");
    }

    /// Logs `user` in at CM `cm` with `resource` and sends initial presence.
    pub async fn login(&self, cm: usize, user: &str, resource: &str) -> Client {
        let client = self
            .try_login(cm, user, "secret", resource)
            .await
            .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
        client.send_presence(0).await.expect("presence");
        client
    }

    /// Logs in at CM `cm` without stream management (like a client that does
    /// not implement XEP-0198) and sends initial presence.
    pub async fn login_plain(&self, cm: usize, user: &str, resource: &str) -> Client {
        let opts = self
            .options(cm, user, "secret")
            .with_resource(resource)
            .without_stream_management();
        let client = Client::connect(opts)
            .await
            .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
        client.send_presence(0).await.expect("presence");
        client
    }

    /// Logs in without sending presence.
    pub async fn try_login(
        &self,
        cm: usize,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Result<Client, ClientError> {
        Client::connect(self.options(cm, user, password).with_resource(resource)).await
    }

    /// The core's admin bearer token.
    pub fn admin_token(&self) -> String {
        im_core::admin_token(&self.dir.path().join("data")).expect("admin token")
    }

    /// The core's admin HTTP address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The balancer's admin bearer token.
    pub fn lb_token(&self) -> String {
        let settings = self.lb_addrs.as_ref().expect("cluster has a balancer");
        lb::server::admin_token(&settings.admin_token_path()).expect("balancer admin token")
    }

    /// The core's `/routes` JSON.
    pub async fn routes(&self) -> serde_json::Value {
        let url = format!("http://{}/routes", self.admin_addr);
        let auth = format!("Bearer {}", self.admin_token());
        tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .header("authorization", &auth)
                .call()
                .expect("routes")
                .body_mut()
                .read_json::<serde_json::Value>()
                .expect("json")
        })
        .await
        .expect("join")
    }

    /// The core's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin_addr);
        tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .call()
                .expect("metrics")
                .body_mut()
                .read_to_string()
                .expect("text")
        })
        .await
        .expect("join")
    }

    /// The node name routing `full_jid`, if routed.
    pub async fn node_of(&self, full_jid: &str) -> Option<String> {
        let routes = self.routes().await;
        let node_id = routes["routes"]
            .as_array()?
            .iter()
            .find(|r| r["jid"] == full_jid)?["node"]
            .as_u64()?;
        routes["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"].as_u64() == Some(node_id))
            .and_then(|n| n["name"].as_str().map(str::to_owned))
    }

    /// The value of the core's metric `name` (a whole line's name, labels
    /// included), `None` if it is not exposed.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics().await, name)
    }

    /// Waits until the core's metric `name` satisfies `ok` (or panics after
    /// [`WAIT`] with the metrics).
    pub async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) {
        let start = std::time::Instant::now();
        loop {
            let metrics = self.metrics().await;
            if metric_value(&metrics, name).is_some_and(&ok) {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "{name} never reached the expected value: {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the routing table has `n` routes (or panics after 15 s).
    pub async fn wait_routes(&self, n: usize) {
        for _ in 0..150 {
            let routes = self.routes().await;
            if routes["routes"].as_array().map(Vec::len) == Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "routing table never reached {n} routes: {}",
            self.routes().await
        );
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        for cm in self.cms.drain(..).flatten() {
            cm.shutdown().await;
        }
        self.stop_lb().await;
        self.stop_core().await;
    }
}

/// Sends `n` numbered messages from `a` to `b` and `b` to `a`, calling
/// `between` on `a` every `every` messages; checks order and exactly-once.
pub async fn chat_with_moves(
    a: &mut Client,
    b: &mut Client,
    n: usize,
    every: usize,
    between: impl Fn(&Client, usize),
) {
    for i in 0..n {
        if i > 0 && i % every == 0 {
            between(a, i);
        }
        a.send_message(b.jid(), &format!("a{i}")).await.unwrap();
        b.send_message(a.jid(), &format!("b{i}")).await.unwrap();
    }
    for i in 0..n {
        let m = b.next_message(WAIT).await;
        assert_eq!(m.map(|m| m.body), Ok(Some(format!("a{i}"))), "b's {i}th");
        let m = a.next_message(WAIT).await;
        assert_eq!(m.map(|m| m.body), Ok(Some(format!("b{i}"))), "a's {i}th");
    }
    // nothing more: no duplicates, not even ones the SDK would have dropped
    assert!(a.next_message(Duration::from_millis(300)).await.is_err());
    assert!(b.next_message(Duration::from_millis(300)).await.is_err());
    assert_eq!(a.duplicates_dropped() + b.duplicates_dropped(), 0);
}

/// The value of metric `name` (its name and labels as written) in a
/// Prometheus text exposition.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (n, value) = line.rsplit_once(' ')?;
        (n == name).then(|| value.parse().ok()).flatten()
    })
}
