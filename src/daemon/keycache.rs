//! Station keys and partner certificates, loaded from their files and reloaded when a
//! file changes (checked by modification time on use), so that rotating a certificate
//! needs no restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use openssl::x509::X509;

use crate::as2::certs::{load_certificates, KeyPair};
use crate::store::{Partner, Station};

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[derive(Clone)]
enum Loaded {
    Key(Arc<KeyPair>),
    Certs(Arc<Vec<X509>>),
}

/// The files a cache entry was loaded from (key and certificate, or certificates alone).
type Files = (PathBuf, Option<PathBuf>);

/// Material loaded from files, with the files' modification times at loading.
type Stamped = (Vec<Option<SystemTime>>, Loaded);

/// Loaded key material by file, reloaded when a file's modification time changes.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<Files, Stamped>>,
}

impl KeyCache {
    fn get(
        &self,
        key: (PathBuf, Option<PathBuf>),
        load: impl FnOnce() -> Result<Loaded, String>,
    ) -> Result<Loaded, String> {
        let stamps: Vec<Option<SystemTime>> = std::iter::once(&key.0)
            .chain(key.1.iter())
            .map(|p| mtime(p))
            .collect();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, loaded)) = entries.get(&key) {
            if *at == stamps {
                return Ok(loaded.clone());
            }
        }
        let loaded = load()?;
        entries.insert(key, (stamps, loaded.clone()));
        Ok(loaded)
    }

    /// The station's key pair, or why there is none.
    pub fn station_key(&self, s: &Station) -> Result<Arc<KeyPair>, String> {
        let (Some(key), Some(cert)) = (&s.key_path, &s.cert_path) else {
            return Err(format!("station {} has no key pair: run `as2box station set {} --generate-cert` or give --key and --cert", s.as2_id, s.as2_id));
        };
        self.key_pair(key, cert, &format!("station {}", s.as2_id))
    }

    /// The key pair in files `key` and `cert` (`what` names it in errors).
    pub fn key_pair(&self, key: &Path, cert: &Path, what: &str) -> Result<Arc<KeyPair>, String> {
        let loaded = self.get((key.to_owned(), Some(cert.to_owned())), || {
            let k = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
            let c = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
            KeyPair::from_separate(&k, &c, None)
                .map(|kp| Loaded::Key(Arc::new(kp)))
                .map_err(|e| format!("{what} key pair: {e}"))
        })?;
        match loaded {
            Loaded::Key(k) => Ok(k),
            Loaded::Certs(_) => Err("internal: key cache mix-up".into()),
        }
    }

    /// Every configured certificate of the partner (all its files; expired ones included,
    /// so that verification can say "expired" rather than "unknown signer"), or why there
    /// is none. The one place a partner certificate is looked up: receiving, sync and async
    /// MDNs, and sending (which encrypts to `as2::certs::newest_valid` of these).
    /// An unreadable file is skipped with a warning (that can only refuse more, never
    /// accept more); none readable is an error.
    pub fn partner_certs(&self, p: &Partner) -> Result<Arc<Vec<X509>>, String> {
        let fix = format!(
            "add one with `as2box partner cert add --user <user> {} FILE`",
            p.as2_id
        );
        if p.profile.cert_paths.is_empty() {
            return Err(format!("partner {} has no certificate: {fix}", p.as2_id));
        }
        let mut all = Vec::new();
        let mut errors = Vec::new();
        for path in &p.profile.cert_paths {
            match self.certs(path) {
                Ok(c) => all.extend(c.iter().cloned()),
                Err(e) => {
                    tracing::warn!(partner = %p.as2_id, error = %e, "a certificate of the partner cannot be read; it is left out");
                    errors.push(e);
                }
            }
        }
        if all.is_empty() {
            return Err(format!(
                "no certificate of partner {} can be read ({}): {fix}",
                p.as2_id,
                errors.join("; ")
            ));
        }
        Ok(Arc::new(all))
    }

    /// Certificates from a file (PEM or DER, possibly several).
    pub fn certs(&self, path: &Path) -> Result<Arc<Vec<X509>>, String> {
        let loaded = self.get((path.to_owned(), None), || {
            let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            load_certificates(&data)
                .map(|c| Loaded::Certs(Arc::new(c)))
                .map_err(|e| format!("{}: {e}", path.display()))
        })?;
        match loaded {
            Loaded::Certs(c) => Ok(c),
            Loaded::Key(_) => Err("internal: key cache mix-up".into()),
        }
    }
}
