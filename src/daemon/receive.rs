//! The receiving side: route an incoming AS2 request by AS2-To/AS2-From, let the AS2 core
//! open it, store and deliver the files durably, and only then answer with the MDN (in the
//! response, or POSTed to the sender's URL). Duplicates get their MDN again, not a second
//! delivery. Async MDNs for what we sent arrive here too.

use std::sync::Arc;

use tracing::{info, warn};

use super::http::{Req, Resp};
use super::metrics::inc;
use super::owed_mdn::{lease_ms, spawn_owed_mdn};
use super::{blocking, mdn_target, outcome, Ctx};
use crate::as2::certs::ValidityPolicy;
use crate::as2::headers::unquote_as2_name;
use crate::as2::mdn::{build_mdn, parse_mdn, Disposition, MdnParams};
use crate::as2::message::{
    decompressed_size_limit, parse_body_streaming, ReceiveContext, RequestInfo,
};
use crate::as2::mic::Mic;
use crate::as2::stream::Spool;
use crate::as2::DispositionModifier;
use crate::as2::Headers;
use crate::mailbox::{self, IncomingFile};
use crate::store::{ArchiveKind, InboundOrigin, OwedMdn, Partner, Station};
use crate::timefmt::now_ms;

fn now_unix() -> i64 {
    crate::timefmt::now_ms() / 1000
}

