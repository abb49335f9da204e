//! Settings from the TOML file (`/etc/as2box/as2box.toml` by default), with defaults for
//! every key, so that an absent file means "all defaults".

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything that can go wrong while reading the settings file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or an unknown key.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said, with line and column.
        message: String,
    },
    /// A value is of the right type but out of range.
    #[error("config file {path}: {key} {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// The whole settings file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[mount]`: the mailbox filesystem.
    pub mount: MountConfig,
    /// `[outbox]`: pickup rules.
    pub outbox: OutboxConfig,
    /// `[retention]`: how long files and message records are kept.
    pub retention: RetentionConfig,
    /// `[serve]`: the AS2 daemon.
    pub serve: ServeConfig,
    /// `[sftp]`: the OpenSSH side.
    pub sftp: SftpConfig,
    /// `[alerts]`: whom the daemon tells when something needs a person.
    pub alerts: AlertsConfig,
}

/// `[alerts]` (see `daemon::alerts`): a webhook and/or a command, told in JSON when a
/// message fails, an inbound message is refused, an MDN does not come in time, or a
/// certificate expires within 30 days.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where each alert is POSTed as JSON (admin configuration: internal addresses are
    /// allowed).
    pub webhook_url: Option<String>,
    /// Extra header fields of the webhook's POST (e.g. an `Authorization` token).
    pub webhook_headers: std::collections::BTreeMap<String, String>,
    /// A program and its arguments (no shell), run per alert with the JSON on stdin.
    pub command: Vec<String>,
    /// Time for one webhook POST, and for the command to finish (then it is killed).
    pub timeout_secs: f64,
    /// Webhook attempts per alert (retried with doubling delays from `retry_base_secs`).
    pub max_attempts: u32,
    /// The first delay between webhook attempts.
    pub retry_base_secs: f64,
    /// Alerts waiting at most; when full, the oldest is dropped (and counted).
    pub queue_size: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: None,
            webhook_headers: Default::default(),
            command: Vec::new(),
            timeout_secs: 10.0,
            max_attempts: 5,
            retry_base_secs: 2.0,
            queue_size: 1000,
        }
    }
}

/// `[mount]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MountConfig {
    /// Where `as2box mount` mounts the tree when no mount point is given.
    pub path: PathBuf,
    /// FUSE worker threads.
    pub threads: usize,
    /// Whether file data may bypass the mount process (kernel FUSE passthrough).
    pub passthrough: PassthroughMode,
}

/// `[mount] passthrough`: how file data reaches the spool and blob files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassthroughMode {
    /// FUSE passthrough when the kernel offers it (Linux 6.9 and later): uploads are
    /// written and stored files read by the kernel straight from their files; otherwise,
    /// and for users with a quota, the mount copies the data itself.
    Auto,
    /// The mount copies every byte itself (with the kernel's write-back cache).
    Off,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            path: PathBuf::from("/srv/as2box/mnt"),
            threads: 4,
            passthrough: PassthroughMode::Auto,
        }
    }
}

/// `[outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// How long a picked-up file stays listed (read-only) in the outbox.
    pub linger_secs: f64,
    /// A folder is picked up after nothing in it changed for this long.
    pub batch_quiet_secs: f64,
    /// Most files in one message.
    pub max_files: u64,
    /// Most bytes in one message (all files together).
    pub max_bytes: u64,
    /// A closed upload that was interrupted (its writer was exiting) moves to `failed/`
    /// when it is not completed within this time.
    pub incomplete_timeout_secs: f64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            linger_secs: 30.0,
            batch_quiet_secs: 120.0,
            max_files: 10,
            max_bytes: 10 * 1024 * 1024,
            incomplete_timeout_secs: 3600.0,
        }
    }
}

/// `[retention]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Files in `inbox/` and `failed/` older than this are removed.
    pub files_hours: f64,
    /// Message records older than this are removed.
    pub messages_days: f64,
    /// How often the mount process sweeps.
    pub sweep_secs: f64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            files_hours: 48.0,
            messages_days: 60.0,
            sweep_secs: 300.0,
        }
    }
}

