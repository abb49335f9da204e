//! Counters for `GET /metrics` (Prometheus text exposition format 0.0.4).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters. Message counts by state come from the store at scrape time.
#[derive(Debug, Default)]
pub struct Metrics {
    /// AS2 requests received, by outcome.
    pub received_ok: AtomicU64,
    /// Received requests answered with a negative MDN or an HTTP error.
    pub received_failed: AtomicU64,
    /// Duplicates answered without delivering again.
    pub received_duplicate: AtomicU64,
    /// Requests from a known partner refused before anything was stored: not signed or
    /// encrypted as its profile requires, or a signature or decryption that failed.
    pub received_refused: AtomicU64,
    /// Async MDNs posted to us that did not settle anything: unknown message, from
    /// another partner, unsigned or not verifying where a signed one was asked for.
    pub mdn_rejected: AtomicU64,
    /// Async MDNs we owe that were not posted: the URL the sender named is not allowed
    /// by its profile.
    pub mdn_url_refused: AtomicU64,
    /// Payload bytes delivered into inboxes.
    pub bytes_in: AtomicU64,
    /// Payload bytes sent.
    pub bytes_out: AtomicU64,
    /// Messages sent and confirmed.
    pub sent_delivered: AtomicU64,
    /// Send attempts that will be retried.
    pub sent_retried: AtomicU64,
    /// Messages that finally failed.
    pub sent_failed: AtomicU64,
    /// MDNs received, positive.
    pub mdn_positive: AtomicU64,
    /// MDNs received, negative or with a MIC mismatch.
    pub mdn_negative: AtomicU64,
    /// From the queueing of a message (the close of the uploaded file) to the start of its
    /// first POST.
    pub pickup_to_post: Histogram,
    /// From a received request's last byte to its answer (stored, delivered, MDN built).
    pub receive: Histogram,
    /// Connections refused because the connection limit was reached.
    pub connections_refused: std::sync::Arc<AtomicU64>,
}

/// Adds one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The exposition text.
    pub fn render(
        &self,
        states: &[(crate::store::Direction, crate::store::MessageState, u64)],
    ) -> String {
        let mut s = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP as2box_messages Messages in the store by direction and state."
        );
        let _ = writeln!(s, "# TYPE as2box_messages gauge");
        for (dir, state, n) in states {
            let _ = writeln!(
                s,
                "as2box_messages{{direction=\"{dir}\",state=\"{state}\"}} {n}"
            );
        }
        let counters = [
            (
                "as2box_received_total{outcome=\"delivered\"}",
                get(&self.received_ok),
            ),
            (
                "as2box_received_total{outcome=\"failed\"}",
                get(&self.received_failed),
            ),
            (
                "as2box_received_total{outcome=\"duplicate\"}",
                get(&self.received_duplicate),
            ),
            (
                "as2box_received_total{outcome=\"refused\"}",
                get(&self.received_refused),
            ),
            (
                "as2box_mdn_received_total{outcome=\"rejected\"}",
                get(&self.mdn_rejected),
            ),
            (
                "as2box_async_mdn_url_refused_total",
                get(&self.mdn_url_refused),
            ),
            (
                "as2box_sent_total{outcome=\"delivered\"}",
                get(&self.sent_delivered),
            ),
            (
                "as2box_sent_total{outcome=\"retried\"}",
                get(&self.sent_retried),
            ),
            (
                "as2box_sent_total{outcome=\"failed\"}",
                get(&self.sent_failed),
            ),
            (
                "as2box_mdn_received_total{outcome=\"positive\"}",
                get(&self.mdn_positive),
            ),
            (
                "as2box_mdn_received_total{outcome=\"negative\"}",
                get(&self.mdn_negative),
            ),
            ("as2box_bytes_total{direction=\"in\"}", get(&self.bytes_in)),
            (
                "as2box_bytes_total{direction=\"out\"}",
                get(&self.bytes_out),
            ),
            (
                "as2box_connections_refused_total",
                get(&self.connections_refused),
            ),
        ];
        let mut last = "";
        for (name, v) in counters {
            let base = name.split('{').next().unwrap_or(name);
            if base != last {
                let _ = writeln!(s, "# TYPE {base} counter");
                last = base;
            }
            let _ = writeln!(s, "{name} {v}");
        }
        self.pickup_to_post.render(
            &mut s,
            "as2box_pickup_to_post_seconds",
            "Seconds from queueing an outbox message to the start of its first POST.",
        );
        self.receive.render(
            &mut s,
            "as2box_receive_seconds",
            "Seconds from the end of a received request to its answer (stored, delivered, MDN built).",
        );
        s
    }
}

/// Upper bounds (seconds) of the latency buckets: fine below a second, where the goals are.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram with fixed buckets, lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, s: &mut String, name: &str, help: &str) {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(s, "{name}_sum {sum}");
        let _ = writeln!(s, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(70));
        h.observe(Duration::from_secs(60));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.005\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.05\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"30\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
        assert!(s.contains("x_sum 60.073\n"), "{s}");
    }
}
