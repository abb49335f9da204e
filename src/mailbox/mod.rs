//! Mailbox rules: what the tree looks like, who may do what where, when an outbox file or
//! folder becomes a message, how delivered files are named, and what retention removes.
//! Decisions here are pure functions over store records; `deliver` and `sweep` are the two
//! entry points that also write, through the store, for the CLI and the AS2 daemon.

mod deliver;
pub mod pickup;

pub use deliver::{deliver, DeliverError, Delivered, IncomingFile};

use crate::config::Config;
use crate::names::{is_temp_name, READY_SUFFIX};
use crate::store::{BoxKind, Entry, EntryState, Store, StoreError, SweepReport};

/// The fixed names of a user's tree: `/.ssh/authorized_keys`, `/as2gateway/<station>/
/// <partner>/{inbox,outbox,failed}` and a test partner's `<partner>/test/...`.
pub mod tree_names {
    /// The folder holding the user's `authorized_keys`.
    pub const SSH_DIR: &str = ".ssh";
    /// The keys file sshd reads at login.
    pub const KEYS_FILE: &str = "authorized_keys";
    /// The folder holding the stations.
    pub const GATEWAY_DIR: &str = "as2gateway";
    /// The folder of a test partner, inside the partner's folder.
    pub const TEST_DIR: &str = "test";
}

/// What closing an outbox file that was written means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// Becomes a message now.
    Pickup,
    /// Stays in the outbox, writable, until renamed or picked up with its folder.
    Hold,
    /// The writer was exiting (connection dropped): stays, waiting to be completed.
    Interrupted,
}

/// Decides what a close means for a file called `name`, directly in an outbox (`in_folder`
/// false) or in an outbox folder, closed by a process that is (`writer_exiting`) or is not
/// exiting, in a station whose uploads commit as `mode` says.
pub fn on_close(
    name: &str,
    in_folder: bool,
    writer_exiting: bool,
    mode: crate::store::PickupMode,
) -> CloseOutcome {
    if writer_exiting {
        CloseOutcome::Interrupted
    } else if in_folder || is_temp_name(name) || mode == crate::store::PickupMode::Rename {
        CloseOutcome::Hold
    } else {
        CloseOutcome::Pickup
    }
}

/// Whether renaming a closed outbox file to `new_name` (top level of the outbox) picks it up.
pub fn rename_picks_up(new_name: &str, new_parent_is_folder: bool) -> bool {
    !new_parent_is_folder && !is_temp_name(new_name)
}

/// The message name of an outbox folder: its name without `.ready`.
pub fn batch_name(folder_name: &str) -> &str {
    folder_name
        .strip_suffix(READY_SUFFIX)
        .unwrap_or(folder_name)
}

/// Whether an outbox folder is ready for pickup: it has files, none is being written or
/// has a temporary name, and it was renamed to `*.ready` or has been quiet long enough.
pub fn batch_ready(
    folder: &Entry,
    files: &[Entry],
    open_writers: usize,
    now_ms: i64,
    quiet_secs: f64,
) -> bool {
    if files.is_empty() || open_writers > 0 {
        return false;
    }
    if files
        .iter()
        .any(|f| f.is_dir || is_temp_name(&f.name) || f.state == EntryState::Interrupted)
    {
        return false;
    }
    let explicit = folder.name.ends_with(READY_SUFFIX);
    let quiet = (now_ms - folder.mtime_ms) as f64 >= quiet_secs * 1000.0;
    explicit || quiet
}

/// The one-sentence reason an interrupted upload that nobody completed within
/// `timeout_secs` is not sent; in a folder message, the whole folder fails with it.
pub fn interrupted_reason(name: &str, folder: Option<&str>, timeout_secs: f64) -> String {
    let why =
        "was interrupted (the connection dropped before it finished) and was not completed within";
    match folder {
        Some(f) => format!(
            "Not sent: the folder {f:?} lacks {name:?}, whose upload {why} {timeout_secs} seconds; upload the folder again."
        ),
        None => format!(
            "Not sent: the upload of {name:?} {why} {timeout_secs} seconds; upload the file again."
        ),
    }
}

