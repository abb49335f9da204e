//! The integration and system tests, one binary with a module per area (the layout ripgrep
//! uses): one compile of the shared harness in `common/` and one link step instead of one
//! per file. Filter by area with the module name: `cargo test --release --test system fs_`.

#[macro_use]
mod common;

mod as2_decode_cli;
mod as2_interop_openssl;
mod as2_interop_pyas2lib;
mod as2_proptest;
mod as2_roundtrip;
mod as2_vectors;
mod config_file;
mod daemon_bounds;
mod daemon_failures;
mod daemon_loopback;
mod daemon_ops;
mod daemon_pyas2lib;
mod daemon_security;
mod doctor;
mod fs_durability;
mod fs_inbox;
mod fs_outbox;
mod fs_privsep;
mod fs_quota;
mod fs_tree;
mod sftp_clients;
mod sftp_interrupted;
mod sftp_keys;
mod sftp_partner_ops;
mod sftp_refusals;
mod sftp_throttle;

/// Not a test: the harness's spawn helper (see common/spawner.rs), which the harness starts
/// as `<this binary> --exact zz_spawn_server --ignored`.
#[test]
#[ignore = "helper process of the harness, started by the harness itself"]
fn zz_spawn_server() {
    common::spawner::serve_if_helper();
}
