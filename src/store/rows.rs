//! Configuration rows: users, their keys, stations and partners.

use rusqlite::{params, OptionalExtension, Row};

use std::path::{Path, PathBuf};

use super::{
    CompressOption, EncryptOption, InboxLayout, MdnOption, Partner, PartnerProfile, PickupMode,
    Result, SignOption, Station, Store, StoreError, User,
};
use crate::timefmt::now_ms;

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        uid: r.get(2)?,
        gid: r.get(3)?,
        quota: r.get::<_, Option<i64>>(4)?.map(|q| q.max(0) as u64),
        created_ms: r.get(5)?,
    })
}

fn station_from_row(r: &Row<'_>) -> rusqlite::Result<Station> {
    let layout: String = r.get(3)?;
    Ok(Station {
        id: r.get(0)?,
        user_id: r.get(1)?,
        as2_id: r.get(2)?,
        inbox_layout: InboxLayout::parse(&layout).unwrap_or(InboxLayout::PerMessage),
        created_ms: r.get(4)?,
        key_path: r.get::<_, Option<String>>(5)?.map(PathBuf::from),
        cert_path: r.get::<_, Option<String>>(6)?.map(PathBuf::from),
        pickup: PickupMode::parse(&r.get::<_, String>(7)?).unwrap_or(PickupMode::Close),
    })
}

/// A list column: one item a line (paths and URLs hold no line breaks: checked on input).
fn lines(text: String) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn partner_from_row(r: &Row<'_>) -> rusqlite::Result<Partner> {
    Ok(Partner {
        id: r.get(0)?,
        user_id: r.get(1)?,
        as2_id: r.get(2)?,
        test: r.get(3)?,
        url: r.get(4)?,
        created_ms: r.get(5)?,
        profile: PartnerProfile {
            cert_paths: lines(r.get(6)?).into_iter().map(PathBuf::from).collect(),
            trust_path: r.get::<_, Option<String>>(7)?.map(PathBuf::from),
            sign: SignOption::parse(&r.get::<_, String>(8)?).unwrap_or(SignOption::Sha256),
            encrypt: EncryptOption::parse(&r.get::<_, String>(9)?)
                .unwrap_or(EncryptOption::Aes256Cbc),
            compress: CompressOption::parse(&r.get::<_, String>(10)?)
                .unwrap_or(CompressOption::None),
            mdn: MdnOption::parse(&r.get::<_, String>(11)?).unwrap_or(MdnOption::Sync),
            mdn_signed: r.get(12)?,
            content_type: r.get(13)?,
            inbound: crate::store::InboundPolicy {
                require_signature: r.get(14)?,
                require_encryption: r.get(15)?,
            },
            mdn_url_allow: lines(r.get(16)?),
            binary_canonicalization: r.get(17)?,
            micalg_spelling: r.get(18)?,
            chunked: r.get(19)?,
            extra_headers: lines(r.get(20)?)
                .iter()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
            subject_template: r.get(21)?,
            as2_version: r.get(22)?,
            basic_auth_out: match (r.get(23)?, r.get(24)?) {
                (Some(user), Some(password)) => {
                    Some(crate::store::BasicCredentials { user, password })
                }
                _ => None,
            },
            basic_auth_in: match (r.get(25)?, r.get(26)?) {
                (Some(user), Some(password_hash)) => Some(crate::store::InboundCredentials {
                    user,
                    password_hash,
                }),
                _ => None,
            },
            tls_client: match (
                r.get::<_, Option<String>>(27)?,
                r.get::<_, Option<String>>(28)?,
            ) {
                (Some(cert), Some(key)) => Some(crate::store::TlsClientIdentity {
                    cert_path: PathBuf::from(cert),
                    key_path: PathBuf::from(key),
                }),
                _ => None,
            },
        },
    })
}

const USER_COLS: &str = "id, name, uid, gid, quota, created_ms";
const STATION_COLS: &str =
    "id, user_id, as2_id, inbox_layout, created_ms, key_path, cert_path, pickup";
const PARTNER_COLS: &str = "id, user_id, as2_id, test, url, created_ms, certs, trust_path, sign, encrypt, compress, mdn, mdn_signed, content_type, require_signature, require_encryption, mdn_url_allow, binary_canonicalization, micalg_spelling, chunked, extra_headers, subject_template, as2_version, basic_auth_out_user, basic_auth_out_password, basic_auth_in_user, basic_auth_in_hash, tls_client_cert, tls_client_key";

