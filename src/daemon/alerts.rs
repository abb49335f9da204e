//! Alerts: telling a person when something needs one. A message failed (sending gave up),
//! an inbound message was refused, an MDN did not arrive in time, a station or partner
//! certificate expires within 30 days. Each alert is one JSON object, POSTed to
//! `[alerts] webhook_url` (retried with doubling delays) and/or given on stdin to
//! `[alerts] command` (run without a shell, killed after `timeout_secs`).
//!
//! Raising never blocks the daemon: alerts wait in a bounded queue (`queue_size`; when it
//! is full the oldest is dropped and counted) and one task delivers them in order.
//! `/metrics` counts each kind raised, the dropped ones and the deliveries that failed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{blocking, Ctx};
use crate::config::AlertsConfig;
use crate::store::{Partner, Station};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// Sending gave up: the files are in the partner's `failed/`.
    MessageFailed,
    /// An inbound request from a partner was refused (negative MDN).
    InboundRefused,
    /// An async MDN did not arrive within `serve.async_mdn_timeout_secs`.
    MdnTimeout,
    /// A station or partner certificate expires within 30 days (or has expired).
    CertificateExpiring,
    /// `as2box alerts test`.
    Test,
}

impl AlertKind {
    const ALL: [AlertKind; 5] = [
        AlertKind::MessageFailed,
        AlertKind::InboundRefused,
        AlertKind::MdnTimeout,
        AlertKind::CertificateExpiring,
        AlertKind::Test,
    ];

    /// The name in the JSON (`kind`) and in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::MessageFailed => "message-failed",
            AlertKind::InboundRefused => "inbound-refused",
            AlertKind::MdnTimeout => "mdn-timeout",
            AlertKind::CertificateExpiring => "certificate-expiring",
            AlertKind::Test => "test",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// One alert: `{"kind", "at", "summary", ...details}`.
#[derive(Debug, Clone)]
pub struct Alert {
    kind: AlertKind,
    json: Value,
}

impl Alert {
    /// An alert of `kind` now, with a one-line `summary` and `details` (an object).
    pub fn new(kind: AlertKind, summary: String, details: Value) -> Alert {
        let mut json = json!({
            "kind": kind.as_str(),
            "at": crate::timefmt::rfc3339(crate::timefmt::now_ms()),
            "summary": summary,
            "gateway": hostname(),
        });
        if let (Some(obj), Value::Object(more)) = (json.as_object_mut(), details) {
            obj.extend(more);
        }
        Alert { kind, json }
    }