fn media_type(h: &Headers) -> String {
    h.get("content-type")
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Whether a POST to the AS2 URL is an (async) MDN rather than a message.
fn looks_like_mdn(req: &Req) -> bool {
    let media = media_type(&req.headers);
    media == "multipart/report"
        || (media == "multipart/signed"
            && req.headers.get("disposition-notification-to").is_none()
            && req
                .body
                .prefix(MDN_SNIFF_BYTES)
                .is_ok_and(|p| memfind(&p, b"disposition-notification")))
}

/// How much of a signed body is looked at to tell an MDN from a message: the report part
/// of an MDN comes first and is small.
const MDN_SNIFF_BYTES: u64 = 64 * 1024;

/// The largest async MDN read (into memory): MDNs are a few KiB.
const MAX_MDN_BYTES: u64 = 1 << 20;

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Handles a POST to `/as2` (`test` false) or `/as2/test`.
pub async fn message(ctx: Arc<Ctx>, req: Req, test: bool) -> Resp {
    if looks_like_mdn(&req) {
        return async_mdn(ctx, req).await;
    }
    let info = match RequestInfo::from_headers(&req.headers) {
        Ok(i) => i,
        Err(e) => {
            inc(&ctx.metrics.received_failed);
            warn!(peer = %req.peer, error = %e, "refused a request that is not an AS2 message");
            return Resp::text(400, format!("not an AS2 message: {e}\n"));
        }
    };
    let store = ctx.store.clone();
    let (to, from) = (info.as2_to.clone(), info.as2_from.clone());
    let route = blocking(move || -> Result<(Station, Partner), (u16, String)> {
        let station = store
            .station(&to)
            .map_err(|e| (500, format!("store error: {e}")))?
            .ok_or_else(|| {
                (
                    404,
                    format!("unknown AS2-To {to:?}: no such station on this gateway"),
                )
            })?;
        let partner = store
            .partner(station.user_id, &from, test)
            .map_err(|e| (500, format!("store error: {e}")))?
            .ok_or_else(|| {
                let kind = if test {
                    "test partner (posted to /as2/test)"
                } else {
                    "partner (posted to /as2)"
                };
                (
                    403,
                    format!("AS2-From {from:?} is not a {kind} of station {to:?}"),
                )
            })?;
        Ok((station, partner))
    })
    .await;
    let (station, partner) = match route {
        Ok(r) => r,
        Err((status, text)) => {
            inc(&ctx.metrics.received_failed);
            warn!(peer = %req.peer, message_id = %info.message_id, "{text}");
            return Resp::text(status, format!("{text}\n"));
        }
    };
    // Before anything of the request is parsed: a partner that must authenticate and does
    // not gets 401 and nothing else.
    if let Some(expected) = &partner.profile.basic_auth_in {
        if !crate::basic_auth::matches(req.headers.get("authorization"), expected) {
            inc(&ctx.metrics.received_failed);
            warn!(peer = %req.peer, station = %station.as2_id, partner = %partner.as2_id, message_id = %info.message_id, "refused: the partner's HTTP Basic credentials are missing or wrong");
            let mut resp = Resp::text(
                401,
                "HTTP Basic credentials are required for this partner\n",
            );
            resp.headers
                .push(("WWW-Authenticate".into(), "Basic realm=\"as2box\"".into()));
            return resp;
        }
    }
    let key = ctx.keys.station_key(&station);
    let policy = partner.profile.inbound;
    let refuse_weak_algorithms = partner.profile.as2_version == crate::store::As2Version::V1_3;
    let body = match req.body.file.try_clone() {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "cannot reopen a request body");
            return Resp::retry_later(
                "The gateway cannot read the message now; please resend it later.\n",
                60,
            );
        }
    };
    let headers = req.headers.clone();
    let info2 = info.clone();
    let key2 = key.clone().ok();
    let max_decompressed = decompressed_size_limit(
        req.body.len as usize,
        ctx.config().serve.max_decompression_ratio,
        ctx.config().serve.min_decompressed_bytes,
        ctx.config().serve.max_body_bytes,
    );
    let store = ctx.store.clone();
    let parsed = match ctx.keys.partner_certs(&partner) {
        // Fail closed: a signature we must check and nothing to check it with.
        Err(why) if policy.require_signature => {
            Err(crate::as2::error::As2Error::AuthenticationFailed(format!(
                "no certificate to verify the partner's signature with: {why}"
            )))
        }
        certs => {
            let certs = certs.unwrap_or_default();
            blocking(move || {
                let keys = key2.as_deref().map(std::slice::from_ref).unwrap_or(&[]);
                let mut rctx = ReceiveContext::new(keys, &certs, ValidityPolicy::at(now_unix()));
                rctx.require_signature = policy.require_signature;
                rctx.require_encryption = policy.require_encryption;
                rctx.refuse_weak_algorithms = refuse_weak_algorithms;
                rctx.max_decompressed_size = max_decompressed;
                let mut spool = ServeSpool { store };
                // The archive reads the same file with positioned reads: the parser may
                // move the shared offset.
                parse_body_streaming(info2, &headers, body, &mut spool, &rctx)
            })
            .await
        }
    };
    let msg = match parsed {
        Ok(m) => m,
        // Our spool failed (disk full, I/O error): a passing condition, so the sender is
        // asked to retry rather than told the message is bad.
        Err(crate::as2::error::As2Error::Io(e)) => {
            inc(&ctx.metrics.received_failed);
            warn!(station = %station.as2_id, partner = %partner.as2_id, message_id = %info.message_id, error = %e, "cannot spool a received message now; answering 503 so that the sender retries");
            return Resp::retry_later(
                "The gateway cannot store the message now; please resend it later.\n",
                60,
            );
        }
        Err(e) => {
            return refuse(
                &ctx,
                &req,
                &info,
                &station,
                &partner,
                key.as_deref().ok(),
                &e,
            )
            .await;
        }
    };
    // A resend of something we already delivered (checked only now, after decryption and
    // verification, so a Message-ID alone never earns a positive receipt): the same
    // positive answer and no new files, if the content is the same.
    let (store, pid, mid) = (ctx.store.clone(), partner.id, info.message_id.clone());
    let earlier = blocking(move || {
        let r = store.inbound_by_as2_id(pid, &mid).ok().flatten()?;
        let files = store.message(r.id).ok().flatten()?.files;
        Some((r.id, files))
    })
    .await;
    if let Some((id, files)) = earlier {
        let by = Answerer::authenticated(&station, &partner, key.as_deref().ok());
        return answer_resend(&ctx, &info, by, id, &files, &msg).await;
    }
    let bytes: u64 = msg
        .attachments
        .iter()
        .map(|a| a.data.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let count = msg.attachments.len();
    let mut files: Vec<IncomingFile> = Vec::with_capacity(count);
    for (i, a) in msg.attachments.iter().enumerate() {
        let name = a.filename.clone().unwrap_or_else(|| {
            crate::names::unnamed_attachment_name(&info.message_id, i + 1, count, &a.content_type)
        });
        match a.data.try_clone() {
            Ok(file) => files.push(IncomingFile::Open {
                name,
                file: std::sync::Arc::new(file),
            }),
            Err(e) => {
                inc(&ctx.metrics.received_failed);
                warn!(message_id = %info.message_id, error = %e, "cannot reopen a received attachment; answering 503");
                return Resp::retry_later(
                    "The message could not be stored; please resend it later.\n",
                    60,
                );
            }
        }
    }
    let request = super::archive::capture_request(&ctx, &req.headers, req.body.reader()).await;
    let origin = InboundOrigin {
        as2_message_id: info.message_id.clone(),
        mic: Some(msg.mic.to_header_value()),
        request: request.as_ref().ok().cloned(),
    };
    let (store, st, pa) = (
        ctx.store.clone(),
        station.as2_id.clone(),
        partner.as2_id.clone(),
    );
    // Not archived, not delivered: a positive MDN promises the request is kept too.
    let delivered = match request {
        Ok(_) => {
            blocking(move || mailbox::deliver(&store, &st, &pa, test, files, Some(&origin))).await
        }
        Err(e) => Err(mailbox::DeliverError::Store(e)),
    };
    match delivered {
        Ok(d) => {
            inc(&ctx.metrics.received_ok);
            ctx.metrics
                .bytes_in
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            info!(station = %station.as2_id, partner = %partner.as2_id, message = d.message_id, message_id = %info.message_id, files = d.paths.len(), bytes, mic = %msg.mic.to_header_value(), "received and delivered");
            super::failpoint::hit("receive-before-answer");
            answer(
                &ctx,
                &info,
                Answerer::authenticated(&station, &partner, key.as_deref().ok()),
                Disposition::Processed,
                Some(&msg.mic),
                "The message was received and stored.",
                Some(d.message_id),
            )
            .await
        }
        // A copy of the same message that arrived at the same time was delivered first:
        // answered like any resend.
        Err(mailbox::DeliverError::Store(crate::store::StoreError::AlreadyReceived {
            message_id,
        })) => {
            let store = ctx.store.clone();
            let files = blocking(move || store.message(message_id))
                .await
                .ok()
                .flatten()
                .map(|m| m.files)
                .unwrap_or_default();
            answer_resend(
                &ctx,
                &info,
                Answerer::authenticated(&station, &partner, key.as_deref().ok()),
                message_id,
                &files,
                &msg,
            )
            .await
        }
        // Our storage failed (disk full, I/O error, database busy): not the sender's fault
        // and likely to pass. HTTP 503 makes senders try again later; a negative MDN would
        // end the message for them.
        Err(mailbox::DeliverError::Store(e)) => {
            inc(&ctx.metrics.received_failed);
            warn!(station = %station.as2_id, partner = %partner.as2_id, message_id = %info.message_id, error = %e, "could not store a received message; answering 503 so that the sender retries");
            Resp::retry_later(
                "The message could not be stored; please resend it later.\n",
                60,
            )
        }
        Err(e) => {
            inc(&ctx.metrics.received_failed);
            // Nothing to deliver, or the station or partner was removed meanwhile: resending
            // will not help.
            warn!(message_id = %info.message_id, error = %e, "could not deliver a received message");
            let d = Disposition::Error(
                crate::as2::error::DispositionModifier::UnexpectedProcessingError,
            );
            let text = format!("The message could not be delivered: {e}.");
            let by = Answerer::authenticated(&station, &partner, key.as_deref().ok());
            answer(&ctx, &info, by, d, None, &text, None).await
        }
    }
}

