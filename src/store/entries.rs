//! Mailbox entries (files and folders in boxes) and messages. Every function is one
//! transaction, so that what users see and what gets sent never disagree.

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::{
    BoxKind, BoxRef, Direction, Entry, EntryState, Message, MessageFile, MessageState, Result,
    Store, StoreError,
};
use crate::timefmt::{now_ms, rfc3339};

const ENTRY_COLS: &str = "id, user_id, station_id, partner_id, box, parent, name, is_dir, state, blob, size, mtime_ms, created_ms, until_ms, message_id";

fn entry_from_row(r: &Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get(0)?,
        user_id: r.get(1)?,
        boxref: BoxRef {
            station_id: r.get(2)?,
            partner_id: r.get(3)?,
            kind: BoxKind::from_code(r.get(4)?),
        },
        parent: r.get(5)?,
        name: r.get(6)?,
        is_dir: r.get(7)?,
        state: EntryState::from_code(r.get(8)?),
        blob: r.get(9)?,
        size: r.get::<_, i64>(10)?.max(0) as u64,
        mtime_ms: r.get(11)?,
        created_ms: r.get(12)?,
        until_ms: r.get(13)?,
        message_id: r.get(14)?,
    })
}

/// A file to insert into a box.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// Owner.
    pub user_id: i64,
    /// Where.
    pub boxref: BoxRef,
    /// Folder entry or 0.
    pub parent: i64,
    /// Name.
    pub name: String,
    /// Content.
    pub blob: String,
    /// Bytes.
    pub size: u64,
    /// Modification time to show.
    pub mtime_ms: i64,
    /// State to store it in (`Held`, `Interrupted` or, with a pickup, ignored).
    pub state: EntryState,
    /// An existing entry this one replaces (a file rewritten, or a rename target).
    pub replaces: Option<i64>,
    /// The content itself, when at most [`super::INLINE_MAX`] bytes: stored in the
    /// database in the same transaction as the entry (no blob file). `None`: `blob` is
    /// stored already.
    pub content: Option<Vec<u8>>,
}

/// A file that becomes part of a message.
#[derive(Debug, Clone)]
pub struct PickupFile {
    /// Attachment name.
    pub name: String,
    /// Content.
    pub blob: String,
    /// Bytes.
    pub size: u64,
    /// The content itself, for a delivery of at most [`super::INLINE_MAX`] bytes: stored
    /// in the database in the delivery's transaction (no blob file). `None`: `blob` is
    /// stored already.
    pub content: Option<Vec<u8>>,
}

/// Where a delivered message's files go in the inbox.
#[derive(Debug, Clone, Copy)]
pub enum Placement<'a> {
    /// Into a new message folder of this name.
    Folder(&'a str),
    /// At the top of the inbox; with `replace`, over a file of the same name.
    Top {
        /// Replace an existing file of the same name (plain layout).
        replace: bool,
    },
}

/// Where a received message came from (AS2), recorded with the delivery.
#[derive(Debug, Clone)]
pub struct InboundOrigin {
    /// The sender's Message-ID (no brackets): duplicates are recognised by it.
    pub as2_message_id: String,
    /// The MIC we computed (`<base64>, <alg>`), for repeating the MDN.
    pub mic: Option<String>,
    /// The request as received, archived (`Store::archive_capture`): linked in the
    /// delivery's transaction, so it is durable before the positive MDN goes out.
    pub request: Option<super::ArchivedBlob>,
}

/// A rename that picks the renamed entry up as a message.
#[derive(Debug, Clone, Copy)]
pub struct RenamePickup<'a> {
    /// The entry lingers until then.
    pub until_ms: i64,
    /// The message's name.
    pub message_name: &'a str,
    /// The files (entry id and content).
    pub files: &'a [(i64, PickupFile)],
}

/// What a retention sweep removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SweepReport {
    /// Files and folders removed from inboxes and `failed/`.
    pub expired_files: usize,
    /// Lingering outbox entries whose time was over.
    pub lingering_removed: usize,
    /// Message records removed.
    pub messages_removed: usize,
    /// Blob files deleted.
    pub blobs_removed: usize,
}

