//! Content-addressed blob files: `blobs/<first two hex digits>/<sha256 hex>`. New content is
//! streamed into a spool folder, fsync'd, then renamed into place, so a blob file is always
//! complete. Blobs are immutable; the sweep deletes those no row references.
//!
//! `blobs/` is writable by the AS2 daemon's service account (it stores what it receives),
//! so every access goes through [`safefs`](super::safefs): beneath a folder descriptor,
//! never through a symlink, regular single-link files only, and a blob name from the
//! database is used only when it is a content hash. Each process has its own spool: root's
//! (`spool/`, the mount and the CLI) is root's alone; the daemon's is `serve-spool/`.

use std::fs::File;
use std::io;

use openssl::sha::Sha256;

use super::safefs::Dir;
use super::StoreError;

/// Who opens the store; decides the spool and how the databases are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Root: the mount and the CLI. Writes the configuration; its spool is root's alone.
    Admin,
    /// The AS2 daemon (`as2box serve`), normally the unprivileged service account: reads
    /// the configuration, writes the operational database and blobs, has its own spool.
    Service,
}

/// Root's spool: uploads in progress of the mount, files the CLI stores.
pub const ADMIN_SPOOL: &str = "spool";
/// The daemon's spool.
pub const SERVICE_SPOOL: &str = "serve-spool";
/// The blob folder.
pub const BLOBS: &str = "blobs";
/// The lock file of the sweep (see [`BlobGuard`]), in [`BLOBS`].
pub const LOCK: &str = ".sweep.lock";

/// The blob folder and the spool of this process.
#[derive(Debug)]
pub struct BlobStore {
    blobs: Dir,
    spool: Dir,
    lock: File,
}

/// A file being written in the spool; [`BlobStore::commit_spool`] turns it into a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolName(String);

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
pub fn fsync_dir(path: &std::path::Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// True for a content hash as blobs are named: 64 lowercase hex digits.
pub fn is_blob_name(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(super) fn check_name(sha256: &str) -> Result<(), StoreError> {
    if is_blob_name(sha256) {
        Ok(())
    } else {
        Err(StoreError::BadBlobName(sha256.chars().take(100).collect()))
    }
}

/// Opens (or makes) the sub-folder `name` of `parent`; a symlink or file planted in its
/// place is removed by name first (`unlinkat` removes the link itself, whatever it points
/// to), so that what is returned is a real folder inside `parent`.
pub(crate) fn fresh_dir(parent: &Dir, name: &str, mode: u32) -> io::Result<(Dir, bool)> {
    match parent.make_dir(name, mode) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            parent.unlink(name)?;
            parent.make_dir(name, mode)
        }
        r => r,
    }
}

/// Opens (making it if needed) the sweep's lock file in the blob folder.
pub(crate) fn open_lock(blobs: &Dir) -> io::Result<File> {
    let open = || blobs.file(LOCK, libc::O_RDWR | libc::O_CREAT, 0o660);
    match open() {
        Ok(f) => Ok(f),
        // flock needs no write permission: a lock file root made 0640 still serves.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            blobs.file(LOCK, libc::O_RDONLY, 0)
        }
        // Something else took the lock file's name (a symlink, a hard link, a FIFO):
        // remove that name (never its target) and make the file again.
        Err(_) => {
            let _ = blobs.unlink(LOCK);
            open()
        }
    }
}

impl BlobStore {
    /// Opens the blob store of the state folder `state` for `role`. The folders exist
    /// (made by [`super::perms::prepare`] for the admin, by `as2box init` for the daemon).
    pub fn open(state: &Dir, role: Role) -> Result<BlobStore, StoreError> {
        let blobs = state.dir(BLOBS).map_err(io_err(format!(
            "open the blob folder {BLOBS}/ of the state folder (run `as2box init` as root)"
        )))?;
        let spool_name = match role {
            Role::Admin => ADMIN_SPOOL,
            Role::Service => SERVICE_SPOOL,
        };
        let spool = state.dir(spool_name).map_err(io_err(format!(
            "open the spool {spool_name}/ of the state folder (run `as2box init` as root)"
        )))?;
        let lock = open_lock(&blobs).map_err(io_err(format!("open {BLOBS}/{LOCK}")))?;
        Ok(BlobStore { blobs, spool, lock })
    }

