//! HTTP plumbing: the listener with its limits (connections, header and body size, time),
//! and the client that POSTs to partners over HTTP or HTTPS (openssl, verified).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use openssl::ssl::{Ssl, SslAcceptor, SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_openssl::SslStream;
use tracing::{debug, warn};

use crate::as2::Headers;

/// Limits that keep slow or hostile clients from exhausting memory or connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Largest request body.
    pub max_body: usize,
    /// Largest header block.
    pub max_header_bytes: usize,
    /// Time to receive the header block.
    pub header_timeout: Duration,
    /// Time to receive the whole body.
    pub body_timeout: Duration,
}

/// A request as the handlers see it: method, path, header fields, complete body.
#[derive(Debug)]
pub struct Req {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Header fields in order, duplicates kept.
    pub headers: Headers,
    /// The body.
    pub body: Bytes,
    /// The peer's address.
    pub peer: std::net::SocketAddr,
}

/// A response from a handler.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Header fields.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// A plain-text response.
    pub fn text(status: u16, text: impl Into<String>) -> Resp {
        Resp {
            status,
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            body: text.into().into_bytes(),
        }
    }
}

/// The application: turns a complete request into a response.
pub type Handler = Arc<dyn Fn(Req) -> Pin<Box<dyn Future<Output = Resp> + Send>> + Send + Sync>;

fn to_headers(map: &hyper::HeaderMap) -> Headers {
    let mut h = Headers::new();
    for (name, value) in map {
        h.push(
            name.as_str(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        );
    }
    h
}

fn build_response(r: Resp) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (k, v) in &r.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"response build error"))))
}

async fn handle(
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    handler: Handler,
    limits: Limits,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limits.max_body as u64 {
            return Ok(build_response(Resp::text(
                413,
                format!(
                    "request body of {len} bytes is larger than the limit of {} bytes\n",
                    limits.max_body
                ),
            )));
        }
    }
    let collected = tokio::time::timeout(
        limits.body_timeout,
        Limited::new(body, limits.max_body).collect(),
    )
    .await;
    let body = match collected {
        Err(_) => {
            return Ok(build_response(Resp::text(
                408,
                "the request body did not arrive in time\n",
            )))
        }
        Ok(Err(e)) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Ok(build_response(if too_big {
                Resp::text(
                    413,
                    format!(
                        "request body larger than the limit of {} bytes\n",
                        limits.max_body
                    ),
                )
            } else {
                Resp::text(400, format!("cannot read the request body: {e}\n"))
            }));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    let r = Req {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        headers: to_headers(&parts.headers),
        body,
        peer,
    };
    Ok(build_response(handler(r).await))
}

/// Serves `listener` (with TLS when `tls` is given) until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<SslAcceptor>>,
    handler: Handler,
    limits: Limits,
    refused: Arc<std::sync::atomic::AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug!(%peer, "connection limit reached; closing");
            continue;
        };
        let (handler, tls) = (handler.clone(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |req| handle(req, peer, handler.clone(), limits));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192));
            let result = match tls {
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Some(acceptor) => {
                    let stream = match tls_accept(&acceptor, stream, limits.header_timeout).await {
                        Ok(s) => s,
                        Err(e) => return debug!(%peer, error = %e, "TLS handshake failed"),
                    };
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn tls_accept(
    acceptor: &SslAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> std::io::Result<SslStream<TcpStream>> {
    let ssl = Ssl::new(acceptor.context()).map_err(std::io::Error::other)?;
    let mut s = SslStream::new(ssl, stream).map_err(std::io::Error::other)?;
    tokio::time::timeout(timeout, Pin::new(&mut s).accept())
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
        .map_err(std::io::Error::other)?;
    Ok(s)
}

/// What came back from a POST.
#[derive(Debug)]
pub struct ClientResponse {
    /// HTTP status.
    pub status: u16,
    /// Header fields.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
}

/// A POST that did not get an HTTP answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// POSTs `body` with `headers` to `url` (http or https), verifying the server's certificate
/// against the system's CAs plus `trust` for https, within `timeout`.
pub async fn post(
    url: &str,
    headers: &Headers,
    body: Vec<u8>,
    trust: Option<&X509>,
    timeout: Duration,
) -> Result<ClientResponse, TransportError> {
    tokio::time::timeout(timeout, post_inner(url, headers, body, trust))
        .await
        .map_err(|_| {
            TransportError(format!(
                "no answer from {url} within {} s",
                timeout.as_secs()
            ))
        })?
}

async fn post_inner(
    url: &str,
    headers: &Headers,
    body: Vec<u8>,
    trust: Option<&X509>,
) -> Result<ClientResponse, TransportError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| TransportError(format!("bad partner URL {url:?}: {e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(TransportError(format!(
                "partner URL {url:?} must start with http:// or https://"
            )))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| TransportError(format!("partner URL {url:?} has no host")))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let host_header = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| TransportError(format!("cannot connect to {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("Host", host_header);
    for (k, v) in headers.iter() {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("host") {
            continue;
        }
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| TransportError(format!("cannot build the request: {e}")))?;
    let resp = if https {
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| TransportError(e.to_string()))?;
        b.set_verify(SslVerifyMode::PEER);
        if let Some(ca) = trust {
            b.cert_store_mut()
                .add_cert(ca.clone())
                .map_err(|e| TransportError(e.to_string()))?;
        }
        let config = b
            .build()
            .configure()
            .map_err(|e| TransportError(e.to_string()))?;
        let ssl = config
            .into_ssl(host.trim_matches(['[', ']']))
            .map_err(|e| TransportError(e.to_string()))?;
        let mut s = SslStream::new(ssl, tcp).map_err(|e| TransportError(e.to_string()))?;
        Pin::new(&mut s)
            .connect()
            .await
            .map_err(|e| TransportError(format!("TLS with {host}:{port} failed: {e}")))?;
        send(TokioIo::new(s), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    let status = resp.status().as_u16();
    let headers = to_headers(resp.headers());
    let body = Limited::new(resp.into_body(), 64 << 20)
        .collect()
        .await
        .map_err(|e| TransportError(format!("reading the answer failed: {e}")))?
        .to_bytes()
        .to_vec();
    Ok(ClientResponse {
        status,
        headers,
        body,
    })
}

async fn send<T>(
    io: TokioIo<T>,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, TransportError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| TransportError(format!("HTTP handshake failed: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| TransportError(format!("the request failed: {e}")))
}
