//! HTTP plumbing: the listener with its limits (connections, header and body size, time),
//! and the client that POSTs to partners over HTTP or HTTPS (openssl, verified).

use std::convert::Infallible;
use std::future::Future;
use std::io::Read as _;
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
    /// The body, in a spool file (never in memory whole: a message may be larger than
    /// the memory of the gateway).
    pub body: SpooledBody,
    /// The peer's address.
    pub peer: std::net::SocketAddr,
}

/// A request body in an unlinked spool file: gone from the disk when the last handle is
/// closed, whatever happens to the request.
#[derive(Debug)]
pub struct SpooledBody {
    /// The file, read with positioned reads (`read_at`), so that clones share no offset.
    pub file: Arc<std::fs::File>,
    /// Its length.
    pub len: u64,
}

impl SpooledBody {
    /// The first `max` bytes at most.
    pub fn prefix(&self, max: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.reader().take(max).read_to_end(&mut out)?;
        Ok(out)
    }

    /// A reader of the whole body from its start.
    pub fn reader(&self) -> BodyReader {
        crate::positioned::PositionedReader::with_len(self.file.clone(), self.len)
    }
}

/// Reads a [`SpooledBody`] from its start.
pub type BodyReader = crate::positioned::PositionedReader<Arc<std::fs::File>>;

/// Makes an unlinked spool file for a request body.
pub type SpoolMaker = Arc<dyn Fn() -> std::io::Result<std::fs::File> + Send + Sync>;

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

    /// HTTP 503 with `Retry-After`: the fault is ours and passing (busy, storage failing),
    /// so the sender is asked to try again rather than told the request is bad.
    pub fn retry_later(text: impl Into<String>, after_secs: u32) -> Resp {
        let mut r = Resp::text(503, text);
        r.headers
            .push(("Retry-After".into(), after_secs.to_string()));
        r
    }
}

/// The application: turns a complete request into a response.
pub type Handler = Arc<dyn Fn(Req) -> Pin<Box<dyn Future<Output = Resp> + Send>> + Send + Sync>;

/// What one listener serves, and with which settings. The settings are functions so that a
/// reloaded config (or a renewed TLS certificate) applies to the next connection.
pub struct Endpoint {
    /// TLS for this listener: the acceptor in force now (None: plain HTTP).
    pub tls: Option<Arc<dyn Fn() -> Option<Arc<SslAcceptor>> + Send + Sync>>,
    /// The application.
    pub handler: Handler,
    /// The limits in force now.
    pub limits: Arc<dyn Fn() -> Limits + Send + Sync>,
    /// Where request bodies go.
    pub spool: SpoolMaker,
}

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

async fn build_response(r: Resp) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (k, v) in &r.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let mut response = b
        .body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"response build error"))));
    *response.extensions_mut() = super::header_case::canonical_case().await;
    response
}

fn too_big(limit: usize) -> Resp {
    Resp::text(
        413,
        format!("request body larger than the limit of {limit} bytes\n"),
    )
}

/// Streams a whole body within the size limit into a spool file: memory per request stays
/// one frame, whatever the size of the body.
async fn read_body(
    mut body: Incoming,
    limits: &Limits,
    spool: &SpoolMaker,
) -> Result<SpooledBody, Resp> {
    use tokio::io::AsyncWriteExt;
    let no_spool = |e: std::io::Error| {
        warn!(error = %e, "cannot write a request body to the spool");
        Resp::retry_later(
            "the gateway cannot store this request now; retry it later\n",
            60,
        )
    };
    let file = spool().map_err(no_spool)?;
    let mut writer = tokio::io::BufWriter::with_capacity(
        256 * 1024,
        tokio::fs::File::from_std(file.try_clone().map_err(no_spool)?),
    );
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Resp::text(400, format!("cannot read the request body: {e}\n")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len() as u64;
        if len > limits.max_body as u64 {
            return Err(too_big(limits.max_body));
        }
        writer.write_all(&data).await.map_err(no_spool)?;
    }
    writer.flush().await.map_err(no_spool)?;
    Ok(SpooledBody {
        file: Arc::new(file),
        len,
    })
}