/// Refuses a request from a known partner that did not prove what its profile requires,
/// or whose proof failed: nothing is stored but the refusal itself (`messages list`,
/// `/metrics`), and the negative MDN goes back in the HTTP response: a request that did
/// not authenticate never makes us open a connection anywhere.
async fn refuse(
    ctx: &Arc<Ctx>,
    req: &Req,
    info: &RequestInfo,
    station: &Station,
    partner: &Partner,
    key: Option<&crate::as2::certs::KeyPair>,
    e: &crate::as2::error::As2Error,
) -> Resp {
    inc(&ctx.metrics.received_failed);
    inc(&ctx.metrics.received_refused);
    let text = refusal_text(e);
    warn!(peer = %req.peer, station = %station.as2_id, partner = %partner.as2_id, message_id = %info.message_id, error = %e, fix = %refusal_fix(e, partner), "refused: answering a negative MDN");
    if may_record_refusal(ctx, partner.id) {
        let (store, sid, pid, mid, reason) = (
            ctx.store.clone(),
            station.id,
            partner.id,
            info.message_id.clone(),
            text.clone(),
        );
        if let Err(err) =
            blocking(move || store.record_refused_inbound(sid, pid, &mid, &reason)).await
        {
            warn!(error = %err, "cannot record the refusal");
        }
        // Under the same bound as the rows: a flood of forged requests is not a flood of pages.
        super::alerts::raise(
            ctx,
            super::alerts::refused(station, partner, &info.message_id, &text),
        );
    } else {
        warn!(partner = %partner.as2_id, "more than {REFUSALS_RECORDED_PER_MINUTE} refusals for this partner this minute: this one is logged and counted, not recorded");
    }
    let by = Answerer {
        station,
        partner,
        key,
        authenticated: false,
    };
    answer(ctx, info, by, Disposition::from_error(e), None, &text, None).await
}

