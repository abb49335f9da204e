//! The life of an outgoing message after pickup, for the AS2 daemon:
//! `queued → sending → awaiting-mdn → delivered`, or back to `queued` for a retry, or
//! `failed` with its files placed in the partner's `failed/`. Every transition is one
//! transaction with an event row, so `messages show` can tell the whole story.

use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;

use super::{BoxKind, BoxRef, Direction, MessageFile, MessageState, Result, Store, StoreError};
use crate::timefmt::{now_ms, rfc3339};

/// A message the sender has taken to send.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Message row.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// The station (sender).
    pub station_id: i64,
    /// The partner (receiver).
    pub partner_id: i64,
    /// The message's name (file or folder name).
    pub name: String,
    /// This is attempt number `attempts` (from 1).
    pub attempts: u32,
    /// The AS2 Message-ID of an earlier attempt, reused so the partner can spot a resend.
    pub as2_message_id: Option<String>,
    /// The files.
    pub files: Vec<MessageFile>,
    /// When it was queued (ms since the epoch): the close of the uploaded file, or the end
    /// of a folder's quiet period.
    pub created_ms: i64,
}

/// What we know of a message we sent, found by its AS2 Message-ID.
#[derive(Debug, Clone)]
pub struct SentRecord {
    /// Message row.
    pub id: i64,
    /// The partner it went to.
    pub partner_id: i64,
    /// The station it was sent from.
    pub station_id: i64,
    /// Its state.
    pub state: MessageState,
    /// The MICs we accept back, one per line.
    pub mics: Option<String>,
}

/// What we know of a message we received, found by its AS2 Message-ID.
#[derive(Debug, Clone)]
pub struct ReceivedRecord {
    /// Message row.
    pub id: i64,
    /// The MIC we computed (`<base64>, <alg>`).
    pub mic: Option<String>,
    /// The MDN we answered with.
    pub mdn: Option<String>,
}

/// What went over the wire for a message: the AS2 Message-ID, the MIC(s), the request
/// headers we sent (outgoing) and the MDN (sent back to us, or answered by us).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Transmission {
    /// The AS2 Message-ID.
    pub as2_message_id: Option<String>,
    /// Outgoing: the MICs we accept back, one per line. Incoming: the MIC we computed.
    pub mic: Option<String>,
    /// Outgoing: the headers of the last request we POSTed.
    pub request_headers: Option<String>,
    /// The MDN: received from the partner (outgoing) or answered by us (incoming).
    pub mdn: Option<String>,
}

/// An async MDN we owe a partner for received message `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedMdn {
    /// The received message.
    pub id: i64,
    /// The partner it came from (whose profile says where its MDNs may go).
    pub partner_id: i64,
    /// The partner's Receipt-Delivery-Option URL.
    pub url: String,
    /// The MDN's HTTP header fields.
    pub headers: Vec<(String, String)>,
    /// The MDN's body.
    pub body: Vec<u8>,
    /// Attempts made so far.
    pub attempts: u32,
}

/// One state change of a message.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When (RFC 3339).
    pub at: String,
    /// The state entered.
    pub state: MessageState,
    /// Why, or what happened.
    pub detail: Option<String>,
}

fn set_state(
    tx: &Transaction<'_>,
    id: i64,
    state: MessageState,
    detail: Option<&str>,
) -> Result<()> {
    let now = now_ms();
    let n = tx.execute(
        "UPDATE messages SET state = ?2, detail = ?3, updated_ms = ?4 WHERE id = ?1",
        params![id, state, detail, now],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("message {id}")));
    }
    tx.execute(
        "INSERT INTO message_events (message_id, at_ms, state, detail) VALUES (?1, ?2, ?3, ?4)",
        params![id, now, state, detail],
    )?;
    Ok(())
}

