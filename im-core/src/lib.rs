//! The longlink IM core: authenticates users, keeps the routing table
//! (which CM node holds which session), routes stanzas and stores what must
//! not be lost. It never holds a client connection: CM nodes do, and reach
//! the core over a few pooled QUIC connections each.
//!
//! Layout: [`links`] accepts CM connections, [`auth`] runs SASL,
//! [`router`] (sans-IO) decides where stanzas go using [`routing`],
//! [`driver`] carries its decisions out and keeps its time, [`storage`]
//! persists accounts and offline messages, [`shards`] owns slots of users
//! when many cores share a domain, [`admin`] serves metrics,
//! routes and account changes; [`address`] takes JID strings apart;
//! [`components`] accepts external components (XEP-0114).

pub mod address;
pub mod admin;
pub mod auth;
pub mod block_list;
pub mod caps;
pub mod components;
pub mod config;
pub mod driver;
pub mod external_services;
pub mod links;
pub mod metrics;
pub mod muc;
pub mod peers;
pub mod push;
pub mod queries;
pub mod router;
pub mod routing;
pub mod shards;
pub mod storage;
pub mod upload;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::CoreConfig;

/// Why the core could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Certificates could not be loaded.
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    /// The database could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS configuration is unusable for QUIC.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// The cluster configuration is unusable.
    #[error("cluster: {0}")]
    Cluster(String),
    /// An external service (XEP-0215) is misconfigured.
    #[error("{0}")]
    ExternalService(#[from] external_services::ServiceError),
    /// The external components (XEP-0114) are misconfigured.
    #[error("{0}")]
    Components(#[from] components::ComponentConfigError),
}

/// Hands the lease driver's events to the router, as many at once as have
/// come (a first round can own thousands of slots).
async fn follow_leases(
    mut events: mpsc::Receiver<shards::LeaseEvent>,
    router: mpsc::Sender<driver::Event>,
) {
    while let Some(first) = events.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = events.try_recv() {
            batch.push(more);
        }
        let input = router::Input::Ownership { events: batch };
        if router.send(driver::Event::Router(input)).await.is_err() {
            return;
        }
    }
}

/// Keeps a link to every live peer core.
async fn follow_members(
    mut members: tokio::sync::watch::Receiver<Vec<shards::Member>>,
    peers: peers::PeerLinks,
    setup: peers::PeerSetup,
) {
    loop {
        let live: Vec<(String, String)> = members
            .borrow_and_update()
            .iter()
            .map(|m| (m.core.clone(), m.address.clone()))
            .collect();
        peers.sync(&live, &setup);
        tokio::select! {
            () = setup.shutdown.cancelled() => return,
            changed = members.changed() => if changed.is_err() { return },
        }
    }
}

/// Starts the upload service's HTTPS server (and its expiry sweep); its
/// address.
fn serve_uploads(
    config: &CoreConfig,
    pki: &certs::PkiPaths,
    listener: tokio::net::TcpListener,
    slots: Arc<upload::Slots>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<SocketAddr, CoreError> {
    let Some(u) = &config.upload else {
        return Err(CoreError::Cluster("no upload configuration".into()));
    };
    let (cert, key) = match (&u.tls_cert, &u.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (pki.core_cert(), pki.core_key()),
    };
    let mut tls = certs::client_facing_server_config(&cert, &key, &[b"http/1.1"])?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener =
        upload::tls::TlsListener::new(listener, tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
            .map_err(io("upload listener"))?;
    let addr = axum::serve::Listener::local_addr(&listener).map_err(io("upload address"))?;
    let app = upload::http::routes(slots.clone());
    serve_http(tasks, listener, app, shutdown, "upload server");
    let keep = Duration::from_secs(u64::from(u.expiry_days) * 86_400);
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let slots = slots.clone();
            let now = std::time::SystemTime::now();
            let cut = now - keep;
            let swept = tokio::task::spawn_blocking(move || match slots.store() {
                upload::Store::Disk(dir) => Ok(upload::sweep::sweep(dir, cut, now)),
                upload::Store::S3(s3) => s3.sweep(cut, upload::slots::is_upload_key),
            })
            .await;
            match swept {
                Ok(Ok(0)) | Err(_) => {}
                Ok(Ok(removed)) => tracing::info!(removed, "expired uploads removed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "removing expired uploads failed"),
            }
        }
    });
    tracing::info!(%addr, "upload service started");
    Ok(addr)
}

