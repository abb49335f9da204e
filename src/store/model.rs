//! The records the store keeps, as plain types with no database in them.

use serde::Serialize;

/// The spelling of a typed value in the database and in what users see, both ways.
macro_rules! stored_names {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            #[allow(dead_code)]
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name stored in the database and shown to users.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// Parses [`Self::as_str`] output.
            pub fn parse(s: &str) -> Option<$ty> {
                match s {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl rusqlite::types::ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $ty {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let text = value.as_str()?;
                $ty::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!(concat!("unknown ", $what, " {:?} in the database"), text).into(),
                    )
                })
            }
        }
    };
}

/// A mailbox user, backed by a system account of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Name (also the system account's name).
    pub name: String,
    /// The system account's uid.
    pub uid: u32,
    /// The system account's primary gid.
    pub gid: u32,
    /// Most bytes the user may store in all boxes together.
    pub quota: Option<u64>,
    /// When the user was added (ms since the epoch).
    pub created_ms: i64,
}

/// Declares a settings enum stored by its kebab-case name.
macro_rules! setting_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
        pub enum $name {
            $($(#[$vdoc])* #[value(name = $text)] #[serde(rename = $text)] $variant),+
        }

        stored_names!($name, "setting", { $($variant => $text),+ });
    };
}

setting_enum!(
    /// How a station's inboxes name delivered files.
    InboxLayout {
        /// `inbox/<stamp>/<name>`
        PerMessage = "per-message",
        /// `inbox/<stamp>-<name>`
        Prefixed = "prefixed",
        /// `inbox/<name>`, replacing an earlier file of the same name.
        Plain = "plain",
    }
);

/// One of our AS2 identities, owned by a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Station {
    /// Row id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// The AS2 id (unique across the gateway; incoming messages are routed by it).
    pub as2_id: String,
    /// Inbox naming.
    pub inbox_layout: InboxLayout,
    /// Our private key (PEM or PKCS#12) for signing and decrypting.
    pub key_path: Option<std::path::PathBuf>,
    /// Our certificate (PEM), given to partners.
    pub cert_path: Option<std::path::PathBuf>,
    /// What commits an upload in the station's outboxes.
    pub pickup: PickupMode,
    /// When added.
    pub created_ms: i64,
}

/// A trading partner's AS2 identity, as known to one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partner {
    /// Row id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// The AS2 id (unique per user and type).
    pub as2_id: String,
    /// A test partner: its folders are under `<partner>/test/`.
    pub test: bool,
    /// Where we send to.
    pub url: Option<String>,
    /// How we exchange messages with this partner.
    pub profile: PartnerProfile,
    /// When added.
    pub created_ms: i64,
}

/// The AS2 settings of a partner: what we send and what we expect back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartnerProfile {
    /// The partner's certificates (PEM or DER files), oldest first: several during a
    /// rollover. Its signatures verify against any of them that is valid; we encrypt to the
    /// newest valid one (`as2::certs::newest_valid`).
    pub cert_paths: Vec<std::path::PathBuf>,
    /// A CA or certificate to trust for the partner's HTTPS server.
    pub trust_path: Option<std::path::PathBuf>,
    /// Signature digest for what we send.
    pub sign: SignOption,
    /// Encryption for what we send.
    pub encrypt: EncryptOption,
    /// Compression for what we send.
    pub compress: CompressOption,
    /// Which receipt we ask for.
    pub mdn: MdnOption,
    /// Ask for a signed receipt.
    pub mdn_signed: bool,
    /// The MIME type our files are sent as (e.g. `application/edi-x12`); text types are
    /// sent in canonical form (CRLF line ends).
    pub content_type: String,
    /// What the partner must prove on what it sends us. Secure by default: both required.
    pub inbound: InboundPolicy,
    /// Where, besides the scheme and host of the partner's own URL, the async MDNs we owe
    /// the partner may be POSTed: URL prefixes. Loopback, link-local and private addresses
    /// are reached only through an entry listed here.
    pub mdn_url_allow: Vec<String>,
    /// Sign what we send exactly as uploaded, text too (no CRLF conversion; IBM Sterling).
    pub binary_canonicalization: bool,
    /// How we spell the MIC algorithm we ask for in `Disposition-Notification-Options`.
    pub micalg_spelling: MicalgSpelling,
    /// Send with `Transfer-Encoding: chunked` instead of `Content-Length`.
    pub chunked: bool,
    /// More HTTP header fields on what we send (never an AS2 or HTTP framing field).
    pub extra_headers: Vec<(String, String)>,
    /// The `Subject` of what we send, with `{station}`, `{partner}` and `{name}` filled in;
    /// `None`: `AS2 message from {station}`.
    pub subject_template: Option<String>,
    /// The AS2-Version we speak with the partner; 1.3 also sends `AS2-Product` and refuses
    /// SHA-1, 3DES and RC2 both ways.
    pub as2_version: As2Version,
    /// HTTP Basic credentials we send to the partner's URL.
    pub basic_auth_out: Option<BasicCredentials>,
    /// HTTP Basic credentials the partner must send to ours (checked before anything of the
    /// request is parsed).
    pub basic_auth_in: Option<InboundCredentials>,
    /// The TLS client certificate (and its key) we present to the partner's HTTPS server.
    pub tls_client: Option<TlsClientIdentity>,
}