/// Refusals recorded in `messages` per partner and minute at most; the rest are logged
/// and counted only.
const REFUSALS_RECORDED_PER_MINUTE: u32 = 60;

/// Whether this refusal of `partner_id`'s may still be recorded this minute.
fn may_record_refusal(ctx: &Ctx, partner_id: i64) -> bool {
    let minute = now_ms() / 60_000;
    let mut seen = ctx
        .refusals_recorded
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let entry = seen.entry(partner_id).or_insert((minute, 0));
    if entry.0 != minute {
        *entry = (minute, 0);
    }
    entry.1 += 1;
    entry.1 <= REFUSALS_RECORDED_PER_MINUTE
}

/// What the gateway's admin can do about a refusal, for the log line.
fn refusal_fix(e: &crate::as2::error::As2Error, partner: &Partner) -> String {
    use crate::as2::error::DispositionModifier as M;
    let id = &partner.as2_id;
    match e.disposition_modifier() {
        M::InsufficientMessageSecurity => format!(
            "if partner {id} really trades without signing or encrypting, say so with `as2box partner set --user <user> {id} --require-signature no` (or --require-encryption no)"
        ),
        M::AuthenticationFailed => format!(
            "check the partner's certificates (`as2box partner cert list --user <user> {id}`); add its current one with `as2box partner cert add`"
        ),
        M::DecryptionFailed => "the partner must encrypt to the station's current certificate (`as2box station show`)".into(),
        _ => "the partner's operator sees the reason in the negative MDN".into(),
    }
}

/// The SHA-256 (hex) of a whole open file, read with positioned reads.
fn sha256_of_file(file: &std::fs::File) -> std::io::Result<String> {
    let mut reader = crate::positioned::PositionedReader::new(file);
    let mut hasher = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(crate::as2::encoding::hex_lower(&hasher.finish()))
}

/// The daemon's spool for the AS2 core: unlinked files in the store's spool folder (on the
/// state folder's disk), gone when closed, whatever happens to the request.
pub(super) struct ServeSpool {
    pub(super) store: std::sync::Arc<crate::store::Store>,
}

impl ServeSpool {
    /// A new unlinked spool file.
    pub(super) fn file(store: &crate::store::Store) -> std::io::Result<std::fs::File> {
        let blobs = store.blobs();
        let (name, file) = blobs.spool_file().map_err(std::io::Error::other)?;
        blobs.discard_spool(&name);
        Ok(file)
    }
}

