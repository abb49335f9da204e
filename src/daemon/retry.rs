//! When to try again: exponential backoff with a ceiling, and which failures are final.

use std::time::Duration;

/// What one attempt to send came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The partner took it (and its receipt, if any, was positive); says what confirmed it
    /// (the HTTP answer alone, or a receipt and what its MIC came to), recorded with the state.
    Delivered(String),
    /// The partner took it; its receipt will come asynchronously.
    AwaitingMdn,
    /// Worth another try: connection refused or reset, timeout, HTTP 5xx.
    Transient(String),
    /// Will not get better by retrying: HTTP 4xx, a negative MDN, a MIC mismatch, bad
    /// configuration.
    Final(String),
}

/// The retry policy of the sender.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Longest delay.
    pub ceiling: Duration,
    /// Attempts in all before giving up.
    pub max_attempts: u32,
}

impl Backoff {
    /// The policy the `[serve]` settings describe (for messages and for async MDNs alike).
    pub fn from_settings(serve: &crate::config::ServeConfig) -> Backoff {
        Backoff {
            base: Duration::from_secs_f64(serve.retry_base_secs),
            ceiling: Duration::from_secs_f64(serve.retry_max_secs),
            max_attempts: serve.max_attempts,
        }
    }

    /// The delay after failed attempt number `attempt` (from 1), or `None` when that was the
    /// last one allowed.
    pub fn next_delay(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        Some(self.base.saturating_mul(factor).min(self.ceiling))
    }
}

/// Classifies an HTTP status of the partner's answer; `said` is the partner's explanation
/// (see [`explanation`]), quoted in the reason when not empty.
pub fn classify_status(status: u16, said: &str) -> Option<Attempt> {
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(" (\"{said}\")")
    };
    match status {
        200..=299 => None,
        408 | 429 | 500..=599 => Some(Attempt::Transient(format!(
            "the partner answered HTTP {status}{said}"
        ))),
        // A sentence of its own: it becomes the failed/ reason as it is.
        _ => Some(Attempt::Final(format!(
            "The partner refused the message with HTTP {status}{said}."
        ))),
    }
}

/// The partner's explanation in an error answer: a `text/plain` body on one line, without a
/// final full stop, at most 200 characters. HTML error pages and other types give nothing.
pub fn explanation(content_type: Option<&str>, body: &[u8]) -> String {
    let plain = content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("text/plain"));
    if !plain {
        return String::new();
    }
    let text = String::from_utf8_lossy(body);
    let mut line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    while line.ends_with('.') {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_ceiling_then_stop() {
        let b = Backoff {
            base: Duration::from_secs(10),
            ceiling: Duration::from_secs(60),
            max_attempts: 5,
        };
        let d: Vec<_> = (1..=5)
            .map(|a| b.next_delay(a).map(|d| d.as_secs()))
            .collect();
        assert_eq!(d, [Some(10), Some(20), Some(40), Some(60), None]);
    }

    #[test]
    fn statuses() {
        assert_eq!(classify_status(200, ""), None);
        assert!(matches!(
            classify_status(503, ""),
            Some(Attempt::Transient(_))
        ));
        assert!(matches!(
            classify_status(429, ""),
            Some(Attempt::Transient(_))
        ));
        assert_eq!(
            classify_status(403, "not a partner"),
            Some(Attempt::Final(
                "The partner refused the message with HTTP 403 (\"not a partner\").".into()
            ))
        );
        assert_eq!(
            classify_status(404, ""),
            Some(Attempt::Final(
                "The partner refused the message with HTTP 404.".into()
            ))
        );
    }

    #[test]
    fn explanations_are_one_line_of_plain_text() {
        let body = b"unknown AS2-To \"X\":\n no such station.\n";
        assert_eq!(
            explanation(Some("text/plain; charset=utf-8"), body),
            "unknown AS2-To \"X\": no such station"
        );
        assert_eq!(explanation(Some("text/html"), b"<html>"), "");
        assert_eq!(explanation(None, b"x"), "");
        assert_eq!(explanation(Some("text/plain"), &[b'a'; 500]).len(), 200);
    }
}
