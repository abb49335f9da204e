//! `as2box serve`: the AS2 daemon. It sends what the mount queued and receives what
//! partners send, with receipts (MDNs) a partner can rely on. It runs unprivileged and does
//! all protocol work through the pure `crate::as2` core; storage goes through the store.
//!
//! - `http`: listener with limits, HTTP(S) client
//! - `receive`: incoming messages and async MDNs
//! - `send`: the send queue, retries, failures into `failed/`
//! - `keycache`: station keys and partner certificates, reloaded when their files change
//! - `doorbell`: wakes the send queue when root's side queued a message
//! - `metrics`, `retry`: counters and the backoff policy

pub mod alerts;
mod archive;
mod doorbell;
mod failpoint;
mod header_case;
mod http;
mod keycache;
mod live;
mod mdn_target;
mod metrics;
mod outcome;
mod owed_mdn;
mod receive;
mod retry;
mod send;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::store::Store;

/// How we name ourselves: the `Reporting-UA` of our MDNs and the `AS2-Product` of AS2 1.3.
pub const PRODUCT: &str = concat!("as2box/", env!("CARGO_PKG_VERSION"));

pub use outcome::expected_mics;
pub use retry::{Attempt, Backoff};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS settings are incomplete or unreadable.
    #[error("HTTPS listener: {0}")]
    Tls(String),
    /// The runtime could not start.
    #[error("cannot start: {0}")]
    Runtime(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What every task of the daemon shares.
pub struct Ctx {
    /// The store.
    pub store: Arc<Store>,
    /// Settings, reloaded when the config file changes.
    pub live: Arc<live::LiveConfig>,
    /// Counters.
    pub metrics: metrics::Metrics,
    /// Keys and certificates.
    pub keys: keycache::KeyCache,
    /// Owed async MDN deliveries in flight at most (each holds a connection and its MDN):
    /// the rest wait in the store for the retry loop.
    pub owed_mdn_slots: Arc<tokio::sync::Semaphore>,
    /// Refusals recorded per partner in the current minute (`receive::refuse`): each is a
    /// row, and a flood of forged requests must not fill the disk. One entry per partner
    /// that exists (requests are routed before they can be refused).
    pub refusals_recorded: std::sync::Mutex<std::collections::HashMap<i64, (i64, u32)>>,
    /// Alerts waiting for their webhook or command, and their counters.
    pub alerts: alerts::Alerts,
    /// Wakes the send loop: a message was queued (the doorbell), a retry is due or a send
    /// slot came free. Its poll remains for a wake that was lost.
    pub queue_bell: Arc<tokio::sync::Notify>,
}

/// How many async MDNs we owe are POSTed at once.
pub const OWED_MDNS_IN_FLIGHT: usize = 32;

impl Ctx {
    /// The settings in force now. Take them once per unit of work, so one message or
    /// request sees one consistent set.
    pub fn config(&self) -> Arc<Config> {
        self.live.get()
    }
}

/// Runs store and CPU-heavy work (SQLite, fsync, CMS) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn limits(config: &Config) -> http::Limits {
    http::Limits {
        max_connections: config.serve.max_connections,
        max_body: config.serve.max_body_bytes,
        max_header_bytes: 64 * 1024,
        header_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs_f64(config.serve.request_timeout_secs),
    }
}

fn handler(ctx: Arc<Ctx>) -> http::Handler {
    Arc::new(move |req: http::Req| {
        let ctx = ctx.clone();
        Box::pin(async move { route(ctx, req).await })
    })
}

async fn route(ctx: Arc<Ctx>, req: http::Req) -> http::Resp {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => http::Resp::text(200, "ok\n"),
        ("GET", "/metrics") => {
            let store = ctx.store.clone();
            let counts = blocking(move || store.message_counts())
                .await
                .unwrap_or_default();
            http::Resp {
                status: 200,
                headers: vec![("Content-Type".into(), "text/plain; version=0.0.4".into())],
                body: (ctx.metrics.render(&counts) + &ctx.alerts.render_metrics()).into_bytes(),
            }
        }
        ("POST", path @ ("/as2" | "/as2/test")) => {
            let test = path == "/as2/test";
            let started = std::time::Instant::now();
            let resp = receive::message(ctx.clone(), req, test).await;
            ctx.metrics.receive.observe(started.elapsed());
            resp
        }
        ("POST", "/as2/mdn") => receive::async_mdn(ctx, req).await,
        (_, "/as2" | "/as2/test" | "/as2/mdn") => http::Resp::text(405, "use POST\n"),
        _ => http::Resp::text(
            404,
            "not found: AS2 messages go to /as2 (test partners: /as2/test)\n",
        ),
    }
}

