//! Starting and stopping a balancer: binds the public UDP sockets, the
//! backend socket, the control endpoint and the admin endpoint, and starts
//! the data plane (`data_plane`), the control plane (`control`, and the
//! [`Membership`](crate::membership::Membership) deadlines in `routing`) and
//! the admin HTTP (`admin`) around one routing table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::admin::admin_token;
use crate::admin::{self, Admin};
use crate::balancer::{Backend, Balancer};
use crate::control::{self, Control};
use crate::data_plane::DataPlane;
use crate::metrics::Metrics;
use crate::routing::Routing;
use crate::settings::LbSettings;
use crate::udp::UdpIo;

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// Certificates or keys could not be loaded.
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// A socket could not be bound.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl LbError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LbError {
        let context = context.into();
        move |source| LbError::Io { context, source }
    }
}

/// A running balancer.
pub struct LbHandle {
    /// Public client-facing addresses.
    pub public_addrs: Vec<SocketAddr>,
    /// Address CMs exchange encapsulated datagrams with.
    pub backend_addr: SocketAddr,
    /// Control endpoint for CM registration.
    pub control_addr: SocketAddr,
    /// Admin HTTP address.
    pub admin_addr: SocketAddr,
    routing: Arc<Routing>,
    metrics: Arc<Metrics>,
    control: quinn::Endpoint,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl LbHandle {
    /// Backends currently in the table.
    pub fn backends(&self) -> Vec<Backend> {
        self.routing.backends()
    }

    /// Drains (or undrains) a CM; false if unknown.
    pub fn set_draining(&self, node: &str, draining: bool) -> bool {
        self.routing.set_draining(node, draining)
    }

    /// Prometheus text of the balancer's metrics.
    pub fn metrics(&self) -> String {
        self.metrics.render()
    }

    /// Stops the balancer.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.control.close(0u32.into(), b"balancer stopping");
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}

/// Starts a balancer.
pub async fn start(settings: LbSettings) -> Result<LbHandle, LbError> {
    let config = settings.quic_lb_config()?;
    let balancer = Balancer::new(vec![config], settings.table_size).map_err(LbError::Config)?;
    let public = settings
        .listen
        .iter()
        .map(|a| UdpIo::bind(*a))
        .collect::<Result<Vec<_>, _>>()?;
    if public.is_empty() {
        return Err(LbError::Config("no listen address".into()));
    }
    let backend = UdpIo::bind(settings.backend_listen)?;
    let public_addrs = public.iter().map(|u| u.addr).collect::<Vec<_>>();
    let backend_addr = backend.addr;

    let control_ep = quinn::Endpoint::server(
        control::server_config(&settings.pki_dir)?,
        settings.control_listen,
    )
    .map_err(LbError::io(format!(
        "bind control {}",
        settings.control_listen
    )))?;
    let control_addr = control_ep
        .local_addr()
        .map_err(LbError::io("local address"))?;
    // Everything bound before anything starts: a failure leaves nothing running.
    let listener = tokio::net::TcpListener::bind(settings.admin_listen)
        .await
        .map_err(LbError::io(format!("bind admin {}", settings.admin_listen)))?;
    let admin_addr = listener
        .local_addr()
        .map_err(LbError::io("admin address"))?;

    let token_path = settings.admin_token_path();
    let token = admin::admin_token(&token_path)
        .map_err(LbError::io(format!("admin token {}", token_path.display())))?;

    let metrics = Arc::new(Metrics::new());
    metrics.table_size.set(settings.table_size as i64);
    let routing = Arc::new(Routing::new(balancer, metrics.clone()));
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let data_plane = Arc::new(DataPlane {
        routing: routing.clone(),
        metrics: metrics.clone(),
        public,
        backend,
    });
    if let Err(e) = data_plane.start(&shutdown) {
        shutdown.cancel(); // the threads that did start
        return Err(e);
    }
    let control = Arc::new(Control {
        routing: routing.clone(),
        metrics: metrics.clone(),
        quic_lb: settings.quic_lb.clone(),
    });
    tasks.spawn(control::run(
        control,
        control_ep.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));
    let timers = (routing.clone(), shutdown.clone());
    tasks.spawn(async move { timers.0.run_timers(timers.1).await });
    let admin = Admin {
        routing: routing.clone(),
        metrics: metrics.clone(),
        token: token.into(),
    };
    tasks.spawn(admin::serve(listener, admin, shutdown.clone()));
    tracing::info!(?public_addrs, %backend_addr, %control_addr, %admin_addr, "balancer started");
    Ok(LbHandle {
        public_addrs,
        backend_addr,
        control_addr,
        admin_addr,
        routing,
        metrics,
        control: control_ep,
        shutdown,
        tasks,
    })
}