/// Whether an outcome may still be recorded for message `id`: its state is one of `from`.
/// Outcomes race: a partner's async MDN can arrive before the sender recorded that its POST
/// was answered, and a timeout can fire as the MDN arrives; the first outcome stands.
fn state_is(tx: &Transaction<'_>, id: i64, from: &[MessageState]) -> Result<bool> {
    let state: MessageState = tx
        .query_row("SELECT state FROM messages WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("message {id}")))?;
    Ok(from.contains(&state))
}

fn files_of(tx: &rusqlite::Connection, id: i64) -> Result<Vec<MessageFile>> {
    let mut st = tx.prepare_cached(
        "SELECT name, size, blob FROM message_files WHERE message_id = ?1 ORDER BY seq",
    )?;
    let rows = st.query_map([id], |r| {
        Ok(MessageFile {
            name: r.get(0)?,
            size: r.get::<_, i64>(1)?.max(0) as u64,
            sha256: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// Takes the oldest queued outgoing message that is due (`sending`, one more attempt).
    pub fn claim_queued(&self, now: i64) -> Result<Option<Claimed>> {
        // The sender asks often; a read (no write lock, so the mount's commits never wait
        // behind it) tells whether there is anything to claim.
        let due = self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT 1 FROM messages WHERE state = ?2 AND direction = ?3
                 AND (next_attempt_ms IS NULL OR next_attempt_ms <= ?1) LIMIT 1",
            )?
            .exists(params![now, MessageState::Queued, Direction::Out])?)
        })?;
        if !due {
            return Ok(None);
        }
        // Not durable by itself: a claim lost in a crash only makes the message be claimed
        // again, and the commit that records its Message-ID before the POST is durable
        // and carries this one to disk with it.
        self.write_unsynced(|tx| {
            let row = tx
                .query_row(
                    "SELECT id, user_id, station_id, partner_id, name, attempts, as2_message_id, created_ms FROM messages
                     WHERE direction = ?3 AND state = ?2 AND (next_attempt_ms IS NULL OR next_attempt_ms <= ?1)
                     ORDER BY id LIMIT 1",
                    params![now, MessageState::Queued, Direction::Out],
                    |r| {
                        Ok(Claimed {
                            id: r.get(0)?,
                            user_id: r.get(1)?,
                            station_id: r.get(2)?,
                            partner_id: r.get(3)?,
                            name: r.get(4)?,
                            attempts: r.get::<_, u32>(5)? + 1,
                            as2_message_id: r.get(6)?,
                            files: Vec::new(),
                            created_ms: r.get(7)?,
                        })
                    },
                )
                .optional()?;
            let Some(mut c) = row else { return Ok(None) };
            tx.execute(
                "UPDATE messages SET attempts = ?2 WHERE id = ?1",
                params![c.id, c.attempts],
            )?;
            set_state(tx, c.id, MessageState::Sending, Some(&format!("attempt {}", c.attempts)))?;
            c.files = files_of(tx, c.id)?;
            Ok(Some(c))
        })
    }

    /// The AS2 particulars of message `id` (None when there is no such message).
    pub fn message_transmission(&self, id: i64) -> Result<Option<Transmission>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT as2_message_id, mic, request_headers, mdn FROM messages WHERE id = ?1",
                [id],
                |r| {
                    Ok(Transmission {
                        as2_message_id: r.get(0)?,
                        mic: r.get(1)?,
                        request_headers: r.get(2)?,
                        mdn: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
    }

    /// Puts messages left in `sending` by a daemon that died back in the queue. No answer
    /// was recorded for them, so sending them again is right; the AS2 Message-ID is kept.
    /// A message that already had `max_attempts` attempts is failed instead (files into
    /// `failed/`): a message during which the daemon keeps dying must not be tried forever.
    /// Returns how many were requeued.
    pub fn requeue_sending(&self, max_attempts: u32) -> Result<usize> {
        let (requeued, exhausted) = self.write(|tx| {
            let rows: Vec<(i64, u32)> = {
                let mut st = tx.prepare("SELECT id, attempts FROM messages WHERE state = ?1")?;
                let rows = st.query_map([MessageState::Sending], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut requeued = 0;
            let mut exhausted = Vec::new();
            for (id, attempts) in rows {
                if attempts >= max_attempts {
                    exhausted.push((id, attempts));
                    continue;
                }
                set_state(
                    tx,
                    id,
                    MessageState::Queued,
                    Some("requeued: the sender stopped during this attempt"),
                )?;
                requeued += 1;
            }
            Ok((requeued, exhausted))
        })?;
        for (id, attempts) in exhausted {
            let reason = format!(
                "Not delivered: the sender stopped during attempt {attempts}, the last one allowed, so the partner may or may not have received the message."
            );
            self.message_failed(id, &reason, None)?;
        }
        Ok(requeued)
    }

    /// Records the request about to be POSTed: its AS2 Message-ID (kept for resends, so the
    /// partner can recognise them), the MICs we accept back (one per line) and the headers.
    ///
    /// A resend under the same Message-ID keeps the MICs of the earlier attempts too, and
    /// the answer is all of them (this attempt's first): a rebuilt message can have another
    /// MIC (a new MIME boundary around several files), while a partner that recognises the
    /// resend returns the MIC of the copy it took, which may be the earlier one.
    pub fn message_prepared(
        &self,
        id: i64,
        as2_message_id: &str,
        mics: Option<&str>,
        headers: &str,
    ) -> Result<Option<String>> {
        self.write(|tx| {
            let (old_id, old_mics): (Option<String>, Option<String>) = tx.query_row(
                "SELECT as2_message_id, mic FROM messages WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut all: Vec<&str> = mics.map(|m| m.lines().collect()).unwrap_or_default();
            if old_id.as_deref() == Some(as2_message_id) {
                for m in old_mics.as_deref().unwrap_or("").lines() {
                    if !all.contains(&m) {
                        all.push(m);
                    }
                }
            }
            let all = (!all.is_empty()).then(|| all.join("\n"));
            tx.execute(
                "UPDATE messages SET as2_message_id = ?2, mic = ?3, request_headers = ?4 WHERE id = ?1",
                params![id, as2_message_id, all, headers],
            )?;
            Ok(all)
        })
    }

    /// The request was accepted; the MDN will come later (async). Only from `sending`: an
    /// MDN that came first has settled the message already. Returns whether it was recorded.
    pub fn message_awaiting_mdn(&self, id: i64) -> Result<bool> {
        self.write(|tx| {
            if !state_is(tx, id, &[MessageState::Sending])? {
                return Ok(false);
            }
            set_state(tx, id, MessageState::AwaitingMdn, None)?;
            Ok(true)
        })
    }

    /// The outgoing message with AS2 Message-ID `as2_message_id` (for an async MDN): its id,
    /// partner, state and the MICs we accept.
    pub fn outgoing_by_as2_id(&self, as2_message_id: &str) -> Result<Option<SentRecord>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT id, partner_id, state, mic, station_id FROM messages WHERE direction = ?2 AND as2_message_id = ?1 ORDER BY id DESC LIMIT 1",
                params![as2_message_id, Direction::Out],
                |r| {
                    Ok(SentRecord {
                        id: r.get(0)?,
                        partner_id: r.get(1)?,
                        station_id: r.get(4)?,
                        state: r.get(2)?,
                        mics: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
    }

    /// Outgoing messages waiting for an async MDN since before `cutoff_ms`.
    pub fn awaiting_mdn_before(&self, cutoff_ms: i64) -> Result<Vec<i64>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT id FROM messages WHERE direction = ?2 AND state = ?3 AND updated_ms < ?1",
            )?;
            let rows = st.query_map(
                params![cutoff_ms, Direction::Out, MessageState::AwaitingMdn],
                |r| r.get(0),
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Records an inbound request from a known partner that was refused (not signed or
    /// encrypted as its profile requires, a signature that does not verify, ...): visible in
    /// `messages list` with `reason`; nothing of its content is stored.
    pub fn record_refused_inbound(
        &self,
        station_id: i64,
        partner_id: i64,
        as2_message_id: &str,
        reason: &str,
    ) -> Result<i64> {
        let now = now_ms();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO messages (direction, user_id, station_id, partner_id, user_name, station, partner, test, name, state, detail, as2_message_id, created_ms, updated_ms)
                 SELECT ?6, u.id, s.id, p.id, u.name, s.as2_id, p.as2_id, p.test, ?3, ?7, ?4, ?3, ?5, ?5
                 FROM stations s JOIN partners p ON p.user_id = s.user_id JOIN users u ON u.id = s.user_id
                 WHERE s.id = ?1 AND p.id = ?2",
                params![station_id, partner_id, as2_message_id, reason, now, Direction::In, MessageState::Refused],
            )?;
            if tx.changes() == 0 {
                return Err(StoreError::NotFound("the station or partner (removed meanwhile?)".into()));
            }
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO message_events (message_id, at_ms, state, detail) VALUES (?1, ?2, ?3, ?4)",
                params![id, now, MessageState::Refused, reason],
            )?;
            Ok(id)
        })
    }

    /// A received message from `partner_id` with AS2 Message-ID `as2_message_id`: its id,
    /// the MIC we computed and the MDN we answered, if any (for duplicates).
    pub fn inbound_by_as2_id(
        &self,
        partner_id: i64,
        as2_message_id: &str,
    ) -> Result<Option<ReceivedRecord>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT id, mic, mdn FROM messages WHERE {} AND partner_id = ?1 AND as2_message_id = ?2 ORDER BY id LIMIT 1", super::entries::DELIVERED_INBOUND),
                params![
                    partner_id,
                    as2_message_id,
                    super::entries::DELIVERED_INBOUND_PARAMS.0,
                    super::entries::DELIVERED_INBOUND_PARAMS.1
                ],
                |r| {
                    Ok(ReceivedRecord {
                        id: r.get(0)?,
                        mic: r.get(1)?,
                        mdn: r.get(2)?,
                    })
                },
            )
            .optional()?)
        })
    }

    /// Records that we owe the partner the async MDN of received message `id`, claimed
    /// until `lease_until_ms` by the caller, who tries it at once; the MDN survives a
    /// restart until [`Store::owed_mdn_delivered`].
    pub fn owe_async_mdn(
        &self,
        id: i64,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        lease_until_ms: i64,
    ) -> Result<()> {
        let headers = serde_json::to_string(headers).unwrap_or_else(|_| "[]".into());
        self.write(|tx| {
            tx.execute(
                "UPDATE messages SET mdn_url = ?2, mdn_headers = ?3, mdn_body = ?4, mdn_attempts = 0, mdn_due_ms = ?5 WHERE id = ?1",
                params![id, url, headers, body, lease_until_ms],
            )?;
            Ok(())
        })
    }

    /// Owed MDNs whose time has come (at most `limit`), each claimed until
    /// `lease_until_ms` so that no other attempt takes it meanwhile.
    pub fn claim_owed_mdns(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<OwedMdn>> {
        let due = self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT 1 FROM messages WHERE mdn_due_ms IS NOT NULL AND mdn_due_ms <= ?1 LIMIT 1",
            )?
            .exists([now_ms])?)
        })?;
        if !due {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            let owed: Vec<OwedMdn> = {
                let mut st = tx.prepare(
                    "SELECT id, mdn_url, mdn_headers, mdn_body, mdn_attempts, partner_id FROM messages
                     WHERE mdn_due_ms IS NOT NULL AND mdn_due_ms <= ?1 ORDER BY mdn_due_ms LIMIT ?2",
                )?;
                let rows = st.query_map(params![now_ms, limit as i64], |r| {
                    let headers: String = r.get::<_, Option<String>>(2)?.unwrap_or_default();
                    Ok(OwedMdn {
                        id: r.get(0)?,
                        url: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                        body: r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
                        attempts: r.get(4)?,
                        partner_id: r.get(5)?,
                    })
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for o in &owed {
                tx.execute(
                    "UPDATE messages SET mdn_due_ms = ?2 WHERE id = ?1",
                    params![o.id, lease_until_ms],
                )?;
            }
            Ok(owed)
        })
    }

    /// Makes every owed MDN due at `now_ms`: at the start of the daemon no attempt is in
    /// flight, so leases held by a stopped one are void (and waiting out a backoff is no
    /// use after a restart). Returns how many are owed.
    pub fn release_owed_mdns(&self, now_ms: i64) -> Result<usize> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE messages SET mdn_due_ms = ?1 WHERE mdn_due_ms IS NOT NULL",
                [now_ms],
            )?)
        })
    }

    /// The owed MDN of message `id` was delivered (or given up): forget its copy.
    pub fn owed_mdn_done(&self, id: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE messages SET mdn_due_ms = NULL, mdn_body = NULL, mdn_headers = NULL WHERE id = ?1",
                [id],
            )?;
            Ok(())
        })
    }

    /// An attempt to deliver the owed MDN of message `id` failed: try again at `next_ms`.
    pub fn owed_mdn_retry(&self, id: i64, next_ms: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE messages SET mdn_attempts = mdn_attempts + 1, mdn_due_ms = ?2 WHERE id = ?1",
                params![id, next_ms],
            )?;
            Ok(())
        })
    }

    /// Stores the MDN we answered a received message with, and links its capture (stored
    /// before with [`Store::archive_capture`]; None when the disk refused it) in the same
    /// transaction: one durable commit instead of two on every receive.
    pub fn set_inbound_mdn(
        &self,
        id: i64,
        mdn: &str,
        capture: Option<&super::ArchivedBlob>,
    ) -> Result<()> {
        // Held from before the commit that references the blob (see `archive`).
        let _guard = capture.map(|_| self.blobs().guard());
        self.write(|tx| {
            tx.execute(
                "UPDATE messages SET mdn = ?2 WHERE id = ?1",
                params![id, mdn],
            )?;
            if let Some(blob) = capture {
                if tx.changes() > 0 {
                    super::archive::link(tx, id, super::ArchiveKind::Mdn, blob)?;
                }
            }
            Ok(())
        })
    }

    /// Message counts by direction and state (for metrics).
    pub fn message_counts(&self) -> Result<Vec<(Direction, MessageState, u64)>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT direction, state, COUNT(*) FROM messages GROUP BY direction, state ORDER BY direction, state",
            )?;
            let rows = st.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Sends it again at `next_attempt_ms`, saying why the last attempt failed. Only from
    /// `sending`; returns whether it was recorded.
    pub fn message_retry(&self, id: i64, detail: &str, next_attempt_ms: i64) -> Result<bool> {
        self.write(|tx| {
            if !state_is(tx, id, &[MessageState::Sending])? {
                return Ok(false);
            }
            tx.execute(
                "UPDATE messages SET next_attempt_ms = ?2 WHERE id = ?1",
                params![id, next_attempt_ms],
            )?;
            set_state(tx, id, MessageState::Queued, Some(detail))?;
            Ok(true)
        })
    }

    /// The partner confirmed receipt. Not once the message is delivered or failed; returns
    /// whether it was recorded.
    pub fn message_delivered(&self, id: i64, mdn: Option<&str>, detail: &str) -> Result<bool> {
        self.write(|tx| {
            if !state_is(tx, id, MessageState::UNSETTLED)? {
                return Ok(false);
            }
            tx.execute(
                "UPDATE messages SET mdn = ?2 WHERE id = ?1",
                params![id, mdn],
            )?;
            set_state(tx, id, MessageState::Delivered, Some(detail))?;
            Ok(true)
        })
    }

    /// The message will not be delivered: its files go to the partner's `failed/` (a folder
    /// of the message's name for several files) with `<name>.reason.txt` saying `reason`.
    /// Not once the message is delivered or failed; returns whether it was recorded.
    pub fn message_failed(&self, id: i64, reason: &str, mdn: Option<&str>) -> Result<bool> {
        let reason_text = format!("{reason}\n");
        let reason_blob = self.blobs().put_bytes(reason_text.as_bytes())?;
        let _guard = self.blobs().guard();
        self.write(|tx| {
            if !state_is(tx, id, MessageState::UNSETTLED)? {
                return Ok(false);
            }
            let (user_id, station_id, partner_id, name): (i64, i64, i64, String) = tx.query_row(
                "SELECT user_id, station_id, partner_id, name FROM messages WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            tx.execute(
                "UPDATE messages SET mdn = ?2 WHERE id = ?1",
                params![id, mdn],
            )?;
            set_state(tx, id, MessageState::Failed, Some(reason))?;
            let partner_exists: bool = tx
                .query_row("SELECT 1 FROM partners WHERE id = ?1", [partner_id], |_| {
                    Ok(true)
                })
                .optional()?
                .unwrap_or(false);
            if !partner_exists {
                // The partner was removed meanwhile: nowhere to put the files.
                return Ok(true);
            }
            let failed = BoxRef {
                station_id,
                partner_id,
                kind: BoxKind::Failed,
            };
            let files = files_of(tx, id)?;
            super::entries::place_failed(
                tx,
                user_id,
                failed,
                &name,
                &files,
                id,
                (&reason_blob, reason_text.len() as u64),
            )?;
            Ok(true)
        })
    }

    /// Every state change of a message, oldest first.
    pub fn message_events(&self, id: i64) -> Result<Vec<Event>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT at_ms, state, detail FROM message_events WHERE message_id = ?1 ORDER BY id",
            )?;
            let rows = st.query_map([id], |r| {
                Ok(Event {
                    at: rfc3339(r.get(0)?),
                    state: r.get(1)?,
                    detail: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{sha256_hex, EntryState, NewFile};

    fn event_states(store: &Store, id: i64) -> Vec<MessageState> {
        store
            .message_events(id)
            .unwrap()
            .into_iter()
            .map(|e| e.state)
            .collect()
    }

    fn queued() -> (tempfile::TempDir, Store, i64, BoxRef) {
        let (dir, store, user, outbox) = crate::store::test_store("u", "S", "P");
        let blob = store.blobs().put_bytes(b"payload").unwrap();
        let f = NewFile {
            user_id: user,
            boxref: outbox,
            parent: 0,
            name: "order.edi".into(),
            blob,
            size: 7,
            mtime_ms: 0,
            state: EntryState::Held,
            replaces: None,
            content: None,
        };
        let (_, m) = store.commit_file(&f, Some(0)).unwrap();
        (dir, store, m.unwrap(), outbox)
    }

    #[test]
    fn claim_retry_deliver() {
        let (_d, store, id, _) = queued();
        let c = store.claim_queued(now_ms()).unwrap().unwrap();
        assert_eq!((c.id, c.attempts, c.files.len()), (id, 1, 1));
        assert!(
            store.claim_queued(now_ms()).unwrap().is_none(),
            "claimed once"
        );
        store
            .message_retry(id, "connection refused", now_ms() + 60_000)
            .unwrap();
        assert!(
            store.claim_queued(now_ms()).unwrap().is_none(),
            "not due yet"
        );
        let c = store.claim_queued(now_ms() + 61_000).unwrap().unwrap();
        assert_eq!(c.attempts, 2);
        store
            .message_prepared(id, "x@y", Some("abc, sha-256"), "AS2-To: P")
            .unwrap();
        store.message_awaiting_mdn(id).unwrap();
        assert_eq!(store.outgoing_by_as2_id("x@y").unwrap().unwrap().id, id);
        store
            .message_delivered(id, Some("mdn"), "processed")
            .unwrap();
        let states = event_states(&store, id);
        assert_eq!(
            states,
            [
                MessageState::Queued,
                MessageState::Sending,
                MessageState::Queued,
                MessageState::Sending,
                MessageState::AwaitingMdn,
                MessageState::Delivered
            ]
        );
    }

    #[test]
    fn resend_queues_the_same_files_as_a_new_message_and_keeps_the_original() {
        let (_d, store, id, _) = queued();
        store.claim_queued(now_ms()).unwrap().unwrap();
        store
            .message_prepared(id, "first@x", Some("abc, sha-256"), "AS2-To: P")
            .unwrap();
        store.message_failed(id, "negative MDN", None).unwrap();
        let new = store.resend_message(id).unwrap();
        assert_ne!(new, id);
        let c = store.claim_queued(now_ms()).unwrap().unwrap();
        assert_eq!((c.id, c.attempts), (new, 1));
        assert_eq!(c.as2_message_id, None, "a resend gets a new Message-ID");
        assert_eq!(c.files[0].sha256, sha256_hex(b"payload"));
        let original = store.message(id).unwrap().unwrap();
        assert_eq!(original.state, MessageState::Failed);
        let first = &store.message_events(new).unwrap()[0];
        assert_eq!(
            first.detail.as_deref(),
            Some(&*format!("resend of message {id}"))
        );
        assert!(matches!(
            store.resend_message(9999),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn the_sweep_removes_old_finished_records_with_their_mdns_and_keeps_messages_in_flight() {
        let (_d, store, done, outbox) = queued();
        store.claim_queued(now_ms()).unwrap();
        store
            .message_delivered(done, Some("the MDN text"), "processed")
            .unwrap();
        let blob = store.blobs().put_bytes(b"second").unwrap();
        let f = NewFile {
            user_id: 1,
            boxref: outbox,
            parent: 0,
            name: "later.edi".into(),
            blob,
            size: 6,
            mtime_ms: 0,
            state: EntryState::Held,
            replaces: None,
            content: None,
        };
        let (_, in_flight) = store.commit_file(&f, Some(0)).unwrap();
        let in_flight = in_flight.unwrap();
        let later = now_ms() + 1;
        let report = store.sweep(later, 0, later).unwrap();
        assert_eq!(report.messages_removed, 1);
        assert!(store.message(done).unwrap().is_none());
        assert!(store.message_transmission(done).unwrap().is_none());
        assert!(
            store.message_events(done).unwrap().is_empty(),
            "events go with it"
        );
        assert_eq!(
            store.message(in_flight).unwrap().unwrap().state,
            MessageState::Queued
        );
    }

    #[test]
    fn a_resend_under_the_same_message_id_keeps_the_earlier_mics() {
        let (_d, store, id, _) = queued();
        let first = store
            .message_prepared(id, "m@x", Some("a, sha-256\nb, sha-256"), "")
            .unwrap();
        assert_eq!(first.as_deref(), Some("a, sha-256\nb, sha-256"));
        let again = store
            .message_prepared(id, "m@x", Some("c, sha-256\na, sha-256"), "")
            .unwrap();
        assert_eq!(again.as_deref(), Some("c, sha-256\na, sha-256\nb, sha-256"));
        let other = store
            .message_prepared(id, "n@x", Some("d, sha-256"), "")
            .unwrap();
        assert_eq!(
            other.as_deref(),
            Some("d, sha-256"),
            "a new Message-ID starts over"
        );
        assert_eq!(
            store
                .outgoing_by_as2_id("n@x")
                .unwrap()
                .unwrap()
                .mics
                .as_deref(),
            Some("d, sha-256")
        );
    }

    #[test]
    fn the_first_outcome_stands() {
        let (_d, store, id, _) = queued();
        store.claim_queued(now_ms()).unwrap().unwrap();
        // The async MDN came before the sender recorded that its POST was answered.
        assert!(store
            .message_delivered(id, Some("mdn"), "processed")
            .unwrap());
        assert!(!store.message_awaiting_mdn(id).unwrap());
        assert!(!store.message_retry(id, "timeout", now_ms()).unwrap());
        assert!(!store.message_failed(id, "No receipt.", None).unwrap());
        let states = event_states(&store, id);
        assert_eq!(
            states,
            [
                MessageState::Queued,
                MessageState::Sending,
                MessageState::Delivered
            ]
        );
        assert!(store.claim_queued(now_ms() + 1).unwrap().is_none());
    }

    #[test]
    fn an_owed_mdn_is_kept_claimed_once_retried_and_forgotten_when_done() {
        let (_d, store, id, _) = queued();
        let headers = vec![("AS2-To".to_string(), "P".to_string())];
        store
            .owe_async_mdn(id, "http://p/mdn", &headers, b"mdn", 1_000)
            .unwrap();
        assert!(
            store.claim_owed_mdns(999, 2_000, 10).unwrap().is_empty(),
            "claimed by the first attempt until its lease ends"
        );
        let owed = store.claim_owed_mdns(1_000, 61_000, 10).unwrap();
        let partner_id = owed[0].partner_id;
        assert_eq!(
            owed,
            [OwedMdn {
                id,
                partner_id,
                url: "http://p/mdn".into(),
                headers: headers.clone(),
                body: b"mdn".to_vec(),
                attempts: 0,
            }]
        );
        assert!(store.claim_owed_mdns(1_000, 61_000, 10).unwrap().is_empty());
        store.owed_mdn_retry(id, 5_000).unwrap();
        assert_eq!(
            store.claim_owed_mdns(5_000, 9_000, 10).unwrap()[0].attempts,
            1
        );
        // A restarted daemon voids the lease of the stopped one.
        assert_eq!(store.release_owed_mdns(6_000).unwrap(), 1);
        assert_eq!(store.claim_owed_mdns(6_000, 9_000, 10).unwrap().len(), 1);
        store.owed_mdn_done(id).unwrap();
        assert!(store
            .claim_owed_mdns(i64::MAX, i64::MAX, 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_stopped_sender_is_requeued() {
        let (_d, store, id, _) = queued();
        store.claim_queued(now_ms()).unwrap().unwrap();
        assert_eq!(store.requeue_sending(5).unwrap(), 1);
        assert_eq!(store.claim_queued(now_ms()).unwrap().unwrap().id, id);
    }

    #[test]
    fn a_second_delivery_with_the_same_message_id_stores_nothing() {
        let (_d, store, user, outbox) = crate::store::test_store("u", "S", "P");
        let inbox = BoxRef {
            kind: BoxKind::Inbox,
            ..outbox
        };
        let blob = store.blobs().put_bytes(b"x").unwrap();
        let files = vec![(
            "x.edi".to_string(),
            crate::store::PickupFile {
                name: "x.edi".into(),
                blob,
                size: 1,
                content: None,
            },
        )];
        let origin = crate::store::InboundOrigin {
            as2_message_id: "m@x".into(),
            mic: None,
            request: None,
        };
        let top = crate::store::Placement::Top { replace: false };
        let first = store
            .deliver(user, inbox, "x.edi", top, &files, Some(&origin))
            .unwrap();
        match store.deliver(user, inbox, "x.edi", top, &files, Some(&origin)) {
            Err(StoreError::AlreadyReceived { message_id }) => assert_eq!(message_id, first),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.messages(None, 10).unwrap().len(), 1);
        assert_eq!(store.entries(inbox, 0).unwrap().len(), 1);
    }

    #[test]
    fn a_stop_during_the_last_allowed_attempt_fails_the_message() {
        let (_d, store, id, _) = queued();
        store.claim_queued(now_ms()).unwrap().unwrap();
        assert_eq!(store.requeue_sending(1).unwrap(), 0);
        let m = &store.messages(None, 1).unwrap()[0];
        assert_eq!((m.id, m.state.as_str()), (id, "failed"));
        assert!(m
            .detail
            .as_deref()
            .unwrap()
            .contains("attempt 1, the last one allowed"));
    }

    #[test]
    fn failure_places_files_and_reason_in_failed() {
        let (_d, store, id, outbox) = queued();
        store.claim_queued(now_ms()).unwrap();
        store
            .message_failed(id, "The partner answered HTTP 403 Forbidden.", None)
            .unwrap();
        let failed = BoxRef {
            kind: BoxKind::Failed,
            ..outbox
        };
        assert_eq!(
            crate::store::tests::names_at_top(&store, failed),
            ["order.edi", "order.edi.reason.txt"]
        );
        let m = &store.messages(None, 1).unwrap()[0];
        assert_eq!(m.state, MessageState::Failed);
    }
}
