//! Helpers for tests that run longlink as real processes on loopback.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `longlink` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_longlink");

/// Runs `longlink` with `args` to completion.
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("longlink runs")
}

/// Makes the cluster PKI for `domain` and `cms` CMs in `pki`
/// (`longlink certs init`).
pub fn certs_init(pki: &std::path::Path, domain: &str, cms: u32) {
    let cms = cms.to_string();
    let init = run(&[
        "certs",
        "init",
        "--dir",
        pki.to_str().unwrap(),
        "--domain",
        domain,
        "--cm",
        &cms,
    ]);
    assert!(init.status.success(), "{init:?}");
}

/// A free UDP or TCP port on loopback, below the ephemeral range
/// ([`longlink_bench::ports`]).
pub fn free_port(tcp: bool) -> u16 {
    longlink_bench::ports::free_port(tcp).expect("a free loopback port")
}

/// Writes `users` (all with `password`) into the store at `database_url`
/// (else the embedded one in `data`).
pub fn write_users(
    database_url: Option<&str>,
    data: &std::path::Path,
    users: &[String],
    password: &str,
) {
    if users.is_empty() {
        return;
    }
    // (on a thread: the PostgreSQL store runs a runtime of its own)
    let (url, data, users, password) = (
        database_url.map(str::to_owned),
        data.to_path_buf(),
        users.to_vec(),
        password.to_owned(),
    );
    std::thread::spawn(move || {
        let mut db = im_core::storage::open(url.as_deref(), &data, 10_000).unwrap();
        let creds = xmpp_sasl::StoredCredentials::new(
            &password,
            xmpp_sasl::StoredCredentials::DEFAULT_ITERATIONS,
        );
        for u in &users {
            assert!(db.add_user(u, &creds).unwrap(), "{u} is new");
        }
    })
    .join()
    .unwrap();
}

/// Where the stderr of a process of the deployment in `dir` goes: to
/// `$LONGLINK_TEST_LOG_DIR/<dir's name>-<name>.log` when that variable is
/// set (to read a failed run's logs; `RUST_LOG` picks the level), else
/// nowhere.
pub fn stderr_for(dir: &std::path::Path, name: &str) -> Stdio {
    let Some(logs) = std::env::var_os("LONGLINK_TEST_LOG_DIR") else {
        return Stdio::null();
    };
    let run = dir
        .file_name()
        .and_then(|n| n.to_str())
        .map_or("run", |n| n.trim_start_matches('.'));
    let path = std::path::Path::new(&logs).join(format!("{run}-{name}.log"));
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(f) => f.into(),
        Err(e) => panic!("cannot open {}: {e}", path.display()),
    }
}

/// The name a process's log takes: its config file's stem (`core`,
/// `cm-1`), else its first argument.
fn log_name<'a>(args: &[&'a str]) -> &'a str {
    args.iter()
        .rev()
        .find_map(|a| a.strip_suffix(".toml"))
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or(args.first().copied().unwrap_or("longlink"))
}