/// A new `entries` row.
struct NewRow<'a> {
    user_id: i64,
    b: BoxRef,
    parent: i64,
    name: &'a str,
    is_dir: bool,
    state: EntryState,
    blob: Option<&'a str>,
    size: u64,
    mtime_ms: i64,
    until_ms: Option<i64>,
    message_id: Option<i64>,
}

impl<'a> NewRow<'a> {
    fn file(user_id: i64, b: BoxRef, parent: i64, name: &'a str, blob: &'a str, size: u64) -> Self {
        NewRow {
            user_id,
            b,
            parent,
            name,
            is_dir: false,
            state: EntryState::Stored,
            blob: Some(blob),
            size,
            mtime_ms: now_ms(),
            until_ms: None,
            message_id: None,
        }
    }

    fn folder(user_id: i64, b: BoxRef, name: &'a str, state: EntryState) -> Self {
        NewRow {
            user_id,
            b,
            parent: 0,
            name,
            is_dir: true,
            state,
            blob: None,
            size: 0,
            mtime_ms: now_ms(),
            until_ms: None,
            message_id: None,
        }
    }
}

/// Frees `name` in a folder from a picked-up entry whose linger is over: hidden from
/// listings (`mailbox::visible`), its row waits for the next sweep, and a name free in the
/// listing must be free for files, folders and renames. A lingering folder goes with the
/// lingering entries inside it (a folder message lingers whole).
fn release_expired_name(tx: &Transaction<'_>, b: BoxRef, parent: i64, name: &str) -> Result<()> {
    let lingering = EntryState::Lingering.code();
    tx.execute(
        "WITH RECURSIVE gone(id) AS (
             SELECT id FROM entries
             WHERE station_id = ?1 AND partner_id = ?2 AND box = ?3 AND parent = ?4 AND name = ?5
               AND state = ?6 AND until_ms <= ?7
             UNION ALL
             SELECT e.id FROM entries e JOIN gone g ON e.parent = g.id WHERE e.state = ?6
         )
         DELETE FROM entries WHERE id IN (SELECT id FROM gone)",
        params![
            b.station_id,
            b.partner_id,
            b.kind.code(),
            parent,
            name,
            lingering,
            now_ms()
        ],
    )?;
    Ok(())
}

fn insert_entry(tx: &Transaction<'_>, r: &NewRow<'_>) -> Result<i64> {
    release_expired_name(tx, r.b, r.parent, r.name)?;
    tx.execute(
        "INSERT INTO entries (user_id, station_id, partner_id, box, parent, name, is_dir, state, blob, size, mtime_ms, created_ms, until_ms, message_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            r.user_id, r.b.station_id, r.b.partner_id, r.b.kind.code(), r.parent, r.name, r.is_dir,
            r.state.code(), r.blob, r.size as i64, r.mtime_ms, now_ms(), r.until_ms, r.message_id
        ],
    )
    .map_err(|e| match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Exists(format!("{:?}", r.name))
        }
        _ => e.into(),
    })?;
    Ok(tx.last_insert_rowid())
}

fn touch_folder(tx: &Transaction<'_>, folder: i64) -> Result<()> {
    if folder != 0 {
        tx.execute(
            "UPDATE entries SET mtime_ms = ?2 WHERE id = ?1",
            params![folder, now_ms()],
        )?;
    }
    Ok(())
}

