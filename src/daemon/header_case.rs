//! Header names on the wire spelled as `as2::headers::CANONICAL_NAMES` says (`AS2-From`,
//! `Message-ID`), not in the lower case hyper keeps them in: AS2 software that matches
//! names literally exists in the field.
//!
//! hyper 1.x writes a message's header names from a case map it finds in the message's
//! extensions, but the map's type is private: the only way to get one is to let hyper parse
//! a message spelled our way (`preserve_header_case`). That is done once, in memory, and
//! the captured extensions are attached to every request and response we write. Names not
//! in the map go out in title case (`title_case_headers`). The raw-capture system tests
//! (`tests/daemon_header_case.rs`) catch a hyper release that changes this.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::Extensions;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use tracing::warn;

use crate::as2::headers::CANONICAL_NAMES;

static CANONICAL_CASE: OnceCell<Extensions> = OnceCell::const_new();

/// Extensions that make hyper write every name of `CANONICAL_NAMES` in its canonical
/// spelling. Empty (title case only) if hyper would not produce them.
pub async fn canonical_case() -> Extensions {
    CANONICAL_CASE
        .get_or_init(|| async {
            capture().await.unwrap_or_else(|why| {
                warn!("cannot prepare the canonical header case ({why}); header names go out in title case");
                Extensions::new()
            })
        })
        .await
        .clone()
}

/// A request carrying every canonical name once, parsed by hyper's server with
/// `preserve_header_case`: the extensions of what it hands over hold the case map.
async fn capture() -> Result<Extensions, String> {
    let (mut ours, theirs) = tokio::io::duplex(64 << 10);
    let mut head = String::from("POST / HTTP/1.1\r\nHost: localhost\r\n");
    for name in CANONICAL_NAMES {
        head.push_str(name);
        head.push_str(": x\r\n");
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    ours.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(req.extensions().clone());
        }
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.preserve_header_case(true);
    let serve = builder.serve_connection(TokioIo::new(theirs), service);
    let drain = async move {
        // The response is read and dropped so that the in-memory pipe never fills.
        let mut sink = Vec::new();
        let _ = ours.read_to_end(&mut sink).await;
    };
    let (served, ()) = tokio::join!(serve, drain);
    served.map_err(|e| e.to_string())?;
    rx.await
        .map_err(|_| "hyper did not hand over the request".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_captured_case_map_spells_what_we_send_canonically() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let extensions = canonical_case().await;
            assert!(!extensions.is_empty(), "hyper kept no case map");
            // Written by hyper's client into memory: the bytes it would send.
            let (ours, mut theirs) = tokio::io::duplex(64 << 10);
            let mut builder = hyper::client::conn::http1::Builder::new();
            builder.title_case_headers(true);
            let (mut sender, conn) = builder.handshake(TokioIo::new(ours)).await.unwrap();
            tokio::spawn(conn);
            let mut req = Request::post("/as2")
                .header("host", "partner")
                .header("as2-from", "US")
                .header("message-id", "<m@x>")
                .header("x-other-thing", "1")
                .body(Full::new(Bytes::from_static(b"body")))
                .unwrap();
            *req.extensions_mut() = extensions;
            tokio::spawn(async move {
                let _ = sender.send_request(req).await;
            });
            let mut got = vec![0u8; 4096];
            let mut n = 0;
            while !got[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                n += theirs.read(&mut got[n..]).await.unwrap();
            }
            let text = String::from_utf8_lossy(&got[..n]);
            assert!(text.contains("\r\nAS2-From: US\r\n"), "{text}");
            assert!(text.contains("\r\nMessage-ID: <m@x>\r\n"), "{text}");
            assert!(text.contains("\r\nX-Other-Thing: 1\r\n"), "{text}");
        });
    }
}
