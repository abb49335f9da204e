//! The sending side: take queued messages, build them per the partner's profile, POST them,
//! judge the answer (HTTP status, MDN, MIC) and record the outcome: delivered, retried with
//! backoff, or failed with the files and a reason in the partner's `failed/`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::outcome::{expected_mics, judge_mdn, record_outcome, unverifiable_mdn};
use super::retry::{classify_status, explanation, Attempt};
use super::{blocking, Ctx};
use crate::as2::algorithms::{DigestAlgorithm, EncryptionAlgorithm};
use crate::as2::certs::ValidityPolicy;
use crate::as2::mdn::parse_mdn;
use crate::as2::message::{
    build_message_streaming, AttachmentSource, CompressionOrder, MdnMode, SendProfile,
};
use crate::store::{
    ArchiveKind, As2Version, Claimed, CompressOption, EncryptOption, MdnOption, MicalgSpelling,
    Partner, SignOption, Station,
};
use crate::timefmt::now_ms;

/// Sends until `stop` turns true: claims due messages when woken (`Ctx::queue_bell`: the
/// doorbell, a due retry, a freed slot) and at least every `serve.queue_poll_secs`, and
/// fails messages whose async MDN never came.
pub async fn run(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let mut last_timeout_check = std::time::Instant::now();
    // At start too: async MDNs a stopped daemon still owed go out at once.
    let mut last_mdn_check = std::time::Instant::now()
        .checked_sub(Duration::from_secs(2))
        .unwrap_or_else(std::time::Instant::now);
    // Messages in flight at once: each holds its files in memory while it is built and
    // posted, so a queue of thousands must not become thousands of tasks.
    let slots = Arc::new(tokio::sync::Semaphore::new(
        ctx.config().serve.max_parallel_sends,
    ));
    let mut woken = true;
    let mut next_queue_read = std::time::Instant::now();
    loop {
        if woken || std::time::Instant::now() >= next_queue_read {
            // At most daily: any longer is as good as never, and must not overflow.
            let poll = Duration::try_from_secs_f64(ctx.config().serve.queue_poll_secs)
                .unwrap_or(Duration::MAX)
                .min(Duration::from_secs(86_400));
            next_queue_read = std::time::Instant::now() + poll;
            claim_all_due(&ctx, &slots).await;
        }
        if last_mdn_check.elapsed() > Duration::from_secs(1) {
            last_mdn_check = std::time::Instant::now();
            super::owed_mdn::retry_owed_mdns(&ctx).await;
        }
        if last_timeout_check.elapsed() > Duration::from_secs(5) {
            last_timeout_check = std::time::Instant::now();
            expire_async_mdns(&ctx).await;
        }
        // Owed MDNs and async MDN timeouts are checked at least every second.
        let nap = next_queue_read
            .saturating_duration_since(std::time::Instant::now())
            .min(Duration::from_secs(1));
        woken = tokio::select! {
            _ = stop.changed() => break,
            _ = ctx.queue_bell.notified() => true,
            _ = tokio::time::sleep(nap) => false,
        };
    }
}

/// Claims due messages while there are free slots, each sent by a task of its own (a slow
/// partner does not hold up the others).
async fn claim_all_due(ctx: &Arc<Ctx>, slots: &Arc<tokio::sync::Semaphore>) {
    while let Ok(slot) = slots.clone().try_acquire_owned() {
        let store = ctx.store.clone();
        match blocking(move || store.claim_queued(now_ms())).await {
            Ok(Some(c)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    process(ctx.clone(), c).await;
                    drop(slot);
                    // The queue may hold more than there were slots.
                    ctx.queue_bell.notify_one();
                });
            }
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "cannot read the send queue");
                break;
            }
        }
    }
}

async fn expire_async_mdns(ctx: &Arc<Ctx>) {
    let secs = ctx.config().serve.async_mdn_timeout_secs;
    let store = ctx.store.clone();
    let cutoff = now_ms() - (secs * 1000.0) as i64;
    let Ok(ids) = blocking(move || store.awaiting_mdn_before(cutoff)).await else {
        return;
    };
    for id in ids {
        let reason = format!("No receipt (MDN) arrived from the partner within {secs} seconds; the partner may not have received the message: check with them before resending.");
        record_outcome(ctx, id, 0, Attempt::Final(reason), None).await;
    }
}

