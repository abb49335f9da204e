//! The system tests (a real mount, daemon, sshd and peers), one binary with a module per
//! area, the layout ripgrep uses: the shared harness in `common/` compiles once and the
//! binary links once, instead of once per file. Filter by area with the module name:
//! `cargo test --release --test system fs_`. The pure AS2 core has its own binary,
//! `tests/as2`.

#[macro_use]
mod macros;

mod common;

mod config_file;
mod daemon_alerts;
mod daemon_archive;
mod daemon_bounds;
mod daemon_doorbell;
mod daemon_failures;
mod daemon_large;
mod daemon_loopback;
mod daemon_ops;
mod daemon_pyas2lib;
mod daemon_security;
mod daemon_wire;
mod doctor;
mod fs_durability;
mod fs_inbox;
mod fs_outbox;
mod fs_passthrough;
mod fs_privsep;
mod fs_quota;
mod fs_tree;
mod sftp_clients;
mod sftp_interrupted;
mod sftp_keys;
mod sftp_partner_ops;
mod sftp_refusals;
mod sftp_small_files;
mod sftp_throttle;

/// Not a test: the harness's spawn helper (see common/spawner.rs), which the harness starts
/// as `<this binary> --exact zz_spawn_server --ignored`.
#[test]
#[ignore = "helper process of the harness, started by the harness itself"]
fn zz_spawn_server() {
    common::spawner::serve_if_helper();
}