/// A TLS client certificate and its private key (PEM files), for a partner's HTTPS
/// endpoint that asks for one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsClientIdentity {
    /// The certificate (PEM; a chain after it is sent too).
    pub cert_path: std::path::PathBuf,
    /// Its private key (PEM).
    pub key_path: std::path::PathBuf,
}

/// HTTP Basic credentials we present. The password stays in `config.db` (root-owned,
/// readable by the daemon's group, never by SFTP users) and is never printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BasicCredentials {
    /// User name.
    pub user: String,
    /// Password.
    #[serde(skip)]
    pub password: String,
}

/// HTTP Basic credentials a partner must present: the user name and a salted hash of the
/// password (`crate::basic_auth`), never the password itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundCredentials {
    /// User name.
    pub user: String,
    /// `salt$sha256` in hex, as `crate::basic_auth::hash_password` makes it.
    #[serde(skip)]
    pub password_hash: String,
}

/// What a partner must prove on each message it sends us (checked before anything is
/// stored; a message short of it gets a negative MDN, `insufficient-message-security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InboundPolicy {
    /// A signature that verifies against one of the partner's configured certificates.
    pub require_signature: bool,
    /// Encryption to our station's key.
    pub require_encryption: bool,
}

impl Default for InboundPolicy {
    fn default() -> Self {
        InboundPolicy {
            require_signature: true,
            require_encryption: true,
        }
    }
}

impl Default for PartnerProfile {
    fn default() -> Self {
        PartnerProfile {
            cert_paths: Vec::new(),
            trust_path: None,
            sign: SignOption::Sha256,
            encrypt: EncryptOption::Aes256Cbc,
            compress: CompressOption::None,
            mdn: MdnOption::Sync,
            mdn_signed: true,
            content_type: "application/octet-stream".into(),
            inbound: InboundPolicy::default(),
            mdn_url_allow: Vec::new(),
            binary_canonicalization: false,
            micalg_spelling: MicalgSpelling::Dashed,
            chunked: false,
            extra_headers: Vec::new(),
            subject_template: None,
            as2_version: As2Version::V1_2,
            basic_auth_out: None,
            basic_auth_in: None,
            tls_client: None,
        }
    }
}

setting_enum!(
    /// What commits an upload in an outbox (docs/SEMANTICS.md "Outbox"). SFTP carries no
    /// "upload complete" signal: a client cancelling a `put` closes the file normally.
    PickupMode {
        /// A close with a normal name commits (a cancelled upload is sent truncated).
        Close = "close",
        /// Only a rename from a temporary name (or of a `.ready` folder) commits; a plain
        /// close holds the file.
        Rename = "rename",
    }
);

setting_enum!(
    /// Signature digest.
    SignOption {
        /// Unsigned.
        None = "none",
        /// SHA-1 (legacy partners only).
        Sha1 = "sha1",
        /// SHA-256.
        Sha256 = "sha256",
        /// SHA-384.
        Sha384 = "sha384",
        /// SHA-512.
        Sha512 = "sha512",
    }
);