/// `[serve]` (the AS2 daemon; see `as2box serve --help`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Plain HTTP listen address.
    pub http_listen: String,
    /// HTTPS listen address, if any.
    pub https_listen: Option<String>,
    /// TLS certificate (PEM) for `https_listen`.
    pub tls_cert: Option<PathBuf>,
    /// TLS key (PEM) for `https_listen`.
    pub tls_key: Option<PathBuf>,
    /// The base URL partners reach us at (for async MDNs).
    pub public_url: Option<String>,
    /// Attempts to send a message before it fails.
    pub max_attempts: u32,
    /// Delay after the first failed attempt; it doubles each time.
    pub retry_base_secs: f64,
    /// Longest delay between attempts.
    pub retry_max_secs: f64,
    /// A message whose async MDN has not come after this long fails.
    pub async_mdn_timeout_secs: f64,
    /// Time for one POST to a partner, answer included.
    pub send_timeout_secs: f64,
    /// Time for a client to send us a whole request.
    pub request_timeout_secs: f64,
    /// Largest request body accepted. Bodies stream to the spool on the state folder's
    /// disk (never whole into memory), so this bounds disk use per request, not memory.
    pub max_body_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Retired in 0.x (streaming): request bodies and what is made from them go to spool
    /// files, so no body is held in memory. Still accepted so that older configuration
    /// files load; it has no effect.
    pub max_body_memory_bytes: usize,
    /// Messages being sent at once (each holds its files in memory while in flight).
    pub max_parallel_sends: usize,
    /// How often the send queue is read when nothing woke the daemon. The mount and the
    /// CLI ring a doorbell when they queue a message and retries are timed in the daemon,
    /// so this is only the fallback for a lost ring.
    pub queue_poll_secs: f64,
    /// A received message may decompress to this many times its body size (all
    /// compression layers together), and never more than `max_body_bytes` (the disk one
    /// message may take), but see `min_decompressed_bytes`. Inflating stops as
    /// soon as the limit is passed and the message is refused (`decompression-failed`).
    /// Decompressed bytes go to the spool, not to memory.
    pub max_decompression_ratio: usize,
    /// The decompression limit of small messages: never less than this many bytes.
    pub min_decompressed_bytes: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            http_listen: "0.0.0.0:4080".into(),
            https_listen: None,
            tls_cert: None,
            tls_key: None,
            public_url: None,
            max_attempts: 10,
            retry_base_secs: 30.0,
            retry_max_secs: 3600.0,
            async_mdn_timeout_secs: 7200.0,
            send_timeout_secs: 120.0,
            request_timeout_secs: 300.0,
            max_body_bytes: 4 << 30,
            max_connections: 256,
            max_body_memory_bytes: 512 << 20,
            max_parallel_sends: 16,
            queue_poll_secs: 1.0,
            max_decompression_ratio: 100,
            min_decompressed_bytes: 16 << 20,
        }
    }
}

/// `[sftp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftpConfig {
    /// The system group every mailbox account belongs to; sshd matches on it.
    pub group: String,
    /// The SFTP port of the dedicated sshd.
    pub port: u16,
}

impl Default for SftpConfig {
    fn default() -> Self {
        SftpConfig {
            group: "as2box-sftp".into(),
            port: 9193,
        }
    }
}

