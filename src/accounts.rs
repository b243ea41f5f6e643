//! Account management (`adduser`, `deluser`, `passwd`), `routes` and
//! `drain`.
//!
//! With the core running, requests go to its admin endpoint (address from
//! `DIR/endpoints.json`, token from `DIR/data/admin.token`); with it stopped,
//! the database in `DIR/data` is changed directly. `drain` goes to the
//! balancer's admin endpoint, which `longlink up` gives the same token.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::deploy::Endpoints;
use im_core::storage::Store;

/// Arguments of the account commands.
#[derive(Args)]
pub struct AccountArgs {
    /// The account's JID (or just the user name).
    jid: String,
    /// Password (read from standard input if absent; not used by deluser).
    #[arg(long)]
    password: Option<String>,
    /// Deployment directory (as given to `longlink up`).
    #[arg(long, default_value = "dev-deploy")]
    dir: PathBuf,
    /// adduser: create COUNT accounts, the name followed by 0 … COUNT-1
    /// (for load tests), all with the same password.
    #[arg(long)]
    count: Option<usize>,
}

impl AccountArgs {
    fn user(&self) -> Result<String> {
        let local = self.jid.split('@').next().unwrap_or_default();
        im_core::auth::normalize_user(local)
            .with_context(|| format!("invalid user name in {}", self.jid))
    }

    fn password(&self) -> Result<String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        eprintln!("password:");
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let p = line.trim_end_matches(['\r', '\n']).to_owned();
        if p.is_empty() {
            bail!("empty password");
        }
        Ok(p)
    }
}

enum Target {
    Running { admin: String, token: String },
    Stopped { data: PathBuf },
}

fn target(dir: &Path) -> Result<Target> {
    let data = dir.join("data");
    if let Ok(endpoints) = Endpoints::load(dir)
        && std::net::TcpStream::connect_timeout(&endpoints.admin, std::time::Duration::from_secs(1))
            .is_ok()
    {
        let token = im_core::admin_token(&data).context("reading the admin token")?;
        return Ok(Target::Running {
            admin: format!("http://{}", endpoints.admin),
            token,
        });
    }
    Ok(Target::Stopped { data })
}

fn http(method: &str, url: &str, token: &str, body: Option<serde_json::Value>) -> Result<u16> {
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .build(),
    );
    let auth = format!("Bearer {token}");
    let resp = match (method, body) {
        ("POST", Some(b)) => agent
            .post(url)
            .header("authorization", &auth)
            .send_json(b)?,
        ("PUT", Some(b)) => agent.put(url).header("authorization", &auth).send_json(b)?,
        ("DELETE", _) => agent.delete(url).header("authorization", &auth).call()?,
        _ => bail!("unsupported request"),
    };
    Ok(resp.status().as_u16())
}

fn open_db(data: &Path) -> Result<im_core::storage::Sqlite> {
    im_core::storage::Sqlite::open(data, 10_000)
        .with_context(|| format!("opening the database in {}", data.display()))
}

/// `longlink adduser`.
pub async fn adduser(args: AccountArgs) -> Result<()> {
    if let Some(count) = args.count {
        return add_many(args, count).await;
    }
    let user = args.user()?;
    let password = args.password()?;
    let created = match target(&args.dir)? {
        Target::Running { admin, token } => {
            let body = serde_json::json!({ "username": user, "password": password });
            let status = tokio::task::spawn_blocking(move || {
                http("POST", &format!("{admin}/users"), &token, Some(body))
            })
            .await??;
            match status {
                201 => true,
                409 => false,
                s => bail!("the core answered HTTP {s}"),
            }
        }
        Target::Stopped { data } => {
            let creds = xmpp_sasl::StoredCredentials::new(
                &password,
                xmpp_sasl::StoredCredentials::DEFAULT_ITERATIONS,
            );
            open_db(&data)?.add_user(&user, &creds)?
        }
    };
    if !created {
        bail!("user {user} exists");
    }
    println!("created {user}");
    Ok(())
}

