//! The AS2 protocol core (RFC 4130): pure functions from bytes and keys to bytes.
//! No sockets, no files, no clock except values passed in.
//!
//! See `docs/AS2.md` for the map of types and the RFC sections they follow.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod algorithms;
pub mod certs;
pub mod cms;
pub mod cms_stream;
pub mod der;
pub mod encoding;
pub mod error;
pub mod headers;
pub mod mdn;
pub mod message;
pub mod mic;
pub mod mime;
pub mod stream;

pub use algorithms::{DigestAlgorithm, EncryptionAlgorithm};
pub use certs::{KeyPair, ValidityPolicy};
pub use error::{As2Error, DispositionModifier};
pub use headers::Headers;