fn digest(s: SignOption) -> Option<DigestAlgorithm> {
    match s {
        SignOption::None => None,
        SignOption::Sha1 => Some(DigestAlgorithm::Sha1),
        SignOption::Sha256 => Some(DigestAlgorithm::Sha256),
        SignOption::Sha384 => Some(DigestAlgorithm::Sha384),
        SignOption::Sha512 => Some(DigestAlgorithm::Sha512),
    }
}

fn cipher(e: EncryptOption) -> Option<EncryptionAlgorithm> {
    match e {
        EncryptOption::None => None,
        EncryptOption::TripleDes => Some(EncryptionAlgorithm::TripleDes),
        EncryptOption::Aes128Cbc => Some(EncryptionAlgorithm::Aes128Cbc),
        EncryptOption::Aes192Cbc => Some(EncryptionAlgorithm::Aes192Cbc),
        EncryptOption::Aes256Cbc => Some(EncryptionAlgorithm::Aes256Cbc),
        EncryptOption::Aes128Gcm => Some(EncryptionAlgorithm::Aes128Gcm),
        EncryptOption::Aes256Gcm => Some(EncryptionAlgorithm::Aes256Gcm),
    }
}

/// Builds the AS2 profile of a partner.
fn profile(
    ctx: &Ctx,
    station: &Station,
    partner: &Partner,
    message_name: &str,
) -> Result<SendProfile, String> {
    let p = &partner.profile;
    let mut profile = SendProfile::new(&station.as2_id, &partner.as2_id);
    // A file name may hold control characters (even a line break); a header may not.
    let name: String = message_name.chars().filter(|c| !c.is_control()).collect();
    profile.subject = p
        .subject_template
        .as_deref()
        .unwrap_or("AS2 message from {station}")
        .replace("{station}", &station.as2_id)
        .replace("{partner}", &partner.as2_id)
        .replace("{name}", &name);
    profile.binary_canonicalization = p.binary_canonicalization;
    profile.micalg_compact = p.micalg_spelling == MicalgSpelling::Compact;
    profile.extra_headers = p.extra_headers.clone();
    if p.as2_version == As2Version::V1_3 {
        profile.as2_1_3_product = Some(super::PRODUCT.to_owned());
    }
    profile.sign = digest(p.sign);
    profile.encrypt = cipher(p.encrypt);
    profile.compress = match p.compress {
        CompressOption::None => None,
        CompressOption::BeforeSign => Some(CompressionOrder::BeforeSigning),
        CompressOption::AfterSign => Some(CompressionOrder::AfterSigning),
    };
    profile.mdn = match p.mdn {
        MdnOption::None => MdnMode::None,
        MdnOption::Sync => MdnMode::Sync,
        MdnOption::Async => {
            let config = ctx.config();
            let base = config.serve.public_url.as_deref().ok_or(
                "an async MDN needs serve.public_url in the config file (the URL partners reach us at)",
            )?;
            MdnMode::Async(format!("{}/as2/mdn", base.trim_end_matches('/')))
        }
    };
    if p.mdn != MdnOption::None && p.mdn_signed {
        profile.signed_mdn_micalgs = vec![profile.sign.unwrap_or(DigestAlgorithm::Sha256)];
    }
    if let Some(host) = ctx
        .config()
        .serve
        .public_url
        .as_deref()
        .and_then(|u| u.parse::<hyper::Uri>().ok())
        .and_then(|u| u.host().map(str::to_owned))
    {
        profile.message_id_domain = host;
    }
    Ok(profile)
}

/// The largest answer to a POST of ours that is read (a sync MDN, or an error page).
const SYNC_ANSWER_MAX_BYTES: usize = 4 << 20;

async fn process(ctx: Arc<Ctx>, c: Claimed) {
    let id = c.id;
    let attempts = c.attempts;
    let (outcome, mdn) = attempt(&ctx, c).await;
    record_outcome(&ctx, id, attempts, outcome, mdn).await;
}