fn name_taken(tx: &Transaction<'_>, b: BoxRef, parent: i64, name: &str) -> Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM entries WHERE station_id = ?1 AND partner_id = ?2 AND box = ?3 AND parent = ?4 AND name = ?5",
            params![b.station_id, b.partner_id, b.kind.code(), parent, name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// A name for `base` in `failed/` that neither it nor its reason file collides with: `base`
/// itself, or `<stamp>-<base>` when taken.
fn free_failed_name(tx: &Transaction<'_>, failed: BoxRef, base: &str) -> Result<String> {
    if name_taken(tx, failed, 0, base)? || name_taken(tx, failed, 0, &format!("{base}.reason.txt"))?
    {
        Ok(format!(
            "{}-{}",
            crate::timefmt::unique_stamp(now_ms()),
            base
        ))
    } else {
        Ok(base.to_owned())
    }
}

/// Places the files of message `message_id` in `failed/` (one file by its name, several in a
/// folder named `name`), with `<name>.reason.txt` whose blob and size are `reason`.
pub(super) fn place_failed(
    tx: &Transaction<'_>,
    user_id: i64,
    failed: BoxRef,
    name: &str,
    files: &[super::MessageFile],
    message_id: i64,
    reason: (&str, u64),
) -> Result<()> {
    let single = files.len() == 1;
    let base = if single { files[0].name.as_str() } else { name };
    let top = free_failed_name(tx, failed, base)?;
    let parent = if single {
        0
    } else {
        insert_entry(
            tx,
            &NewRow {
                message_id: Some(message_id),
                ..NewRow::folder(user_id, failed, &top, EntryState::Stored)
            },
        )?
    };
    for f in files {
        let file_name = if single {
            top.as_str()
        } else {
            f.name.as_str()
        };
        insert_entry(
            tx,
            &NewRow {
                message_id: Some(message_id),
                ..NewRow::file(user_id, failed, parent, file_name, &f.sha256, f.size)
            },
        )?;
    }
    let reason_name = format!("{top}.reason.txt");
    insert_entry(
        tx,
        &NewRow {
            message_id: Some(message_id),
            ..NewRow::file(user_id, failed, 0, &reason_name, reason.0, reason.1)
        },
    )?;
    Ok(())
}

/// Creates the message row (with its first event) and its file rows.
/// What kind of message record to create.
#[derive(Clone, Copy)]
enum NewMessage<'a> {
    /// Outgoing, picked up, to be sent.
    Queued,
    /// Outgoing, refused before sending, with the reason.
    Failed(&'a str),
    /// Incoming, delivered to an inbox.
    Received,
}

fn insert_message(
    tx: &Transaction<'_>,
    user_id: i64,
    b: BoxRef,
    name: &str,
    kind: NewMessage<'_>,
    files: &[PickupFile],
) -> Result<i64> {
    let (direction, state, detail) = match kind {
        NewMessage::Queued => (Direction::Out, MessageState::Queued, None),
        NewMessage::Failed(reason) => (Direction::Out, MessageState::Failed, Some(reason)),
        NewMessage::Received => (Direction::In, MessageState::Received, None),
    };
    let now = now_ms();
    tx.execute(
        "INSERT INTO messages (direction, user_id, station_id, partner_id, user_name, station, partner, test, name, state, detail, created_ms, updated_ms)
         SELECT ?1, u.id, s.id, p.id, u.name, s.as2_id, p.as2_id, p.test, ?4, ?5, ?6, ?7, ?7
         FROM users u, stations s, partners p WHERE u.id = ?2 AND s.id = ?3 AND p.id = ?8",
        params![direction, user_id, b.station_id, name, state, detail, now, b.partner_id],
    )?;
    if tx.changes() == 0 {
        return Err(StoreError::NotFound(
            "the station or partner of this box (removed meanwhile?)".into(),
        ));
    }
    let id = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO message_events (message_id, at_ms, state, detail) VALUES (?1, ?2, ?3, ?4)",
        params![id, now, state, detail],
    )?;
    for (seq, f) in files.iter().enumerate() {
        tx.execute(
            "INSERT INTO message_files (message_id, seq, name, size, blob) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, seq as i64, f.name, f.size as i64, f.blob],
        )?;
    }
    Ok(id)
}

/// The received messages that were stored (not refused): a refused request's Message-ID
/// stays free, so that a forged copy sent first cannot make the genuine one a "duplicate".
/// Binds `?3` and `?4`: pass [`DELIVERED_INBOUND_PARAMS`] after the query's own two.
pub(super) const DELIVERED_INBOUND: &str = "direction = ?3 AND state <> ?4";
pub(super) const DELIVERED_INBOUND_PARAMS: (Direction, MessageState) =
    (Direction::In, MessageState::Refused);

impl Store {
    /// The entry with row id `id`.
    pub fn entry(&self, id: i64) -> Result<Option<Entry>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {ENTRY_COLS} FROM entries WHERE id = ?1"),
                [id],
                entry_from_row,
            )
            .optional()?)
        })
    }

    /// The entry called `name` in a box folder.
    pub fn entry_by_name(&self, b: BoxRef, parent: i64, name: &str) -> Result<Option<Entry>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {ENTRY_COLS} FROM entries WHERE station_id = ?1 AND partner_id = ?2 AND box = ?3 AND parent = ?4 AND name = ?5"),
                params![b.station_id, b.partner_id, b.kind.code(), parent, name],
                entry_from_row,
            )
            .optional()?)
        })
    }

    /// Everything in a box folder, by name.
    pub fn entries(&self, b: BoxRef, parent: i64) -> Result<Vec<Entry>> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM entries WHERE station_id = ?1 AND partner_id = ?2 AND box = ?3 AND parent = ?4 ORDER BY name"
            ))?;
            let rows = st.query_map(
                params![b.station_id, b.partner_id, b.kind.code(), parent],
                entry_from_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Outbox folders that are not picked up yet (candidates for batch pickup).
    pub fn pending_outbox_folders(&self) -> Result<Vec<Entry>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ENTRY_COLS} FROM entries WHERE box = ?1 AND is_dir = 1 AND state = ?2"
            ))?;
            let rows = st.query_map(
                params![BoxKind::Outbox.code(), EntryState::Held.code()],
                entry_from_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Interrupted uploads last written before `cutoff_ms` (they time out into `failed/`).
    pub fn interrupted_before(&self, cutoff_ms: i64) -> Result<Vec<Entry>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ENTRY_COLS} FROM entries WHERE box = ?1 AND is_dir = 0 AND state = ?2 AND mtime_ms < ?3"
            ))?;
            let rows = st.query_map(
                params![BoxKind::Outbox.code(), EntryState::Interrupted.code(), cutoff_ms],
                entry_from_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Stores a closed file. With `pickup_until` it is picked up in the same transaction: a
    /// `queued` message is created and the entry lingers until that time. Returns the entry
    /// id and the message id.
    pub fn commit_file(
        &self,
        f: &NewFile,
        pickup_until: Option<i64>,
    ) -> Result<(i64, Option<i64>)> {
        let _guard = self.blobs().guard();
        self.write(|tx| {
            if let Some(content) = &f.content {
                super::contents::insert_inline(tx, &f.blob, content)?;
            }
            if let Some(old) = f.replaces {
                tx.execute("DELETE FROM entries WHERE id = ?1", [old])?;
            }
            let (state, message_id) = match pickup_until {
                Some(_) => {
                    let files = [PickupFile {
                        name: f.name.clone(),
                        blob: f.blob.clone(),
                        size: f.size,
                        content: None,
                    }];
                    let m = insert_message(
                        tx,
                        f.user_id,
                        f.boxref,
                        &f.name,
                        NewMessage::Queued,
                        &files,
                    )?;
                    (EntryState::Lingering, Some(m))
                }
                None => (f.state, None),
            };
            let id = insert_entry(
                tx,
                &NewRow {
                    state,
                    mtime_ms: f.mtime_ms,
                    until_ms: pickup_until,
                    message_id,
                    ..NewRow::file(f.user_id, f.boxref, f.parent, &f.name, &f.blob, f.size)
                },
            )?;
            touch_folder(tx, f.parent)?;
            Ok((id, message_id))
        })
    }

    /// Creates a folder in a box.
    pub fn create_folder(&self, user_id: i64, b: BoxRef, name: &str) -> Result<i64> {
        self.write(|tx| insert_entry(tx, &NewRow::folder(user_id, b, name, EntryState::Held)))
    }

    /// Renames an entry within its box (optionally into/out of a folder of the same box),
    /// replacing `replaces` if given. With `pickup_until`, the entry (a file, or a folder with
    /// `files`) is picked up in the same transaction as message `message_name`.
    pub fn rename_entry(
        &self,
        id: i64,
        new_parent: i64,
        new_name: &str,
        replaces: Option<i64>,
        pickup: Option<RenamePickup<'_>>,
    ) -> Result<Option<i64>> {
        self.write(|tx| {
            let old: Entry = tx
                .query_row(
                    &format!("SELECT {ENTRY_COLS} FROM entries WHERE id = ?1"),
                    [id],
                    entry_from_row,
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound("entry".into()))?;
            if let Some(r) = replaces {
                tx.execute("DELETE FROM entries WHERE id = ?1", [r])?;
            }
            release_expired_name(tx, old.boxref, new_parent, new_name)?;
            tx.execute(
                "UPDATE entries SET parent = ?2, name = ?3 WHERE id = ?1",
                params![id, new_parent, new_name],
            )
            .map_err(|e| match &e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Exists(format!("{new_name:?}"))
                }
                _ => e.into(),
            })?;
            touch_folder(tx, old.parent)?;
            touch_folder(tx, new_parent)?;
            let mut message = None;
            if let Some(RenamePickup { until_ms: until, message_name: name, files }) = pickup {
                let list: Vec<PickupFile> = files.iter().map(|(_, f)| f.clone()).collect();
                let m = insert_message(tx, old.user_id, old.boxref, name, NewMessage::Queued, &list)?;
                tx.execute(
                    "UPDATE entries SET state = ?2, until_ms = ?3, message_id = ?4 WHERE id = ?1",
                    params![id, EntryState::Lingering.code(), until, m],
                )?;
                for (fid, _) in files {
                    tx.execute(
                        "UPDATE entries SET state = ?2, until_ms = ?3, message_id = ?4 WHERE id = ?1",
                        params![fid, EntryState::Lingering.code(), until, m],
                    )?;
                }
                message = Some(m);
            }
            Ok(message)
        })
    }

    /// Picks up an outbox folder (already checked complete by the caller) as one message.
    pub fn pickup_folder(
        &self,
        folder: &Entry,
        message_name: &str,
        files: &[(i64, PickupFile)],
        until: i64,
    ) -> Result<i64> {
        self.write(|tx| {
            let state: Option<i64> = tx
                .query_row(
                    "SELECT state FROM entries WHERE id = ?1",
                    [folder.id],
                    |r| r.get(0),
                )
                .optional()?;
            if state != Some(EntryState::Held.code()) {
                return Err(StoreError::NotFound(format!(
                    "pending folder {:?}",
                    folder.name
                )));
            }
            let list: Vec<PickupFile> = files.iter().map(|(_, f)| f.clone()).collect();
            let m = insert_message(
                tx,
                folder.user_id,
                folder.boxref,
                message_name,
                NewMessage::Queued,
                &list,
            )?;
            for id in std::iter::once(folder.id).chain(files.iter().map(|(id, _)| *id)) {
                tx.execute(
                    "UPDATE entries SET state = ?2, until_ms = ?3, message_id = ?4 WHERE id = ?1",
                    params![id, EntryState::Lingering.code(), until, m],
                )?;
            }
            Ok(m)
        })
    }

    /// Moves outbox entries (one file, or a folder and its files) to the partner's `failed/`
    /// with a `<name>.reason.txt` holding `reason`, and records a `failed` message. Returns the
    /// message id.
    pub fn fail_entries(
        &self,
        top: &Entry,
        files: &[(i64, PickupFile)],
        reason: &str,
    ) -> Result<i64> {
        let reason_text = format!("{reason}\n");
        let reason_blob = self.blobs().put_bytes(reason_text.as_bytes())?;
        let _guard = self.blobs().guard();
        self.write(|tx| {
            let failed = BoxRef { kind: BoxKind::Failed, ..top.boxref };
            let base = top.name.strip_suffix(crate::names::READY_SUFFIX).unwrap_or(&top.name);
            let name = free_failed_name(tx, failed, base)?;
            let list: Vec<PickupFile> = files.iter().map(|(_, f)| f.clone()).collect();
            let m = insert_message(tx, top.user_id, top.boxref, base, NewMessage::Failed(reason), &list)?;
            // New rows (new ids), not moved ones: the kernel may still hold the old inodes
            // under their outbox names; those now answer ESTALE, which makes it look the
            // names up again instead of reaching the failed files through the outbox.
            let now = now_ms();
            tx.execute(
                "INSERT INTO entries (user_id, station_id, partner_id, box, parent, name, is_dir, state, blob, size, mtime_ms, created_ms, until_ms, message_id)
                 SELECT user_id, station_id, partner_id, ?2, 0, ?3, is_dir, ?4, blob, size, mtime_ms, ?6, NULL, ?5 FROM entries WHERE id = ?1",
                params![top.id, BoxKind::Failed.code(), name, EntryState::Stored.code(), m, now],
            )?;
            let new_top = tx.last_insert_rowid();
            if top.is_dir {
                tx.execute(
                    "INSERT INTO entries (user_id, station_id, partner_id, box, parent, name, is_dir, state, blob, size, mtime_ms, created_ms, until_ms, message_id)
                     SELECT user_id, station_id, partner_id, ?2, ?6, name, is_dir, ?3, blob, size, mtime_ms, ?5, NULL, ?4 FROM entries WHERE parent = ?1",
                    params![top.id, BoxKind::Failed.code(), EntryState::Stored.code(), m, now, new_top],
                )?;
                tx.execute("DELETE FROM entries WHERE parent = ?1", [top.id])?;
            }
            tx.execute("DELETE FROM entries WHERE id = ?1", [top.id])?;
            let reason_name = format!("{name}.reason.txt");
            insert_entry(
                tx,
                &NewRow {
                    message_id: Some(m),
                    ..NewRow::file(top.user_id, failed, 0, &reason_name, &reason_blob, reason_text.len() as u64)
                },
            )?;
            Ok(m)
        })
    }

    /// Sets the modification time shown for an entry.
    pub fn set_mtime(&self, id: i64, mtime_ms: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE entries SET mtime_ms = ?2 WHERE id = ?1",
                params![id, mtime_ms],
            )?;
            Ok(())
        })
    }

    /// Removes a file entry, or an empty folder entry (`NotEmpty` otherwise).
    pub fn remove_entry(&self, id: i64) -> Result<()> {
        self.write(|tx| {
            let children: i64 = tx.query_row(
                "SELECT COUNT(*) FROM entries WHERE parent = ?1",
                [id],
                |r| r.get(0),
            )?;
            if children > 0 {
                return Err(StoreError::NotEmpty("folder is not empty".into()));
            }
            let parent: Option<i64> = tx
                .query_row("SELECT parent FROM entries WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(parent) = parent else {
                return Err(StoreError::NotFound("entry".into()));
            };
            tx.execute("DELETE FROM entries WHERE id = ?1", [id])?;
            touch_folder(tx, parent)?;
            Ok(())
        })
    }

    /// Delivers a received message into an inbox: every file's blob must already be stored,
    /// or come with its `content` (small files).
    /// `files` pairs each file's name in the inbox with its content. Returns the message id.
    /// With an `origin` whose Message-ID this partner's messages already have, nothing is
    /// stored and the answer is [`StoreError::AlreadyReceived`].
    pub fn deliver(
        &self,
        user_id: i64,
        inbox: BoxRef,
        message_name: &str,
        placement: Placement<'_>,
        files: &[(String, PickupFile)],
        origin: Option<&InboundOrigin>,
    ) -> Result<i64> {
        let _guard = self.blobs().guard();
        self.write(|tx| {
            for (_, f) in files {
                if let Some(content) = &f.content {
                    super::contents::insert_inline(tx, &f.blob, content)?;
                }
            }
            if let Some(o) = origin {
                // Checked again inside the write transaction (SQLite has one writer): two
                // copies of one message arriving at once both pass the daemon's earlier
                // lookup, and only one may be delivered.
                let earlier: Option<i64> = tx
                    .query_row(
                        &format!("SELECT id FROM messages WHERE {DELIVERED_INBOUND} AND partner_id = ?1 AND as2_message_id = ?2 ORDER BY id LIMIT 1"),
                        params![
                            inbox.partner_id,
                            o.as2_message_id,
                            DELIVERED_INBOUND_PARAMS.0,
                            DELIVERED_INBOUND_PARAMS.1
                        ],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(message_id) = earlier {
                    return Err(StoreError::AlreadyReceived { message_id });
                }
            }
            let list: Vec<PickupFile> = files.iter().map(|(_, f)| f.clone()).collect();
            let m = insert_message(tx, user_id, inbox, message_name, NewMessage::Received, &list)?;
            if let Some(o) = origin {
                // In the same transaction as the files: a resend after a crash finds it.
                tx.execute(
                    "UPDATE messages SET as2_message_id = ?2, mic = ?3 WHERE id = ?1",
                    params![m, o.as2_message_id, o.mic],
                )?;
                if let Some(request) = &o.request {
                    super::archive::link(tx, m, super::ArchiveKind::Request, request)?;
                }
            }
            let parent = match placement {
                Placement::Folder(name) => insert_entry(
                    tx,
                    &NewRow {
                        message_id: Some(m),
                        ..NewRow::folder(user_id, inbox, name, EntryState::Stored)
                    },
                )?,
                Placement::Top { .. } => 0,
            };
            for (name, f) in files {
                if let Placement::Top { replace: true } = placement {
                    tx.execute(
                        "DELETE FROM entries WHERE station_id = ?1 AND partner_id = ?2 AND box = ?3 AND parent = ?4 AND name = ?5 AND is_dir = 0",
                        params![inbox.station_id, inbox.partner_id, inbox.kind.code(), parent, name],
                    )?;
                }
                insert_entry(
                    tx,
                    &NewRow {
                        message_id: Some(m),
                        ..NewRow::file(user_id, inbox, parent, name, &f.blob, f.size)
                    },
                )?;
            }
            Ok(m)
        })
    }

    /// Queues the files of outgoing message `id` again as a new message (new AS2
    /// Message-ID, its own history). The original record is left as it was. Returns the new
    /// message's id.
    pub fn resend_message(&self, id: i64) -> Result<i64> {
        let _guard = self.blobs().guard();
        self.write(|tx| {
            let row: Option<(Direction, i64, i64, i64, String)> = tx
                .query_row(
                    "SELECT direction, user_id, station_id, partner_id, name FROM messages WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((direction, user_id, station_id, partner_id, name)) = row else {
                return Err(StoreError::NotFound(format!("message {id}")));
            };
            if direction != Direction::Out {
                return Err(StoreError::NotApplicable(format!(
                    "message {id} was received, not sent: only sent messages can be resent"
                )));
            }
            let mut st = tx.prepare(
                "SELECT name, blob, size FROM message_files WHERE message_id = ?1 ORDER BY seq",
            )?;
            let files = st
                .query_map([id], |r| {
                    Ok(PickupFile {
                        name: r.get(0)?,
                        blob: r.get(1)?,
                        size: r.get::<_, i64>(2)?.max(0) as u64,
                        content: None,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(st);
            let mut missing = false;
            for f in &files {
                missing |= !super::contents::content_exists(self, tx, &f.blob)?;
            }
            if files.is_empty() || missing {
                return Err(StoreError::NotFound(format!(
                    "the files of message {id} (no longer kept)"
                )));
            }
            let b = BoxRef {
                station_id,
                partner_id,
                kind: BoxKind::Outbox,
            };
            let new = insert_message(tx, user_id, b, &name, NewMessage::Queued, &files)?;
            tx.execute(
                "UPDATE message_events SET detail = ?2 WHERE message_id = ?1",
                params![new, format!("resend of message {id}")],
            )?;
            Ok(new)
        })
    }

    /// One message.
    pub fn message(&self, id: i64) -> Result<Option<Message>> {
        Ok(self.messages_where(Some(id), None, 1)?.pop())
    }

    /// Messages, newest first.
    pub fn messages(&self, user_id: Option<i64>, limit: usize) -> Result<Vec<Message>> {
        self.messages_where(None, user_id, limit)
    }

    fn messages_where(
        &self,
        id: Option<i64>,
        user_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Message>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT id, direction, user_name, station, partner, test, name, state, detail, created_ms, updated_ms
                 FROM messages WHERE (?1 IS NULL OR user_id = ?1) AND (?3 IS NULL OR id = ?3) ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![user_id, limit as i64, id], |r| {
                Ok(Message {
                    id: r.get(0)?,
                    direction: r.get(1)?,
                    user: r.get(2)?,
                    station: r.get(3)?,
                    partner: r.get(4)?,
                    test: r.get(5)?,
                    name: r.get(6)?,
                    state: r.get(7)?,
                    detail: r.get(8)?,
                    files: Vec::new(),
                    created_at: rfc3339(r.get(9)?),
                    updated_at: rfc3339(r.get(10)?),
                })
            })?;
            let mut messages: Vec<Message> = rows.collect::<rusqlite::Result<_>>()?;
            let mut files = c.prepare_cached(
                "SELECT name, size, blob FROM message_files WHERE message_id = ?1 ORDER BY seq",
            )?;
            for m in &mut messages {
                m.files = files
                    .query_map([m.id], |r| {
                        Ok(MessageFile {
                            name: r.get(0)?,
                            size: r.get::<_, i64>(1)?.max(0) as u64,
                            sha256: r.get(2)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
            }
            Ok(messages)
        })
    }

    /// Removes expired inbox/failed files and their emptied folders, lingering outbox entries
    /// whose time is over, old message records, and unreferenced blobs.
    pub fn sweep(
        &self,
        now: i64,
        files_cutoff_ms: i64,
        messages_cutoff_ms: i64,
    ) -> Result<SweepReport> {
        let mut report = self.write(|tx| {
            let expired_files = tx.execute(
                "DELETE FROM entries WHERE box IN (?1, ?2) AND is_dir = 0 AND created_ms < ?3",
                params![
                    BoxKind::Inbox.code(),
                    BoxKind::Failed.code(),
                    files_cutoff_ms
                ],
            )? + tx.execute(
                "DELETE FROM entries WHERE box IN (?1, ?2) AND is_dir = 1 AND created_ms < ?3
                 AND NOT EXISTS (SELECT 1 FROM entries c WHERE c.parent = entries.id)",
                params![
                    BoxKind::Inbox.code(),
                    BoxKind::Failed.code(),
                    files_cutoff_ms
                ],
            )?;
            let lingering_removed = tx.execute(
                "DELETE FROM entries WHERE state = ?1 AND until_ms <= ?2 AND is_dir = 0",
                params![EntryState::Lingering.code(), now],
            )? + tx.execute(
                "DELETE FROM entries WHERE state = ?1 AND until_ms <= ?2 AND is_dir = 1
                 AND NOT EXISTS (SELECT 1 FROM entries c WHERE c.parent = entries.id)",
                params![EntryState::Lingering.code(), now],
            )?;
            let messages_removed = tx.execute(
                "DELETE FROM messages WHERE updated_ms < ?1 AND state NOT IN (?2, ?3, ?4)",
                params![
                    messages_cutoff_ms,
                    MessageState::UNSETTLED[0],
                    MessageState::UNSETTLED[1],
                    MessageState::UNSETTLED[2]
                ],
            )?;
            let report = SweepReport {
                expired_files,
                lingering_removed,
                messages_removed,
                blobs_removed: 0,
            };
            Ok(report)
        })?;
        report.blobs_removed = self.blobs().sweep(std::time::Duration::from_secs(600), || {
            // Under the sweep's lock, like the files: unreferenced inline contents go too.
            self.write(super::contents::sweep_inline)?;
            self.read(|c| {
                let mut set = HashSet::new();
                let mut st = c.prepare(
                    "SELECT blob FROM entries WHERE blob IS NOT NULL UNION SELECT blob FROM message_files UNION SELECT blob FROM message_archive",
                )?;
                for b in st.query_map([], |r| r.get::<_, String>(0))? {
                    set.insert(b?);
                }
                Ok(set)
            })
        })?;
        Ok(report)
    }
}