/// Warnings for station and partner certificates that expire within 30 days.
fn keys_expiring(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for s in store.stations(None).unwrap_or_default() {
        if let Some(w) = s.cert_path.as_deref().and_then(crate::keys::expiry_warning) {
            out.push(format!("station {}: {w}", s.as2_id));
        }
    }
    for p in store.partners(None).unwrap_or_default() {
        if let Some(w) = crate::keys::partner_expiry_warning(&p.profile.cert_paths) {
            out.push(format!("partner {}: {w}", p.as2_id));
        }
    }
    out
}

fn tls_acceptor(config: &Config) -> Result<Option<Arc<openssl::ssl::SslAcceptor>>, DaemonError> {
    if config.serve.https_listen.is_none() {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&config.serve.tls_cert, &config.serve.tls_key) else {
        return Err(DaemonError::Tls(
            "serve.https_listen needs serve.tls_cert and serve.tls_key".into(),
        ));
    };
    let mut b =
        openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls_server())
            .map_err(|e| DaemonError::Tls(e.to_string()))?;
    b.set_certificate_chain_file(cert)
        .map_err(|e| DaemonError::Tls(format!("{}: {e}", cert.display())))?;
    b.set_private_key_file(key, openssl::ssl::SslFiletype::PEM)
        .map_err(|e| DaemonError::Tls(format!("{}: {e}", key.display())))?;
    b.check_private_key()
        .map_err(|e| DaemonError::Tls(format!("key does not match certificate: {e}")))?;
    Ok(Some(Arc::new(b.build())))
}

async fn bind(addr: &str) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: addr.to_owned(),
            source,
        })
}

/// Runs the daemon until SIGINT or SIGTERM. `config` was read from `config_path`, which is
/// watched for changes.
pub fn serve(
    store: Arc<Store>,
    config: Config,
    config_path: std::path::PathBuf,
) -> Result<(), DaemonError> {
    failpoint::arm_from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(store, config, config_path))
}

async fn run(
    store: Arc<Store>,
    config: Config,
    config_path: std::path::PathBuf,
) -> Result<(), DaemonError> {
    let requeued = {
        let store = store.clone();
        let max = config.serve.max_attempts;
        tokio::task::spawn_blocking(move || store.requeue_sending(max))
            .await
            .map_err(|e| DaemonError::Runtime(std::io::Error::other(e)))??
    };
    if requeued > 0 {
        info!(
            messages = requeued,
            "requeued messages whose sending was interrupted by a stop"
        );
    }
    let owed = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.release_owed_mdns(crate::timefmt::now_ms()))
            .await
            .map_err(|e| DaemonError::Runtime(std::io::Error::other(e)))??
    };
    if owed > 0 {
        info!(mdns = owed, "async MDNs still owed to partners go out now");
    }
    let tls = tls_acceptor(&config)?;
    let http_listener = bind(&config.serve.http_listen).await?;
    let https_listener = match &config.serve.https_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    for w in keys_expiring(&store) {
        warn!("{w}");
    }
    let ctx = Arc::new(Ctx {
        store,
        metrics: metrics::Metrics::default(),
        keys: keycache::KeyCache::default(),
        owed_mdn_slots: Arc::new(tokio::sync::Semaphore::new(OWED_MDNS_IN_FLIGHT)),
        refusals_recorded: Default::default(),
        alerts: Default::default(),
        queue_bell: Arc::new(tokio::sync::Notify::new()),
        live: Arc::new(live::LiveConfig::new(config_path, config, tls)),
    });
    let refused = ctx.metrics.connections_refused.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let endpoint = |tls: bool| {
        let live = ctx.live.clone();
        let tls_live = ctx.live.clone();
        http::Endpoint {
            tls: tls.then(|| {
                Arc::new(move || tls_live.tls())
                    as Arc<dyn Fn() -> Option<Arc<openssl::ssl::SslAcceptor>> + Send + Sync>
            }),
            handler: handler(ctx.clone()),
            limits: Arc::new(move || limits(&live.get())),
            spool: {
                let store = ctx.store.clone();
                Arc::new(move || receive::ServeSpool::file(&store))
            },
        }
    };
    let config = ctx.config();
    let mut tasks = Vec::new();
    info!(addr = %config.serve.http_listen, "listening (HTTP)");
    tasks.push(tokio::spawn(http::serve(
        http_listener,
        endpoint(false),
        refused.clone(),
        stop_rx.clone(),
    )));
    if let Some(l) = https_listener {
        info!(addr = ?config.serve.https_listen, "listening (HTTPS)");
        tasks.push(tokio::spawn(http::serve(
            l,
            endpoint(true),
            refused.clone(),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(live::watch(ctx.live.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(doorbell::listen(
        ctx.store.doorbell_path(),
        ctx.queue_bell.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(send::run(ctx.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(alerts::run(ctx.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(alerts::watch_certificates(
        ctx.clone(),
        stop_rx.clone(),
    )));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
        _ = term.recv() => info!("SIGTERM: stopping"),
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            warn!("a task did not stop within 10 s");
        }
    }
    Ok(())
}