    /// Opens a blob for reading. `sha256` comes from the database, which the daemon's
    /// account can write: anything but a content hash is refused, and so is anything in
    /// the blob folder that is not a regular file with one link.
    pub fn open_blob(&self, sha256: &str) -> Result<File, StoreError> {
        check_name(sha256)?;
        self.blobs
            .dir(&sha256[..2])
            .and_then(|d| d.file(sha256, libc::O_RDONLY, 0))
            .map_err(io_err(format!("open blob {sha256}")))
    }

    /// Whether the blob `sha256` is stored (as a regular file).
    pub fn has_blob(&self, sha256: &str) -> bool {
        is_blob_name(sha256)
            && self
                .blobs
                .dir(&sha256[..2])
                .and_then(|d| d.stat_at(sha256))
                .ok()
                .flatten()
                .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
    }

    /// Creates a new, empty spool file for streaming content into.
    pub fn spool_file(&self) -> Result<(SpoolName, File), StoreError> {
        let mut random = [0u8; 12];
        openssl::rand::rand_bytes(&mut random).map_err(|e| StoreError::Io {
            context: "random spool name".into(),
            source: io::Error::other(e),
        })?;
        let name = hex(&random);
        let file = self
            .spool
            .create_new(&name, 0o640)
            .map_err(io_err(format!("create spool file {name}")))?;
        // The daemon reads what the mount stores (to send it): the file takes the blob
        // folder's group, which root's own spool (root's group) would not give it.
        let gid = self.blobs.stat().map(|s| s.st_gid).ok();
        if let Some(gid) = gid {
            use std::os::fd::AsRawFd;
            let _ = super::safefs::set_owner_mode(file.as_raw_fd(), None, Some(gid), 0o640);
        }
        Ok((SpoolName(name), file))
    }

    /// Removes a spool file that will not become a blob.
    pub fn discard_spool(&self, name: &SpoolName) {
        let _ = self.spool.unlink(&name.0);
    }

