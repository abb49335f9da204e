//! as2box: a self-hosted AS2 gateway whose users exchange files through SFTP mailboxes.
//!
//! See `docs/ARCHITECTURE.md` for the map of modules and the boundaries between them.

pub mod as2;
pub mod audit;
pub mod basic_auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod keys;
pub mod mailbox;
pub mod names;
pub mod positioned;
pub mod sftp;
pub mod store;
pub mod sysaccount;
pub mod timefmt;
