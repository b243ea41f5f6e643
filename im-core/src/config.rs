//! Configuration of the core (TOML; `longlink core --config FILE`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Core configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreConfig {
    /// The XMPP domain served.
    pub domain: String,
    /// UDP address the CMs connect to (QUIC, mutual TLS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// HTTP admin endpoint (metrics, routes, accounts); keep it on loopback.
    #[serde(default = "default_admin")]
    pub admin_listen: SocketAddr,
    /// Directory of the embedded database and the admin token.
    pub data_dir: PathBuf,
    /// Directory of the cluster PKI (ca.pem, core.pem, core.key).
    pub pki_dir: PathBuf,
    /// How long a CM may have no pooled connection before its routes are dropped, in ms.
    #[serde(default = "default_grace_ms")]
    pub node_grace_ms: u64,
    /// Most offline messages kept per user.
    #[serde(default = "default_offline_quota")]
    pub offline_quota: u32,
    /// Offer SASL PLAIN (always under TLS).
    #[serde(default = "yes")]
    pub allow_plain: bool,
    /// PostgreSQL connection string (libpq key-value or `postgres://` URL);
    /// unset: the embedded database in `data_dir`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Let clients create accounts in-band (XEP-0077).
    #[serde(default)]
    pub registration: bool,
    /// Offer SASL2 (XEP-0388) with Bind2 (XEP-0386) and inline stream
    /// management beside SASL (one round trip instead of five at login).
    #[serde(default = "yes")]
    pub sasl2: bool,
    /// Offer FAST tokens (XEP-0484) in SASL2: a client logs in again with
    /// a token in one round trip instead of SCRAM's two.
    #[serde(default = "yes")]
    pub fast: bool,
    /// How long a FAST token lives, in days (renewed on use in its second half).
    #[serde(default = "default_fast_token_days")]
    pub fast_token_days: u32,
    /// Archive chat messages (XEP-0313), before acknowledging them to
    /// their sender. Off: no history, one durable write less per message.
    #[serde(default = "yes")]
    pub archive: bool,
    /// Most sessions (resources) one account may bind at once; more binds
    /// are refused with `resource-constraint`.
    #[serde(default = "default_max_resources")]
    pub max_resources_per_account: usize,
    /// Most bytes of jobs queued for (or running on) the storage thread;
    /// beyond it storage work is refused at once.
    #[serde(default = "default_storage_queue_bytes")]
    pub storage_queue_bytes: usize,
    /// How long a storage job may wait in the queue before it fails, in ms.
    #[serde(default = "default_storage_deadline_ms")]
    pub storage_deadline_ms: u64,
    /// Take part in a cluster of cores sharing the domain (issue 15):
    /// needs `database_url` (slot leases live in PostgreSQL). Unset: this
    /// core serves every user (the embedded single core).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// STUN and TURN servers told to clients (XEP-0215), with credentials
    /// for those given a secret.
    #[serde(default)]
    pub external_services: Vec<crate::external_services::ExternalService>,
    /// HTTP File Upload (XEP-0363): the service and its HTTPS server.
    /// Unset: not offered.
    #[serde(default)]
    pub upload: Option<crate::upload::UploadConfig>,
    /// Group chat (XEP-0045): the service's JID; default
    /// `conference.DOMAIN`. Offered unless `muc_enabled` is false.
    #[serde(default)]
    pub muc_jid: Option<String>,
    /// Offer group chat (default true).
    #[serde(default = "yes")]
    pub muc_enabled: bool,
    /// Send a room's stanza to each occupant's session in a frame of its
    /// own instead of one frame per CM (for measurements only).
    #[serde(default)]
    pub muc_fanout_per_session: bool,
    /// Push notifications (XEP-0357) to app servers connected as
    /// components (default true).
    #[serde(default = "yes")]
    pub push_enabled: bool,
    /// Put a message's body in its push notification (default false: the
    /// app server learns only the count).
    #[serde(default)]
    pub push_include_body: bool,
    /// Put the sender's bare JID in push notifications (default false).
    #[serde(default)]
    pub push_include_sender: bool,
    /// External components (XEP-0114) the core accepts, each with its
    /// domain and shared secret; see [`CoreConfig::validate_components`].
    #[serde(default)]
    pub components: Vec<crate::components::ComponentConfig>,
    /// The TCP address external components connect to (plain TCP, as
    /// XEP-0114 specifies: keep it on loopback or a private network).
    /// Unset: no listener.
    #[serde(default)]
    pub component_listen: Option<SocketAddr>,
}