setting_enum!(
    /// Content encryption.
    EncryptOption {
        /// Not encrypted.
        None = "none",
        /// Triple DES (legacy partners only).
        TripleDes = "3des",
        /// AES-128-CBC.
        Aes128Cbc = "aes128-cbc",
        /// AES-192-CBC.
        Aes192Cbc = "aes192-cbc",
        /// AES-256-CBC.
        Aes256Cbc = "aes256-cbc",
        /// AES-128-GCM (only where the partner supports it).
        Aes128Gcm = "aes128-gcm",
        /// AES-256-GCM (only where the partner supports it).
        Aes256Gcm = "aes256-gcm",
    }
);

setting_enum!(
    /// Compression (RFC 5402).
    CompressOption {
        /// Not compressed.
        None = "none",
        /// Compressed, then signed.
        BeforeSign = "before-sign",
        /// Signed, then compressed.
        AfterSign = "after-sign",
    }
);

setting_enum!(
    /// How the MIC algorithm we ask for is spelled (`signed-receipt-micalg`).
    MicalgSpelling {
        /// `sha-256`, as RFC 5751 spells it.
        Dashed = "sha-256",
        /// `sha256`, as pyas2lib and some older products expect.
        Compact = "sha256",
    }
);

setting_enum!(
    /// The AS2-Version spoken with a partner.
    As2Version {
        /// RFC 4130 with compression (RFC 5402).
        V1_2 = "1.2",
        /// The RFC 4130 revision: sends `AS2-Product`, refuses SHA-1, 3DES and RC2.
        V1_3 = "1.3",
    }
);

setting_enum!(
    /// Receipt (MDN) request.
    MdnOption {
        /// No receipt.
        None = "none",
        /// In the HTTP response.
        Sync = "sync",
        /// POSTed back to us later.
        Async = "async",
    }
);

/// The three folders of a station/partner pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BoxKind {
    /// Received files.
    Inbox,
    /// Files to send.
    Outbox,
    /// Files that could not be sent.
    Failed,
}

impl BoxKind {
    /// All three, in listing order.
    pub const ALL: [BoxKind; 3] = [BoxKind::Inbox, BoxKind::Outbox, BoxKind::Failed];

    /// The folder name.
    pub fn name(self) -> &'static str {
        match self {
            BoxKind::Inbox => "inbox",
            BoxKind::Outbox => "outbox",
            BoxKind::Failed => "failed",
        }
    }

    /// The folder name's inverse.
    pub fn from_name(name: &str) -> Option<BoxKind> {
        BoxKind::ALL.into_iter().find(|b| b.name() == name)
    }

    pub(crate) fn code(self) -> i64 {
        match self {
            BoxKind::Inbox => 0,
            BoxKind::Outbox => 1,
            BoxKind::Failed => 2,
        }
    }

    pub(crate) fn from_code(code: i64) -> BoxKind {
        match code {
            0 => BoxKind::Inbox,
            1 => BoxKind::Outbox,
            _ => BoxKind::Failed,
        }
    }
}

/// One box: which station, which partner (the partner row says production or test), which
/// folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BoxRef {
    /// The station.
    pub station_id: i64,
    /// The partner (production or test).
    pub partner_id: i64,
    /// Which folder.
    pub kind: BoxKind,
}

/// Where a mailbox file or folder is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryState {
    /// Outbox: closed but not picked up (temporary name, or in a folder awaiting pickup).
    Held,
    /// Outbox: closed by a writer that was exiting; waits to be completed.
    Interrupted,
    /// Outbox: picked up; listed read-only until `until_ms`.
    Lingering,
    /// Inbox or failed: stored for the user to fetch.
    Stored,
}

impl EntryState {
    pub(crate) fn code(self) -> i64 {
        match self {
            EntryState::Held => 0,
            EntryState::Interrupted => 1,
            EntryState::Lingering => 2,
            EntryState::Stored => 3,
        }
    }

    pub(crate) fn from_code(code: i64) -> EntryState {
        match code {
            0 => EntryState::Held,
            1 => EntryState::Interrupted,
            2 => EntryState::Lingering,
            _ => EntryState::Stored,
        }
    }
}