impl Spool for ServeSpool {
    type File = std::fs::File;
    type Sealed = std::fs::File;
    fn create(&mut self) -> std::io::Result<std::fs::File> {
        Self::file(&self.store)
    }
    fn seal(&mut self, file: std::fs::File) -> std::io::Result<std::fs::File> {
        Ok(file)
    }
}

/// The human part of a negative MDN: why, in words the partner's operator can act on.
/// OpenSSL's error queue (source files, line numbers) stays in our log.
fn refusal_text(e: &crate::as2::error::As2Error) -> String {
    use crate::as2::error::DispositionModifier as M;
    let why = match e.disposition_modifier() {
        M::DecryptionFailed => {
            "it could not be decrypted with our key (check the certificate you encrypt with)".into()
        }
        M::AuthenticationFailed => {
            "its signature does not verify with the certificate we have for you (wrong or expired certificate)".into()
        }
        M::IntegrityCheckFailed => {
            "its content does not match its signature (changed in transit)".into()
        }
        M::InsufficientMessageSecurity => "it is not signed or encrypted as agreed".into(),
        M::DecompressionFailed => "it could not be decompressed".into(),
        M::UnexpectedProcessingError => {
            let full = e.to_string();
            full.split(": error:").next().unwrap_or(&full).to_string()
        }
    };
    format!("The message could not be processed: {why}.")
}

/// Answers a message whose Message-ID was delivered before (as `id`, with `files`): a
/// resend after a lost MDN gets a positive MDN again and delivers nothing; different
/// content under a used Message-ID is refused, since delivering it could hide a sender's
/// bug and answering "processed" would confirm what we did not store.
async fn answer_resend(
    ctx: &Arc<Ctx>,
    info: &RequestInfo,
    by: Answerer<'_>,
    id: i64,
    files: &[crate::store::MessageFile],
    msg: &crate::as2::message::ReceivedMessage<std::fs::File>,
) -> Resp {
    let mut ours: Vec<String> = files.iter().map(|f| f.sha256.clone()).collect();
    let handles: Vec<std::io::Result<std::fs::File>> =
        msg.attachments.iter().map(|a| a.data.try_clone()).collect();
    let mut theirs: Vec<String> = blocking(move || {
        handles
            .into_iter()
            .map(|h| h.and_then(|f| sha256_of_file(&f)).unwrap_or_default())
            .collect()
    })
    .await;
    ours.sort();
    theirs.sort();
    if ours != theirs {
        inc(&ctx.metrics.received_failed);
        warn!(message = id, message_id = %info.message_id, "refused: a different message with a Message-ID delivered before");
        return answer(
            ctx,
            info,
            by,
            Disposition::Error(DispositionModifier::UnexpectedProcessingError),
            None,
            "A different message with the same Message-ID was received before; nothing was stored. Send it with a new Message-ID.",
            None,
        )
        .await;
    }
    inc(&ctx.metrics.received_duplicate);
    info!(message = id, message_id = %info.message_id, "duplicate: answering the MDN again, not delivering twice");
    // The MIC of this request: a resend of several attachments has new MIME boundaries,
    // so its MIC differs from the first copy's, and the sender checks against this one.
    answer(
        ctx,
        info,
        by,
        Disposition::Processed,
        Some(&msg.mic),
        "The message was received before and has been delivered.",
        None,
    )
    .await
}

/// Who answers a request, and whether the request proved who sent it.
#[derive(Clone, Copy)]
struct Answerer<'a> {
    station: &'a Station,
    partner: &'a Partner,
    /// The station's key pair, to sign the MDN with.
    key: Option<&'a crate::as2::certs::KeyPair>,
    /// The request passed the partner's inbound policy: only then may its MDN be POSTed
    /// to the URL it names (and only where [`mdn_target::check`] allows).
    authenticated: bool,
}

impl<'a> Answerer<'a> {
    fn authenticated(
        station: &'a Station,
        partner: &'a Partner,
        key: Option<&'a crate::as2::certs::KeyPair>,
    ) -> Self {
        Answerer {
            station,
            partner,
            key,
            authenticated: true,
        }
    }
}

