//! The daemon's side of the non-repudiation archive (`store::archive`): the raw requests
//! and MDNs that cross the wire, kept with their message. Each call stores on a blocking
//! thread; the bodies are handed back so that archiving never copies a payload.

use std::sync::Arc;

use tracing::warn;

use super::{blocking, Ctx};
use crate::as2::Headers;
use crate::store::{ArchiveKind, ArchivedBlob, StoreError};

/// Stores a received request as it came (header fields, blank line, body), not yet linked
/// to a message: the delivery links it in its own transaction.
pub async fn capture_request(
    ctx: &Arc<Ctx>,
    headers: &Headers,
    mut body: impl std::io::Read + Send + 'static,
) -> Result<ArchivedBlob, StoreError> {
    let (store, block) = (ctx.store.clone(), headers.to_bytes());
    blocking(move || store.archive_capture_reader(&block, &mut body)).await
}

/// Keeps `body` with its `headers` as message `message_id`'s `kind`; gives `body` back.
pub async fn keep<B: AsRef<[u8]> + Send + 'static>(
    ctx: &Arc<Ctx>,
    message_id: i64,
    kind: ArchiveKind,
    headers: &Headers,
    body: B,
) -> (B, Result<(), StoreError>) {
    let (store, block) = (ctx.store.clone(), headers.to_bytes());
    blocking(move || {
        let kept = store
            .archive(message_id, kind, &block, body.as_ref())
            .map(drop);
        (body, kept)
    })
    .await
}

/// [`keep`] where a failure is logged, not fatal: a message is still sent, and an MDN's
/// outcome still counts, when the disk refuses the copy (the record keeps the headers and
/// the MDN's text). Only a received request must be archived before its positive MDN.
pub async fn keep_or_warn<B: AsRef<[u8]> + Send + 'static>(
    ctx: &Arc<Ctx>,
    message_id: i64,
    kind: ArchiveKind,
    headers: &Headers,
    body: B,
) -> B {
    let (body, kept) = keep(ctx, message_id, kind, headers, body).await;
    if let Err(e) = kept {
        warn!(message = message_id, kind = kind.as_str(), error = %e, "cannot archive this capture of the message; its record keeps the text only");
    }
    body
}

/// Records `text` as the MDN we answer received message `message_id` with and keeps its
/// capture (`headers`, `body`), in one transaction; gives `body` back. A capture the disk
/// refused is logged and the text still recorded, as with [`keep_or_warn`].
pub async fn record_inbound_mdn(
    ctx: &Arc<Ctx>,
    message_id: i64,
    text: String,
    headers: &Headers,
    body: Vec<u8>,
) -> Vec<u8> {
    let (store, block) = (ctx.store.clone(), headers.to_bytes());
    let (body, captured, recorded) = blocking(move || {
        let captured = store.archive_capture(&block, &body);
        let recorded = store.set_inbound_mdn(message_id, &text, captured.as_ref().ok());
        (body, captured, recorded)
    })
    .await;
    if let Err(e) = captured {
        warn!(message = message_id, kind = ArchiveKind::Mdn.as_str(), error = %e, "cannot archive this capture of the message; its record keeps the text only");
    }
    if let Err(e) = recorded {
        warn!(message = message_id, error = %e, "cannot record the MDN we answered with");
    }
    body
}

/// [`keep_or_warn`] of a spool file (a message of any size, read with positioned reads);
/// gives the file back as the body to POST.
pub async fn keep_file_or_warn(
    ctx: &Arc<Ctx>,
    message_id: i64,
    kind: ArchiveKind,
    headers: &Headers,
    body: std::fs::File,
) -> super::http::OutgoingBody {
    let (store, block) = (ctx.store.clone(), headers.to_bytes());
    let (body, kept) = blocking(move || {
        let kept = store
            .archive_reader(
                message_id,
                kind,
                &block,
                &mut crate::positioned::PositionedReader::new(&body),
            )
            .map(drop);
        (body, kept)
    })
    .await;
    if let Err(e) = kept {
        warn!(message = message_id, kind = kind.as_str(), error = %e, "cannot archive this capture of the message; its record keeps the text only");
    }
    super::http::OutgoingBody::File(body)
}
