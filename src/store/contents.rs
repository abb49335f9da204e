//! Contents, wherever they are kept: small contents inside the operational database
//! (`inline_blobs`), written in the same transaction as the row that references them, so
//! that the one WAL fsync of that commit makes both durable; everything else as blob files
//! ([`super::blobs`]). [`Store::open_content`] is the one way to read a content by its hash.
//!
//! Why: a blob file costs two fsyncs (the spool file, then its folder after the rename) on
//! top of the commit's; for the many small files of EDI traffic that was most of the time
//! of a close.

use std::fs::File;
use std::io::{Seek, Write};

use rusqlite::{params, OptionalExtension, Transaction};

use super::{Result, Store, StoreError};

/// The largest content stored inside the database rather than as a blob file. Larger
/// contents gain nothing (their fsync is dominated by their data) and would bloat the WAL.
pub const INLINE_MAX: u64 = 64 * 1024;

/// The table of small contents (operational database; `ops` on root's connection).
pub(super) const INLINE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ops.inline_blobs (
    sha256 TEXT PRIMARY KEY,
    content BLOB NOT NULL
);";

/// Records `content` under its hash `sha256` in transaction `tx` (nothing if it is there).
pub(super) fn insert_inline(tx: &Transaction<'_>, sha256: &str, content: &[u8]) -> Result<()> {
    super::blobs::check_name(sha256)?;
    if content.len() as u64 > INLINE_MAX {
        return Err(StoreError::NotApplicable(format!(
            "content {sha256} has {} bytes, more than the {INLINE_MAX} stored inline",
            content.len()
        )));
    }
    // A content filed under another hash would be served for that hash: never.
    if super::sha256_hex(content) != sha256 {
        return Err(StoreError::NotApplicable(format!(
            "content given as {sha256} has another sha256; not stored"
        )));
    }
    tx.execute(
        "INSERT OR IGNORE INTO inline_blobs (sha256, content) VALUES (?1, ?2)",
        params![sha256, content],
    )?;
    Ok(())
}

/// Whether content `sha256` is stored, inline or as a file (seen from transaction `tx`).
pub(super) fn content_exists(store: &Store, tx: &Transaction<'_>, sha256: &str) -> Result<bool> {
    Ok(inline_exists(tx, sha256)? || store.blobs().has_blob(sha256))
}