    /// Removes every file in this process's spool: they belong to writes that never
    /// completed. Only names are removed (`unlinkat`): nothing is followed.
    pub fn clear_spool(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for name in self.spool.names().map_err(io_err("read the spool"))? {
            if self.spool.unlink(&name).is_ok() {
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
    pub fn commit_spool(&self, spool: &SpoolName, sha256: &str) -> Result<(), StoreError> {
        check_name(sha256)?;
        let prefix = &sha256[..2];
        // A symlink (or file) the daemon's account put under the folder's name is removed,
        // never followed: the rename below must land in the blob folder and nowhere else.
        let (dir, created) = fresh_dir(&self.blobs, prefix, 0o2770)
            .map_err(io_err(format!("open blob folder {BLOBS}/{prefix}")))?;
        if created {
            // mkdir's mode went through the umask; the group must be able to write.
            dir.set_owner_mode(None, None, 0o2770)
                .map_err(io_err(format!("chmod blob folder {BLOBS}/{prefix}")))?;
            self.blobs.sync().map_err(io_err("fsync blob folder"))?;
        }
        self.spool
            .rename(&spool.0, &dir, sha256)
            .map_err(io_err(format!(
                "move spool file {} to blob {sha256}",
                spool.0
            )))?;
        dir.sync().map_err(io_err("fsync blob folder"))?;
        Ok(())
    }

    /// Stores `data` as a blob (spool, fsync, rename) and returns its sha256.
    pub fn put_bytes(&self, data: &[u8]) -> Result<String, StoreError> {
        use std::io::Write;
        let (name, mut file) = self.spool_file()?;
        let result = (|| {
            file.write_all(data).map_err(io_err("write spool file"))?;
            file.sync_all().map_err(io_err("fsync spool file"))?;
            let sha = sha256_hex(data);
            self.commit_spool(&name, &sha)?;
            Ok(sha)
        })();
        if result.is_err() {
            self.discard_spool(&name);
        }
        result
    }

    /// Copies a file into the blob store; returns (sha256, size).
    pub fn put_file(&self, source: &std::path::Path) -> Result<(String, u64), StoreError> {
        let mut src = File::open(source).map_err(io_err(format!("open {}", source.display())))?;
        self.put_reader(&mut src).map_err(|e| match e {
            StoreError::Io {
                context,
                source: err,
            } if context == "read the content" => StoreError::Io {
                context: format!("read {}", source.display()),
                source: err,
            },
            e => e,
        })
    }

    /// Copies what `src` gives into the blob store; returns (sha256, size).
    pub fn put_reader(&self, src: &mut dyn std::io::Read) -> Result<(String, u64), StoreError> {
        use std::io::Write;
        let (name, mut file) = self.spool_file()?;
        let result = (|| {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = match src.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err("read the content")(e)),
                };
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
            self.commit_spool(&name, &sha)?;
            Ok((sha, size))
        })();
        if result.is_err() {
            self.discard_spool(&name);
        }
        result
    }

    /// Deletes blob files that no row references (`load_referenced`, called under the lock)
    /// and that are older than `min_age`. Returns how many. Entries are removed by name
    /// beneath their folder's descriptor: a symlink planted here is removed, never followed.
    pub fn sweep(
        &self,
        min_age: std::time::Duration,
        load_referenced: impl FnOnce() -> Result<std::collections::HashSet<String>, StoreError>,
    ) -> Result<usize, StoreError> {
        flock(&self.lock, libc::LOCK_EX);
        let _unlock = BlobGuard { file: &self.lock };
        let referenced = load_referenced()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut removed = 0;
        for prefix in self.blobs.names().map_err(io_err("read blobs"))? {
            let Ok(dir) = self.blobs.dir(&prefix) else {
                continue;
            };
            for name in dir.names().map_err(io_err("read blobs"))? {
                if name.to_str().is_some_and(|n| referenced.contains(n)) {
                    continue;
                }
                let Ok(Some(st)) = dir.stat_at(&name) else {
                    continue;
                };
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    continue;
                }
                let old = now.saturating_sub(st.st_mtime) >= min_age.as_secs() as i64;
                if old && dir.unlink(&name).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Lowercase hex of `bytes` (blob names are the hex of their sha256).
pub use crate::as2::encoding::hex_lower as hex;

/// sha256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&openssl::sha::sha256(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_hashes_are_opened_and_only_as_regular_files() {
        let (dir, store, _, _) = crate::store::test_store("u", "S", "P");
        let blobs = store.blobs();
        let sha = blobs.put_bytes(b"stored").unwrap();
        assert!(blobs.has_blob(&sha));
        assert!(blobs.open_blob(&sha).is_ok());
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"secret").unwrap();
        for name in [
            secret.to_str().unwrap(),
            "../secret",
            "../../secret",
            &sha.to_uppercase(),
            &sha[..63],
            "",
        ] {
            assert!(
                matches!(blobs.open_blob(name), Err(StoreError::BadBlobName(_))),
                "{name:?}"
            );
            assert!(!blobs.has_blob(name));
        }
        // A hash whose file is a symlink (or whose folder is) is not opened.
        let other = sha256_hex(b"other");
        let prefix = dir.path().join(BLOBS).join(&other[..2]);
        std::fs::create_dir_all(&prefix).unwrap();
        std::os::unix::fs::symlink(&secret, prefix.join(&other)).unwrap();
        assert!(blobs.open_blob(&other).is_err());
        let third = sha256_hex(b"third");
        std::os::unix::fs::symlink(dir.path(), dir.path().join(BLOBS).join(&third[..2])).unwrap();
        assert!(blobs.open_blob(&third).is_err());
        // Storing that content replaces the planted folder link instead of following it.
        assert_eq!(blobs.put_bytes(b"third").unwrap(), third);
        assert!(!dir.path().join(&third).exists());
        assert!(blobs.open_blob(&third).is_ok());
    }
}