async fn handle(
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    handler: Handler,
    limits: Limits,
    spool: SpoolMaker,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // hyper's buffer limit bounds memory but not exactly the header block (it depends on
    // how the bytes arrived): the limit partners see is checked here.
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Ok(build_response(Resp::text(
            431,
            format!(
                "request header fields too large: {header_bytes} bytes, the limit is {}\n",
                limits.max_header_bytes
            ),
        ))
        .await);
    }
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body as u64) {
        return Ok(build_response(too_big(limits.max_body)).await);
    }
    let read = tokio::time::timeout(limits.body_timeout, read_body(body, &limits, &spool)).await;
    let body = match read {
        Err(_) => {
            return Ok(
                build_response(Resp::text(408, "the request body did not arrive in time\n")).await,
            )
        }
        Ok(Err(resp)) => return Ok(build_response(resp).await),
        Ok(Ok(b)) => b,
    };
    let r = Req {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        headers: to_headers(&parts.headers),
        body,
        peer,
    };
    Ok(build_response(handler(r).await).await)
}

/// Serves `listener` (with TLS when `tls` is given) until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    refused: Arc<std::sync::atomic::AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let Endpoint {
        tls,
        handler,
        limits,
        spool,
    } = endpoint;
    let slots = Arc::new(Semaphore::new(limits().max_connections));
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
        // Settings as they are now: a reload applies to the next connection.
        let (handler, tls, limits, spool) = (
            handler.clone(),
            tls.as_ref().map(|t| t()),
            limits(),
            spool.clone(),
        );
        if tls.as_ref().is_some_and(|t| t.is_none()) {
            continue;
        }
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                handle(req, peer, handler.clone(), limits, spool.clone())
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .title_case_headers(true)
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
                    let Some(acceptor) = acceptor else { return };
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
    body: OutgoingBody,
    trust: Option<&X509>,
    timeout: Duration,
    target: PostTarget,
) -> Result<ClientResponse, TransportError> {
    tokio::time::timeout(timeout, post_inner(url, headers, body, trust, target))
        .await
        .map_err(|_| {
            TransportError(format!(
                "no answer from {url} within {} s",
                timeout.as_secs()
            ))
        })?
}

/// Where a POST may connect, how much of the answer it reads, and how the request goes.
#[derive(Debug, Clone)]
pub struct PostTarget {
    /// Which addresses the URL's host may resolve to.
    pub destinations: super::mdn_target::Destinations,
    /// The largest answer body read; a longer one is an error.
    pub max_answer_bytes: usize,
    /// Send the body with `Transfer-Encoding: chunked` instead of a `Content-Length`.
    pub chunked: bool,
    /// An `Authorization` value (HTTP Basic towards a partner). Added here, after the
    /// request's headers were recorded, so that it is never stored with them.
    pub authorization: Option<String>,
    /// A TLS client certificate and key to present over HTTPS.
    pub client_identity: Option<Arc<crate::as2::KeyPair>>,
}

impl PostTarget {
    /// A partner's configured URL: any address, an answer up to `max_answer_bytes` (a
    /// sync MDN).
    pub fn partner(max_answer_bytes: usize) -> Self {
        PostTarget {
            destinations: super::mdn_target::Destinations::Any,
            max_answer_bytes,
            chunked: false,
            authorization: None,
            client_identity: None,
        }
    }
}

/// What a POST sends: bytes in memory, or a spool file (a message of any size, read in
/// chunks as the connection takes them).
#[derive(Debug)]
pub enum OutgoingBody {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// All of an open file, from its start.
    File(std::fs::File),
}

impl From<Vec<u8>> for OutgoingBody {
    fn from(b: Vec<u8>) -> Self {
        Self::Bytes(b)
    }
}

/// The body of a POST: sized (`Content-Length`) or not (hyper sends it chunked).
struct PostBody {
    source: PostSource,
    len: u64,
    sized: bool,
}

enum PostSource {
    Bytes(Option<Bytes>),
    File {
        file: tokio::fs::File,
        left: u64,
        buf: Vec<u8>,
    },
}

