//! Inbox delivery: the one code path by which received files enter an inbox (used by
//! `as2box deliver` and by the AS2 daemon).

use crate::names::{dedupe, sanitize_attachment_name, shorten};
use crate::store::{
    sha256_hex, BoxKind, BoxRef, InboundOrigin, InboxLayout, PickupFile, Placement, Store,
    StoreError, INLINE_MAX,
};
use crate::timefmt;

/// Most files delivered as one message. The AS2 core refuses more attachments before they
/// get here (`as2::message::MAX_ATTACHMENTS`); this bounds the other callers too, since every
/// file costs a blob write with two fsyncs and a row in one transaction.
pub const MAX_FILES: usize = 1000;

/// A received file: an untrusted name and where its bytes are.
#[derive(Debug, Clone)]
pub enum IncomingFile {
    /// Bytes in memory (shared, so that the caller can keep them without a copy).
    Bytes {
        /// Name as received.
        name: String,
        /// Content.
        data: bytes::Bytes,
    },
    /// A file on disk (copied into the blob store).
    Path {
        /// Name as received.
        name: String,
        /// Where the content is.
        path: std::path::PathBuf,
    },
    /// An open file (a spool file of the daemon, perhaps unlinked), read from its start
    /// with positioned reads.
    Open {
        /// Name as received.
        name: String,
        /// The content.
        file: std::sync::Arc<std::fs::File>,
    },
}

/// Why a delivery failed. Nothing is visible after a failure.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// No such user / station / partner, or they do not belong together.
    #[error("{0}")]
    Route(String),
    /// A message without files.
    #[error("a message needs at least one file")]
    Empty,
    /// More files than [`MAX_FILES`].
    #[error("a message may have at most {MAX_FILES} files, this one has {0}; send them in several messages")]
    TooManyFiles(usize),
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a delivery went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivered {
    /// The message record.
    pub message_id: i64,
    /// Paths relative to the inbox, as the user sees them.
    pub paths: Vec<String>,
}

/// Names for a message in `layout`: the folder to create (if any) and each file's name.
pub fn inbox_names(
    layout: InboxLayout,
    stamp: &str,
    names: &[String],
) -> (Option<String>, Vec<String>) {
    match layout {
        InboxLayout::PerMessage => (Some(stamp.to_owned()), names.to_vec()),
        InboxLayout::Prefixed => (
            None,
            names
                .iter()
                .map(|n| shorten(&format!("{stamp}-{n}"), 255))
                .collect(),
        ),
        InboxLayout::Plain => (None, names.to_vec()),
    }
}

