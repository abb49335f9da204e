//! Quota (docs/SEMANTICS.md "Quota"): statfs shows it; a write past it fails with EDQUOT
//! (the issue also allows ENOSPC) and nothing half-written is picked up; inbox files count.

use crate::common;

use std::time::Duration;

use common::ops;
use common::*;

const MIB: u64 = 1 << 20;

fn size_free(s: &libc::statvfs) -> (u64, u64) {
    (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize)
}

#[test]
fn statfs_reports_the_quota_and_what_is_left() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox_with(Some(10 * MIB), None, false);
    let (size, free) = fx.as_user(&mb.user, || {
        size_free(&ok(ops::statvfs(&mb.outbox()), "statfs"))
    });
    let frsize = fx
        .as_user(&mb.user, || {
            ok(ops::statvfs(&mb.outbox()), "statfs").f_frsize
        })
        .max(1);
    assert!(
        size.abs_diff(10 * MIB) < frsize.max(4096),
        "size {size} is the 10 MiB quota"
    );
    assert!(
        free <= size && free + frsize.max(4096) >= 10 * MIB,
        "free {free} of an empty user"
    );
    let data = random_bytes(MIB as usize);
    fx.as_user(&mb.user, || {
        ok(
            ops::put(&mb.outbox().join("one-mib.bin"), &data),
            "put 1 MiB",
        )
    });
    let (size2, free2) = fx.as_user(&mb.user, || {
        size_free(&ok(ops::statvfs(&mb.outbox()), "statfs"))
    });
    assert_eq!(size2, size);
    assert!(
        free - free2 >= MIB - frsize.max(4096) && free - free2 <= MIB + 2 * frsize.max(4096),
        "free went from {free} to {free2} after storing 1 MiB"
    );
    // The same numbers anywhere in the user's tree.
    let (size3, _) = fx.as_user(&mb.user, || {
        size_free(&ok(ops::statvfs(&fx.user_dir(&mb.user)), "statfs"))
    });
    assert_eq!(size3, size);
}

