//! Content-addressed blob files: `blobs/<first two hex digits>/<sha256 hex>`. New content is
//! streamed into `spool/`, fsync'd, then renamed into place, so a blob file is always
//! complete. Blobs are immutable; the sweep deletes those no row references.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use openssl::sha::Sha256;

use super::StoreError;

/// The blob folder and its spool.
#[derive(Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    spool: PathBuf,
    lock: File,
}

/// A lock that keeps the sweep from deleting blobs while a writer links a new or existing
/// blob to a row: held (shared) from the rename into place until the row is committed.
#[derive(Debug)]
pub struct BlobGuard<'a> {
    file: &'a File,
}

impl Drop for BlobGuard<'_> {
    fn drop(&mut self) {
        flock(self.file, libc::LOCK_UN);
    }
}

fn flock(file: &File, op: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; EINTR is retried.
    loop {
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// fsyncs a folder so that a rename or create inside it is durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl BlobStore {
    /// Opens (creating if needed) the blob store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<BlobStore, StoreError> {
        let blobs = state_dir.join("blobs");
        let spool = state_dir.join("spool");
        for dir in [&blobs, &spool] {
            super::perms::create_shared_dir(dir)?;
        }
        let lock_path = blobs.join(".sweep.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o660)
            .open(&lock_path)
            .map_err(io_err(format!("open {}", lock_path.display())))?;
        Ok(BlobStore { blobs, spool, lock })
    }

    /// The file that holds the blob `sha256`.
    pub fn path(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("xx");
        self.blobs.join(prefix).join(sha256)
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, sha256: &str) -> Result<File, StoreError> {
        File::open(self.path(sha256)).map_err(io_err(format!("open blob {sha256}")))
    }

    /// Creates a new, empty spool file for streaming content into.
    pub fn spool_file(&self) -> Result<(PathBuf, File), StoreError> {
        let mut random = [0u8; 12];
        openssl::rand::rand_bytes(&mut random).map_err(|e| StoreError::Io {
            context: "random spool name".into(),
            source: io::Error::other(e),
        })?;
        let path = self.spool.join(hex(&random));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            // Readable by the service group once it is a blob (see `perms`).
            .mode(0o640)
            .open(&path)
            .map_err(io_err(format!("create spool file {}", path.display())))?;
        Ok((path, file))
    }

    /// Removes every spool file: they belong to writes that never completed.
    pub fn clear_spool(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for entry in std::fs::read_dir(&self.spool).map_err(io_err("read spool"))? {
            let entry = entry.map_err(io_err("read spool"))?;
            if std::fs::remove_file(entry.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Takes the lock that keeps the sweep away; hold it until the row that references the
    /// blob is committed.
    pub fn guard(&self) -> BlobGuard<'_> {
        flock(&self.lock, libc::LOCK_SH);
        BlobGuard { file: &self.lock }
    }

    /// Moves a complete, already fsync'd spool file into place as blob `sha256` and makes the
    /// rename durable. If the blob exists, the spool file replaces it (same content).
    pub fn commit_spool(&self, spool: &Path, sha256: &str) -> Result<(), StoreError> {
        let target = self.path(sha256);
        let dir = target.parent().unwrap_or(&self.blobs).to_owned();
        if !dir.exists() {
            super::perms::create_shared_dir(&dir)?;
            fsync_dir(&self.blobs).map_err(io_err("fsync blob folder"))?;
        }
        std::fs::rename(spool, &target).map_err(io_err(format!(
            "move {} to {}",
            spool.display(),
            target.display()
        )))?;
        fsync_dir(&dir).map_err(io_err("fsync blob folder"))?;
        Ok(())
    }

    /// Stores `data` as a blob (spool, fsync, rename) and returns its sha256.
    pub fn put_bytes(&self, data: &[u8]) -> Result<String, StoreError> {
        use std::io::Write;
        let (path, mut file) = self.spool_file()?;
        let result = (|| {
            file.write_all(data).map_err(io_err("write spool file"))?;
            file.sync_all().map_err(io_err("fsync spool file"))?;
            let sha = sha256_hex(data);
            self.commit_spool(&path, &sha)?;
            Ok(sha)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    /// Copies a file into the blob store; returns (sha256, size).
    pub fn put_file(&self, source: &Path) -> Result<(String, u64), StoreError> {
        use std::io::{Read, Write};
        let mut src = File::open(source).map_err(io_err(format!("open {}", source.display())))?;
        let (path, mut file) = self.spool_file()?;
        let result = (|| {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = src
                    .read(&mut buf)
                    .map_err(io_err(format!("read {}", source.display())))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .map_err(io_err("write spool file"))?;
                size += n as u64;
            }
            file.sync_all().map_err(io_err("fsync spool file"))?;
            let sha = hex(&hasher.finish());
            self.commit_spool(&path, &sha)?;
            Ok((sha, size))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    /// Deletes blob files that no row references (`load_referenced`, called under the lock)
    /// and that are older than `min_age`. Returns how many.
    pub fn sweep(
        &self,
        min_age: std::time::Duration,
        load_referenced: impl FnOnce() -> Result<std::collections::HashSet<String>, StoreError>,
    ) -> Result<usize, StoreError> {
        flock(&self.lock, libc::LOCK_EX);
        let _unlock = BlobGuard { file: &self.lock };
        let referenced = load_referenced()?;
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for prefix in std::fs::read_dir(&self.blobs).map_err(io_err("read blobs"))? {
            let prefix = prefix.map_err(io_err("read blobs"))?;
            if !prefix.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            for blob in std::fs::read_dir(prefix.path()).map_err(io_err("read blobs"))? {
                let blob = blob.map_err(io_err("read blobs"))?;
                let name = blob.file_name();
                let Some(name) = name.to_str() else { continue };
                if referenced.contains(name) {
                    continue;
                }
                let old = blob
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|age| age >= min_age);
                if old && std::fs::remove_file(blob.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// sha256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&openssl::sha::sha256(data))
}