/// Builds the MDN the sender asked for and answers with it (sync) or POSTs it (async).
/// An async MDN that may not be POSTed (the request did not authenticate, or the URL is
/// not allowed for the partner) is given in the response instead.
async fn answer(
    ctx: &Arc<Ctx>,
    info: &RequestInfo,
    by: Answerer<'_>,
    disposition: Disposition,
    mic: Option<&Mic>,
    text: &str,
    record_for: Option<i64>,
) -> Resp {
    let Some(request) = &info.mdn else {
        return if disposition.is_processed() {
            Resp::text(200, "received; no MDN was requested\n")
        } else {
            Resp::text(400, format!("{text}\n"))
        };
    };
    let mut info = info.clone();
    let mut destinations = None;
    if let Some(url) = &request.async_url {
        match mdn_target::check(url, by.partner) {
            Ok(d) if by.authenticated => destinations = Some(d),
            Ok(_) => {}
            Err(e) => {
                inc(&ctx.metrics.mdn_url_refused);
                warn!(station = %by.station.as2_id, message_id = %info.message_id, "{e}; the MDN goes back in the HTTP response instead");
            }
        }
        if destinations.is_none() {
            if let Some(m) = info.mdn.as_mut() {
                m.async_url = None;
            }
        }
    }
    let wants_signed = request.options.wants_signed();
    let signer = if wants_signed { by.key } else { None };
    if wants_signed && signer.is_none() {
        warn!(station = %by.station.as2_id, "a signed MDN was requested but the station has no key pair; answering unsigned");
    }
    let domain = ctx
        .config()
        .serve
        .public_url
        .as_deref()
        .and_then(host_of)
        .unwrap_or_else(|| "as2box.local".into());
    let params = MdnParams {
        request: &info,
        disposition,
        mic,
        reporting_ua: super::PRODUCT,
        text,
        signer,
        smime_capabilities: true,
        algorithm_protection: false,
        now_unix: now_unix(),
        message_id_domain: &domain,
    };
    let mut mdn = match build_mdn(&params) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "cannot build the MDN");
            return Resp::text(500, format!("cannot build the MDN: {e}\n"));
        }
    };
    if let Some(id) = record_for {
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&mdn.headers.to_bytes()),
            String::from_utf8_lossy(&mdn.body)
        );
        let body = std::mem::take(&mut mdn.body);
        mdn.body = super::archive::record_inbound_mdn(ctx, id, text, &mdn.headers, body).await;
    }
    match (mdn.async_url.clone(), destinations) {
        (Some(url), Some(destinations)) => {
            // Owed until delivered: kept in the store (for a delivered message) so that
            // neither a partner's outage nor our restart loses it.
            let owed = OwedMdn {
                id: record_for.unwrap_or(0),
                partner_id: by.partner.id,
                url,
                headers: mdn.headers.to_pairs(),
                body: mdn.body,
                attempts: 0,
            };
            if let Some(id) = record_for {
                let (store, o) = (ctx.store.clone(), owed.clone());
                let lease = now_ms() + lease_ms(ctx);
                let kept =
                    blocking(move || store.owe_async_mdn(id, &o.url, &o.headers, &o.body, lease))
                        .await;
                if let Err(e) = kept {
                    warn!(message = id, error = %e, "cannot record the async MDN we owe; trying it now only");
                }
            }
            spawn_owed_mdn(ctx, owed, record_for.is_some(), destinations);
            Resp::text(200, "received; the MDN follows asynchronously\n")
        }
        _ => Resp {
            status: 200,
            headers: mdn.headers.to_pairs(),
            body: mdn.body,
        },
    }
}

fn host_of(url: &str) -> Option<String> {
    url.parse::<hyper::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
}