    /// What the webhook and the command receive.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json).unwrap_or_default()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// The queue and the counters; one per daemon.
#[derive(Debug, Default)]
pub struct Alerts {
    queue: Mutex<VecDeque<Alert>>,
    wake: tokio::sync::Notify,
    raised: [AtomicU64; AlertKind::ALL.len()],
    dropped: AtomicU64,
    delivery_failed: AtomicU64,
    /// Certificate fingerprint -> the day (unix days) it was last alerted.
    certificates_alerted: Mutex<HashMap<String, i64>>,
}

impl Alerts {
    /// Counts `alert` and queues it for delivery when `config` says where to; never waits.
    pub fn raise(&self, config: &AlertsConfig, alert: Alert) {
        self.raised[alert.kind.index()].fetch_add(1, Ordering::Relaxed);
        info!(kind = alert.kind.as_str(), alert = %alert.json, "alert");
        if config.webhook_url.is_none() && config.command.is_empty() {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.push_back(alert);
        while queue.len() > config.queue_size {
            queue.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Whether certificate `fingerprint` was not alerted on `day` (unix days) yet; marks it.
    fn first_today(&self, fingerprint: &str, day: i64) -> bool {
        let mut seen = self
            .certificates_alerted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        seen.insert(fingerprint.to_owned(), day) != Some(day)
    }

    fn next(&self) -> Option<Alert> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// The alert lines of `/metrics`.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let mut s = String::from("# TYPE as2box_alerts_total counter\n");
        for k in AlertKind::ALL {
            let n = self.raised[k.index()].load(Ordering::Relaxed);
            let _ = writeln!(s, "as2box_alerts_total{{kind=\"{}\"}} {n}", k.as_str());
        }
        let _ = writeln!(s, "# TYPE as2box_alerts_dropped_total counter");
        let _ = writeln!(
            s,
            "as2box_alerts_dropped_total {}",
            self.dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(s, "# TYPE as2box_alerts_delivery_failed_total counter");
        let _ = writeln!(
            s,
            "as2box_alerts_delivery_failed_total {}",
            self.delivery_failed.load(Ordering::Relaxed)
        );
        s
    }
}

/// Raises an alert through the daemon's queue with the settings in force.
pub fn raise(ctx: &Ctx, alert: Alert) {
    ctx.alerts.raise(&ctx.config().alerts, alert);
}

/// Raises `alert` about message `id` with what the store says of it (user, station,
/// partner, name, files), so that whoever reads it knows where to look.
pub async fn raise_about_message(ctx: &Arc<Ctx>, id: i64, mut alert: Alert) {
    let store = ctx.store.clone();
    if let Ok(Some(m)) = blocking(move || store.message(id)).await {
        alert.json["message"] = json!({
            "id": m.id, "direction": m.direction, "user": m.user, "station": m.station,
            "partner": m.partner, "test": m.test, "name": m.name, "files": m.files,
        });
    }
    raise(ctx, alert);
}

/// The alert for a send outcome that was recorded, if it ends the message: given up
/// (a final failure, or the last retry used), or no async MDN in time (`attempts` 0, no
/// MDN: see `outcome::record_outcome`).
pub fn for_send_outcome(
    id: i64,
    attempts: u32,
    outcome: &super::Attempt,
    had_mdn: bool,
    backoff: &super::Backoff,
) -> Option<Alert> {
    use super::Attempt;
    let (kind, reason) = match outcome {
        Attempt::Final(r) if attempts == 0 && !had_mdn => (AlertKind::MdnTimeout, r.clone()),
        Attempt::Final(r) => (AlertKind::MessageFailed, r.clone()),
        Attempt::Transient(why) if backoff.next_delay(attempts).is_none() => (
            AlertKind::MessageFailed,
            format!("not delivered after {attempts} attempt(s); the last one failed: {why}"),
        ),
        _ => return None,
    };
    let summary = match kind {
        AlertKind::MdnTimeout => format!("message {id}: no MDN arrived in time"),
        _ => format!("message {id} failed"),
    };
    Some(Alert::new(
        kind,
        summary,
        json!({"message": {"id": id, "direction": "out"}, "reason": reason}),
    ))
}

/// The alert for a refused inbound request.
pub fn refused(station: &Station, partner: &Partner, message_id: &str, reason: &str) -> Alert {
    Alert::new(
        AlertKind::InboundRefused,
        format!(
            "a message from partner {} to station {} was refused",
            partner.as2_id, station.as2_id
        ),
        json!({
            "message": {"direction": "in", "as2_message_id": message_id,
                        "station": station.as2_id, "partner": partner.as2_id, "test": partner.test},
            "reason": reason,
        }),
    )
}

/// Delivers queued alerts until `stop`.
pub async fn run(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    loop {
        while let Some(alert) = ctx.alerts.next() {
            let config = ctx.config().alerts.clone();
            let outcome = tokio::select! {
                o = deliver(&config, &alert, true) => o,
                _ = stop.changed() => return,
            };
            if !outcome.all_delivered() {
                ctx.alerts.delivery_failed.fetch_add(1, Ordering::Relaxed);
                warn!(kind = alert.kind.as_str(), outcome = %outcome, "an alert was not delivered");
            }
        }
        tokio::select! {
            _ = ctx.alerts.wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// How one alert fared with each configured channel.
#[derive(Debug, Default)]
pub struct Delivery {
    /// The webhook's outcome, when one is configured.
    pub webhook: Option<Result<String, String>>,
    /// The command's outcome, when one is configured.
    pub command: Option<Result<String, String>>,
}

impl Delivery {
    /// Whether every configured channel took it (and at least one is configured).
    pub fn all_delivered(&self) -> bool {
        let channels = [&self.webhook, &self.command];
        channels.iter().any(|c| c.is_some()) && channels.iter().all(|c| !matches!(c, Some(Err(_))))
    }
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |r: &Result<String, String>| match r {
            Ok(s) => format!("delivered ({s})"),
            Err(e) => format!("NOT delivered: {e}"),
        };
        let mut parts = Vec::new();
        if let Some(r) = &self.webhook {
            parts.push(format!("webhook {}", show(r)));
        }
        if let Some(r) = &self.command {
            parts.push(format!("command {}", show(r)));
        }
        if parts.is_empty() {
            parts.push("no webhook_url or command is configured in [alerts]".into());
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Sends `alert` to each configured channel; the webhook is retried with doubling delays
/// when `retry` (up to `max_attempts`).
pub async fn deliver(config: &AlertsConfig, alert: &Alert, retry: bool) -> Delivery {
    let body = alert.to_json_bytes();
    let mut out = Delivery::default();
    if let Some(url) = &config.webhook_url {
        let backoff = super::Backoff {
            base: Duration::from_secs_f64(config.retry_base_secs),
            ceiling: Duration::from_secs(300),
            max_attempts: if retry { config.max_attempts } else { 1 },
        };
        let mut attempt = 0;
        out.webhook = Some(loop {
            attempt += 1;
            match post_webhook(config, url, body.clone()).await {
                Ok(s) => break Ok(s),
                Err(e) => match backoff.next_delay(attempt) {
                    Some(delay) => {
                        warn!(%url, attempt, error = %e, retry_in_secs = delay.as_secs_f64(), "alert webhook failed; will retry");
                        tokio::time::sleep(delay).await;
                    }
                    None => break Err(format!("{e} (after {attempt} attempt(s))")),
                },
            }
        });
    }
    if !config.command.is_empty() {
        out.command = Some(run_command(config, &body).await);
    }
    out
}

/// The largest webhook answer read (it is only logged).
const WEBHOOK_ANSWER_MAX_BYTES: usize = 64 << 10;

async fn post_webhook(config: &AlertsConfig, url: &str, body: Vec<u8>) -> Result<String, String> {
    let mut headers = crate::as2::Headers::new();
    headers.push("Content-Type", "application/json".to_string());
    for (k, v) in &config.webhook_headers {
        headers.push(k, v.clone());
    }
    let timeout = Duration::from_secs_f64(config.timeout_secs);
    // Admin configuration, so any address (unlike the URLs partners name).
    let target = super::http::PostTarget::partner(WEBHOOK_ANSWER_MAX_BYTES);
    match super::http::post(url, &headers, body.into(), None, timeout, target).await {
        Ok(r) if (200..300).contains(&r.status) => Ok(format!("HTTP {}", r.status)),
        Ok(r) => Err(format!("{url} answered HTTP {}", r.status)),
        Err(e) => Err(e.0),
    }
}

/// Runs the command with `body` on stdin; no shell sees the alert's data. Killed after
/// `timeout_secs`.
async fn run_command(config: &AlertsConfig, body: &[u8]) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let program = &config.command[0];
    let mut child = tokio::process::Command::new(program)
        .args(&config.command[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let timeout = Duration::from_secs_f64(config.timeout_secs);
    let mut stdin = child.stdin.take();
    let run = async {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its input is not an error.
            let _ = stdin.write_all(body).await;
        }
        drop(stdin);
        child.wait().await
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(status)) if status.success() => Ok("exit 0".into()),
        Ok(Ok(status)) => Err(format!("{program} ended with {status}")),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Err(_) => Err(format!(
            "{program} did not finish within {} s and was killed",
            config.timeout_secs
        )),
    }
}

/// Checks the certificates of every station and partner now and then every hour; one
/// alert per certificate and day while it expires within 30 days (or has expired).
pub async fn watch_certificates(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    loop {
        let store = ctx.store.clone();
        let expiring = blocking(move || expiring_certificates(&store)).await;
        let today = crate::timefmt::now_ms() / 86_400_000;
        for (fingerprint, alert) in expiring {
            if ctx.alerts.first_today(&fingerprint, today) {
                raise(&ctx, alert);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// (fingerprint, alert) for each station certificate, and each partner's longest-lasting
/// certificate (during a rollover the old one running out is expected), that expires
/// within [`crate::keys::WARN_DAYS`].
fn expiring_certificates(store: &crate::store::Store) -> Vec<(String, Alert)> {
    let mut out = Vec::new();
    let mut check = |owner: Value, path: &std::path::Path| {
        let Ok(cert) = crate::keys::read_cert(path) else {
            return;
        };
        let Ok(days) = crate::keys::days_left(&cert) else {
            return;
        };
        if days >= crate::keys::WARN_DAYS {
            return;
        }
        let fingerprint = crate::as2::certs::sha256_fingerprint(&cert);
        let whose = format!(
            "{} {}",
            owner["role"].as_str().unwrap_or(""),
            owner["as2_id"].as_str().unwrap_or("")
        );
        let summary = if days < 0 {
            format!("the certificate of {whose} EXPIRED {} day(s) ago", -days)
        } else {
            format!("the certificate of {whose} expires in {days} day(s)")
        };
        let alert = Alert::new(
            AlertKind::CertificateExpiring,
            summary,
            json!({
                "certificate": {
                    "owner": owner,
                    "file": path.display().to_string(),
                    "subject": crate::as2::certs::subject_of(&cert),
                    "not_after": cert.not_after().to_string(),
                    "days_left": days,
                    "sha256_fingerprint": fingerprint,
                }
            }),
        );
        out.push((fingerprint, alert));
    };
    for s in store.stations(None).unwrap_or_default() {
        if let Some(path) = &s.cert_path {
            check(json!({"role": "station", "as2_id": s.as2_id}), path);
        }
    }
    for p in store.partners(None).unwrap_or_default() {
        if let Some(path) = crate::keys::longest_lasting(&p.profile.cert_paths) {
            check(
                json!({"role": "partner", "as2_id": p.as2_id, "test": p.test}),
                path,
            );
        }
    }
    out
}

/// `as2box alerts test`: sends one test alert through the configured channels, once each
/// (no retries), and says how each fared.
pub fn send_test(config: &AlertsConfig) -> Result<Delivery, std::io::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let alert = Alert::new(
        AlertKind::Test,
        "a test alert from `as2box alerts test`".into(),
        json!({}),
    );
    Ok(rt.block_on(deliver(config, &alert, false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(queue_size: usize) -> AlertsConfig {
        AlertsConfig {
            webhook_url: Some("http://127.0.0.1:9/".into()),
            queue_size,
            ..Default::default()
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let alerts = Alerts::default();
        for i in 0..5 {
            alerts.raise(
                &config(3),
                Alert::new(AlertKind::InboundRefused, format!("#{i}"), json!({})),
            );
        }
        let left: Vec<String> = std::iter::from_fn(|| alerts.next())
            .map(|a| a.json["summary"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(left, ["#2", "#3", "#4"]);
        let m = alerts.render_metrics();
        assert!(
            m.contains("as2box_alerts_total{kind=\"inbound-refused\"} 5"),
            "{m}"
        );
        assert!(m.contains("as2box_alerts_dropped_total 2"), "{m}");
    }

    #[test]
    fn a_certificate_is_alerted_at_most_once_a_day() {
        let alerts = Alerts::default();
        assert!(alerts.first_today("AB:CD", 20_000));
        assert!(!alerts.first_today("AB:CD", 20_000));
        assert!(alerts.first_today("EF:01", 20_000), "another certificate");
        assert!(alerts.first_today("AB:CD", 20_001), "the next day");
    }

    #[test]
    fn without_a_channel_alerts_are_counted_not_queued() {
        let alerts = Alerts::default();
        alerts.raise(
            &AlertsConfig::default(),
            Alert::new(AlertKind::Test, "t".into(), json!({})),
        );
        assert!(alerts.next().is_none());
        assert!(alerts
            .render_metrics()
            .contains("as2box_alerts_total{kind=\"test\"} 1"));
    }

    #[test]
    fn an_alert_is_one_json_object_with_its_kind_and_details() {
        let a = Alert::new(
            AlertKind::MessageFailed,
            "message 7 failed".into(),
            json!({"reason": "HTTP 500"}),
        );
        let v: Value = serde_json::from_slice(&a.to_json_bytes()).unwrap();
        assert_eq!(v["kind"], "message-failed");
        assert_eq!(v["reason"], "HTTP 500");
        assert!(v["at"].as_str().unwrap().ends_with('Z'), "{v}");
    }

    #[test]
    fn a_send_ends_in_an_alert_only_when_it_gives_up() {
        use crate::daemon::{Attempt, Backoff};
        let backoff = Backoff {
            base: Duration::from_secs(1),
            ceiling: Duration::from_secs(2),
            max_attempts: 3,
        };
        let t = Attempt::Transient("refused".into());
        assert!(for_send_outcome(1, 1, &t, false, &backoff).is_none());
        let last = for_send_outcome(1, 3, &t, false, &backoff).unwrap();
        assert_eq!(last.kind, AlertKind::MessageFailed);
        let timeout = for_send_outcome(1, 0, &Attempt::Final("no MDN".into()), false, &backoff);
        assert_eq!(timeout.unwrap().kind, AlertKind::MdnTimeout);
        let negative = for_send_outcome(1, 0, &Attempt::Final("negative".into()), true, &backoff);
        assert_eq!(negative.unwrap().kind, AlertKind::MessageFailed);
        assert!(for_send_outcome(1, 1, &Attempt::Delivered("ok".into()), true, &backoff).is_none());
    }
}
