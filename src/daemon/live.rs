//! Settings that change under a running daemon: the config file and the HTTPS listener's
//! certificate, watched with `notify` and swapped in whole when they change.
//!
//! What reloads: everything the daemon reads per message or per request (retries,
//! timeouts, `public_url`, body limits) and the HTTPS certificate and key. What needs a
//! restart: listen addresses, `max_connections` and
//! `max_parallel_sends` (the sockets and the pools are made once); a reload that changes them says so in the log. Station keys and partner
//! certificates need no watching: `keycache` checks their files' mtimes on every use.
//!
//! A config file that no longer parses is refused with a log line and the previous
//! settings stay in force, so a half-saved edit never takes the daemon down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use openssl::ssl::SslAcceptor;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::Config;

/// The settings in force, replaced whole on a reload.
pub struct LiveConfig {
    path: PathBuf,
    current: RwLock<Arc<Config>>,
    tls: RwLock<Option<Arc<SslAcceptor>>>,
}

impl LiveConfig {
    /// Starts from `config`, read from `path` (which may not exist: defaults).
    pub fn new(path: PathBuf, config: Config, tls: Option<Arc<SslAcceptor>>) -> LiveConfig {
        LiveConfig {
            path,
            current: RwLock::new(Arc::new(config)),
            tls: RwLock::new(tls),
        }
    }

    /// The settings now.
    pub fn get(&self) -> Arc<Config> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The HTTPS acceptor now (None without `serve.https_listen`).
    pub fn tls(&self) -> Option<Arc<SslAcceptor>> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the config file and the TLS files again and swaps in what is valid.
    pub fn reload(&self) {
        let old = self.get();
        let new = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "the changed config file is not valid; keeping the previous settings");
                return;
            }
        };
        for what in restart_needed(&old, &new) {
            warn!(
                setting = what,
                "changed in the config file; takes effect after a restart of as2box serve"
            );
        }
        if new.serve.https_listen.is_some() {
            match super::tls_acceptor(&new) {
                Ok(acceptor) => {
                    *self.tls.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
                }
                Err(e) => {
                    warn!(error = %e, "the HTTPS certificate or key is not usable; keeping the previous one");
                }
            }
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        info!(file = %self.path.display(), "settings reloaded");
    }

    /// The files whose change triggers a reload.
    fn watched_files(&self) -> Vec<PathBuf> {
        let c = self.get();
        let mut files = vec![self.path.clone()];
        files.extend(c.serve.tls_cert.iter().cloned());
        files.extend(c.serve.tls_key.iter().cloned());
        files
    }
}

/// Settings that a reload cannot apply to a running daemon.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.serve, &new.serve);
    let mut out = Vec::new();
    if o.http_listen != n.http_listen {
        out.push("serve.http_listen");
    }
    if o.https_listen != n.https_listen {
        out.push("serve.https_listen");
    }
    if o.max_connections != n.max_connections {
        out.push("serve.max_connections");
    }
    if o.max_parallel_sends != n.max_parallel_sends {
        out.push("serve.max_parallel_sends");
    }
    out
}

/// The directory to watch for `file`: editors and `install` replace files by rename, which
/// a watch on the file itself would miss after the first time.
fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Watches the config file and the TLS files until `stop`, reloading shortly after each
/// change (bursts of events from one save are taken together). Without inotify (e.g. the
/// limit of watches reached) it logs why and the daemon runs on with its settings.
pub async fn watch(live: Arc<LiveConfig>, mut stop: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let names: Vec<PathBuf> = live.watched_files();
    let interesting = names.clone();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if changes_content(&ev.kind)
                && ev
                    .paths
                    .iter()
                    .any(|p| interesting.iter().any(|f| same_file_name(p, f)))
            {
                let _ = tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the config file; changes need a restart");
            return;
        }
    };
    let mut dirs: Vec<PathBuf> = names.iter().map(|f| parent_dir(f)).collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            warn!(dir = %d.display(), error = %e, "cannot watch for config changes here; changes need a restart");
        }
    }
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            got = rx.recv() => {
                if got.is_none() {
                    break;
                }
                // One save is several events (truncate, write, close, rename).
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                let live = live.clone();
                let _ = tokio::task::spawn_blocking(move || live.reload()).await;
            }
        }
    }
    drop(watcher);
}

/// Whether a watch event can mean new content. Opening or reading the file (every CLI
/// command and `doctor` read it) is not: reacting to those made each reload, which opens
/// the file, trigger the next one, every 200 ms for good.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    use notify::EventKind;
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether `event_path` names `file` (watch events carry the directory's spelling of it).
fn same_file_name(event_path: &Path, file: &Path) -> bool {
    event_path.file_name() == file.file_name()
        && parent_dir(event_path).canonicalize().ok() == parent_dir(file).canonicalize().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_or_reading_the_file_is_no_change() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        use notify::EventKind;
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Any)));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
    }

    #[test]
    fn a_valid_change_is_swapped_in_and_an_invalid_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("as2box.toml");
        std::fs::write(&path, "[serve]\nmax_attempts = 3\n").unwrap();
        let live = LiveConfig::new(path.clone(), Config::load(&path).unwrap(), None);
        assert_eq!(live.get().serve.max_attempts, 3);
        std::fs::write(&path, "[serve]\nmax_attempts = 7\n").unwrap();
        live.reload();
        assert_eq!(live.get().serve.max_attempts, 7);
        std::fs::write(&path, "[serve]\nmax_attempts = \"many\"\n").unwrap();
        live.reload();
        assert_eq!(
            live.get().serve.max_attempts,
            7,
            "a broken file changes nothing"
        );
    }

    #[test]
    fn listen_addresses_and_pool_size_need_a_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.serve.http_listen = "127.0.0.1:1".into();
        new.serve.max_connections = 1;
        new.serve.retry_base_secs = 1.0;
        assert_eq!(
            restart_needed(&old, &new),
            ["serve.http_listen", "serve.max_connections"]
        );
    }

    #[test]
    fn event_paths_match_by_directory_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        assert!(same_file_name(&dir.path().join("./a.toml"), &f));
        assert!(!same_file_name(&dir.path().join("b.toml"), &f));
    }
}
