//! What an attempt to send comes to, and its record: the verdict on a partner's receipt
//! (sync, in the POST's answer; or async, POSTed to us later) against the MICs we accept,
//! and the one place that records delivered / retry / failed. Used by `send` and by
//! `receive` (async MDNs), so that neither depends on the other.

use std::sync::Arc;

use tracing::{info, warn};

use super::metrics::inc;
use super::retry::{Attempt, Backoff};
use super::{blocking, Ctx};
use crate::as2::mdn::{MicCheck, ReceivedMdn};
use crate::as2::mic::Mic;
use crate::timefmt::now_ms;

/// The MICs stored with a sent message (one per line).
pub fn expected_mics(stored: Option<&str>) -> Vec<Mic> {
    stored
        .unwrap_or("")
        .lines()
        .filter_map(|l| Mic::parse(l).ok())
        .collect()
}

/// The outcome for a receipt (sync or async) that does not parse or verify: failed, with a
/// one-sentence reason (OpenSSL's error queue, with its source paths, stays in the log).
pub fn unverifiable_mdn(e: &crate::as2::error::As2Error) -> Attempt {
    let full = e.to_string();
    warn!(error = %full, "the partner's receipt (MDN) could not be verified");
    let short = full
        .split(": error:")
        .next()
        .unwrap_or(&full)
        .trim_end_matches('.');
    Attempt::Final(format!(
        "The partner's receipt (MDN) could not be verified: {short}."
    ))
}

/// Judges a parsed MDN against the MICs we accept.
pub fn judge_mdn(mdn: &ReceivedMdn, expected: &[Mic]) -> Attempt {
    if !mdn.disposition.is_processed() {
        // The reason is one sentence quoting the disposition; the partner's free text (often
        // several sentences) goes to the log and stays in the stored MDN.
        let field = mdn.disposition.to_field();
        let status = field.rsplit(';').next().unwrap_or(&field).trim().to_owned();
        let text = mdn.text.split_whitespace().collect::<Vec<_>>().join(" ");
        warn!(original_message_id = %mdn.original_message_id, disposition = %status, partner_text = %text, "negative receipt (MDN)");
        return Attempt::Final(format!(
            "The partner refused the message: its receipt (MDN) reports \"{status}\"."
        ));
    }
    let signed = match (&mdn.signature, mdn.signed) {
        (Some(_), _) => "a signed receipt (MDN)",
        (None, true) => "a signed receipt (MDN), signature not checked",
        (None, false) => "an unsigned receipt (MDN)",
    };
    match (mdn.check_mic(expected), &mdn.mic) {
        (MicCheck::Mismatch, _) => Attempt::Final(format!(
            "The partner's receipt returned MIC {} but we computed {}: the partner may have received different content.",
            mdn.mic.as_ref().map(|m| m.to_header_value()).unwrap_or_default(),
            expected.first().map(|m| m.to_header_value()).unwrap_or_default()
        )),
        // The detail is the only record of the MIC check an operator sees (`messages list`).
        (MicCheck::Match, Some(mic)) => Attempt::Delivered(format!(
            "the partner confirmed receipt with {signed}; its MIC {} matches ours",
            mic.to_header_value()
        )),
        _ => Attempt::Delivered(format!(
            "the partner confirmed receipt with {signed}; it returned no MIC"
        )),
    }
}