/// The upload service's S3 bucket: refused if the store denies the
/// credentials or has no such bucket; started anyway (with a warning) if
/// the store cannot be reached now.
async fn open_bucket(config: &upload::s3::S3Config) -> Result<upload::s3::S3Store, CoreError> {
    let store = upload::s3::S3Store::new(config).map_err(|e| CoreError::Cluster(e.to_string()))?;
    let probe = store.clone();
    match tokio::task::spawn_blocking(move || probe.check()).await {
        Ok(Ok(())) => {}
        Ok(Err(e @ upload::s3::S3Error::Status { status, .. })) if status < 500 => {
            return Err(CoreError::Cluster(format!("upload bucket: {e}")));
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "the upload bucket cannot be reached yet"),
        Err(e) => tracing::warn!(error = %e, "checking the upload bucket failed"),
    }
    Ok(store)
}

/// Serves `app` on `listener` until `shutdown` (`what` names it in a
/// failure's log).
fn serve_http<L: axum::serve::Listener>(
    tasks: &TaskTracker,
    listener: L,
    app: axum::Router,
    shutdown: &CancellationToken,
    what: &'static str,
) where
    L::Addr: std::fmt::Debug,
{
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, what, "HTTP server failed");
        }
    });
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CoreError {
    let context = context.into();
    move |source| CoreError::Io { context, source }
}

/// A running core.
pub struct CoreHandle {
    /// Address CMs connect to.
    pub quic_addr: SocketAddr,
    /// Admin HTTP address.
    pub admin_addr: SocketAddr,
    /// The upload server's address (XEP-0363), if it runs.
    pub upload_addr: Option<SocketAddr>,
    /// The external components' listener (XEP-0114), if it runs.
    pub component_addr: Option<SocketAddr>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl CoreHandle {
    /// Stops the core: closes every CM connection and waits for its tasks.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.endpoint.close(0u32.into(), b"core shutting down");
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    /// Waits until shutdown is requested elsewhere (e.g. Ctrl-C handling).
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }
}

/// Reads, or creates with mode 0600, the admin token of a data directory.
pub fn admin_token(data_dir: &Path) -> Result<String, std::io::Error> {
    certs::secret::hex_secret(&data_dir.join("admin.token"))
}

/// Reads, or creates, the key of SM ids (so they survive a core restart).
pub fn sm_secret(data_dir: &Path) -> Result<[u8; 32], std::io::Error> {
    let hex = certs::secret::hex_secret(&data_dir.join("sm.key"))?;
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| std::io::Error::other("sm.key is not 64 hex digits"))?;
    }
    Ok(key)
}

/// Transport settings for the CM links: few connections carrying many
/// sessions, so generous windows; keep-alive well inside the idle timeout.
fn link_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(8u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((16u32 * 1024 * 1024).into())
        .receive_window((32u32 * 1024 * 1024).into())
        .send_window(32 * 1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(
            Duration::from_secs(10)
                .try_into()
                .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000))),
        ));
    t
}

/// The CM listener. Its stateless-reset key and the key that signs its
/// connection ids are derived from the cluster key, so every process of
/// this core has the same ones: after a restart, the CMs' packets on their
/// old connections are answered with a stateless reset they accept, and
/// they reconnect at once instead of after their idle timeout.
fn link_endpoint(
    pki: &certs::PkiPaths,
    server_config: quinn::ServerConfig,
    listen: SocketAddr,
) -> Result<quinn::Endpoint, CoreError> {
    let cluster_key = match certs::load_cluster_key(&pki.cluster_key()) {
        Ok(k) => certs::cluster_key::ClusterKey::new(k),
        Err(e) => {
            tracing::warn!(error = %e, "no cluster key: after a restart of this core, CMs notice only at their idle timeout");
            certs::cluster_key::ClusterKey::random()
        }
    };
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(cluster_key.core_reset_key()));
    let cid_key = cluster_key.core_cid_key();
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = std::net::UdpSocket::bind(listen).map_err(io(format!("bind {listen}")))?;
    quinn::Endpoint::new(
        endpoint_config,
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(io(format!("listen on {listen}")))
}

/// Starts a core: storage, router, CM listener and admin endpoint.
pub async fn start(config: CoreConfig) -> Result<CoreHandle, CoreError> {
    let (url, dir, quota) = (
        config.database_url.clone(),
        config.data_dir.clone(),
        config.offline_quota,
    );
    start_with_store(config, move || storage::open(url.as_deref(), &dir, quota)).await
}

