//! The records the store keeps, as plain types with no database in them.

use serde::Serialize;

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

/// How a station's inboxes name delivered files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InboxLayout {
    /// `inbox/<stamp>/<name>`
    PerMessage,
    /// `inbox/<stamp>-<name>`
    Prefixed,
    /// `inbox/<name>`, replacing an earlier file of the same name.
    Plain,
}

impl InboxLayout {
    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            InboxLayout::PerMessage => "per-message",
            InboxLayout::Prefixed => "prefixed",
            InboxLayout::Plain => "plain",
        }
    }

    /// Parses [`InboxLayout::as_str`] output.
    pub fn parse(s: &str) -> Option<InboxLayout> {
        match s {
            "per-message" => Some(InboxLayout::PerMessage),
            "prefixed" => Some(InboxLayout::Prefixed),
            "plain" => Some(InboxLayout::Plain),
            _ => None,
        }
    }
}

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
        }
    }
}

/// Declares a settings enum stored by its kebab-case name.
macro_rules! setting_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
        pub enum $name {
            $($(#[$vdoc])* #[value(name = $text)] #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// The stored and displayed name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses [`Self::as_str`] output.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

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

/// A sent or received message.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// Row id.
    pub id: i64,
    /// `out` (from an outbox) or `in` (delivered to an inbox).
    pub direction: String,
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
    /// `queued`, `sending`, `awaiting-mdn`, `delivered`, `failed`, `received`.
    pub state: String,
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