#[test]
fn write_past_the_quota_fails_and_nothing_is_queued() {
    let Some(fx) = fixture!(Settings {
        max_bytes: Some(100 * MIB),
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox_with(Some(MIB), None, false);
    let data = random_bytes(2 * MIB as usize);
    let path = mb.outbox().join("too-big.bin");
    let r = fx.as_user(&mb.user, || ops::put_staged(&path, &data));
    match r {
        Ok(()) => panic!("writing 2 MiB with a 1 MiB quota succeeded"),
        Err((stage, e)) => {
            let errno = e.raw_os_error().unwrap_or(-1);
            assert!(
                errno == libc::EDQUOT || errno == libc::ENOSPC,
                "{stage:?} failed with {} ({e}), not EDQUOT/ENOSPC",
                errno_name(errno)
            );
            assert_eq!(
                stage,
                ops::Stage::Write,
                "the write past the quota fails (SEMANTICS.md), not only the close"
            );
        }
    }
    assert!(
        fx.out_messages(&mb.user).is_empty(),
        "nothing queued: {:#?}",
        fx.out_messages(&mb.user)
    );
    fx.as_user(&mb.user, || {
        wait_until(
            "the half-written file to be discarded",
            Duration::from_secs(5),
            || !names(&mb.outbox()).contains("too-big.bin"),
        );
        assert!(names(&mb.failed()).is_empty(), "nothing in failed/ either");
    });
    // The space is not leaked: a file that fits still goes through.
    let small = random_bytes(300_000);
    fx.as_user(&mb.user, || {
        ok(
            ops::put(&mb.outbox().join("fits.bin"), &small),
            "put 300 kB after the failure",
        )
    });
    let msgs = fx.out_messages(&mb.user);
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert_eq!(msgs[0].files[0].sha256, sha256_hex(&small));
}

#[test]
fn close_also_fails_after_a_write_past_the_quota() {
    let Some(fx) = fixture!(Settings {
        max_bytes: Some(100 * MIB),
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox_with(Some(MIB), None, false);
    let path = mb.outbox().join("over.bin");
    let (write_err, close_r) = fx.as_user(&mb.user, || {
        let fd = ok(ops::create(&path), "create");
        let w = ops::write_all(fd, &random_bytes(2 * MIB as usize));
        let c = ops::close(fd);
        (w.err().and_then(|e| e.raw_os_error()), c)
    });
    assert!(write_err.is_some(), "the write past the quota fails");
    assert_errno_in(
        close_r,
        &[libc::EDQUOT, libc::ENOSPC],
        "close after a failed write",
    );
    assert!(fx.out_messages(&mb.user).is_empty());
}

#[test]
fn inbox_files_count_against_the_quota_and_a_raised_quota_shows_live() {
    let Some(fx) = fixture!(Settings {
        max_bytes: Some(100 * MIB),
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox_with(Some(2 * MIB), None, false);
    fx.deliver(&mb, &[("in.bin", &random_bytes(1536 * 1024))]);
    let r = fx.as_user(&mb.user, || {
        ops::put(&mb.outbox().join("out.bin"), &random_bytes(MIB as usize))
    });
    assert_errno_in(
        r,
        &[libc::EDQUOT, libc::ENOSPC],
        "1 MiB upload with 1.5 of 2 MiB used by the inbox",
    );
    assert!(fx.out_messages(&mb.user).is_empty());
    fx.cli_ok(&[
        "user",
        "set",
        &mb.user.name,
        "--quota",
        &(8 * MIB).to_string(),
    ]);
    fx.as_user(&mb.user, || {
        wait_until(
            "statfs to show the new quota",
            Duration::from_secs(5),
            || {
                let (size, _) = size_free(&ops::statvfs(&mb.outbox()).unwrap());
                size.abs_diff(8 * MIB) < 64 * 1024
            },
        )
    });
    let data = random_bytes(MIB as usize);
    fx.as_user(&mb.user, || {
        ok(
            ops::put(&mb.outbox().join("out2.bin"), &data),
            "put 1 MiB with the raised quota",
        )
    });
    assert_eq!(fx.out_messages(&mb.user).len(), 1);
}

#[test]
fn quotas_of_two_users_are_separate() {
    let Some(fx) = fixture!(Settings {
        max_bytes: Some(100 * MIB),
        ..Settings::default()
    }) else {
        return;
    };
    let a = fx.mailbox_with(Some(MIB), None, false);
    let b = fx.mailbox_with(Some(4 * MIB), None, false);
    let big = random_bytes(2 * MIB as usize);
    assert!(
        fx.as_user(&a.user, || ops::put(&a.outbox().join("x"), &big))
            .is_err(),
        "a's quota is 1 MiB"
    );
    fx.as_user(&b.user, || {
        ok(ops::put(&b.outbox().join("x"), &big), "b's quota is 4 MiB")
    });
    let (sa, _) = fx.as_user(&a.user, || size_free(&ops::statvfs(&a.outbox()).unwrap()));
    let (sb, _) = fx.as_user(&b.user, || size_free(&ops::statvfs(&b.outbox()).unwrap()));
    assert!(
        sa.abs_diff(MIB) < 64 * 1024 && sb.abs_diff(4 * MIB) < 64 * 1024,
        "{sa} {sb}"
    );
}

/// Extending a file with truncate (no bytes written) counts against the quota like
/// writing does; otherwise a user with a 1 MiB quota could `truncate -s 5M`, and later
/// writes into the extended range counted as growth 0.
#[test]
fn extending_by_truncate_counts_against_the_quota() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox_with(Some(MIB), None, false);
    let path = mb.outbox().join("x.part");
    fx.as_user(&mb.user, || {
        // ftruncate on an open upload, then truncate(2) of the held file by name.
        let fd = ok(ops::create(&path), "create");
        // SAFETY: a descriptor we own.
        let r = unsafe { libc::ftruncate(fd, (5 * MIB) as libc::off_t) };
        let e = std::io::Error::last_os_error();
        assert_eq!(r, -1, "ftruncate to 5 MiB with a 1 MiB quota succeeded");
        assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
        // The refusal is sticky: the upload is discarded at close.
        assert_errno(
            ops::close(fd),
            libc::EDQUOT,
            "close after a refused extension",
        );
        ok(ops::put(&path, b"small"), "put a small held file");
        assert_errno(
            ops::truncate(&path, 5 * MIB),
            libc::EDQUOT,
            "truncate(2) to 5 MiB",
        );
        ok(ops::truncate(&path, MIB / 2), "truncate within the quota");
        assert_eq!(ok(ops::stat(&path), "stat").len(), MIB / 2);
    });
}

/// A file cannot be extended sparsely past `outbox.max_bytes`: it could never be sent,
/// and its close would have to hash every byte of the gap. Written bytes are not limited
/// this way (an oversized file goes to failed/ with a reason).
#[test]
fn sparse_extension_past_the_message_limit_is_refused() {
    let Some(fx) = fixture!(Settings {
        max_bytes: Some(MIB),
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let path = mb.outbox().join("sparse.part");
    fx.as_user(&mb.user, || {
        ok(ops::put(&path, b"start"), "put");
        assert_errno(
            ops::truncate(&path, 8 << 40),
            libc::EFBIG,
            "truncate to 8 TiB",
        );
        ok(ops::truncate(&path, MIB), "truncate to exactly the limit");
        // A write that leaves a gap past the limit. With the kernel's write-back cache
        // the write itself may be accepted into the page cache; then its write-back is
        // refused and close() reports it. Either way the stored file is unchanged.
        let fd = ok(ops::open(&path, libc::O_WRONLY), "open");
        let byte = [1u8];
        // SAFETY: a descriptor we own and a one-byte buffer.
        let r = unsafe { libc::pwrite(fd, byte.as_ptr().cast(), 1, (4 * MIB) as libc::off_t) };
        let write_error = std::io::Error::last_os_error();
        let closed = ops::close(fd);
        match (r, &closed) {
            (-1, _) => assert_eq!(
                write_error.raw_os_error(),
                Some(libc::EFBIG),
                "{write_error}"
            ),
            (_, Err(e)) => assert!(
                matches!(e.raw_os_error(), Some(libc::EFBIG | libc::EIO)),
                "close: {e}"
            ),
            _ => panic!("a write leaving a gap past the limit and its close both succeeded"),
        }
    });
    // The kernel's write-back cache keeps the size it computed itself while the inode is
    // cached; what the mount stored shows once the kernel has dropped it.
    std::fs::write("/proc/sys/vm/drop_caches", "2\n").unwrap();
    let stored = fx.as_user(&mb.user, || ok(ops::stat(&path), "stat").len());
    assert_eq!(stored, MIB, "the stored file changed");
}
