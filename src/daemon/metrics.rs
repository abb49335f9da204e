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
    /// Sum of pickup-to-POST latencies (ms) and their count.
    pub pickup_to_post_ms_sum: AtomicU64,
    /// Count for the sum above.
    pub pickup_to_post_count: AtomicU64,
    /// Connections refused because the connection limit was reached.
    pub connections_refused: std::sync::Arc<AtomicU64>,
}

/// Adds one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The exposition text.
    pub fn render(&self, states: &[(String, String, u64)]) -> String {
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
            (
                "as2box_pickup_to_post_ms_sum",
                get(&self.pickup_to_post_ms_sum),
            ),
            (
                "as2box_pickup_to_post_ms_count",
                get(&self.pickup_to_post_count),
            ),
        ];
        let mut last = "";
        for (name, v) in counters {
            let base = name.split('{').next().unwrap_or(name);
            if base != last {
                let kind = if base.ends_with("_sum") || base.ends_with("_count") {
                    "untyped"
                } else {
                    "counter"
                };
                let _ = writeln!(s, "# TYPE {base} {kind}");
                last = base;
            }
            let _ = writeln!(s, "{name} {v}");
        }
        s
    }
}