/// Checks a message against the outbox limits; the error is the one-sentence reason that
/// goes into `failed/<name>.reason.txt`.
pub fn check_limits(sizes: &[u64], config: &Config) -> Result<(), String> {
    let files = sizes.len() as u64;
    let bytes: u64 = sizes.iter().sum();
    if files > config.outbox.max_files {
        return Err(format!(
            "Not sent: the message has {files} files, more than the limit of {} files per message (outbox.max_files); send them in several messages.",
            config.outbox.max_files
        ));
    }
    if bytes > config.outbox.max_bytes {
        return Err(format!(
            "Not sent: the message has {bytes} bytes, more than the limit of {} bytes per message (outbox.max_bytes); split it or ask the gateway administrator to raise the limit.",
            config.outbox.max_bytes
        ));
    }
    Ok(())
}

/// Whether new files may be written into outbox folder `folder`: only until it is picked
/// up (or failed).
pub fn accepts_uploads(folder: &Entry) -> bool {
    folder.state == EntryState::Held
}

/// Whether an upload may grow by `grow` bytes for a user with `quota` who stores `used`
/// bytes (uploads in progress included). Growth by truncate counts like written bytes.
pub fn within_quota(quota: Option<u64>, used: u64, grow: u64) -> bool {
    quota.is_none_or(|q| used.saturating_add(grow) <= q)
}

/// Whether an upload may be extended to `new_size` without its bytes being written
/// (truncate, or a write that leaves a gap). A file longer than `outbox.max_bytes` can
/// never be sent, and its close would have to hash every byte of the gap: a sparse file of
/// terabytes costs hours of CPU for bytes nobody sent. Written bytes are not limited here
/// (an oversized file goes to `failed/` with a reason, see [`check_limits`]).
pub fn may_extend_sparsely(new_size: u64, config: &Config) -> bool {
    new_size <= config.outbox.max_bytes
}

/// The mode bits and owner of every kind of node: what `stat` reports. The owner of the
/// user-writable folders is the user; everything above them is root's, as OpenSSH's chroot
/// demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeClass {
    /// The mount root.
    Root,
    /// `/<user>`, the chroot.
    UserHome,
    /// `.ssh`, `as2gateway`, station, partner and `test` folders.
    Structure,
    /// `authorized_keys`.
    KeysFile,
    /// A box folder (`inbox`, `outbox`, `failed`).
    Box(BoxKind),
    /// A folder inside a box.
    Folder(BoxKind),
    /// A file inside a box, writable (outbox, not picked up).
    WritableFile,
    /// A file inside a box, read-only (picked up, or in inbox/failed).
    ReadOnlyFile,
}

impl NodeClass {
    /// Permission bits.
    pub fn mode(self) -> u16 {
        match self {
            NodeClass::Root => 0o755,
            NodeClass::UserHome => 0o750,
            NodeClass::Structure => 0o550,
            NodeClass::KeysFile => 0o440,
            NodeClass::Box(_) | NodeClass::Folder(_) => 0o750,
            NodeClass::WritableFile => 0o640,
            NodeClass::ReadOnlyFile => 0o440,
        }
    }

    /// Whether the user owns it (else root does).
    pub fn user_owned(self) -> bool {
        matches!(
            self,
            NodeClass::Box(_)
                | NodeClass::Folder(_)
                | NodeClass::WritableFile
                | NodeClass::ReadOnlyFile
        )
    }
}

/// The class of a box entry.
pub fn entry_class(e: &Entry) -> NodeClass {
    if e.is_dir {
        NodeClass::Folder(e.boxref.kind)
    } else if e.boxref.kind == BoxKind::Outbox
        && matches!(e.state, EntryState::Held | EntryState::Interrupted)
    {
        NodeClass::WritableFile
    } else {
        NodeClass::ReadOnlyFile
    }
}

