//! The deployment under test as separate `longlink` processes — a core, a
//! balancer and CMs — each of which can be SIGKILLed and started again on
//! the same addresses and data. Every child dies with the [`Cluster`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// One process of the deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The IM core.
    Core,
    /// The UDP load balancer.
    Balancer,
    /// CM node `cm-N` (N from 1).
    Cm(u32),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Core => f.write_str("core"),
            Role::Balancer => f.write_str("lb"),
            Role::Cm(n) => write!(f, "cm-{n}"),
        }
    }
}

/// A role's process: how to start it, and the running child if any.
struct Proc {
    role: Role,
    config: PathBuf,
    child: Option<Child>,
    /// How many times it was started (names its log file).
    starts: u32,
}

/// The running deployment: its directory, addresses and processes.
pub struct Cluster {
    longlink: PathBuf,
    dir: PathBuf,
    domain: String,
    cms: u32,
    /// The balancer's public address (where clients connect).
    pub public: SocketAddr,
    lb_admin: SocketAddr,
    /// The core's admin endpoint.
    pub core_admin: SocketAddr,
    procs: Vec<Proc>,
}

/// A free loopback port (bound and released).
fn free_port(tcp: bool) -> Result<u16> {
    Ok(crate::ports::free_port(tcp)?)
}

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

