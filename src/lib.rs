//! as2box: a self-hosted AS2 gateway whose users exchange files through SFTP mailboxes.
//!
//! See `docs/ARCHITECTURE.md` for the map of modules and the boundaries between them.

pub mod as2;
pub mod config;

/// Command-line commands (the lead wires the rest in `src/cli/mod.rs`).
pub mod cli {
    pub mod decode;
}