/// Whether an entry is still shown: lingering entries vanish when their time is over.
pub fn visible(e: &Entry, now_ms: i64) -> bool {
    !(e.state == EntryState::Lingering && e.until_ms.is_some_and(|u| u <= now_ms))
}

/// Runs the retention sweep once (the mount runs it periodically; `as2box gc` once).
pub fn sweep(store: &Store, config: &Config, now_ms: i64) -> Result<SweepReport, StoreError> {
    let files_cutoff = now_ms - (config.retention.files_hours * 3_600_000.0) as i64;
    let messages_cutoff = now_ms - (config.retention.messages_days * 86_400_000.0) as i64;
    store.sweep(now_ms, files_cutoff, messages_cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BoxRef;

    fn entry(name: &str, is_dir: bool, mtime_ms: i64) -> Entry {
        Entry {
            id: 1,
            user_id: 1,
            boxref: BoxRef {
                station_id: 1,
                partner_id: 1,
                kind: BoxKind::Outbox,
            },
            parent: 0,
            name: name.into(),
            is_dir,
            state: EntryState::Held,
            blob: None,
            size: 0,
            mtime_ms,
            created_ms: 0,
            until_ms: None,
            message_id: None,
        }
    }

    #[test]
    fn close_outcomes() {
        use crate::store::PickupMode::{Close, Rename};
        assert_eq!(on_close("a.edi", false, false, Close), CloseOutcome::Pickup);
        assert_eq!(
            on_close("a.edi.filepart", false, false, Close),
            CloseOutcome::Hold
        );
        assert_eq!(on_close(".a", false, false, Close), CloseOutcome::Hold);
        assert_eq!(on_close("a.edi", true, false, Close), CloseOutcome::Hold);
        assert_eq!(
            on_close("a.edi", false, true, Close),
            CloseOutcome::Interrupted
        );
        // In rename mode a plain close never commits; an exiting writer is still told apart.
        assert_eq!(on_close("a.edi", false, false, Rename), CloseOutcome::Hold);
        assert_eq!(
            on_close("a.edi", false, true, Rename),
            CloseOutcome::Interrupted
        );
    }

    #[test]
    fn batches_wait_for_quiet_or_ready() {
        let files = vec![entry("a", false, 0)];
        let folder = entry("b", true, 1000);
        assert!(!batch_ready(&folder, &files, 0, 1500, 1.0));
        assert!(batch_ready(&folder, &files, 0, 2000, 1.0));
        assert!(!batch_ready(&folder, &files, 1, 9000, 1.0), "open writer");
        assert!(!batch_ready(&folder, &[], 0, 9000, 1.0), "empty");
        let ready = entry("b.ready", true, 1000);
        assert!(batch_ready(&ready, &files, 0, 1000, 100.0));
        let temp = vec![entry("a", false, 0), entry("x.filepart", false, 0)];
        assert!(!batch_ready(&ready, &temp, 0, 1000, 100.0));
        assert_eq!(batch_name("b.ready"), "b");
    }

    #[test]
    fn quota_and_sparse_extension() {
        assert!(within_quota(None, u64::MAX, u64::MAX));
        assert!(within_quota(Some(10), 4, 6));
        assert!(!within_quota(Some(10), 4, 7));
        assert!(!within_quota(Some(10), u64::MAX, 1), "no overflow");
        let c = Config::default();
        assert!(may_extend_sparsely(c.outbox.max_bytes, &c));
        assert!(!may_extend_sparsely(c.outbox.max_bytes + 1, &c));
    }

    #[test]
    fn limits() {
        let c = Config::default();
        assert!(check_limits(&[1; 10], &c).is_ok());
        assert!(check_limits(&[1; 11], &c).unwrap_err().contains("11 files"));
        assert!(check_limits(&[10 * 1024 * 1024 + 1], &c)
            .unwrap_err()
            .contains("outbox.max_bytes"));
    }
}