impl Cluster {
    /// Makes the PKI and `users` accounts `PREFIX0…` (all with
    /// `password`) in `dir`, writes every role's configuration, and starts
    /// the core, the balancer and `cms` CMs.
    pub fn start(
        longlink: &Path,
        dir: &Path,
        domain: &str,
        cms: u32,
        prefix: &str,
        users: usize,
        password: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let pki = dir.join("pki");
        let data = dir.join("data");
        run(
            longlink,
            &[
                "certs".as_ref(),
                "init".as_ref(),
                "--dir".as_ref(),
                pki.as_os_str(),
                "--domain".as_ref(),
                domain.as_ref(),
                "--cm".as_ref(),
                cms.to_string().as_ref(),
            ],
        )?;
        run(
            longlink,
            &[
                "adduser".as_ref(),
                prefix.as_ref(),
                "--count".as_ref(),
                users.to_string().as_ref(),
                "--password".as_ref(),
                password.as_ref(),
                "--dir".as_ref(),
                dir.as_os_str(),
            ],
        )?;
        let core = loopback(free_port(false)?);
        let core_admin = loopback(free_port(true)?);
        let public = loopback(free_port(false)?);
        let backend = loopback(free_port(false)?);
        let control = loopback(free_port(false)?);
        let lb_admin = loopback(free_port(true)?);
        let write = |name: &str, text: String| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };
        let mut procs = vec![
            Proc::new(
                Role::Core,
                write(
                    "core.toml",
                    format!(
                        "domain = \"{domain}\"\nlisten = \"{core}\"\nadmin_listen = \"{core_admin}\"\ndata_dir = \"{}\"\npki_dir = \"{}\"\n",
                        data.display(),
                        pki.display()
                    ),
                )?,
            ),
            Proc::new(
                Role::Balancer,
                write(
                    "lb.toml",
                    format!(
                        "listen = [\"{public}\"]\nbackend_listen = \"{backend}\"\ncontrol_listen = \"{control}\"\nadmin_listen = \"{lb_admin}\"\npki_dir = \"{}\"\n",
                        pki.display()
                    ),
                )?,
            ),
        ];
        for n in 1..=cms {
            let listen = loopback(free_port(false)?);
            procs.push(Proc::new(
                Role::Cm(n),
                write(
                    &format!("cm-{n}.toml"),
                    format!(
                        "node = \"cm-{n}\"\ndomain = \"{domain}\"\nlisten = \"{listen}\"\ncore = \"{core}\"\npki_dir = \"{}\"\n\n[balancer]\ncontrol = \"{control}\"\nencap = \"{backend}\"\n",
                        pki.display()
                    ),
                )?,
            ));
        }
        let mut cluster = Self {
            longlink: longlink.to_owned(),
            dir: dir.to_owned(),
            domain: domain.to_owned(),
            cms,
            public,
            lb_admin,
            core_admin,
            procs,
        };
        for role in cluster.roles() {
            cluster.spawn(role)?;
        }
        Ok(cluster)
    }

    /// Every role, core first.
    pub fn roles(&self) -> Vec<Role> {
        self.procs.iter().map(|p| p.role).collect()
    }

    /// The XMPP domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The cluster CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("pki").join("ca.pem")
    }

    /// Where the processes' logs are.
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn proc(&mut self, role: Role) -> Result<&mut Proc> {
        self.procs
            .iter_mut()
            .find(|p| p.role == role)
            .with_context(|| format!("no {role} in this deployment"))
    }

    /// Starts `role` (which must not be running), its stderr to
    /// `logs/ROLE.N.log` for its N-th start.
    pub fn spawn(&mut self, role: Role) -> Result<()> {
        let longlink = self.longlink.clone();
        let logs = self.logs();
        let p = self.proc(role)?;
        ensure!(p.child.is_none(), "{role} is running");
        p.starts += 1;
        let log_path = logs.join(format!("{role}.{}.log", p.starts));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let sub = match role {
            Role::Core => "core",
            Role::Balancer => "lb",
            Role::Cm(_) => "cm",
        };
        let child = Command::new(&longlink)
            .arg(sub)
            .arg("--config")
            .arg(&p.config)
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_SERVER_LOG")
                    .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {role}"))?;
        p.child = Some(child);
        Ok(())
    }

    /// SIGKILLs `role` and reaps it.
    pub fn kill(&mut self, role: Role) -> Result<()> {
        let p = self.proc(role)?;
        let Some(mut child) = p.child.take() else {
            bail!("{role} is not running");
        };
        child.kill().with_context(|| format!("killing {role}"))?;
        child.wait().with_context(|| format!("reaping {role}"))?;
        Ok(())
    }

    /// Roles whose process exited by itself (a crash the run did not
    /// cause), with their exit status; they are restarted.
    pub fn restart_exited(&mut self) -> Result<Vec<(Role, String)>> {
        let mut exited = Vec::new();
        for p in &mut self.procs {
            if let Some(child) = &mut p.child
                && let Some(status) = child.try_wait()?
            {
                exited.push((p.role, status.to_string()));
                p.child = None;
            }
        }
        for (role, _) in &exited {
            self.spawn(*role)?;
        }
        Ok(exited)
    }

    /// Waits until every CM is behind the balancer and the core answers
    /// its admin endpoint, up to `limit`.
    pub async fn wait_healthy(&self, limit: Duration) -> Result<()> {
        let want: Vec<String> = {
            let mut v: Vec<String> = (1..=self.cms).map(|n| format!("cm-{n}")).collect();
            v.sort();
            v
        };
        let start = Instant::now();
        loop {
            let (lb_admin, core_admin) = (self.lb_admin, self.core_admin);
            // the admin endpoints want the tokens each server keeps (made at its first start)
            let lb_token = self.dir.join("pki").join("lb-admin.token");
            let core_token = self.dir.join("data").join("admin.token");
            let (have, core_up) = tokio::task::spawn_blocking(move || {
                let have = backends_at(lb_admin, &lb_token);
                (have, http_get(core_admin, "/routes", &core_token).is_ok())
            })
            .await?;
            if have == want && core_up {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("not healthy after {limit:?}: backends {have:?}, core up: {core_up}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn backends_at(admin: SocketAddr, token: &Path) -> Vec<String> {
    let Ok(body) = http_get(admin, "/backends", token) else {
        return Vec::new();
    };
    let mut names: Vec<String> = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|b| b["name"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default();
    names.sort();
    names
}

impl Proc {
    fn new(role: Role, config: PathBuf) -> Self {
        Self {
            role,
            config,
            child: None,
            starts: 0,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs `longlink ARGS` to completion; an error carries its output.
fn run(longlink: &Path, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new(longlink)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", longlink.display()))?;
    ensure!(
        out.status.success(),
        "longlink {:?} failed: {}{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A plain HTTP/1.0 GET on loopback (admin endpoints); the body if 200.
/// GET `path` with the bearer token kept in the file `token`.
fn http_get(addr: SocketAddr, path: &str, token: &Path) -> Result<String> {
    use std::io::{Read, Write};
    let token = std::fs::read_to_string(token)?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    )?;
    let mut buf = Vec::new();
    s.take(4 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "HTTP {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_owned())
}
