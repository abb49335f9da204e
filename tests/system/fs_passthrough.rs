//! FUSE passthrough (docs/SEMANTICS.md "Durability", "Limits"): where the kernel offers it,
//! an upload's writes go from the kernel straight into its spool file and a download reads
//! straight from the stored file, so the mount process neither copies nor sees the data;
//! the content still round-trips byte-exact with its hash recorded, the size of an open
//! upload is still right, and a gap past `outbox.max_bytes` (which the mount no longer
//! sees when it is written) is refused at close without hashing it.
//!
//! What the mount saw is read from `/proc/<mount pid>/io`: `wchar` counts the bytes its
//! threads wrote, into spool files and as replies to read requests alike; `rchar` what
//! they read, hashing included. A control run with passthrough off shows the same measure
//! counting the data.
//!
//! These tests skip (saying so) only when the kernel offers no passthrough or the suite
//! runs with `AS2BOX_TEST_PASSTHROUGH=off`.

use crate::common;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::ops;
use common::*;

const MIB: u64 = 1 << 20;

/// `rchar` and `wchar` of a process (all its threads).
fn io_counters(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/io:\n{text}"))
    };
    (field("rchar:"), field("wchar:"))
}

/// `key = value` of the mount's `mount.status`.
fn mount_status(fx: &Fixture, key: &str) -> String {
    let text = std::fs::read_to_string(fx.state_dir.join("mount.status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or("")
        .to_string()
}

/// Whether the fixture's mount uses passthrough; false (after printing why) only when the
/// kernel lacks it or the suite forces it off. Any other answer fails the test.
fn passthrough_in_use(fx: &Fixture) -> bool {
    let (path, why) = (mount_status(fx, "data_path"), mount_status(fx, "why"));
    if path == "passthrough" {
        return true;
    }
    let kernel_lacks_it = why.contains("kernel offers no FUSE passthrough");
    let forced_off = !passthrough_override().is_empty();
    assert!(
        kernel_lacks_it || forced_off,
        "the mount does not use passthrough ({path}: {why:?}) although the kernel should offer it"
    );
    println!(
        "SKIP {}: the mount does not use FUSE passthrough: {why}",
        fx.test
    );
    false
}

/// The size of `path` as the mount reports it: `AT_STATX_FORCE_SYNC` makes the kernel ask
/// the mount (a GETATTR) instead of answering from what it cached.
fn size_from_the_mount(path: &Path) -> u64 {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statx writes into the zeroed struct we pass.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::AT_STATX_FORCE_SYNC,
            libc::STATX_SIZE,
            &mut st,
        )
    };
    assert_eq!(
        r,
        0,
        "statx {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    st.stx_size
}

/// Puts `data` into the outbox, checking the open upload's size on the way, then reads it
/// back; returns what the mount wrote (`wchar`) during the put and during the get.
fn put_and_get(fx: &Fixture, mb: &Mailbox, data: &[u8]) -> (u64, u64) {
    let pid = fx.mount_pid().expect("the mount runs");
    let path = mb.outbox().join("big.bin");
    let (_, before) = io_counters(pid);
    fx.as_user(&mb.user, || {
        let fd = ok(ops::create(&path), "create");
        ok(ops::write_all(fd, data), "write");
        assert_eq!(
            size_from_the_mount(&path),
            data.len() as u64,
            "the size of the open upload, as the mount reports it"
        );
        ok(ops::close(fd), "close");
    });
    let (_, after_put) = io_counters(pid);
    let msgs = fx.out_messages(&mb.user);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(
        msgs[0].files,
        vec![MessageFile {
            name: "big.bin".into(),
            size: data.len() as u64,
            sha256: sha256_hex(data),
        }],
        "the queued message records the content's size and hash"
    );
    // Stored files are opened with FOPEN_KEEP_CACHE: the pages the upload left in the
    // kernel's cache would serve the read without a request to anyone. Dropped, the read
    // must fetch the data: from the mount on its own path, from the blob file under
    // passthrough.
    std::fs::write("/proc/sys/vm/drop_caches", "1\n").unwrap();
    let back = fx.as_user(&mb.user, || ok(ops::read(&path), "read back"));
    let (_, after_get) = io_counters(pid);
    assert!(back == data, "the file read back differs from what was put");
    (after_put - before, after_get - after_put)
}

/// Room for a 32 MiB file, listed long after its close.
fn round_trip_settings(passthrough_off: bool) -> Settings {
    Settings {
        linger_secs: 600.0,
        max_bytes: Some(256 * MIB),
        passthrough_off,
        ..Settings::default()
    }
}

/// [`put_and_get`] of 32 MiB of random data in a new mailbox: (wchar of the put, of the
/// get, the data).
fn round_trip(fx: &Fixture) -> (u64, u64, Vec<u8>) {
    let mb = fx.mailbox();
    let data = random_bytes(32 * MIB as usize);
    let (put, get) = put_and_get(fx, &mb, &data);
    (put, get, data)
}

#[test]
fn put_and_get_round_trip_without_the_data_passing_through_the_mount() {
    let Some(fx) = fixture!(round_trip_settings(false)) else {
        return;
    };
    if !passthrough_in_use(&fx) {
        return;
    }
    let (put, get, data) = round_trip(&fx);
    println!("the mount wrote {put} bytes during the put, {get} during the get");
    let quarter = data.len() as u64 / 4;
    assert!(
        put < quarter,
        "the mount wrote {put} bytes while 32 MiB were uploaded: the data went through it"
    );
    assert!(
        get < quarter,
        "the mount wrote {get} bytes while 32 MiB were read: the data went through it"
    );
    assert_eq!(
        mount_status(&fx, "data_path"),
        "passthrough",
        "the mount fell back from passthrough: {}",
        fx.mount_log()
    );
}

/// The control of the test above: with `passthrough = "off"` the same measure counts the
/// data (so a passthrough that silently stopped working fails the test above).
#[test]
fn with_passthrough_off_the_data_passes_through_the_mount() {
    let Some(fx) = fixture!(round_trip_settings(true)) else {
        return;
    };
    assert_eq!(mount_status(&fx, "data_path"), "mount");
    let (put, get, data) = round_trip(&fx);
    // Most of it, not all: a few pages may stay in the kernel's cache through the drop.
    let most = data.len() as u64 * 3 / 4;
    assert!(
        put >= most,
        "the mount wrote {put} bytes for a 32 MiB upload"
    );
    assert!(
        get >= most,
        "the mount wrote {get} bytes for a 32 MiB download"
    );
}

/// A write leaving a gap past `outbox.max_bytes` (one byte at 8 TiB) reaches the spool file
/// unseen under passthrough; the close refuses it (EFBIG, the upload discarded) before
/// hashing anything of the gap.
#[test]
fn a_gap_past_the_limit_fails_the_close_without_hashing_it() {
    let Some(fx) = fixture!(Settings {
        max_bytes: Some(MIB),
        ..Settings::default()
    }) else {
        return;
    };
    if !passthrough_in_use(&fx) {
        return;
    }
    let mb = fx.mailbox();
    let pid = fx.mount_pid().expect("the mount runs");
    let path = mb.outbox().join("gap.bin");
    let (read_before, _) = io_counters(pid);
    fx.as_user(&mb.user, || {
        let fd = ok(ops::create(&path), "create");
        ok(ops::write_all(fd, b"start"), "write");
        let byte = [1u8];
        // SAFETY: a descriptor we own and a one-byte buffer.
        let r = unsafe { libc::pwrite(fd, byte.as_ptr().cast(), 1, (8u64 << 40) as libc::off_t) };
        assert_eq!(r, 1, "pwrite at 8 TiB: {}", std::io::Error::last_os_error());
        assert_errno(
            ops::close(fd),
            libc::EFBIG,
            "close of an upload with an 8 TiB gap",
        );
    });
    let (read_after, _) = io_counters(pid);
    assert!(
        read_after - read_before < 64 * MIB,
        "the mount read {} bytes at the close: it hashed the gap",
        read_after - read_before
    );
    assert!(fx.out_messages(&mb.user).is_empty(), "a message was queued");
    let listed = fx.as_user(&mb.user, || ok(ops::list(&mb.outbox()), "list"));
    assert!(
        listed.is_empty(),
        "the refused upload is still listed: {listed:?}"
    );
}