fn inline_exists(conn: &rusqlite::Connection, sha256: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM inline_blobs WHERE sha256 = ?1",
            [sha256],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Deletes the inline contents no row references (the retention sweep, under the sweep's
/// lock, like the blob files). Returns how many.
pub(super) fn sweep_inline(tx: &Transaction<'_>) -> Result<usize> {
    Ok(tx.execute(
        "DELETE FROM inline_blobs WHERE sha256 NOT IN (
            SELECT blob FROM entries WHERE blob IS NOT NULL
            UNION SELECT blob FROM message_files
            UNION SELECT blob FROM message_archive)",
        [],
    )?)
}

/// An in-memory, sealed, read-only-in-effect file holding `bytes`, positioned at 0, so that
/// every reader of contents works on a `File` whatever the storage.
fn memory_file(sha256: &str, bytes: &[u8]) -> Result<File> {
    use std::os::fd::FromRawFd;
    let io = |source: std::io::Error| StoreError::Io {
        context: format!("hold inline content {sha256} in memory"),
        source,
    };
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor is owned by the File.
    let fd = unsafe {
        libc::memfd_create(
            c"as2box-content".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes).map_err(io)?;
    file.rewind().map_err(io)?;
    // Sealed: whoever gets the file cannot change what other readers of it see.
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(file)
}

impl Store {
    /// Opens content `sha256` for reading, positioned at its start: from the database if it
    /// is stored inline, else its blob file. Every reader of contents (the mount, the
    /// daemon's send, exports) goes through here. An inline content longer than
    /// [`INLINE_MAX`] (the daemon's account can write that table) is refused.
    pub fn open_content(&self, sha256: &str) -> Result<File> {
        super::blobs::check_name(sha256)?;
        let inline: Option<Vec<u8>> = self.read(|c| {
            c.query_row(
                "SELECT content FROM inline_blobs WHERE sha256 = ?1",
                [sha256],
                |r| {
                    let value = r.get_ref(0)?;
                    let blob = value.as_blob()?;
                    Ok((blob.len() as u64 <= INLINE_MAX).then(|| blob.to_vec()))
                },
            )
            .optional()?
            .map(|b| b.ok_or_else(|| StoreError::Unsafe(format!("inline content {sha256} is larger than {INLINE_MAX} bytes: refused (was the database tampered with?)"))))
            .transpose()
        })?;
        match inline {
            Some(bytes) => memory_file(sha256, &bytes),
            None => self.blobs().open_blob(sha256),
        }
    }

    /// Whether content `sha256` is stored inline (`doctor`, tests).
    pub fn is_inline(&self, sha256: &str) -> Result<bool> {
        self.read(|c| inline_exists(c, sha256))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn inline_and_file_contents_read_alike_and_unreferenced_inline_ones_are_swept() {
        let (_dir, store, user, outbox) = crate::store::test_store("u", "S", "P");
        let small = b"UNA:+.? 'UNB+small'".to_vec();
        let sha = super::super::sha256_hex(&small);
        let f = crate::store::NewFile {
            user_id: user,
            boxref: outbox,
            parent: 0,
            name: "a.edi".into(),
            blob: sha.clone(),
            size: small.len() as u64,
            mtime_ms: 1,
            state: crate::store::EntryState::Held,
            replaces: None,
            content: Some(small.clone()),
        };
        let (id, _) = store.commit_file(&f, None).unwrap();
        assert!(store.is_inline(&sha).unwrap());
        assert!(
            !store.blobs().has_blob(&sha),
            "no blob file for inline content"
        );
        let mut back = Vec::new();
        store
            .open_content(&sha)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, small);
        let file_sha = store.blobs().put_bytes(b"as a file").unwrap();
        let mut back = Vec::new();
        store
            .open_content(&file_sha)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, b"as a file");
        // Referenced: kept by the sweep; once its entry is gone, it goes.
        store.sweep(i64::MAX / 2, 0, 0).unwrap();
        assert!(store.is_inline(&sha).unwrap());
        store.remove_entry(id).unwrap();
        store.sweep(i64::MAX / 2, 0, 0).unwrap();
        assert!(!store.is_inline(&sha).unwrap());
        assert!(store.open_content(&sha).is_err());
    }

    #[test]
    fn content_under_another_hash_is_refused() {
        let (_dir, store, user, outbox) = crate::store::test_store("u", "S", "P");
        let f = crate::store::NewFile {
            user_id: user,
            boxref: outbox,
            parent: 0,
            name: "a.edi".into(),
            blob: super::super::sha256_hex(b"what the hash says"),
            size: 5,
            mtime_ms: 1,
            state: crate::store::EntryState::Held,
            replaces: None,
            content: Some(b"other".to_vec()),
        };
        assert!(store.commit_file(&f, None).is_err());
        assert!(!store.is_inline(&f.blob).unwrap());
    }

    #[test]
    fn oversized_inline_content_is_refused() {
        let (_dir, store, user, outbox) = crate::store::test_store("u", "S", "P");
        let big = vec![7u8; INLINE_MAX as usize + 1];
        let f = crate::store::NewFile {
            user_id: user,
            boxref: outbox,
            parent: 0,
            name: "big".into(),
            blob: super::super::sha256_hex(&big),
            size: big.len() as u64,
            mtime_ms: 1,
            state: crate::store::EntryState::Held,
            replaces: None,
            content: Some(big),
        };
        assert!(store.commit_file(&f, None).is_err());
        // One written there by other means (the daemon's account can write the table) is
        // refused when read.
        let sha = f.blob.clone();
        store
            .write(|tx| {
                tx.execute(
                    "INSERT INTO inline_blobs (sha256, content) VALUES (?1, ?2)",
                    params![sha, f.content.as_deref().unwrap()],
                )?;
                Ok(())
            })
            .unwrap();
        assert!(matches!(
            store.open_content(&sha),
            Err(StoreError::Unsafe(_))
        ));
    }
}