/// `longlink adduser NAME --count N`: NAME0 … NAME{N-1}; existing ones are
/// left as they are.
async fn add_many(args: AccountArgs, count: usize) -> Result<()> {
    let prefix = args.user()?;
    let password = args.password()?;
    let mut created = 0;
    match target(&args.dir)? {
        Target::Running { admin, token } => {
            for i in 0..count {
                let body =
                    serde_json::json!({ "username": format!("{prefix}{i}"), "password": password });
                let (admin, token) = (admin.clone(), token.clone());
                let status = tokio::task::spawn_blocking(move || {
                    http("POST", &format!("{admin}/users"), &token, Some(body))
                })
                .await??;
                match status {
                    201 => created += 1,
                    409 => {}
                    s => bail!("the core answered HTTP {s}"),
                }
            }
        }
        Target::Stopped { data } => {
            let mut db = open_db(&data)?;
            db.begin()?;
            for i in 0..count {
                let creds = xmpp_sasl::StoredCredentials::new(
                    &password,
                    xmpp_sasl::StoredCredentials::DEFAULT_ITERATIONS,
                );
                if db.add_user(&format!("{prefix}{i}"), &creds)? {
                    created += 1;
                }
            }
            db.commit()?;
        }
    }
    println!(
        "created {created} of {prefix}0 … {prefix}{}",
        count.saturating_sub(1)
    );
    Ok(())
}

/// `longlink deluser`.
pub async fn deluser(args: AccountArgs) -> Result<()> {
    let user = args.user()?;
    let deleted = match target(&args.dir)? {
        Target::Running { admin, token } => {
            let url = format!("{admin}/users/{user}");
            let status =
                tokio::task::spawn_blocking(move || http("DELETE", &url, &token, None)).await??;
            match status {
                204 => true,
                404 => false,
                s => bail!("the core answered HTTP {s}"),
            }
        }
        Target::Stopped { data } => open_db(&data)?.delete_user(&user)?,
    };
    if !deleted {
        bail!("no user {user}");
    }
    println!("deleted {user}");
    Ok(())
}

/// `longlink passwd`.
pub async fn passwd(args: AccountArgs) -> Result<()> {
    let user = args.user()?;
    let password = args.password()?;
    let changed = match target(&args.dir)? {
        Target::Running { admin, token } => {
            let url = format!("{admin}/users/{user}/password");
            let body = serde_json::json!({ "password": password });
            let status = tokio::task::spawn_blocking(move || http("PUT", &url, &token, Some(body)))
                .await??;
            match status {
                204 => true,
                404 => false,
                s => bail!("the core answered HTTP {s}"),
            }
        }
        Target::Stopped { data } => {
            let creds = xmpp_sasl::StoredCredentials::new(
                &password,
                xmpp_sasl::StoredCredentials::DEFAULT_ITERATIONS,
            );
            open_db(&data)?.set_credentials(&user, &creds)?
        }
    };
    if !changed {
        bail!("no user {user}");
    }
    println!("password changed for {user}");
    Ok(())
}

/// The admin bearer token of the deployment in `dir` (never created here).
fn read_token(dir: &Path) -> Result<String> {
    let path = dir.join("data").join("admin.token");
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the admin token {}", path.display()))?;
    Ok(token.trim().to_owned())
}

/// `longlink routes`.
pub async fn routes(dir: &Path) -> Result<()> {
    let endpoints = Endpoints::load(dir)?;
    let url = format!("http://{}/routes", endpoints.admin);
    let auth = format!("Bearer {}", read_token(dir)?);
    let text = tokio::task::spawn_blocking(move || -> Result<String> {
        let agent = ureq::Agent::new_with_config(
            ureq::config::Config::builder()
                .http_status_as_error(false)
                .build(),
        );
        let mut resp = agent.get(&url).header("authorization", &auth).call()?;
        match resp.status().as_u16() {
            200 => Ok(resp.body_mut().read_to_string()?),
            401 => bail!("the core refused the admin token"),
            s => bail!("the core answered HTTP {s}"),
        }
    })
    .await??;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

/// `longlink drain NODE`.
pub async fn drain(dir: &Path, node: &str, undo: bool) -> Result<()> {
    let endpoints = Endpoints::load(dir)?;
    let lb = endpoints.lb.context("this deployment has no balancer")?;
    let url = format!(
        "http://{}/{}/{node}",
        lb.admin,
        if undo { "undrain" } else { "drain" }
    );
    let auth = format!("Bearer {}", read_token(dir)?);
    let status = tokio::task::spawn_blocking(move || -> Result<u16> {
        let agent = ureq::Agent::new_with_config(
            ureq::config::Config::builder()
                .http_status_as_error(false)
                .build(),
        );
        let resp = agent
            .post(&url)
            .header("authorization", &auth)
            .send_empty()?;
        Ok(resp.status().as_u16())
    })
    .await??;
    match status {
        204 => {
            println!(
                "{node} {}",
                if undo {
                    "takes new connections again"
                } else {
                    "is draining"
                }
            );
            Ok(())
        }
        404 => bail!("the balancer does not know {node}"),
        401 => bail!("the balancer refused the admin token"),
        s => bail!("the balancer answered HTTP {s}"),
    }
}