/// A file or folder inside a box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Row id (never reused).
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// The box it is in.
    pub boxref: BoxRef,
    /// The folder entry it is in, or 0 at the top of the box.
    pub parent: i64,
    /// Its name.
    pub name: String,
    /// A folder (message folder in inbox/failed, batch folder in outbox).
    pub is_dir: bool,
    /// Life cycle state.
    pub state: EntryState,
    /// Content (files only).
    pub blob: Option<String>,
    /// Bytes (files only).
    pub size: u64,
    /// Modification time shown to users (ms).
    pub mtime_ms: i64,
    /// When the row was created (ms); retention counts from here.
    pub created_ms: i64,
    /// Lingering entries disappear at this time (ms).
    pub until_ms: Option<i64>,
    /// The message this entry belongs to, if any.
    pub message_id: Option<i64>,
}

/// Which way a message went. Stored as `out` / `in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From an outbox to a partner.
    Out,
    /// From a partner into an inbox.
    In,
}

/// Where a message is in its life. Outgoing: `queued → sending → awaiting-mdn →
/// delivered`, back to `queued` for a retry, or `failed`. Incoming: `received`, or
/// `refused` (nothing stored). Stored as the kebab-case name (`awaiting-mdn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageState {
    /// Outgoing, picked up, waiting for its (next) attempt.
    Queued,
    /// Outgoing, taken by the sender.
    Sending,
    /// Outgoing, accepted by the partner's server; the async MDN is still to come.
    AwaitingMdn,
    /// Outgoing, the partner confirmed receipt.
    Delivered,
    /// Outgoing, will not be delivered (files in `failed/`).
    Failed,
    /// Incoming, delivered to an inbox.
    Received,
    /// Incoming, refused before anything was stored.
    Refused,
}

stored_names!(Direction, "message direction", { Out => "out", In => "in" });
stored_names!(MessageState, "message state", {
    Queued => "queued",
    Sending => "sending",
    AwaitingMdn => "awaiting-mdn",
    Delivered => "delivered",
    Failed => "failed",
    Received => "received",
    Refused => "refused",
});

impl MessageState {
    /// States from which an outgoing message may still end as delivered or failed; the
    /// retention sweep keeps them whatever their age.
    pub const UNSETTLED: &'static [MessageState] = &[
        MessageState::Queued,
        MessageState::Sending,
        MessageState::AwaitingMdn,
    ];

    /// Whether an outcome (delivered, failed) may still be recorded.
    pub fn is_unsettled(self) -> bool {
        MessageState::UNSETTLED.contains(&self)
    }
}

/// A sent or received message.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// Row id.
    pub id: i64,
    /// `out` (from an outbox) or `in` (delivered to an inbox).
    pub direction: Direction,
    /// User name.
    pub user: String,
    /// Station AS2 id.
    pub station: String,
    /// Partner AS2 id.
    pub partner: String,
    /// Through a test partner.
    pub test: bool,
    /// The name of the file or folder it came from / was delivered as.
    pub name: String,
    /// Where it is in its life.
    pub state: MessageState,
    /// Why it is in that state (for `failed`).
    pub detail: Option<String>,
    /// The files.
    pub files: Vec<MessageFile>,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Last state change (RFC 3339).
    pub updated_at: String,
}

/// One file of a message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageFile {
    /// Attachment name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Content hash (also the blob name).
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_state_reads_back_as_itself() {
        for state in MessageState::ALL {
            assert_eq!(MessageState::parse(state.as_str()), Some(*state));
        }
        assert_eq!(MessageState::AwaitingMdn.as_str(), "awaiting-mdn");
        assert_eq!(MessageState::parse("Queued"), None);
        for direction in Direction::ALL {
            assert_eq!(Direction::parse(direction.as_str()), Some(*direction));
        }
    }

    #[test]
    fn an_unknown_state_in_the_database_is_an_error_not_a_default() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let read: rusqlite::Result<MessageState> = c.query_row("SELECT 'lost'", [], |r| r.get(0));
        let err = read.unwrap_err().to_string();
        assert!(err.contains("unknown message state \"lost\""), "{err}");
        let read: MessageState = c
            .query_row("SELECT ?1", [MessageState::AwaitingMdn], |r| r.get(0))
            .unwrap();
        assert_eq!(read, MessageState::AwaitingMdn);
    }
}