impl Config {
    /// Reads `path`; an absent file yields the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, problem| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            problem,
        };
        let non_negative = [
            ("outbox.linger_secs", self.outbox.linger_secs),
            ("outbox.batch_quiet_secs", self.outbox.batch_quiet_secs),
            (
                "outbox.incomplete_timeout_secs",
                self.outbox.incomplete_timeout_secs,
            ),
            ("retention.files_hours", self.retention.files_hours),
            ("retention.messages_days", self.retention.messages_days),
            ("serve.retry_base_secs", self.serve.retry_base_secs),
            ("serve.retry_max_secs", self.serve.retry_max_secs),
            (
                "serve.async_mdn_timeout_secs",
                self.serve.async_mdn_timeout_secs,
            ),
        ];
        for (key, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid(key, "must be a number of zero or more"));
            }
        }
        if !(self.retention.sweep_secs.is_finite() && self.retention.sweep_secs > 0.0) {
            return Err(invalid("retention.sweep_secs", "must be more than zero"));
        }
        if self.outbox.max_files == 0 {
            return Err(invalid("outbox.max_files", "must be at least 1"));
        }
        for (key, value) in [
            ("serve.send_timeout_secs", self.serve.send_timeout_secs),
            ("serve.queue_poll_secs", self.serve.queue_poll_secs),
            (
                "serve.request_timeout_secs",
                self.serve.request_timeout_secs,
            ),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(invalid(key, "must be more than zero"));
            }
        }
        if self.serve.max_attempts == 0
            || self.serve.max_connections == 0
            || self.serve.max_parallel_sends == 0
        {
            return Err(invalid(
                "serve.max_attempts/max_connections/max_parallel_sends",
                "must be at least 1",
            ));
        }
        if self.serve.max_decompression_ratio == 0 {
            return Err(invalid(
                "serve.max_decompression_ratio",
                "must be at least 1",
            ));
        }
        if self.mount.threads == 0 || self.mount.threads > 64 {
            return Err(invalid("mount.threads", "must be between 1 and 64"));
        }
        let a = &self.alerts;
        if let Some(url) = &a.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "alerts.webhook_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if !(a.timeout_secs.is_finite() && a.timeout_secs > 0.0) {
            return Err(invalid("alerts.timeout_secs", "must be more than zero"));
        }
        if !(a.retry_base_secs.is_finite() && a.retry_base_secs >= 0.0) {
            return Err(invalid(
                "alerts.retry_base_secs",
                "must be a number of zero or more",
            ));
        }
        if a.max_attempts == 0 || a.queue_size == 0 {
            return Err(invalid(
                "alerts.max_attempts/queue_size",
                "must be at least 1",
            ));
        }
        if a.command.first().is_some_and(|c| c.is_empty()) {
            return Err(invalid(
                "alerts.command",
                "must start with the program to run (e.g. [\"/usr/local/bin/page\", \"--as2\"])",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn absent_file_means_defaults() {
        let c = Config::load(Path::new("/nonexistent/as2box.toml")).unwrap();
        assert_eq!(c.outbox.max_files, 10);
        assert_eq!(c.outbox.max_bytes, 10 * 1024 * 1024);
        assert_eq!(c.outbox.linger_secs, 30.0);
        assert_eq!(c.outbox.batch_quiet_secs, 120.0);
        assert_eq!(c.retention.files_hours, 48.0);
        assert_eq!(c.retention.messages_days, 60.0);
        assert_eq!(c.mount.path, PathBuf::from("/srv/as2box/mnt"));
    }

    #[test]
    fn decompression_limits_default_and_are_checked() {
        let c = Config::default();
        assert_eq!(c.serve.max_decompression_ratio, 100);
        assert_eq!(c.serve.min_decompressed_bytes, 16 << 20);
        let c = parse("[serve]\nmax_decompression_ratio = 20\nmin_decompressed_bytes = 1048576\n")
            .unwrap();
        assert_eq!(c.serve.max_decompression_ratio, 20);
        assert_eq!(c.serve.min_decompressed_bytes, 1 << 20);
        let err = parse("[serve]\nmax_decompression_ratio = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("serve.max_decompression_ratio"), "{err}");
    }

    #[test]
    fn fractions_and_integers_both_accepted() {
        let c = parse("[outbox]\nlinger_secs = 2\nbatch_quiet_secs = 0.5\n").unwrap();
        assert_eq!(c.outbox.linger_secs, 2.0);
        assert_eq!(c.outbox.batch_quiet_secs, 0.5);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = parse("[outbox]\nlinger = 2\n").unwrap_err().to_string();
        assert!(err.contains("linger"), "{err}");
    }

    #[test]
    fn alerts_are_off_by_default_and_checked() {
        let c = Config::default();
        assert!(c.alerts.webhook_url.is_none() && c.alerts.command.is_empty());
        let c = parse("[alerts]\nwebhook_url = \"http://10.0.0.5:9000/hook\"\ncommand = [\"/usr/bin/logger\", \"-t\", \"as2box\"]\n[alerts.webhook_headers]\nAuthorization = \"Bearer x\"\n").unwrap();
        assert_eq!(c.alerts.command, ["/usr/bin/logger", "-t", "as2box"]);
        assert_eq!(c.alerts.webhook_headers["Authorization"], "Bearer x");
        let err = parse("[alerts]\nwebhook_url = \"ftp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("alerts.webhook_url"), "{err}");
    }

    #[test]
    fn negative_value_is_refused() {
        let err = parse("[retention]\nfiles_hours = -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention.files_hours"), "{err}");
    }
}
