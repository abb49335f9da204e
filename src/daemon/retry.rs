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

/// Classifies an HTTP status of the partner's answer.
pub fn classify_status(status: u16) -> Option<Attempt> {
    match status {
        200..=299 => None,
        408 | 429 => Some(Attempt::Transient(format!(
            "the partner answered HTTP {status}"
        ))),
        500..=599 => Some(Attempt::Transient(format!(
            "the partner answered HTTP {status}"
        ))),
        _ => Some(Attempt::Final(format!(
            "the partner refused the message with HTTP {status}"
        ))),
    }
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
        assert_eq!(classify_status(200), None);
        assert!(matches!(classify_status(503), Some(Attempt::Transient(_))));
        assert!(matches!(classify_status(429), Some(Attempt::Transient(_))));
        assert!(matches!(classify_status(403), Some(Attempt::Final(_))));
    }
}
