//! The tests of the pure AS2 core and its interop (openssl CLI, pyas2lib), one binary with
//! a module per area. They need no root and no mount, and they fork `openssl`, `python` and
//! `as2box` directly, so they stay out of the system-test binary (`tests/system`), whose
//! mount tests must not see foreign forks (tests/system/common/gate.rs). Filter by module:
//! `cargo test --release --test as2 as2_vectors`.

/// The AS2 helpers, shared with the daemon tests of `tests/system`.
#[path = "../system/common/as2.rs"]
mod as2_helpers;
#[path = "../system/common/skip.rs"]
mod skip_rule;

/// The modules name the helpers by their path in `tests/system`.
mod common {
    pub(crate) use super::as2_helpers as as2;
    pub(crate) use super::skip_rule as skip;
}

mod as2_decode_cli;
mod as2_interop_openssl;
mod as2_interop_pyas2lib;
mod as2_proptest;
mod as2_roundtrip;
mod as2_vectors;
