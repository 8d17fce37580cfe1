//! `ctscope serve`: the measurement engine kept running, its report of the
//! run so far rendered as metrics at each scrape of `/metrics`.
//!
//! One task owns the engine: it samples at each interval (occupancy, the
//! on-demand arming) and answers scrapes, which the HTTP side hands it over
//! a channel. Nothing is shared, so nothing is locked.

mod http;
pub(crate) mod metrics;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::{
    host::kernel,
    observe::{self, Engine, ObserveError, Signals},
};

/// The default port: free in the copy of Prometheus's default port
/// allocations (its wiki) that could be read here; register it there.
pub const DEFAULT_PORT: u16 = 9978;

/// Scrapes closer together than this get the previous answer: a scrape
/// visits every namespace and dumps the table for NAT attribution, which
/// a scrape loop must not be able to turn into a load on the host.
const SCRAPE_MIN_GAP: Duration = Duration::from_secs(1);

pub struct Options {
    pub listen: SocketAddr,
    /// Namespaces and containers with series of their own, at most.
    pub max_series: usize,
    /// The engine's options (`duration`, `json` and `ready_file` unused).
    pub observe: observe::Options,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A scrape, as the HTTP side hands it to the engine's task.
pub(crate) struct ScrapeRequest {
    pub(crate) openmetrics: bool,
    pub(crate) reply: oneshot::Sender<Result<String, String>>,
}

/// The last answer, for scrapes within [`SCRAPE_MIN_GAP`].
struct Cached {
    at: Instant,
    openmetrics: String,
}

pub async fn run(opts: Options) -> Result<(), ServeError> {
    if !kernel::is_root() {
        return Err(ObserveError::NotRoot.into());
    }
    let mut signals = Signals::new()?;
    // Bound first: a port in use is said at once, not after loading.
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: opts.listen,
            source,
        })?;
    if !opts.listen.ip().is_loopback() {
        log::warn!(
            "listening on {}, not loopback: anyone who reaches this address reads which namespaces and containers use conntrack; keep it behind a firewall or Prometheus's network",
            opts.listen
        );
    }
    // No ctnetlink listener: its namespaces would be fixed at the start.
    let mut engine = Engine::open(&opts.observe, &mut signals, false).await?;
    if engine.stopped_early() {
        return Ok(());
    }
    // A scrape may count containers' entries from a recent dump of the
    // table (its age is exported), not from a new one each time.
    engine.reuse_live_dumps();
    let mode = engine.mode();
    match engine.attached() {
        Some(a) => log::info!("{mode} mode: {} programs attached", a.len()),
        None => log::warn!(
            "procfs mode: eBPF probes could not attach (ctscope_probes_attached 0; see `ctscope doctor`): chain lengths are modeled, drops only as the kernel counts them"
        ),
    }
    eprintln!(
        "ctscope: serving conntrack metrics of {} ({mode} mode) on http://{}/metrics; SIGINT or SIGTERM ends it",
        engine.release(),
        opts.listen
    );
    let (tx, mut rx) = mpsc::channel::<ScrapeRequest>(16);
    let server = tokio::spawn(http::accept_loop(listener, tx));
    let mut cached: Option<Cached> = None;
    loop {
        tokio::select! {
            _ = engine.next() => {}
            Some(req) = rx.recv() => {
                let text = scrape(&engine, &opts, &mut cached);
                let text = match text {
                    Ok(t) if req.openmetrics => Ok(t),
                    Ok(t) => Ok(metrics::classic(&t)),
                    Err(e) => Err(e),
                };
                // The scraper may have given up: nothing to do then.
                let _ = req.reply.send(text);
            }
            sig = signals.recv() => {
                if sig == "SIGHUP" {
                    // Names are read at every scrape: the next one has them.
                    log::info!("SIGHUP: container and namespace names are read again at the next scrape");
                    cached = None;
                    engine.forget_live_dump();
                    continue;
                }
                log::info!("{sig}: detaching and exiting");
                break;
            }
        }
    }
    server.abort();
    // Dropping the engine detaches every program.
    drop(engine);
    Ok(())
}

/// The metrics as OpenMetrics text, or the reason there are none.
fn scrape(engine: &Engine, opts: &Options, cached: &mut Option<Cached>) -> Result<String, String> {
    if let Some(c) = cached.as_ref().filter(|c| c.at.elapsed() < SCRAPE_MIN_GAP) {
        return Ok(c.openmetrics.clone());
    }
    let (report, lifetimes) = engine.report().map_err(|e| e.to_string())?;
    let lifetimes = lifetimes
        .map(|l| {
            l.histograms(&metrics::LIFE_BOUNDS_S)
                .into_iter()
                .map(Into::into)
                .collect()
        })
        .unwrap_or_default();
    let text = metrics::openmetrics(metrics::Scrape {
        report,
        lifetimes,
        series_max: opts.max_series,
        cost: opts.observe.cost,
        live_age: engine.live_age(),
    })
    .map_err(|e| format!("encoding the metrics: {e}"))?;
    *cached = Some(Cached {
        at: Instant::now(),
        openmetrics: text.clone(),
    });
    Ok(text)
}