/// One attempt; returns the outcome and the MDN text, if any.
async fn attempt(ctx: &Arc<Ctx>, c: Claimed) -> (Attempt, Option<String>) {
    let store = ctx.store.clone();
    let (sid, pid) = (c.station_id, c.partner_id);
    let loaded = blocking(move || {
        let station = store.station_by_id(sid)?;
        let partner = store.partner_by_id(pid)?;
        Ok::<_, crate::store::StoreError>((station, partner))
    })
    .await;
    let (station, partner) = match loaded {
        Ok((Some(s), Some(p))) => (s, p),
        Ok(_) => {
            return (
                Attempt::Final(
                    "The station or partner was removed before the message could be sent.".into(),
                ),
                None,
            )
        }
        Err(e) => return (Attempt::Transient(format!("store error: {e}")), None),
    };
    let Some(url) = partner.url.clone() else {
        return (
            Attempt::Final(format!(
                "The partner {} has no URL to send to: set one with `as2box partner set --url`.",
                partner.as2_id
            )),
            None,
        );
    };
    let profile = match profile(ctx, &station, &partner, &c.name) {
        Ok(p) => p,
        Err(e) => return (Attempt::Final(format!("Not sent: {e}.")), None),
    };
    let signer = if profile.sign.is_some() || !profile.signed_mdn_micalgs.is_empty() {
        match ctx.keys.station_key(&station) {
            Ok(k) => Some(k),
            Err(e) if profile.sign.is_some() => {
                return (Attempt::Final(format!("Not sent: {e}.")), None)
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let certs = if profile.encrypt.is_some() || partner.profile.mdn_signed {
        match ctx.keys.partner_certs(&partner) {
            Ok(c) => c,
            Err(e) if profile.encrypt.is_some() => {
                return (Attempt::Final(format!("Not sent: {e}.")), None)
            }
            Err(_) => Arc::new(Vec::new()),
        }
    } else {
        Arc::new(Vec::new())
    };
    let store = ctx.store.clone();
    let files = c.files.clone();
    // The default, application/octet-stream, is never rewritten; text types (EDI, XML)
    // are sent in MIME canonical form (CRLF line ends), as the partner's software expects.
    let content_type = partner.profile.content_type.clone();
    let opened = blocking(move || {
        files
            .iter()
            .map(|f| Ok((f.name.clone(), store.open_content(&f.sha256)?)))
            .collect::<Result<Vec<_>, crate::store::StoreError>>()
    })
    .await;
    let opened = match opened {
        Ok(a) => a,
        Err(e) => {
            return (
                Attempt::Final(format!("The message's files could not be read: {e}.")),
                None,
            )
        }
    };
    let bytes: u64 = c.files.iter().map(|f| f.size).sum();
    // During a rollover the partner's new certificate: the newest one that is valid now.
    let recipient = crate::as2::certs::newest_valid(&certs, now_ms() / 1000).cloned();
    if profile.encrypt.is_some() && recipient.is_none() {
        return (
            Attempt::Final(format!(
                "Not sent: no certificate of partner {} is valid now (expired or not yet valid); add the partner's current one with `as2box partner cert add`.",
                partner.as2_id
            )),
            None,
        );
    }
    let (p2, s2, r2, mid) = (
        profile.clone(),
        signer.clone(),
        recipient,
        c.as2_message_id.clone(),
    );
    let store = ctx.store.clone();
    let built = blocking(move || {
        let sources = opened
            .into_iter()
            .map(|(name, file)| AttachmentSource {
                filename: Some(name),
                content_type: content_type.clone(),
                data: Box::new(std::io::BufReader::with_capacity(256 * 1024, file)),
            })
            .collect();
        build_message_streaming(
            sources,
            &p2,
            s2.as_deref(),
            r2.as_ref(),
            now_ms() / 1000,
            mid.as_deref(),
            &mut super::receive::ServeSpool { store },
        )
    })
    .await;
    let msg = match built {
        Ok(m) => m,
        // Our spool failed (disk full, I/O error): passing, so the message waits.
        Err(crate::as2::error::As2Error::Io(e)) => {
            return (
                Attempt::Transient(format!("the message could not be built now: {e}")),
                None,
            )
        }
        Err(e) => {
            return (
                Attempt::Final(format!("The message could not be built: {e}.")),
                None,
            )
        }
    };
    let mics: Vec<String> = msg
        .acceptable_mics()
        .iter()
        .map(|m| m.to_header_value())
        .collect();
    let headers_text = String::from_utf8_lossy(&msg.headers.to_bytes()).into_owned();
    let (store, mid) = (ctx.store.clone(), msg.message_id.clone());
    let mics_text = mics.join("\n");
    // What a resend may be answered with includes the MICs of earlier attempts.
    let expected =
        match blocking(move || store.message_prepared(c.id, &mid, Some(&mics_text), &headers_text))
            .await
        {
            Ok(all) => expected_mics(all.as_deref()),
            Err(e) => return (Attempt::Transient(format!("store error: {e}")), None),
        };
    let trust = match &partner.profile.trust_path {
        Some(p) => ctx.keys.certs(p).ok().and_then(|c| c.first().cloned()),
        None => None,
    };
    let timeout = Duration::from_secs_f64(ctx.config().serve.send_timeout_secs);
    let since_queued_ms = (now_ms() - c.created_ms).max(0);
    if c.attempts == 1 {
        ctx.metrics
            .pickup_to_post
            .observe(Duration::from_millis(since_queued_ms as u64));
    }
    info!(message = c.id, attempt = c.attempts, %url, message_id = %msg.message_id, bytes, since_queued_ms, "sending");
    // A sync MDN is a few KiB; the bound is for a partner that answers with a stream.
    let mut target = super::http::PostTarget::partner(SYNC_ANSWER_MAX_BYTES);
    target.chunked = partner.profile.chunked;
    target.authorization = partner
        .profile
        .basic_auth_out
        .as_ref()
        .map(|c| crate::basic_auth::authorization_value(&c.user, &c.password));
    if let Some(t) = &partner.profile.tls_client {
        let what = format!("TLS client certificate for partner {}", partner.as2_id);
        match ctx.keys.key_pair(&t.key_path, &t.cert_path, &what) {
            Ok(identity) => target.client_identity = Some(identity),
            Err(e) => return (Attempt::Final(format!("Not sent: {e}.")), None),
        }
    }
    // Kept before the POST; a disk that refuses the copy does not hold up the sending.
    let body =
        super::archive::keep_file_or_warn(ctx, c.id, ArchiveKind::Request, &msg.headers, msg.body)
            .await;
    let mut resp =
        match super::http::post(&url, &msg.headers, body, trust.as_ref(), timeout, target).await {
            Ok(r) => r,
            Err(e) => return (Attempt::Transient(e.0), None),
        };
    super::failpoint::hit("send-after-post");
    let said = explanation(resp.headers.get("content-type"), &resp.body);
    if let Some(a) = classify_status(resp.status, &said) {
        return (a, None);
    }
    ctx.metrics
        .bytes_out
        .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    match partner.profile.mdn {
        // Without a receipt an HTTP 2xx is all we know: not a confirmation of receipt.
        MdnOption::None => (
            Attempt::Delivered(format!(
                "sent; the partner answered HTTP {} (no receipt was requested)",
                resp.status
            )),
            None,
        ),
        MdnOption::Async => (Attempt::AwaitingMdn, None),
        MdnOption::Sync => {
            let mdn_text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&resp.headers.to_bytes()),
                String::from_utf8_lossy(&resp.body)
            );
            let require_signed = partner.profile.mdn_signed;
            let body = std::mem::take(&mut resp.body);
            resp.body =
                super::archive::keep_or_warn(ctx, c.id, ArchiveKind::Mdn, &resp.headers, body)
                    .await;
            let parsed = blocking(move || {
                parse_mdn(
                    &resp.headers,
                    &resp.body,
                    &certs,
                    ValidityPolicy::at(now_ms() / 1000),
                    require_signed,
                )
            })
            .await;
            match parsed {
                Ok(mdn) => (judge_mdn(&mdn, &expected), Some(mdn_text)),
                Err(e) => (unverifiable_mdn(&e), Some(mdn_text)),
            }
        }
    }
}