/// Records what an attempt came to. `attempts` 0 means "from an async MDN or a timeout".
pub async fn record_outcome(
    ctx: &Arc<Ctx>,
    id: i64,
    attempts: u32,
    outcome: Attempt,
    mdn: Option<String>,
) {
    let store = ctx.store.clone();
    let backoff = Backoff::from_settings(&ctx.config().serve);
    let alert = super::alerts::for_send_outcome(id, attempts, &outcome, mdn.is_some(), &backoff);
    let retry_in = match &outcome {
        Attempt::Transient(_) => backoff.next_delay(attempts),
        _ => None,
    };
    let m = &ctx.metrics;
    match &outcome {
        Attempt::Delivered(_) => {
            inc(&m.sent_delivered);
            if mdn.is_some() {
                inc(&m.mdn_positive);
            }
        }
        Attempt::Final(_) => {
            inc(&m.sent_failed);
            if mdn.is_some() {
                inc(&m.mdn_negative);
            }
        }
        Attempt::AwaitingMdn => {}
        Attempt::Transient(_) => inc(&m.sent_retried),
    }
    let result = blocking(move || match outcome {
        Attempt::Delivered(detail) => {
            info!(message = id, %detail, "delivered");
            store.message_delivered(id, mdn.as_deref(), &detail)
        }
        Attempt::AwaitingMdn => store.message_awaiting_mdn(id),
        Attempt::Transient(why) => match backoff.next_delay(attempts) {
            Some(delay) => {
                warn!(message = id, attempt = attempts, %why, retry_in_secs = delay.as_secs_f64(), "send failed; will retry");
                let detail = format!("{why}; next attempt in {:.1} s", delay.as_secs_f64());
                store.message_retry(id, &detail, now_ms() + delay.as_millis() as i64)
            }
            None => {
                let plural = if attempts == 1 { "" } else { "s" };
                let reason = format!("Not delivered after {attempts} attempt{plural}; the last one failed: {why}.");
                warn!(message = id, %reason, "giving up");
                store.message_failed(id, &reason, mdn.as_deref())
            }
        },
        Attempt::Final(reason) => {
            warn!(message = id, %reason, "failed");
            store.message_failed(id, &reason, mdn.as_deref())
        }
    })
    .await;
    match result {
        Ok(true) => {
            if let Some(delay) = retry_in {
                // The retry is sent when due, not at the next poll of the queue.
                let bell = ctx.queue_bell.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    bell.notify_one();
                });
            }
            if let Some(a) = alert {
                super::alerts::raise_about_message(ctx, id, a).await;
            }
        }
        // E.g. the async MDN arrived before the POST's answer was recorded: it stands.
        Ok(false) => info!(
            message = id,
            "outcome not recorded: the message was settled meanwhile"
        ),
        Err(e) => warn!(message = id, error = %e, "cannot record the outcome of a send"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::as2::algorithms::DigestAlgorithm;
    use crate::as2::mdn::Disposition;
    use crate::as2::DispositionModifier;

    fn mic(b64: &str) -> Mic {
        Mic {
            digest_b64: b64.into(),
            algorithm: DigestAlgorithm::Sha256,
        }
    }

    fn receipt(disposition: Disposition, returned: Option<Mic>) -> ReceivedMdn {
        ReceivedMdn {
            message_id: None,
            as2_from: Some("PARTNER".into()),
            original_message_id: "m@x".into(),
            disposition,
            mic: returned,
            signed: false,
            signature: None,
            reporting_ua: None,
            original_recipient: None,
            final_recipient: None,
            text: "Line one.\n  Line two.".into(),
        }
    }

    const OURS: &str = "q+hDVl2jbjYyz9GYXv7Ij3hrSMKGKBhlMbkP6TzZN9o=";
    const EARLIER: &str = "KlHTVHwjqN5Q8+IyhaDfNWYn72TDAAh9OycXPwje0qA=";

    #[test]
    fn expected_mics_reads_one_per_line_and_skips_what_does_not_parse() {
        let stored = format!("{OURS}, sha-256\nnot a mic\n{EARLIER}, sha256");
        let mics = expected_mics(Some(&stored));
        assert_eq!(mics.len(), 2, "{mics:?}");
        assert_eq!(mics[0].digest_b64, OURS);
        assert_eq!(mics[1].digest_b64, EARLIER);
        assert!(expected_mics(None).is_empty());
    }

    #[test]
    fn a_positive_receipt_with_our_mic_or_an_earlier_attempts_mic_is_delivery() {
        let expected = [mic(OURS), mic(EARLIER)];
        for returned in [OURS, EARLIER] {
            match judge_mdn(
                &receipt(Disposition::Processed, Some(mic(returned))),
                &expected,
            ) {
                Attempt::Delivered(detail) => {
                    assert!(detail.contains("matches ours"), "{detail}");
                    assert!(detail.contains("an unsigned receipt"), "{detail}");
                }
                other => panic!("{returned}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_positive_receipt_with_another_mic_fails_the_message_naming_both() {
        let other = "2SmKENGwc1g33EvYXaxkGw887yekfl1TpU8vP1svz/o=";
        let got = judge_mdn(
            &receipt(Disposition::Processed, Some(mic(other))),
            &[mic(OURS)],
        );
        match got {
            Attempt::Final(reason) => {
                assert!(reason.contains(other) && reason.contains(OURS), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_positive_receipt_without_a_mic_is_delivery_that_says_so() {
        match judge_mdn(&receipt(Disposition::Processed, None), &[mic(OURS)]) {
            Attempt::Delivered(detail) => assert!(detail.contains("no MIC"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_negative_receipt_is_final_and_quotes_the_disposition_not_the_free_text() {
        let refused = receipt(
            Disposition::Error(DispositionModifier::DecryptionFailed),
            None,
        );
        match judge_mdn(&refused, &[mic(OURS)]) {
            Attempt::Final(reason) => {
                assert!(reason.contains("decryption-failed"), "{reason}");
                assert!(!reason.contains("Line two"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