/// Delivers `files` as one received message into the inbox of `station_id` for the partner
/// `partner` (production or test) of the station's user. Larger contents are written to
/// blob files and fsync'd first; one transaction then stores the small ones (at most
/// [`INLINE_MAX`] bytes) and makes the whole message visible.
pub fn deliver(
    store: &Store,
    station_as2_id: &str,
    partner_as2_id: &str,
    test: bool,
    files: Vec<IncomingFile>,
    origin: Option<&InboundOrigin>,
) -> Result<Delivered, DeliverError> {
    if files.is_empty() {
        return Err(DeliverError::Empty);
    }
    if files.len() > MAX_FILES {
        return Err(DeliverError::TooManyFiles(files.len()));
    }
    let station = store
        .station(station_as2_id)?
        .ok_or_else(|| DeliverError::Route(format!("no station {station_as2_id:?}")))?;
    let partner = store
        .partner(station.user_id, partner_as2_id, test)?
        .ok_or_else(|| {
            DeliverError::Route(format!(
                "the user of station {station_as2_id:?} has no {}partner {partner_as2_id:?}",
                if test { "test " } else { "" }
            ))
        })?;
    let mut names: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let raw = match f {
                IncomingFile::Bytes { name, .. }
                | IncomingFile::Path { name, .. }
                | IncomingFile::Open { name, .. } => name,
            };
            sanitize_attachment_name(raw, i + 1)
        })
        .collect();
    dedupe(&mut names);
    let mut stored = Vec::with_capacity(files.len());
    for (f, name) in files.into_iter().zip(&names) {
        // A small file goes into the delivery's own transaction (one fsync for the whole
        // message); a larger one into a blob file first. Each file's bytes are freed as
        // soon as they are in their blob.
        let (blob, size, content) = match f {
            IncomingFile::Bytes { data, .. } if data.len() as u64 <= INLINE_MAX => {
                (sha256_hex(&data), data.len() as u64, Some(data.to_vec()))
            }
            IncomingFile::Bytes { data, .. } => {
                (store.blobs().put_bytes(&data)?, data.len() as u64, None)
            }
            IncomingFile::Path { path, .. } => {
                let file = std::fs::File::open(&path).map_err(|source| StoreError::Io {
                    context: format!("read {}", path.display()),
                    source,
                })?;
                match read_small(&file, &path.display().to_string())? {
                    Some(data) => (sha256_hex(&data), data.len() as u64, Some(data)),
                    None => {
                        let (blob, size) = store.blobs().put_file(&path)?;
                        (blob, size, None)
                    }
                }
            }
            IncomingFile::Open { file, .. } => match read_small(&file, "a received file")? {
                Some(data) => (sha256_hex(&data), data.len() as u64, Some(data)),
                None => {
                    let (blob, size) = store
                        .blobs()
                        .put_reader(&mut crate::positioned::PositionedReader::new(&*file))?;
                    (blob, size, None)
                }
            },
        };
        stored.push(PickupFile {
            name: name.clone(),
            blob,
            size,
            content,
        });
    }
    let stamp = timefmt::unique_stamp(timefmt::now_ms());
    let (folder, entry_names) = inbox_names(station.inbox_layout, &stamp, &names);
    let inbox = BoxRef {
        station_id: station.id,
        partner_id: partner.id,
        kind: BoxKind::Inbox,
    };
    let message_name = folder.clone().unwrap_or_else(|| names[0].clone());
    let placement = match &folder {
        Some(f) => Placement::Folder(f),
        None => Placement::Top {
            replace: station.inbox_layout == InboxLayout::Plain,
        },
    };
    let files: Vec<(String, PickupFile)> = entry_names.iter().cloned().zip(stored).collect();
    let message_id = store.deliver(
        station.user_id,
        inbox,
        &message_name,
        placement,
        &files,
        origin,
    )?;
    let paths = entry_names
        .iter()
        .map(|n| match &folder {
            Some(f) => format!("{f}/{n}"),
            None => n.clone(),
        })
        .collect();
    Ok(Delivered { message_id, paths })
}

/// The content of the file at `path` if it has at most [`INLINE_MAX`] bytes (read with a
/// bound: the file may grow while it is read).
fn read_small(file: &std::fs::File, what: &str) -> Result<Option<Vec<u8>>, DeliverError> {
    use std::io::Read;
    let io = |source| StoreError::Io {
        context: format!("read {what}"),
        source,
    };
    if file.metadata().map_err(io)?.len() > INLINE_MAX {
        return Ok(None);
    }
    // Positioned reads: an open spool file may be shared with other readers.
    let mut data = Vec::new();
    crate::positioned::PositionedReader::new(file)
        .take(INLINE_MAX + 1)
        .read_to_end(&mut data)
        .map_err(io)?;
    Ok((data.len() as u64 <= INLINE_MAX).then_some(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_name_files() {
        let names = vec!["a.edi".to_owned(), "b.edi".to_owned()];
        let (f, n) = inbox_names(InboxLayout::PerMessage, "S", &names);
        assert_eq!((f.as_deref(), n.as_slice()), (Some("S"), names.as_slice()));
        let (f, n) = inbox_names(InboxLayout::Prefixed, "S", &names);
        assert_eq!(f, None);
        assert_eq!(n, ["S-a.edi", "S-b.edi"]);
        let (f, n) = inbox_names(InboxLayout::Plain, "S", &names);
        assert_eq!((f, n), (None, names));
    }

    #[test]
    fn too_many_files_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path()).unwrap();
        let files: Vec<IncomingFile> = (0..=MAX_FILES)
            .map(|i| IncomingFile::Bytes {
                name: format!("f{i}"),
                data: bytes::Bytes::from_static(b"x"),
            })
            .collect();
        let err = deliver(&store, "NOSTATION", "NOPARTNER", false, files, None).unwrap_err();
        assert!(
            matches!(err, DeliverError::TooManyFiles(n) if n == MAX_FILES + 1),
            "{err}"
        );
        assert!(err.to_string().contains("at most 1000 files"), "{err}");
    }

    #[test]
    fn stamp_format() {
        let s = timefmt::unique_stamp(1_795_835_700_123);
        assert!(s.starts_with("20261128T031500.123Z-"), "{s}");
        assert_eq!(s.len(), "20261128T031500.123Z-".len() + 6);
    }
}