/// One stored public key of a user.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UserKey {
    /// Row id (what `user key remove` takes).
    pub id: i64,
    /// The `authorized_keys` line.
    pub public_key: String,
    /// When it was added.
    pub created_ms: i64,
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Store {
    /// Adds a user backed by the system account `uid`/`gid`.
    pub fn add_user(&self, name: &str, uid: u32, gid: u32, quota: Option<u64>) -> Result<User> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO users (name, uid, gid, quota, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, uid, gid, quota.map(|q| q as i64), now_ms()],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Exists(format!("user {name:?}"))
                } else {
                    e.into()
                }
            })?;
            Ok(())
        })?;
        self.user(name)?
            .ok_or_else(|| StoreError::NotFound(format!("user {name:?}")))
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Result<Option<User>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE name = ?1"),
                [name],
                user_from_row,
            )
            .optional()?)
        })
    }

    /// The user with row id `id`.
    pub fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                [id],
                user_from_row,
            )
            .optional()?)
        })
    }

    /// All users by name.
    pub fn users(&self) -> Result<Vec<User>> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {USER_COLS} FROM users ORDER BY name"))?;
            let rows = st.query_map([], user_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Sets or clears a user's quota.
    pub fn set_quota(&self, user_id: i64, quota: Option<u64>) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE users SET quota = ?2 WHERE id = ?1",
                params![user_id, quota.map(|q| q as i64)],
            )?;
            Ok(())
        })
    }

    /// Bytes the user stores in all boxes.
    pub fn usage(&self, user_id: i64) -> Result<u64> {
        self.read(|c| {
            let n: i64 = c.query_row(
                // The archive of the user's messages counts like their payloads.
                "SELECT COALESCE((SELECT SUM(size) FROM entries WHERE user_id = ?1), 0)
                      + COALESCE((SELECT SUM(a.size) FROM message_archive a JOIN messages m ON m.id = a.message_id WHERE m.user_id = ?1), 0)",
                [user_id],
                |r| r.get(0),
            )?;
            Ok(n.max(0) as u64)
        })
    }

    /// Number of files the user has in any box.
    pub fn file_count(&self, user_id: i64) -> Result<u64> {
        self.read(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM entries WHERE user_id = ?1 AND is_dir = 0",
                [user_id],
                |r| r.get(0),
            )?;
            Ok(n.max(0) as u64)
        })
    }

    /// Removes a user with their stations, partners, keys and files. Without `force`,
    /// refuses while the user has files or stations.
    pub fn remove_user(&self, user_id: i64, force: bool) -> Result<()> {
        self.write(|tx| {
            if !force {
                let files: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM entries WHERE user_id = ?1 AND is_dir = 0",
                    [user_id],
                    |r| r.get(0),
                )?;
                if files > 0 {
                    return Err(StoreError::NotEmpty(format!(
                        "the user still has {files} file(s) in their mailboxes: pass --force to delete them too"
                    )));
                }
            }
            tx.execute("DELETE FROM entries WHERE user_id = ?1", [user_id])?;
            tx.execute("DELETE FROM partners WHERE user_id = ?1", [user_id])?;
            tx.execute("DELETE FROM stations WHERE user_id = ?1", [user_id])?;
            tx.execute("DELETE FROM user_keys WHERE user_id = ?1", [user_id])?;
            tx.execute("DELETE FROM users WHERE id = ?1", [user_id])?;
            Ok(())
        })
    }

    /// The user's public keys in `authorized_keys` format, one per line.
    pub fn public_keys(&self, user_id: i64) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st =
                c.prepare("SELECT public_key FROM user_keys WHERE user_id = ?1 ORDER BY id")?;
            let rows = st.query_map([user_id], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// The user's keys with their row ids, oldest first.
    pub fn user_keys(&self, user_id: i64) -> Result<Vec<UserKey>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT id, public_key, created_ms FROM user_keys WHERE user_id = ?1 ORDER BY id",
            )?;
            let rows = st.query_map([user_id], |r| {
                Ok(UserKey {
                    id: r.get(0)?,
                    public_key: r.get(1)?,
                    created_ms: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Adds a public key (an `authorized_keys` line, checked by the caller) to a user.
    /// The same key twice is refused.
    pub fn add_public_key(&self, user_id: i64, public_key: &str) -> Result<i64> {
        self.write(|tx| {
            let exists: i64 = tx.query_row(
                "SELECT COUNT(*) FROM user_keys WHERE user_id = ?1 AND public_key = ?2",
                params![user_id, public_key],
                |r| r.get(0),
            )?;
            if exists > 0 {
                return Err(StoreError::Exists("this key of the user".into()));
            }
            tx.execute(
                "INSERT INTO user_keys (user_id, public_key, created_ms) VALUES (?1, ?2, ?3)",
                params![user_id, public_key, now_ms()],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Removes one key of a user by its row id.
    pub fn remove_public_key(&self, user_id: i64, key_id: i64) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM user_keys WHERE user_id = ?1 AND id = ?2",
                params![user_id, key_id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("key {key_id} of this user")));
            }
            Ok(())
        })
    }

    /// Replaces all of a user's keys with `public_key`, in one transaction: from the commit
    /// on, only the new key is listed.
    pub fn replace_public_keys(&self, user_id: i64, public_key: &str) -> Result<i64> {
        self.write(|tx| {
            tx.execute("DELETE FROM user_keys WHERE user_id = ?1", [user_id])?;
            tx.execute(
                "INSERT INTO user_keys (user_id, public_key, created_ms) VALUES (?1, ?2, ?3)",
                params![user_id, public_key, now_ms()],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Removes every file and folder from all of a user's boxes (`user reset`); messages
    /// already queued stay queued. Returns the number of files removed. Their blobs go
    /// with the next sweep.
    pub fn clear_user_files(&self, user_id: i64) -> Result<u64> {
        self.write(|tx| {
            let files: i64 = tx.query_row(
                "SELECT COUNT(*) FROM entries WHERE user_id = ?1 AND is_dir = 0",
                [user_id],
                |r| r.get(0),
            )?;
            tx.execute("DELETE FROM entries WHERE user_id = ?1", [user_id])?;
            Ok(files.max(0) as u64)
        })
    }

    /// Adds a station (our AS2 id) to a user.
    pub fn add_station(&self, user_id: i64, as2_id: &str, layout: InboxLayout) -> Result<Station> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO stations (user_id, as2_id, inbox_layout, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![user_id, as2_id, layout.as_str(), now_ms()],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Exists(format!("station {as2_id:?} (station ids are unique across the gateway)"))
                } else {
                    e.into()
                }
            })?;
            Ok(())
        })?;
        self.station(as2_id)?
            .ok_or_else(|| StoreError::NotFound(format!("station {as2_id:?}")))
    }

    /// The station with AS2 id `as2_id`.
    pub fn station(&self, as2_id: &str) -> Result<Option<Station>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {STATION_COLS} FROM stations WHERE as2_id = ?1"),
                [as2_id],
                station_from_row,
            )
            .optional()?)
        })
    }

    /// The station with row id `id`.
    pub fn station_by_id(&self, id: i64) -> Result<Option<Station>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {STATION_COLS} FROM stations WHERE id = ?1"),
                [id],
                station_from_row,
            )
            .optional()?)
        })
    }

    /// Stations of one user, or of everybody.
    pub fn stations(&self, user_id: Option<i64>) -> Result<Vec<Station>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {STATION_COLS} FROM stations WHERE ?1 IS NULL OR user_id = ?1 ORDER BY as2_id"
            ))?;
            let rows = st.query_map([user_id], station_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Changes a station's inbox layout.
    pub fn set_station_pickup(&self, station_id: i64, mode: PickupMode) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE stations SET pickup = ?2 WHERE id = ?1",
                params![station_id, mode.as_str()],
            )?;
            Ok(())
        })
    }

    /// Changes a station's inbox layout.
    pub fn set_station_layout(&self, station_id: i64, layout: InboxLayout) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE stations SET inbox_layout = ?2 WHERE id = ?1",
                params![station_id, layout.as_str()],
            )?;
            Ok(())
        })
    }

    /// Sets the key and certificate files a station signs and decrypts with.
    pub fn set_station_keys(&self, station_id: i64, key: &Path, cert: &Path) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE stations SET key_path = ?2, cert_path = ?3 WHERE id = ?1",
                params![station_id, key.to_string_lossy(), cert.to_string_lossy()],
            )?;
            Ok(())
        })
    }

    /// Removes a station. Without `force`, refuses while its boxes hold files.
    pub fn remove_station(&self, station_id: i64, force: bool) -> Result<()> {
        self.write(|tx| {
            if !force {
                let files: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM entries WHERE station_id = ?1 AND is_dir = 0",
                    [station_id],
                    |r| r.get(0),
                )?;
                if files > 0 {
                    return Err(StoreError::NotEmpty(format!(
                        "the station's mailboxes still hold {files} file(s): pass --force to delete them too"
                    )));
                }
            }
            tx.execute("DELETE FROM entries WHERE station_id = ?1", [station_id])?;
            tx.execute("DELETE FROM stations WHERE id = ?1", [station_id])?;
            Ok(())
        })
    }

    /// Adds a partner to a user.
    pub fn add_partner(
        &self,
        user_id: i64,
        as2_id: &str,
        test: bool,
        url: Option<&str>,
    ) -> Result<Partner> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO partners (user_id, as2_id, test, url, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user_id, as2_id, test, url, now_ms()],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    let kind = if test { "test partner" } else { "partner" };
                    StoreError::Exists(format!("{kind} {as2_id:?} of this user"))
                } else {
                    e.into()
                }
            })?;
            Ok(())
        })?;
        self.partner(user_id, as2_id, test)?
            .ok_or_else(|| StoreError::NotFound(format!("partner {as2_id:?}")))
    }

    /// A user's partner by AS2 id and type.
    pub fn partner(&self, user_id: i64, as2_id: &str, test: bool) -> Result<Option<Partner>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {PARTNER_COLS} FROM partners WHERE user_id = ?1 AND as2_id = ?2 AND test = ?3"
                ),
                params![user_id, as2_id, test],
                partner_from_row,
            )
            .optional()?)
        })
    }

    /// The partner with row id `id`.
    pub fn partner_by_id(&self, id: i64) -> Result<Option<Partner>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {PARTNER_COLS} FROM partners WHERE id = ?1"),
                [id],
                partner_from_row,
            )
            .optional()?)
        })
    }

    /// A user's partners (or everybody's), by AS2 id, production before test.
    pub fn partners(&self, user_id: Option<i64>) -> Result<Vec<Partner>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {PARTNER_COLS} FROM partners WHERE ?1 IS NULL OR user_id = ?1 ORDER BY as2_id, test"
            ))?;
            let rows = st.query_map([user_id], partner_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Changes a partner's URL.
    pub fn set_partner_url(&self, partner_id: i64, url: Option<&str>) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE partners SET url = ?2 WHERE id = ?1",
                params![partner_id, url],
            )?;
            Ok(())
        })
    }

    /// Replaces a partner's AS2 settings.
    pub fn set_partner_profile(&self, partner_id: i64, p: &PartnerProfile) -> Result<()> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        let joined = |items: Vec<String>| -> Result<String> {
            if let Some(bad) = items.iter().find(|i| i.contains(['\n', '\r'])) {
                return Err(StoreError::NotApplicable(format!(
                    "{bad:?} contains a line break: give a path or URL without one"
                )));
            }
            Ok(items.join("\n"))
        };
        let certs = joined(
            p.cert_paths
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect(),
        )?;
        let allow = joined(p.mdn_url_allow.clone())?;
        let extra_headers = joined(
            p.extra_headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect(),
        )?;
        self.write(|tx| {
            tx.execute(
                "UPDATE partners SET certs = ?2, trust_path = ?3, sign = ?4, encrypt = ?5, compress = ?6, mdn = ?7, mdn_signed = ?8, content_type = ?9, require_signature = ?10, require_encryption = ?11, mdn_url_allow = ?12,
                 binary_canonicalization = ?13, micalg_spelling = ?14, chunked = ?15, extra_headers = ?16, subject_template = ?17, as2_version = ?18,
                 basic_auth_out_user = ?19, basic_auth_out_password = ?20, basic_auth_in_user = ?21, basic_auth_in_hash = ?22,
                 tls_client_cert = ?23, tls_client_key = ?24 WHERE id = ?1",
                params![
                    partner_id,
                    certs,
                    path(&p.trust_path),
                    p.sign.as_str(),
                    p.encrypt.as_str(),
                    p.compress.as_str(),
                    p.mdn.as_str(),
                    p.mdn_signed,
                    p.content_type,
                    p.inbound.require_signature,
                    p.inbound.require_encryption,
                    allow,
                    p.binary_canonicalization,
                    p.micalg_spelling,
                    p.chunked,
                    extra_headers,
                    p.subject_template,
                    p.as2_version,
                    p.basic_auth_out.as_ref().map(|c| &c.user),
                    p.basic_auth_out.as_ref().map(|c| &c.password),
                    p.basic_auth_in.as_ref().map(|c| &c.user),
                    p.basic_auth_in.as_ref().map(|c| &c.password_hash),
                    p.tls_client.as_ref().map(|t| t.cert_path.to_string_lossy().into_owned()),
                    p.tls_client.as_ref().map(|t| t.key_path.to_string_lossy().into_owned()),
                ],
            )?;
            Ok(())
        })
    }

    /// Removes a partner. Without `force`, refuses while its boxes hold files.
    pub fn remove_partner(&self, partner_id: i64, force: bool) -> Result<()> {
        self.write(|tx| {
            if !force {
                let files: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM entries WHERE partner_id = ?1 AND is_dir = 0",
                    [partner_id],
                    |r| r.get(0),
                )?;
                if files > 0 {
                    return Err(StoreError::NotEmpty(format!(
                        "the partner's mailboxes still hold {files} file(s): pass --force to delete them too"
                    )));
                }
            }
            tx.execute("DELETE FROM entries WHERE partner_id = ?1", [partner_id])?;
            tx.execute("DELETE FROM partners WHERE id = ?1", [partner_id])?;
            Ok(())
        })
    }
}
