//! The async MDNs we owe partners: POSTed when a message is answered, kept in the store
//! until delivered, retried with the send backoff (also after a restart), and only ever to
//! a destination `mdn_target` allows for the partner.

use std::sync::Arc;

use tracing::{info, warn};

use super::metrics::inc;
use super::{blocking, mdn_target, Ctx};
use crate::as2::Headers;
use crate::store::OwedMdn;
use crate::timefmt::now_ms;

/// Starts one delivery attempt of an owed MDN if a slot is free ([`Ctx::owed_mdn_slots`]);
/// otherwise a kept MDN waits in the store for the retry loop, and one for a resend is
/// dropped (the sender's next resend gets it again).
pub(super) fn spawn_owed_mdn(
    ctx: &Arc<Ctx>,
    owed: OwedMdn,
    kept: bool,
    destinations: mdn_target::Destinations,
) {
    let Ok(slot) = ctx.owed_mdn_slots.clone().try_acquire_owned() else {
        return warn!(
            message = owed.id,
            "too many async MDNs in flight; this one waits for the retry loop"
        );
    };
    let ctx = ctx.clone();
    tokio::spawn(async move {
        deliver_owed_mdn(ctx, owed, kept, destinations).await;
        drop(slot);
    });
}

/// How long one attempt holds an owed MDN before another may take it: longer than a POST
/// may take.
pub(super) fn lease_ms(ctx: &Ctx) -> i64 {
    (ctx.config().serve.send_timeout_secs * 1000.0) as i64 + 30_000
}

/// One attempt to POST an owed async MDN; `kept` says whether the store holds it (then the
/// outcome is recorded there: done, or retried with the send backoff, or given up).
async fn deliver_owed_mdn(
    ctx: Arc<Ctx>,
    owed: OwedMdn,
    kept: bool,
    destinations: mdn_target::Destinations,
) {
    let config = ctx.config();
    let timeout = std::time::Duration::from_secs_f64(config.serve.send_timeout_secs);
    let mut headers = Headers::new();
    for (k, v) in &owed.headers {
        headers.push(k, v.clone());
    }
    let url = owed.url.clone();
    // The partner's answer to an MDN is an acknowledgment: nothing of it is used.
    let target = super::http::PostTarget {
        destinations,
        max_answer_bytes: 64 << 10,
        chunked: false,
        authorization: None,
        client_identity: None,
    };
    let outcome = match super::http::post(
        &url,
        &headers,
        owed.body.clone().into(),
        None,
        timeout,
        target,
    )
    .await
    {
        Ok(r) if (200..300).contains(&r.status) => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status)),
        Err(e) => Err(e.0),
    };
    let attempt = owed.attempts + 1;
    let (store, id) = (ctx.store.clone(), owed.id);
    let backoff = super::Backoff::from_settings(&config.serve);
    let recorded = match outcome {
        Ok(()) => {
            info!(message = id, %url, attempt, "async MDN delivered");
            if !kept {
                return;
            }
            blocking(move || store.owed_mdn_done(id)).await
        }
        Err(why) if !kept => {
            return warn!(%url, %why, "async MDN (for a resend) not delivered; the sender's next resend gets it again");
        }
        Err(why) => match backoff.next_delay(attempt) {
            Some(delay) => {
                warn!(message = id, %url, %why, attempt, retry_in_secs = delay.as_secs_f64(), "async MDN not delivered; will retry");
                let next = now_ms() + delay.as_millis() as i64;
                blocking(move || store.owed_mdn_retry(id, next)).await
            }
            None => {
                warn!(message = id, %url, %why, attempt, "giving up on an async MDN; the partner can resend the message to get it again");
                blocking(move || store.owed_mdn_done(id)).await
            }
        },
    };
    if let Err(e) = recorded {
        warn!(message = id, error = %e, "cannot record the outcome of an async MDN");
    }
}

/// Tries the owed async MDNs whose time has come (after a failed attempt, or left by a
/// stopped daemon). Called periodically by the sender loop.
pub async fn retry_owed_mdns(ctx: &Arc<Ctx>) {
    let store = ctx.store.clone();
    let now = now_ms();
    let lease = now + lease_ms(ctx);
    let owed = match blocking(move || store.claim_owed_mdns(now, lease, 16)).await {
        Ok(o) => o,
        Err(e) => return warn!(error = %e, "cannot read the async MDNs we owe"),
    };
    for o in owed {
        let (store, pid) = (ctx.store.clone(), o.partner_id);
        let partner = blocking(move || store.partner_by_id(pid)).await;
        let allowed = match &partner {
            Ok(Some(p)) => mdn_target::check(&o.url, p).map_err(|e| e.to_string()),
            Ok(None) => Err("the partner was removed".into()),
            Err(e) => {
                warn!(error = %e, "cannot read the partner of an owed MDN");
                continue;
            }
        };
        match allowed {
            Ok(d) => spawn_owed_mdn(ctx, o, true, d),
            Err(why) => {
                inc(&ctx.metrics.mdn_url_refused);
                warn!(message = o.id, "giving up on an owed async MDN: {why}");
                let (store, id) = (ctx.store.clone(), o.id);
                if let Err(e) = blocking(move || store.owed_mdn_done(id)).await {
                    warn!(message = id, error = %e, "cannot record the outcome of an async MDN");
                }
            }
        }
    }
}