/// Child processes killed when the test ends, however it ends.
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The JSON an admin endpoint (`admin`, bearer `token`) answers at `path`,
/// if it answers.
pub fn admin_json(admin: &str, token: &str, path: &str) -> Option<serde_json::Value> {
    ureq::get(&format!("http://{admin}{path}"))
        .header("authorization", &format!("Bearer {token}"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok())
}

/// Names of the balancer's backends, from its admin endpoint (`token`:
/// its admin bearer token).
pub fn backends(admin: &str, token: &str) -> Vec<String> {
    admin_json(admin, token, "/backends")
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|b| b["name"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// A deployment of separate processes: a core and a balancer, CMs added
/// one by one, each with its own TOML file in a temporary directory.
pub struct Deployment {
    /// Holds PKI, data and configuration.
    pub dir: tempfile::TempDir,
    /// The PKI directory.
    pub pki: PathBuf,
    /// The XMPP domain.
    pub domain: String,
    /// Every user's password.
    pub password: String,
    /// The core's CM listener.
    pub core: String,
    /// The core's admin endpoint.
    pub core_admin: String,
    /// The balancer's public UDP port.
    pub lb_public: u16,
    lb_backend: u16,
    lb_control: u16,
    /// The balancer's admin endpoint.
    pub lb_admin: String,
    /// The balancer's admin bearer token.
    pub lb_token: String,
    /// The core's admin bearer token.
    pub core_token: String,
    /// Each CM's admin endpoint (`/metrics`), by its number (`cm-N`).
    pub cm_admin: std::collections::BTreeMap<u32, String>,
    /// Processes: [core, lb, CMs in the order added]; with several cores
    /// ([`Self::start_sharded`]): [cores…, lb, CMs].
    pub procs: Processes,
    /// The cores of a sharded deployment (none otherwise), in process order.
    pub cores: Vec<CoreProcess>,
    database_url: Option<String>,
}

/// One core of a sharded deployment.
pub struct CoreProcess {
    /// Its name in the cluster (`core-N`).
    pub name: String,
    /// Its CM/peer listener.
    pub listen: String,
    /// Its admin endpoint.
    pub admin: String,
    /// Its admin bearer token.
    pub token: String,
    /// Its configuration file.
    pub toml: String,
    /// Its index in [`Deployment::procs`].
    pub proc: usize,
}

impl CoreProcess {
    /// The `cluster` part of the core's `/routes` (null outside a cluster
    /// or while it does not answer).
    pub fn cluster(&self) -> serde_json::Value {
        admin_json(&self.admin, &self.token, "/routes")
            .map(|v| v["cluster"].clone())
            .unwrap_or_default()
    }

    /// The value of `name` in the core's `/metrics`; `None` while it does
    /// not answer or has no such metric.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = ureq::get(&format!("http://{}/metrics", self.admin))
            .header("authorization", &format!("Bearer {}", self.token))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        super::cluster::metric_value(&text, name)
    }
}

impl Deployment {
    /// Makes certificates for `cms` CMs, writes `users` (all with
    /// `password`) into the core's database, and starts core and balancer.
    pub fn start(domain: &str, cms: u32, users: &[String], password: &str) -> Self {
        Self::start_with_database(domain, cms, users, password, None)
    }

    /// [`Self::start`] with the core's store in the PostgreSQL database
    /// `database_url` names (the users are written there), if given.
    pub fn start_with_database(
        domain: &str,
        cms: u32,
        users: &[String],
        password: &str,
        database_url: Option<&str>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pki = d.join("pki");
        certs_init(&pki, domain, cms);
        let data = d.join("data");
        write_users(database_url, &data, users, password);
        // The tokens exist before the processes start, as the ones they read.
        let core_token = im_core::admin_token(&data).unwrap();
        let lb_token_file = d.join("lb-admin.token");
        let lb_token = lb::server::admin_token(&lb_token_file).unwrap();
        let database = database_url.map_or(String::new(), |u| format!("database_url = \"{u}\"\n"));
        let mut dep = Self {
            lb_token,
            core_token,
            core: format!("127.0.0.1:{}", free_port(false)),
            core_admin: format!("127.0.0.1:{}", free_port(true)),
            lb_public: free_port(false),
            lb_backend: free_port(false),
            lb_control: free_port(false),
            lb_admin: format!("127.0.0.1:{}", free_port(true)),
            domain: domain.to_owned(),
            password: password.to_owned(),
            pki,
            dir,
            procs: Processes(Vec::new()),
            cm_admin: Default::default(),
            cores: Vec::new(),
            database_url: database_url.map(str::to_owned),
        };
        let core_toml = dep.write(
            "core.toml",
            format!(
                "domain = \"{domain}\"\nlisten = \"{}\"\nadmin_listen = \"{}\"\ndata_dir = \"{}\"\npki_dir = \"{}\"\n{database}",
                dep.core,
                dep.core_admin,
                data.display(),
                dep.pki.display()
            ),
        );
        let lb_toml = dep.write(
            "lb.toml",
            format!(
                "listen = [\"127.0.0.1:{}\"]\nbackend_listen = \"127.0.0.1:{}\"\ncontrol_listen = \"127.0.0.1:{}\"\nadmin_listen = \"{}\"\nadmin_token_file = \"{}\"\npki_dir = \"{}\"\n",
                dep.lb_public,
                dep.lb_backend,
                dep.lb_control,
                dep.lb_admin,
                lb_token_file.display(),
                dep.pki.display()
            ),
        );
        dep.spawn(&["core", "--config", &core_toml]);
        dep.spawn(&["lb", "--config", &lb_toml]);
        dep
    }

    /// A deployment of `cores` cores in one cluster on the PostgreSQL
    /// database `database_url` (which holds `users`), and a balancer. Every
    /// core has data of its own; the CMs are given `core-1` and learn the
    /// others from it.
    pub fn start_sharded(
        domain: &str,
        cores: u32,
        cms: u32,
        users: &[String],
        password: &str,
        database_url: &str,
    ) -> Self {
        let mut dep = Self::start_with_database(domain, cms, users, password, Some(database_url));
        // the single core and the balancer it started are replaced
        for c in &mut dep.procs.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        dep.procs.0.clear();
        dep.database_url = Some(database_url.to_owned());
        for _ in 0..cores {
            dep.add_core();
        }
        dep.core = dep.cores[0].listen.clone();
        dep.core_admin = dep.cores[0].admin.clone();
        dep.core_token = dep.cores[0].token.clone();
        let lb_toml = dep.dir.path().join("lb.toml");
        dep.spawn(&["lb", "--config", lb_toml.to_str().unwrap()]);
        dep
    }

    /// Starts one more core of the cluster (`core-N`, N the next number);
    /// returns its index in [`Self::cores`].
    pub fn add_core(&mut self) -> usize {
        let i = self.cores.len() + 1;
        let database_url = self.database_url.clone().expect("a sharded deployment");
        let domain = self.domain.clone();
        let data = self.dir.path().join(format!("data-{i}"));
        let token = im_core::admin_token(&data).unwrap();
        let listen = format!("127.0.0.1:{}", free_port(false));
        let admin = format!("127.0.0.1:{}", free_port(true));
        let name = format!("core-{i}");
        let toml = self.write(
            &format!("{name}.toml"),
            format!(
                "domain = \"{domain}\"\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{}\"\npki_dir = \"{}\"\ndatabase_url = \"{database_url}\"\nnode_grace_ms = 1000\n\n[cluster]\nname = \"{name}\"\nadvertise = \"{listen}\"\n",
                data.display(),
                self.pki.display()
            ),
        );
        let proc = self.spawn(&["core", "--config", &toml]);
        self.cores.push(CoreProcess {
            name,
            listen,
            admin,
            token,
            toml,
            proc,
        });
        self.cores.len() - 1
    }

    /// Asks core `index` (of [`Self::cores`]) to give its slots away.
    pub fn drain_core(&self, index: usize) {
        let core = &self.cores[index];
        let status = ureq::post(&format!("http://{}/drain", core.admin))
            .header("authorization", &format!("Bearer {}", core.token))
            .send_empty()
            .map(|r| r.status().as_u16());
        assert!(matches!(status, Ok(202)), "drain: {status:?}");
    }

    /// Waits until core `index` owns `want` slots (`within` at most).
    pub fn wait_core_slots(&self, index: usize, want: u64, within: Duration) {
        let start = Instant::now();
        loop {
            let owned = self.cores[index].cluster()["slots_owned"].as_u64();
            if owned == Some(want) {
                return;
            }
            assert!(
                start.elapsed() < within,
                "{} owns {owned:?}",
                self.cores[index].name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts core `index` (of [`Self::cores`]) again after a kill.
    pub fn restart_core_at(&mut self, index: usize) {
        let toml = self.cores[index].toml.clone();
        let child = Command::new(BIN)
            .args(["core", "--config", &toml])
            .stdout(Stdio::null())
            .stderr(stderr_for(self.dir.path(), &self.cores[index].name))
            .spawn()
            .unwrap();
        let proc = self.cores[index].proc;
        self.procs.0[proc] = child;
    }

    /// Waits until the cores own every one of `slots` slots between them,
    /// each some and every one answering (`within` at most); returns each
    /// core's count.
    pub fn wait_slots_shared(&self, slots: u64, within: Duration) -> Vec<u64> {
        let start = Instant::now();
        loop {
            // (a core that does not answer, stopped, counts as none)
            let owned: Vec<Option<u64>> = self
                .cores
                .iter()
                .map(|c| c.cluster()["slots_owned"].as_u64())
                .collect();
            let counts: Vec<u64> = owned.iter().flatten().copied().collect();
            if counts.len() == owned.len()
                && counts.iter().sum::<u64>() == slots
                && counts.iter().all(|&n| n > 0)
            {
                return counts;
            }
            assert!(start.elapsed() < within, "slots owned {owned:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write(&self, name: &str, text: String) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    }

    fn spawn(&mut self, args: &[&str]) -> usize {
        let child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr_for(self.dir.path(), log_name(args)))
            .spawn()
            .unwrap();
        self.procs.0.push(child);
        self.procs.0.len() - 1
    }

    /// Starts CM `cm-<i>` behind the balancer; returns its process index.
    pub fn spawn_cm(&mut self, i: u32) -> usize {
        let admin = format!("127.0.0.1:{}", free_port(true));
        let toml = self.write(
            &format!("cm-{i}.toml"),
            format!(
                "node = \"cm-{i}\"\ndomain = \"{}\"\nlisten = \"127.0.0.1:{}\"\ncore = \"{}\"\npki_dir = \"{}\"\nadmin_listen = \"{admin}\"\n\n[balancer]\ncontrol = \"127.0.0.1:{}\"\nencap = \"127.0.0.1:{}\"\n",
                self.domain,
                free_port(false),
                self.core,
                self.pki.display(),
                self.lb_control,
                self.lb_backend,
            ),
        );
        self.cm_admin.insert(i, admin);
        self.spawn(&["cm", "--config", &toml])
    }

    /// Waits (60 s at most) until the balancer's backends are exactly `names`.
    pub fn wait_backends(&self, names: &[&str]) {
        let start = Instant::now();
        loop {
            let mut have = backends(&self.lb_admin, &self.lb_token);
            have.sort();
            if have == names {
                return;
            }
            // (60 s: three tests may start three deployments at once)
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "backends {have:?}, want {names:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The balancer's public address.
    pub fn lb(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.lb_public).into()
    }

    /// The cluster CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.pki.join("ca.pem")
    }

    /// Options for `user`'s client with `resource`, through the balancer
    /// (receipts off: the tests count messages).
    pub fn client_options(&self, user: &str, resource: &str) -> client_sdk::ConnectOptions {
        client_sdk::ConnectOptions::new(
            self.lb(),
            &format!("{user}@{}", self.domain),
            &self.password,
        )
        .with_ca_file(self.ca())
        .with_resource(resource)
        .with_receipts(false)
    }

    /// Logs `user` in, retrying for up to 30 s while the cluster is
    /// (re)starting.
    pub async fn login(&self, user: &str, resource: &str) -> client_sdk::Client {
        let start = Instant::now();
        loop {
            match client_sdk::Client::connect(self.client_options(user, resource)).await {
                Ok(c) => return c,
                Err(e) if start.elapsed() < Duration::from_secs(30) => {
                    tracing::debug!(error = %e, "login retry");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{user} cannot log in: {e}"),
            }
        }
    }

    /// Starts the core again (after [`Self::kill`] of index 0), on the same
    /// addresses and data.
    pub fn restart_core(&mut self) {
        let toml = self.dir.path().join("core.toml");
        let child = Command::new(BIN)
            .args(["core", "--config", toml.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(stderr_for(self.dir.path(), "core"))
            .spawn()
            .unwrap();
        self.procs.0[0] = child;
    }

    /// SIGKILLs process `index`.
    pub fn kill(&mut self, index: usize) {
        self.procs.0[index].kill().unwrap();
        let _ = self.procs.0[index].wait();
    }

    /// The core's routing table: full JID to CM node name.
    pub fn routes(&self) -> std::collections::HashMap<String, String> {
        let v: serde_json::Value = ureq::get(&format!("http://{}/routes", self.core_admin))
            .header("authorization", &format!("Bearer {}", self.core_token))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let names: std::collections::HashMap<u64, String> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].as_u64().unwrap(),
                    n["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let node = names.get(&r["node"].as_u64().unwrap()).cloned();
                (
                    r["jid"].as_str().unwrap().to_owned(),
                    node.unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Waits (60 s at most, else panics) until `path` exists: a file a
/// process writes once it is up, such as `longlink up`'s endpoints.json.
pub fn wait_for(path: &std::path::Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