/// Starts a core on the store `open` makes (on the storage thread) instead
/// of the configured one: for the load tool's core-sim fixture.
pub async fn start_with_store(
    config: CoreConfig,
    open: impl FnOnce() -> Result<Box<dyn storage::Store>, storage::StorageError> + Send + 'static,
) -> Result<CoreHandle, CoreError> {
    let pki = certs::PkiPaths::new(&config.pki_dir);
    let tls = certs::cluster_server_config(
        &pki.ca_cert(),
        &pki.core_cert(),
        &pki.core_key(),
        cm_protocol::ALPN,
    )?;
    let quic_tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| CoreError::Quic(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
    server_config.transport_config(Arc::new(link_transport()));
    let endpoint = link_endpoint(&pki, server_config, config.listen)?;
    let quic_addr = endpoint.local_addr().map_err(io("local address"))?;

    let storage = storage::Storage::start_with(config.storage_limits(), open)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let links = Arc::new(links::Links::with_gauges(links::LinkGauges {
        nodes: metrics.cm_nodes.clone(),
        connections: metrics.cm_connections.clone(),
    }));
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let instance: u64 = rand::random();

    let (events_tx, events_rx) = mpsc::channel(driver::ROUTER_QUEUE);
    let sm_key = match &config.cluster {
        // every core of a cluster resumes every core's sessions
        Some(_) => {
            certs::cluster_key::ClusterKey::new(certs::load_cluster_key(&pki.cluster_key())?)
                .derive("longlink sm ids")
        }
        None => sm_secret(&config.data_dir).map_err(io("SM key"))?,
    };
    let mut auth = auth::AuthService::new(&config.domain, storage.clone(), config.allow_plain)
        .with_registration(config.registration)
        .with_sasl2(config.sasl2);
    if config.sasl2 && config.fast {
        // (from the SM key: in a cluster every core derives the same
        // tokens from a stored seed)
        let key: [u8; 32] =
            <sha2::Sha256 as sha2::Digest>::digest([&sm_key[..], b"longlink fast tokens"].concat())
                .into();
        let days = u64::from(config.fast_token_days.clamp(1, 365));
        auth = auth.with_fast(auth::fast::FastTokens::new(
            key,
            std::time::Duration::from_secs(days * 86_400),
        ));
    }
    let auth = Arc::new(auth);
    for service in &config.external_services {
        service.validate()?;
    }
    config.validate_components()?;
    let mut router = router::Router::new(&config.domain, instance, sm_key)
        .with_login_features(config.sasl2, config.sasl2 && config.fast)
        .with_archive(
            config.archive,
            (queries::now_micros() as u64).wrapping_mul(16),
        )
        .with_max_resources(config.max_resources_per_account)
        .with_external_services(external_services::ExternalServices::new(
            config.external_services.clone(),
            std::time::Instant::now(),
            external_services::ExternalServices::unix_now(),
        ));
    if !config.components.is_empty() {
        router = router.with_components(config.components.iter().map(|c| c.name.clone()));
    }
    if let Some(jid) = config.muc_service_jid() {
        // occupant ids (XEP-0421) stay the same across restarts and cores
        let secret: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(
            [&sm_key[..], b"longlink occupant ids"].concat(),
        )
        .into();
        let base = (queries::now_micros() as u64).wrapping_mul(16);
        router = router
            .with_muc(muc::MucService::new(&jid, base, secret).with_archive(config.archive))
            .with_fanout_per_session(config.muc_fanout_per_session);
    }
    if config.push_enabled {
        router = router.with_push(
            push::PushService::new(&config.domain, instance.rotate_left(17))
                .with_include_body(config.push_include_body)
                .with_include_sender(config.push_include_sender),
        );
    }
    let upload = match &config.upload {
        Some(u) => {
            u.validate(&config.domain).map_err(CoreError::Cluster)?;
            // (from the SM key: in a cluster every core's, so a user's
            // prefix in a shared bucket, and its quota, are the same on all)
            let key: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(
                [&sm_key[..], b"longlink upload key"].concat(),
            )
            .into();
            let dir = u
                .dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("uploads"));
            let listener = tokio::net::TcpListener::bind(u.listen)
                .await
                .map_err(io(format!("bind upload {}", u.listen)))?;
            let addr = listener.local_addr().map_err(io("upload address"))?;
            let public = u
                .public_url
                .clone()
                .unwrap_or_else(|| format!("https://{addr}"));
            let store = match &u.s3 {
                None => upload::Store::Disk(dir),
                Some(s3) => upload::Store::S3(open_bucket(s3).await?),
            };
            let slots = upload::Slots::new(store, &public, key, u.max_file_bytes, u.quota_bytes);
            let service = router::UploadService {
                jid: u.jid(&config.domain),
                max_file_bytes: u.max_file_bytes,
            };
            router = router.with_upload(service);
            Some((Arc::new(slots), listener))
        }
        None => None,
    };
    let mut slot_owners = None;
    let mut cluster_links = None;
    let mut drain = None;
    if let Some(cluster) = &config.cluster {
        let Some(url) = config.database_url.clone() else {
            return Err(CoreError::Cluster(
                "a core in a cluster needs database_url (PostgreSQL)".into(),
            ));
        };
        let mut lease_config = shards::LeaseConfig::new(
            cluster.name.clone(),
            cluster.advertise.clone(),
            rand::random(),
        );
        lease_config.slots = cluster.slots;
        let member = lease_config.member();
        router = router.with_cluster(&member, cluster.slots);
        let leases = shards::SlotLeases::new(lease_config, std::time::Instant::now());
        let lease = shards::driver::spawn(leases, url, cluster.slots, shutdown.clone());
        let (owners_tx, owners_rx) = tokio::sync::watch::channel(None);
        slot_owners = Some(owners_rx.clone());
        let client = certs::cluster_client_config(
            &pki.ca_cert(),
            &pki.core_cert(),
            &pki.core_key(),
            cm_protocol::ALPN,
        )?;
        let quic_client = quinn::crypto::rustls::QuicClientConfig::try_from(client)
            .map_err(|e| CoreError::Quic(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic_client));
        client.transport_config(Arc::new(link_transport()));
        let peers = peers::PeerLinks::default();
        let setup = peers::PeerSetup {
            member: member.clone(),
            endpoint: endpoint.clone(),
            client,
            router: events_tx.clone(),
            slot_owners: owners_rx,
            shutdown: shutdown.clone(),
        };
        tasks.spawn(follow_leases(lease.events, events_tx.clone()));
        tasks.spawn(follow_members(lease.members.clone(), peers.clone(), setup));
        tracing::info!(member, slots = cluster.slots, "core in a cluster");
        cluster_links = Some(driver::ClusterLinks {
            member,
            slot_count: cluster.slots,
            peers,
            cores: lease.members,
            slot_owners: owners_tx,
            lease_commands: lease.commands.clone(),
        });
        drain = Some(lease.commands);
    }
    let driver = driver::Driver::new(
        router,
        links.clone(),
        storage.clone(),
        metrics.clone(),
        config.domain.clone(),
    )
    .with_storage_limits(driver::StorageLimits {
        queue_bytes: config.storage_queue_bytes,
        deadline: config.storage_limits().deadline,
    });
    let driver = match cluster_links {
        Some(c) => driver.with_cluster(c),
        None => driver,
    };
    let component_links = components::ComponentLinks::default();
    let driver = driver.with_components(component_links.clone());
    let (driver, upload_addr) = match upload {
        Some((slots, listener)) => {
            let addr = serve_uploads(&config, &pki, listener, slots.clone(), &tasks, &shutdown)?;
            (driver.with_upload(slots), Some(addr))
        }
        None => (driver, None),
    };
    let component_addr = match config.component_listen {
        Some(listen) => {
            if config.components.is_empty() {
                tracing::warn!(%listen, "component_listen is set but no components are configured");
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(io(format!("bind components {listen}")))?;
            let addr = listener.local_addr().map_err(io("component address"))?;
            let setup = components::ComponentSetup {
                settings: Arc::new(components::stream::StreamSettings::new(
                    &config.domain,
                    &config.components,
                )),
                links: component_links,
                router: events_tx.clone(),
                shutdown: shutdown.clone(),
                tasks: tasks.clone(),
            };
            tasks.spawn(components::serve(listener, setup));
            tracing::info!(%addr, components = config.components.len(), "component listener started");
            Some(addr)
        }
        None => {
            if !config.components.is_empty() {
                tracing::warn!(
                    "components are configured but component_listen is not: none can connect"
                );
            }
            None
        }
    };
    tasks.spawn(driver.run(events_rx, shutdown.clone()));

    let token = admin_token(&config.data_dir).map_err(io("admin token"))?;
    let admin_state = Arc::new(admin::AdminState {
        metrics: metrics.clone(),
        router: events_tx.clone(),
        storage: storage.clone(),
        token,
        leases: drain,
    });
    let listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(io(format!("bind admin {}", config.admin_listen)))?;
    let admin_addr = listener.local_addr().map_err(io("admin address"))?;
    let app = admin::routes(admin_state);
    serve_http(&tasks, listener, app, &shutdown, "admin endpoint");

    let ctx = links::LinkContext {
        links,
        router: events_tx,
        auth,
        metrics: metrics.clone(),
        domain: config.domain.clone(),
        instance,
        caps: router::server_caps_ver(router::ServerOffers {
            extdisco: !config.external_services.is_empty(),
            sasl2: config.sasl2,
            fast: config.sasl2 && config.fast,
        }),
        grace: config.node_grace(),
        shutdown: shutdown.clone(),
        slot_owners,
    };
    let ep = endpoint.clone();
    let stop = shutdown.clone();
    let tracker = tasks.clone();
    tasks.spawn(async move {
        loop {
            let incoming = tokio::select! {
                _ = stop.cancelled() => return,
                i = ep.accept() => match i { Some(i) => i, None => return },
            };
            tracker.spawn(links::serve(ctx.clone(), incoming));
        }
    });
    tracing::info!(%quic_addr, %admin_addr, domain = %config.domain, "core started");
    Ok(CoreHandle {
        quic_addr,
        admin_addr,
        upload_addr,
        component_addr,
        endpoint,
        shutdown,
        tasks,
    })
}