/// A core's place in a cluster of cores.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This core's name (unique in the cluster, e.g. `core-2`).
    pub name: String,
    /// The `host:port` CMs and other cores reach this core's `listen` at.
    pub advertise: String,
    /// Shard slots of the cluster (the same on every core; fixed when the
    /// first core prepares the cluster).
    #[serde(default = "default_slots")]
    pub slots: u16,
}

impl ClusterConfig {
    /// Core `name` at `advertise`, with the default slot count.
    pub fn new(name: &str, advertise: &str) -> Self {
        Self {
            name: name.to_owned(),
            advertise: advertise.to_owned(),
            slots: default_slots(),
        }
    }
}

fn default_slots() -> u16 {
    cm_protocol::slots::DEFAULT_SLOTS
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5280))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5290))
}
fn default_grace_ms() -> u64 {
    3000
}
fn default_offline_quota() -> u32 {
    10_000
}
fn default_max_resources() -> usize {
    crate::routing::MAX_RESOURCES_PER_ACCOUNT
}
fn default_storage_queue_bytes() -> usize {
    crate::storage::Limits::default().queue_bytes
}
fn default_storage_deadline_ms() -> u64 {
    crate::storage::Limits::default().deadline.as_millis() as u64
}
fn default_fast_token_days() -> u32 {
    14
}

fn yes() -> bool {
    true
}

impl CoreConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(domain: &str, data_dir: PathBuf, pki_dir: PathBuf) -> Self {
        Self {
            domain: domain.to_owned(),
            listen: default_listen(),
            admin_listen: default_admin(),
            data_dir,
            pki_dir,
            node_grace_ms: default_grace_ms(),
            offline_quota: default_offline_quota(),
            allow_plain: true,
            database_url: None,
            registration: false,
            sasl2: true,
            fast: true,
            fast_token_days: default_fast_token_days(),
            archive: true,
            max_resources_per_account: default_max_resources(),
            storage_queue_bytes: default_storage_queue_bytes(),
            storage_deadline_ms: default_storage_deadline_ms(),
            cluster: None,
            external_services: Vec::new(),
            upload: None,
            muc_jid: None,
            muc_enabled: true,
            muc_fanout_per_session: false,
            push_enabled: true,
            push_include_body: false,
            push_include_sender: false,
            components: Vec::new(),
            component_listen: None,
        }
    }

    /// The group chat service's JID, if offered.
    pub fn muc_service_jid(&self) -> Option<String> {
        self.muc_enabled.then(|| {
            self.muc_jid
                .clone()
                .unwrap_or_else(|| format!("conference.{}", self.domain))
        })
    }

    /// Checks `components`: each name a domain of its own (not the
    /// server's, the upload service's or the group chat service's), given
    /// once, with a secret of at least
    /// [`crate::components::MIN_SECRET_BYTES`] bytes.
    pub fn validate_components(&self) -> Result<(), crate::components::ComponentConfigError> {
        let mut services = Vec::new();
        if let Some(u) = &self.upload {
            services.push(("the upload service", u.jid(&self.domain)));
        }
        if let Some(muc) = self.muc_service_jid() {
            services.push(("the group chat service", muc));
        }
        crate::components::validate(&self.components, &self.domain, &services)
    }

    /// The bounds of the storage queue.
    pub fn storage_limits(&self) -> crate::storage::Limits {
        crate::storage::Limits {
            queue_bytes: self.storage_queue_bytes,
            deadline: Duration::from_millis(self.storage_deadline_ms),
        }
    }

    /// The node grace period.
    pub fn node_grace(&self) -> Duration {
        Duration::from_millis(self.node_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_configuration_the_deployment_guide_shows_parses() {
        let guide = include_str!("../../docs/DEPLOYMENT.md");
        let cores = guide.split("## Cores").nth(1).expect("a Cores section");
        let toml_block = cores
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a TOML block");
        let config: CoreConfig = toml::from_str(toml_block).expect("it parses");
        assert_eq!(config.domain, "example.org");
        let [turn] = &config.external_services[..] else {
            panic!("{:?}", config.external_services)
        };
        assert_eq!(
            (turn.kind.as_str(), turn.port, turn.secret.is_some()),
            ("turn", Some(3478), true)
        );
        assert!(config.cluster.is_some());
        let upload = config.upload.clone().expect("an upload section");
        assert_eq!(upload.jid("example.org"), "upload.example.org");
        assert_eq!(upload.expiry_days, 30);
        let [push] = &config.components[..] else {
            panic!("{:?}", config.components)
        };
        assert_eq!(push.name, "push.example.org");
        assert!(config.component_listen.is_some());
        assert_eq!(config.validate_components(), Ok(()));
    }
}