/// An async MDN for a message we sent. It settles the message only when it comes from the
/// partner the message went to (AS2-From), for the station that sent it (AS2-To), and,
/// where the partner's profile asks for signed receipts, carries a signature that
/// verifies against the partner's certificates. Anything else is answered with an HTTP
/// error and changes nothing: the message keeps waiting (or times out).
pub async fn async_mdn(ctx: Arc<Ctx>, req: Req) -> Resp {
    let reject = |status: u16, why: String| {
        inc(&ctx.metrics.mdn_rejected);
        warn!(peer = %req.peer, "async MDN rejected: {why}");
        Resp::text(status, format!("{why}\n"))
    };
    if req.body.len > MAX_MDN_BYTES {
        return reject(
            413,
            format!(
                "an MDN of {} bytes, more than the limit of {MAX_MDN_BYTES}",
                req.body.len
            ),
        );
    }
    let body = match req.body.prefix(MAX_MDN_BYTES) {
        Ok(b) => b,
        Err(e) => return Resp::text(500, format!("cannot read the MDN from the spool: {e}\n")),
    };
    let headers = req.headers.clone();
    let first = {
        let (h, b) = (headers.clone(), body.clone());
        blocking(move || parse_mdn(&h, &b, &[], ValidityPolicy::at(now_unix()), false)).await
    };
    let unverified = match first {
        Ok(m) => m,
        Err(e) => return reject(400, format!("not a readable MDN: {e}")),
    };
    let store = ctx.store.clone();
    let omid = unverified.original_message_id.clone();
    let found = blocking(move || {
        let Some(sent) = store.outgoing_by_as2_id(&omid)? else {
            return Ok(None);
        };
        let partner = store.partner_by_id(sent.partner_id)?;
        let station = store.station_by_id(sent.station_id)?;
        Ok::<_, crate::store::StoreError>(match (partner, station) {
            (Some(p), Some(s)) => Some((sent, p, s)),
            _ => None,
        })
    })
    .await;
    let (sent, partner, station) = match found {
        Ok(Some(f)) => f,
        Ok(None) => {
            return reject(
                404,
                format!(
                    "no message {:?} was sent from here",
                    unverified.original_message_id
                ),
            )
        }
        Err(e) => return Resp::text(500, format!("store error: {e}\n")),
    };
    let from = req.headers.get("as2-from").map(unquote_as2_name);
    let to = req.headers.get("as2-to").map(unquote_as2_name);
    if from.as_deref() != Some(partner.as2_id.as_str())
        || to.as_deref() != Some(station.as2_id.as_str())
    {
        return reject(
            403,
            format!(
                "MDN for message {} comes as AS2-From {from:?} AS2-To {to:?}, but that message went from {} to {}",
                sent.id, station.as2_id, partner.as2_id
            ),
        );
    }
    // Not only `awaiting-mdn`: a quick partner's MDN can arrive before the sender recorded
    // that its POST was answered (`sending`), or for an earlier attempt of a message now
    // waiting to be retried (`queued`); either way the partner has it.
    if !sent.state.is_unsettled() {
        return Resp::text(
            200,
            format!(
                "MDN for message {} already handled (state {})\n",
                sent.id, sent.state
            ),
        );
    }
    let require_signed = partner.profile.mdn_signed;
    let certs = match ctx.keys.partner_certs(&partner) {
        Ok(c) => c,
        Err(why) if require_signed => {
            return reject(
                403,
                format!("a signed MDN was asked for but it cannot be verified: {why}"),
            )
        }
        Err(_) => Arc::new(Vec::new()),
    };
    let body_for_check = body.clone();
    let checked = blocking(move || {
        parse_mdn(
            &headers,
            &body_for_check,
            &certs,
            ValidityPolicy::at(now_unix()),
            require_signed,
        )
    })
    .await;
    let outcome = match checked {
        Ok(mdn) => outcome::judge_mdn(&mdn, &outcome::expected_mics(sent.mics.as_deref())),
        Err(e) => {
            return reject(
                403,
                format!(
                    "MDN for message {} from {} does not verify: {e}",
                    sent.id, partner.as2_id
                ),
            )
        }
    };
    let mdn_text = String::from_utf8_lossy(&body).into_owned();
    super::archive::keep_or_warn(&ctx, sent.id, ArchiveKind::Mdn, &req.headers, body).await;
    outcome::record_outcome(&ctx, sent.id, 0, outcome, Some(mdn_text)).await;
    Resp::text(200, "MDN received\n")
}
