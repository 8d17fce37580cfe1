//! The HTTP side of `ctscope serve`: HTTP/1 on hyper, every connection and
//! every scrape with a deadline, at most [`CONNECTIONS_MAX`] at once.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::ScrapeRequest;

/// Connections served at once; more wait in the kernel's backlog.
const CONNECTIONS_MAX: usize = 32;
/// A connection's whole life (keep-alive included).
const CONNECTION_LIMIT: Duration = Duration::from_mins(2);
/// Headers must arrive within this.
const HEADER_LIMIT: Duration = Duration::from_secs(5);
/// A scrape's answer must come within this (Prometheus's default scrape
/// timeout is 10 s).
const SCRAPE_LIMIT: Duration = Duration::from_secs(9);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    tx: mpsc::Sender<ScrapeRequest>,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                log::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, tx.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_LIMIT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIMIT, conn).await {
                log::debug!("connection: {e}");
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// Whether the scraper asked for OpenMetrics (Prometheus does, first in its
/// Accept header).
pub(super) fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut it = part.split(';').map(str::trim);
            it.next() == Some("application/openmetrics-text")
                && !it.any(|p| p.replace(' ', "") == "q=0")
        })
    })
}

async fn answer(
    req: Request<Incoming>,
    tx: mpsc::Sender<ScrapeRequest>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or HEAD only\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let openmetrics = wants_openmetrics(
                req.headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            let (reply, rx) = oneshot::channel();
            let asked = tx.send(ScrapeRequest { openmetrics, reply });
            match tokio::time::timeout(SCRAPE_LIMIT, async {
                asked.await.ok()?;
                rx.await.ok()
            })
            .await
            {
                Ok(Some(Ok(body))) => text(
                    StatusCode::OK,
                    if openmetrics { OPENMETRICS } else { CLASSIC },
                    body,
                ),
                Ok(Some(Err(e))) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("reading conntrack: {e}\n"),
                ),
                Ok(None) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "ctscope is stopping\n",
                ),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("no answer within {} s\n", SCRAPE_LIMIT.as_secs()),
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><head><title>ctscope</title></head><body><h1>ctscope</h1><p><a href=\"/metrics\">/metrics</a> &middot; <a href=\"/healthz\">/healthz</a></p></body></html>\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::wants_openmetrics;

    #[test]
    fn openmetrics_only_when_asked_for() {
        // Prometheus 2.x's scrape Accept header.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text; q=0"
        )));
    }
}