impl PostBody {
    fn new(body: OutgoingBody, sized: bool) -> std::io::Result<PostBody> {
        Ok(match body {
            OutgoingBody::Bytes(b) => PostBody {
                len: b.len() as u64,
                source: PostSource::Bytes(Some(Bytes::from(b))),
                sized,
            },
            OutgoingBody::File(mut f) => {
                use std::io::Seek;
                let len = f.seek(std::io::SeekFrom::End(0))?;
                f.seek(std::io::SeekFrom::Start(0))?;
                PostBody {
                    len,
                    source: PostSource::File {
                        file: tokio::fs::File::from_std(f),
                        left: len,
                        buf: vec![0u8; 256 * 1024],
                    },
                    sized,
                }
            }
        })
    }
}

impl hyper::body::Body for PostBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        match &mut self.source {
            PostSource::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(hyper::body::Frame::data(b)))),
            PostSource::File { file, left, buf } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let want = (*left).min(buf.len() as u64) as usize;
                let mut read_buf = tokio::io::ReadBuf::new(&mut buf[..want]);
                match tokio::io::AsyncRead::poll_read(Pin::new(file), cx, &mut read_buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) => {
                        let got = read_buf.filled();
                        if got.is_empty() {
                            return Poll::Ready(Some(Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the message file is shorter than it was",
                            ))));
                        }
                        *left -= got.len() as u64;
                        Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::copy_from_slice(
                            got,
                        )))))
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.sized {
            hyper::body::SizeHint::with_exact(self.len)
        } else {
            hyper::body::SizeHint::default()
        }
    }
}

/// Resolves `host` and connects, to an address `destinations` allows (checked on the
/// resolved addresses, so a name that resolves to an internal address is refused).
async fn connect(
    host: &str,
    port: u16,
    destinations: super::mdn_target::Destinations,
) -> Result<TcpStream, TransportError> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| TransportError(format!("cannot resolve {host}: {e}")))?
        .collect();
    if destinations == super::mdn_target::Destinations::PublicOnly {
        if let Some(a) = addrs
            .iter()
            .find(|a| super::mdn_target::is_internal(a.ip()))
        {
            return Err(TransportError(format!(
                "{host} resolves to {}, an internal address, which this URL may not reach",
                a.ip()
            )));
        }
    }
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect(a).await {
            Ok(t) => return Ok(t),
            Err(e) => last = Some(e),
        }
    }
    Err(TransportError(match last {
        Some(e) => format!("cannot connect to {host}:{port}: {e}"),
        None => format!("{host} has no address"),
    }))
}

async fn post_inner(
    url: &str,
    headers: &Headers,
    body: OutgoingBody,
    trust: Option<&X509>,
    target: PostTarget,
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
    let tcp = connect(host.trim_matches(['[', ']']), port, target.destinations).await?;
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
    if let Some(authorization) = &target.authorization {
        req = req.header("Authorization", authorization);
    }
    let body = PostBody::new(body, !target.chunked)
        .map_err(|e| TransportError(format!("cannot read the message to send: {e}")))?;
    let mut req = req
        .body(body)
        .map_err(|e| TransportError(format!("cannot build the request: {e}")))?;
    *req.extensions_mut() = super::header_case::canonical_case().await;
    let resp = if https {
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| TransportError(e.to_string()))?;
        b.set_verify(SslVerifyMode::PEER);
        if let Some(identity) = &target.client_identity {
            let tls_err = |e: openssl::error::ErrorStack| {
                TransportError(format!("the TLS client certificate cannot be used: {e}"))
            };
            b.set_certificate(&identity.cert).map_err(tls_err)?;
            b.set_private_key(&identity.key).map_err(tls_err)?;
            for c in &identity.chain {
                b.add_extra_chain_cert(c.clone()).map_err(tls_err)?;
            }
            b.check_private_key().map_err(tls_err)?;
        }
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
    let body = Limited::new(resp.into_body(), target.max_answer_bytes)
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
    req: Request<PostBody>,
) -> Result<Response<Incoming>, TransportError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(io)
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
