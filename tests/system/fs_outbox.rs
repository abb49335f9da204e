//! The outbox (docs/SEMANTICS.md "Outbox"): pickup on close, temporary names and renames
//! (also the link()-EPERM-then-rename sequence of sftp-server), lingering files, folders
//! as multi-attachment messages (quiet period and `.ready`), limits → `failed/` with a
//! reason, and the outbox's permission rules.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::ops;
use common::*;

const EACCES: i32 = libc::EACCES;
const EPERM: i32 = libc::EPERM;

/// Queued outgoing messages of the mailbox whose single/first file is `name`.
fn msgs_named(fx: &Fixture, mb: &Mailbox, name: &str) -> Vec<Message> {
    fx.out_messages(&mb.user)
        .into_iter()
        .filter(|m| m.files.iter().any(|f| f.name == name))
        .collect()
}

#[track_caller]
fn assert_queued_single(fx: &Fixture, mb: &Mailbox, name: &str, data: &[u8]) -> Message {
    let msgs = msgs_named(fx, mb, name);
    assert_eq!(
        msgs.len(),
        1,
        "exactly one message with file {name:?}: {msgs:#?}"
    );
    let m = msgs.into_iter().next().unwrap();
    assert_eq!(m.direction, "out");
    assert_eq!(m.state, "queued", "{m:#?}");
    assert_eq!(m.user, mb.user.name);
    assert_eq!(m.station, mb.station);
    assert_eq!(m.partner, mb.partner);
    assert_eq!(m.test, mb.test);
    assert_eq!(
        m.files,
        vec![MessageFile {
            name: name.to_string(),
            size: data.len() as u64,
            sha256: sha256_hex(data),
        }],
        "{m:#?}"
    );
    m
}

#[test]
fn closed_file_is_queued_before_close_returns() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let data = random_bytes(300_000);
    let path = mb.outbox().join("invoice-1.xml");
    let closed_in = fx.as_user(&mb.user, || {
        let fd = ok(ops::create(&path), "create");
        ok(ops::write_all(fd, &data), "write");
        // While open: not sent.
        let t = Instant::now();
        ok(ops::close(fd), "close");
        t.elapsed()
    });
    // No polling: the message must exist as soon as close() returned.
    let m = assert_queued_single(&fx, &mb, "invoice-1.xml", &data);
    println!("close() with pickup took {closed_in:?}; message {}", m.id);
    // The file lingers: listed read-only with its real size, still readable.
    fx.as_user(&mb.user, || {
        let md = ok(ops::stat(&path), "stat right after close");
        assert_eq!(md.len(), data.len() as u64);
        assert_eq!(
            perm(&md),
            (0o440, mb.user.uid, mb.user.gid),
            "lingering file mode/owner"
        );
        assert_eq!(ok(ops::read(&path), "read lingering file"), data);
    });
}

#[test]
fn pickup_latency_from_close_to_queued_is_well_under_a_second() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let mut times = Vec::new();
    for i in 0..20 {
        let data = random_bytes(10_000 + i * 1000);
        let name = format!("lat-{i}.txt");
        let t = Instant::now();
        fx.as_user(&mb.user, || {
            ok(ops::put(&mb.outbox().join(&name), &data), "put")
        });
        let close_done = t.elapsed();
        assert_queued_single(&fx, &mb, &name, &data);
        times.push(close_done);
    }
    times.sort();
    println!(
        "create+write+close with pickup: median {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(
        times[times.len() / 2] < Duration::from_millis(500),
        "{times:?}"
    );
}

#[test]
fn empty_file_is_picked_up() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    fx.as_user(&mb.user, || {
        ok(ops::put(&mb.outbox().join("empty.txt"), b""), "put empty")
    });
    let closed = Instant::now();
    if msgs_named(&fx, &mb, "empty.txt").is_empty() {
        // Say whether it came late or never.
        let late = (0..60).find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            (!msgs_named(&fx, &mb, "empty.txt").is_empty()).then(|| closed.elapsed())
        });
        let listing = fx.as_user(&mb.user, || {
            ops::stat(&mb.outbox().join("empty.txt")).map(|m| format!("{:o}", m.mode() & 0o7777))
        });
        panic!(
            "an empty file was not queued when close() returned (queued later: {late:?}; \
             outbox entry mode now: {listing:?})"
        );
    }
    assert_queued_single(&fx, &mb, "empty.txt", b"");
}

#[test]
fn large_file_is_picked_up_intact() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let data = random_bytes(9 << 20);
    let path = mb.outbox().join("big.bin");
    fx.as_user(&mb.user, || ok(ops::put(&path, &data), "put 9 MiB"));
    assert_queued_single(&fx, &mb, "big.bin", &data);
    let back = fx.as_user(&mb.user, || ok(ops::read(&path), "read back"));
    assert!(back == data, "content read back differs");
}

#[test]
fn file_being_written_is_listed_writable_with_its_size_so_far_and_not_sent() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let path = mb.outbox().join("growing.csv");
    fx.as_user(&mb.user, || {
        let fd = ok(ops::create(&path), "create");
        ok(ops::write_all(fd, &[b'a'; 1000]), "write 1000");
        let md = ok(ops::stat(&path), "stat while writing");
        assert_eq!(md.len(), 1000);
        assert_eq!(
            perm(&md),
            (0o640, mb.user.uid, mb.user.gid),
            "writing file mode/owner"
        );
        assert!(names(&mb.outbox()).contains("growing.csv"));
        assert!(
            fx.out_messages(&mb.user).is_empty(),
            "nothing is sent while the file is open"
        );
        ok(ops::write_all(fd, &[b'b'; 500]), "write 500 more");
        ok(ops::close(fd), "close");
    });
    let mut data = vec![b'a'; 1000];
    data.extend_from_slice(&[b'b'; 500]);
    assert_queued_single(&fx, &mb, "growing.csv", &data);
}

#[test]
fn lingering_file_can_be_stated_read_and_stamped_but_not_changed() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let data = b"lingering content".to_vec();
    let path = mb.outbox().join("sent.edi");
    fx.as_user(&mb.user, || {
        ok(ops::put(&path, &data), "put");
        // What clients do right after an upload:
        let md = ok(ops::stat(&path), "stat (paramiko checks the size)");
        assert_eq!(md.len(), data.len() as u64);
        ok(
            ops::set_times(&path, 1_600_000_000, 1_600_000_000),
            "utimes (sftp put -p, rclone)",
        );
        ok(ops::touch_now(&path), "utimes(NULL)");
        ok(
            ops::chmod(&path, 0o644),
            "chmod (setstat with mode) is accepted",
        );
        let md = ok(ops::stat(&path), "stat after setstat");
        assert_eq!(
            md.mode() & 0o7777,
            0o440,
            "chmod is ignored: mode stays 0440"
        );
        assert_eq!(md.len(), data.len() as u64);
        assert_eq!(ok(ops::read(&path), "read"), data);
        // What it may not do:
        assert_errno(
            ops::open(&path, libc::O_WRONLY),
            EACCES,
            "open lingering file for writing",
        );
        assert_errno(
            ops::open(&path, libc::O_WRONLY | libc::O_APPEND),
            EACCES,
            "open lingering file for appending",
        );
        assert_errno(
            ops::create(&path),
            EACCES,
            "create (O_TRUNC) over a lingering file",
        );
        assert_errno(ops::truncate(&path, 0), EACCES, "truncate lingering file");
        assert_errno(
            ops::rename(&path, &mb.outbox().join("other.edi")),
            EACCES,
            "rename lingering file",
        );
        assert_eq!(ok(ops::read(&path), "read again"), data);
    });
    // Still exactly one message, unchanged.
    assert_queued_single(&fx, &mb, "sent.edi", &data);
}

#[test]
fn lingering_file_disappears_after_linger_secs_and_the_message_stays() {
    let linger = 2.0;
    let Some(fx) = fixture!(Settings {
        linger_secs: linger,
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let path = mb.outbox().join("bye.txt");
    let closed = fx.as_user(&mb.user, || {
        ok(ops::put(&path, b"bye"), "put");
        let closed = Instant::now();
        ok(ops::stat(&path), "stat right after close");
        closed
    });
    let gone_after = fx.as_user(&mb.user, || {
        wait_until(
            "the lingering file to disappear",
            Duration::from_secs_f64(linger + 10.0),
            || !names(&mb.outbox()).contains("bye.txt") && ops::stat(&path).is_err(),
        );
        closed.elapsed()
    });
    println!("gone {gone_after:?} after close (linger_secs = {linger})");
    assert!(
        gone_after >= Duration::from_secs_f64(linger - 0.3),
        "disappeared after {gone_after:?}, before linger_secs = {linger}"
    );
    assert_queued_single(&fx, &mb, "bye.txt", b"bye");
}

/// A name that is free in the listing is free: once a picked-up file's linger is over
/// (the row waits for the next sweep), the same name can be uploaded again (integrations
/// upload `orders.edi` every few minutes), made a folder, or renamed onto; each upload is a
/// message of its own.
#[test]
fn a_name_whose_linger_is_over_can_be_uploaded_again() {
    let linger = 0.5;
    let Some(fx) = fixture!(Settings {
        linger_secs: linger,
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let path = mb.outbox().join("orders.edi");
    let gone = |p: &Path| {
        fx.as_user(&mb.user, || {
            wait_until(
                "the lingering file to disappear",
                Duration::from_secs(20),
                || ops::stat(p).is_err(),
            );
        })
    };
    fx.as_user(&mb.user, || ok(ops::put(&path, b"first"), "put 1"));
    gone(&path);
    fx.as_user(&mb.user, || ok(ops::put(&path, b"second"), "put 2"));
    let msgs = msgs_named(&fx, &mb, "orders.edi");
    assert_eq!(msgs.len(), 2, "{msgs:#?}");
    // A folder, and a rename from a temporary name, onto expired names.
    gone(&path);
    fx.as_user(&mb.user, || {
        ok(ops::mkdir(&path), "mkdir onto an expired name");
        ok(ops::rmdir(&path), "rmdir");
        let tmp = mb.outbox().join("orders.edi.part");
        ok(ops::put(&tmp, b"third"), "put temporary");
        ok(ops::rename(&tmp, &path), "rename onto an expired name");
    });
    assert_eq!(msgs_named(&fx, &mb, "orders.edi").len(), 3);
}

/// SFTP has no "upload complete": a client that cancels a `put` closes the file normally.
/// In the default `close` pickup mode that close sends what arrived (documented); in
/// `rename` mode a plain close holds the file and only a rename from a temporary name
/// sends.
#[test]
fn a_cancelled_upload_is_sent_in_close_mode_and_held_in_rename_mode() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let whole = vec![b'x'; 100_000];
    let cut = &whole[..40_000];
    fx.as_user(&mb.user, || {
        ok(ops::put(&mb.outbox().join("a.edi"), cut), "put")
    });
    assert_queued_single(&fx, &mb, "a.edi", cut);

    fx.cli_ok(&["station", "set", &mb.station, "--pickup", "rename"]);
    let shown = fx.cli_ok(&["station", "show", &mb.station]);
    assert!(shown.contains("pickup:       on rename"), "{shown}");
    let held = mb.outbox().join("b.edi");
    fx.as_user(&mb.user, || {
        ok(ops::put(&held, cut), "put");
        let st = ok(ops::stat(&held), "stat");
        assert_eq!(st.mode() & 0o777, 0o640, "held, still writable");
        assert_eq!(st.size(), cut.len() as u64);
    });
    assert!(
        msgs_named(&fx, &mb, "b.edi").is_empty(),
        "a plain close sent it"
    );
    let tmp = mb.outbox().join("c.edi.part");
    fx.as_user(&mb.user, || {
        ok(ops::put(&tmp, &whole), "put temporary");
        ok(ops::rename(&tmp, &mb.outbox().join("c.edi")), "rename");
    });
    assert_queued_single(&fx, &mb, "c.edi", &whole);
}

#[test]
fn unlinking_a_lingering_file_hides_it_without_unsending_it() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let path = mb.outbox().join("oops.txt");
    fx.as_user(&mb.user, || {
        ok(ops::put(&path, b"sent anyway"), "put");
        ok(ops::unlink(&path), "unlink lingering file");
        assert_errno(ops::stat(&path), libc::ENOENT, "stat after unlink");
        assert!(!names(&mb.outbox()).contains("oops.txt"));
    });
    assert_queued_single(&fx, &mb, "oops.txt", b"sent anyway");
}

#[test]
fn temporary_names_are_held_until_renamed_to_a_normal_name() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let cases = [
        ("a.dat.filepart", "a.dat"),
        ("b.dat.part", "b.dat"),
        ("c.dat.tmp", "c.dat"),
        (".d.dat", "d.dat"),
        ("E.DAT.FILEPART", "E.DAT"),
        ("f.dat.Part", "f.dat"),
        ("g.dat.TMP", "g.dat"),
    ];
    for (i, (tmp, fin)) in cases.iter().enumerate() {
        let data = random_bytes(1000 + i * 777);
        let tpath = mb.outbox().join(tmp);
        let fpath = mb.outbox().join(fin);
        fx.as_user(&mb.user, || {
            ok(ops::put(&tpath, &data), &format!("put {tmp}"));
            let md = ok(ops::stat(&tpath), &format!("stat held {tmp}"));
            assert_eq!(
                perm(&md),
                (0o640, mb.user.uid, mb.user.gid),
                "held {tmp} mode/owner"
            );
            assert_eq!(md.len(), data.len() as u64);
        });
        assert!(
            msgs_named(&fx, &mb, tmp).is_empty() && msgs_named(&fx, &mb, fin).is_empty(),
            "{tmp} must be held, not sent"
        );
        fx.as_user(&mb.user, || {
            ok(
                ops::rename(&tpath, &fpath),
                &format!("rename {tmp} -> {fin}"),
            )
        });
        // The rename returns after the commit: no polling.
        assert_queued_single(&fx, &mb, fin, &data);
        fx.as_user(&mb.user, || {
            assert_errno(ops::stat(&tpath), libc::ENOENT, "old name gone");
            let md = ok(ops::stat(&fpath), "stat renamed file");
            assert_eq!(md.mode() & 0o7777, 0o440, "{fin} lingers read-only");
        });
    }
    // Held files are not sent, even after a while.
    assert_eq!(fx.out_messages(&mb.user).len(), cases.len());
}

/// What OpenSSH's sftp-server does for a plain SFTP rename (paramiko, WinSCP, lftp):
/// stat(target) must fail, link(old, new) must fail with EPERM, then rename(old, new).
#[test]
fn sftp_server_rename_sequence_link_eperm_then_rename_picks_up() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let data = random_bytes(50_000);
    let old = mb.outbox().join("order.xml.filepart");
    let new = mb.outbox().join("order.xml");
    fx.as_user(&mb.user, || {
        ok(ops::put(&old, &data), "put .filepart");
        assert_errno(ops::stat(&new), libc::ENOENT, "target does not exist yet");
        assert_errno(
            ops::link(&old, &new),
            EPERM,
            "link() must fail with exactly EPERM",
        );
        assert_errno(
            ops::stat(&new),
            libc::ENOENT,
            "the failed link created nothing",
        );
        ok(ops::rename(&old, &new), "fallback rename");
    });
    assert_queued_single(&fx, &mb, "order.xml", &data);
}

#[test]
fn held_file_can_be_reopened_appended_truncated_and_stamped() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let part = mb.outbox().join("resume.bin.part");
    let first = random_bytes(100_000);
    let second = random_bytes(70_000);
    fx.as_user(&mb.user, || {
        ok(ops::put(&part, &first), "put first part");
        let fd = ok(
            ops::open(&part, libc::O_WRONLY | libc::O_APPEND),
            "reopen for appending",
        );
        ok(ops::write_all(fd, &second), "append");
        ok(ops::close(fd), "close");
        let md = ok(ops::stat(&part), "stat");
        assert_eq!(md.len(), (first.len() + second.len()) as u64);
        ok(
            ops::set_times(&part, 1_500_000_000, 1_500_000_123),
            "utimes on a held file",
        );
        let md = ok(ops::stat(&part), "stat");
        assert_eq!(md.mtime(), 1_500_000_123, "mtime set on a held file");
        // truncate to extend then back
        ok(
            ops::truncate(&part, (first.len() + second.len() + 10) as u64),
            "truncate up",
        );
        ok(
            ops::truncate(&part, (first.len() + second.len()) as u64),
            "truncate back",
        );
        ok(
            ops::rename(&part, &mb.outbox().join("resume.bin")),
            "rename",
        );
    });
    let mut all = first.clone();
    all.extend_from_slice(&second);
    assert_queued_single(&fx, &mb, "resume.bin", &all);
}

#[test]
fn truncating_a_held_file_shortens_it() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let part = mb.outbox().join("cut.tmp");
    fx.as_user(&mb.user, || {
        ok(ops::put(&part, b"0123456789"), "put");
        ok(ops::truncate(&part, 4), "truncate");
        assert_eq!(ok(ops::read(&part), "read"), b"0123");
        ok(ops::rename(&part, &mb.outbox().join("cut.txt")), "rename");
    });
    assert_queued_single(&fx, &mb, "cut.txt", b"0123");
}

#[test]
fn rename_replaces_an_existing_target_and_honours_renameat2_flags() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let ob = mb.outbox();
    fx.as_user(&mb.user, || {
        ok(ops::put(&ob.join("a.tmp"), b"AAA"), "put a.tmp");
        ok(ops::put(&ob.join("b.tmp"), b"BB"), "put b.tmp");
        ok(ops::put(&ob.join("c.tmp"), b"C"), "put c.tmp");
        // POSIX rename replaces.
        ok(
            ops::rename(&ob.join("a.tmp"), &ob.join("b.tmp")),
            "rename over an existing file",
        );
        assert_eq!(names(&ob), set(&["b.tmp", "c.tmp"]));
        assert_eq!(ok(ops::read(&ob.join("b.tmp")), "read"), b"AAA");
        // RENAME_NOREPLACE: EEXIST when the target exists, fine otherwise.
        assert_errno(
            ops::rename2(&ob.join("c.tmp"), &ob.join("b.tmp"), ops::RENAME_NOREPLACE),
            libc::EEXIST,
            "RENAME_NOREPLACE onto an existing file",
        );
        assert_eq!(ok(ops::read(&ob.join("b.tmp")), "read"), b"AAA");
        ok(
            ops::rename2(&ob.join("c.tmp"), &ob.join("d.tmp"), ops::RENAME_NOREPLACE),
            "RENAME_NOREPLACE to a free name",
        );
        // RENAME_EXCHANGE is refused.
        assert_errno(
            ops::rename2(&ob.join("b.tmp"), &ob.join("d.tmp"), ops::RENAME_EXCHANGE),
            libc::EINVAL,
            "RENAME_EXCHANGE",
        );
        assert_eq!(names(&ob), set(&["b.tmp", "d.tmp"]));
        assert_eq!(ok(ops::read(&ob.join("d.tmp")), "read"), b"C");
        // posix-rename (OpenSSH's sftp client) of a held file onto a free normal name.
        ok(
            ops::rename2(&ob.join("b.tmp"), &ob.join("b.txt"), ops::RENAME_NOREPLACE),
            "noreplace to normal name",
        );
    });
    // RENAME_WHITEOUT needs CAP_MKNOD to reach the file system: try it as root.
    fx.as_root(|| {
        assert_errno(
            ops::rename2(&ob.join("d.tmp"), &ob.join("e.tmp"), ops::RENAME_WHITEOUT),
            libc::EINVAL,
            "RENAME_WHITEOUT",
        );
    });
    assert_queued_single(&fx, &mb, "b.txt", b"AAA");
    assert_eq!(fx.out_messages(&mb.user).len(), 1);
}

#[test]
fn rename_into_another_box_is_exdev() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let p2 = fx.add_partner(&mb.user, false);
    fx.add_partner_id(&mb.user, &mb.partner, true);
    let other = fx.mailbox_of(&mb.user, &mb.station, &p2, false);
    let test_side = fx.mailbox_of(&mb.user, &mb.station, &mb.partner, true);
    let src = mb.outbox().join("x.part");
    fx.as_user(&mb.user, || {
        wait_until("test/ to appear", Duration::from_secs(5), || {
            ops::stat(&test_side.outbox()).is_ok()
        });
        ok(ops::put(&src, b"x"), "put");
        assert_errno(
            ops::rename(&src, &other.outbox().join("x.part")),
            libc::EXDEV,
            "rename to another partner's outbox",
        );
        assert_errno(
            ops::rename(&src, &test_side.outbox().join("x.part")),
            libc::EXDEV,
            "rename to the test outbox",
        );
        assert_errno(
            ops::rename(&src, &other.outbox().join("x.txt")),
            libc::EXDEV,
            "rename to another outbox, normal name",
        );
        assert_eq!(names(&mb.outbox()), set(&["x.part"]));
        assert!(names(&other.outbox()).is_empty());
        assert!(names(&test_side.outbox()).is_empty());
    });
    assert!(fx.out_messages(&mb.user).is_empty());
}

#[test]
fn chmod_is_accepted_and_ignored_and_chown_to_others_is_eperm() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let f = mb.outbox().join("m.part");
    let d = mb.outbox().join("folder");
    let (uid, gid) = (mb.user.uid, mb.user.gid);
    fx.as_user(&mb.user, || {
        ok(ops::put(&f, b"m"), "put");
        ok(ops::mkdir(&d), "mkdir");
        let dmode = ok(ops::stat(&d), "stat folder").mode() & 0o7777;
        ok(ops::chmod(&f, 0o600), "chmod held file");
        ok(ops::chmod(&f, 0o777), "chmod held file");
        assert_eq!(
            ok(ops::stat(&f), "stat").mode() & 0o7777,
            0o640,
            "mode unchanged"
        );
        ok(ops::chmod(&d, 0o700), "chmod folder");
        assert_eq!(
            ok(ops::stat(&d), "stat").mode() & 0o7777,
            dmode,
            "folder mode unchanged"
        );
        ok(
            ops::chown(&f, uid, gid),
            "chown to the current owner and group",
        );
        ok(ops::chown(&f, u32::MAX, u32::MAX), "chown(-1, -1)");
        assert_errno(ops::chown(&f, 0, u32::MAX), EPERM, "chown to root");
        assert_errno(ops::chown(&f, u32::MAX, 0), EPERM, "chgrp to root");
        assert_errno(ops::chown(&f, uid + 1, gid), EPERM, "chown to another uid");
        let md = ok(ops::stat(&f), "stat");
        assert_eq!((md.uid(), md.gid()), (uid, gid));
    });
    // Root acts with the user's rights: chown to others is refused for root too.
    fx.as_root(|| assert_errno(ops::chown(&f, 0, 0), EPERM, "chown to root as root"));
}

#[test]
fn outbox_folders_are_one_level_and_can_be_renamed_and_removed() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let ob = mb.outbox();
    fx.as_user(&mb.user, || {
        ok(ops::mkdir(&ob.join("batch")), "mkdir batch");
        let md = ok(ops::stat(&ob.join("batch")), "stat batch");
        assert!(md.is_dir());
        assert_eq!((md.uid(), md.gid()), (mb.user.uid, mb.user.gid));
        assert_errno(ops::mkdir(&ob.join("batch/nested")), EPERM, "nested mkdir");
        ok(ops::put(&ob.join("batch/one.txt"), b"1"), "put into folder");
        assert_eq!(
            ok(ops::stat(&ob.join("batch/one.txt")), "stat").mode() & 0o7777,
            0o640,
            "held in folder"
        );
        ok(
            ops::rename(&ob.join("batch/one.txt"), &ob.join("batch/two.txt")),
            "rename inside folder",
        );
        ok(
            ops::rename(&ob.join("batch"), &ob.join("renamed")),
            "rename folder",
        );
        assert_eq!(names(&ob.join("renamed")), set(&["two.txt"]));
        assert_errno(
            ops::rmdir(&ob.join("renamed")),
            libc::ENOTEMPTY,
            "rmdir non-empty folder",
        );
        ok(
            ops::unlink(&ob.join("renamed/two.txt")),
            "unlink held file in folder",
        );
        ok(ops::rmdir(&ob.join("renamed")), "rmdir empty folder");
        assert!(names(&ob).is_empty());
        // a held file at top level can be deleted too
        ok(ops::put(&ob.join("z.part"), b"z"), "put");
        ok(ops::unlink(&ob.join("z.part")), "unlink held file");
        assert!(names(&ob).is_empty());
    });
    assert!(
        fx.out_messages(&mb.user).is_empty(),
        "files in a folder are held; deleted ones never sent"
    );
}

#[test]
fn batch_folder_is_picked_up_after_the_quiet_period() {
    let quiet = 2.0;
    let linger = 2.0;
    let Some(fx) = fixture!(Settings {
        batch_quiet_secs: quiet,
        linger_secs: linger,
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let dir = mb.outbox().join("shipment");
    let f1 = random_bytes(20_000);
    let f2 = random_bytes(30_000);
    let last_change = fx.as_user(&mb.user, || {
        ok(ops::mkdir(&dir), "mkdir");
        ok(ops::put(&dir.join("order.xml"), &f1), "put 1");
        ok(ops::put(&dir.join("label.pdf"), &f2), "put 2");
        Instant::now()
    });
    assert!(fx.out_messages(&mb.user).is_empty(), "held until quiet");
    let m = wait_for(
        "the folder to be picked up",
        Duration::from_secs_f64(quiet + 15.0),
        || fx.out_messages(&mb.user).into_iter().next(),
    );
    let after = last_change.elapsed();
    println!("folder picked up {after:?} after the last change (quiet {quiet} s)");
    assert!(
        after >= Duration::from_secs_f64(quiet - 0.3),
        "picked up after {after:?}, before the quiet period"
    );
    assert_eq!(m.state, "queued");
    assert_eq!(
        (m.station.as_str(), m.partner.as_str(), m.test),
        (mb.station.as_str(), mb.partner.as_str(), false)
    );
    let mut files = m.files.clone();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        files,
        vec![
            MessageFile {
                name: "label.pdf".into(),
                size: f2.len() as u64,
                sha256: sha256_hex(&f2)
            },
            MessageFile {
                name: "order.xml".into(),
                size: f1.len() as u64,
                sha256: sha256_hex(&f1)
            },
        ]
    );
    assert_eq!(
        fx.out_messages(&mb.user).len(),
        1,
        "one message for the folder"
    );
    // Then it lingers and disappears.
    fx.as_user(&mb.user, || {
        wait_until(
            "the picked-up folder to disappear",
            Duration::from_secs_f64(linger + 10.0),
            || names(&mb.outbox()).is_empty(),
        )
    });
}

#[test]
fn batch_folder_waits_for_open_files_and_temporary_names() {
    let quiet = 1.0;
    let Some(fx) = fixture!(Settings {
        batch_quiet_secs: quiet,
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let dir = mb.outbox().join("b1");
    let dir2 = mb.outbox().join("b2");
    let fd = fx.as_user(&mb.user, || {
        ok(ops::mkdir(&dir), "mkdir b1");
        ok(ops::put(&dir.join("done.txt"), b"done"), "put done.txt");
        let fd = ok(ops::create(&dir.join("open.txt")), "create open.txt");
        ok(ops::write_all(fd, b"partial"), "write");
        ok(ops::mkdir(&dir2), "mkdir b2");
        ok(ops::put(&dir2.join("real.txt"), b"real"), "put real.txt");
        ok(
            ops::put(&dir2.join("upload.txt.filepart"), b"tmp"),
            "put filepart",
        );
        fd
    });
    // Several quiet periods pass: neither folder may be picked up.
    std::thread::sleep(Duration::from_secs_f64(quiet * 3.0 + 1.0));
    assert!(
        fx.out_messages(&mb.user).is_empty(),
        "a folder with an open file or a temporary name is not picked up: {:#?}",
        fx.out_messages(&mb.user)
    );
    fx.as_user(&mb.user, || {
        ok(ops::write_all(fd, b" and the rest"), "write rest");
        ok(ops::close(fd), "close");
        ok(
            ops::rename(&dir2.join("upload.txt.filepart"), &dir2.join("upload.txt")),
            "rename filepart",
        );
    });
    let msgs = wait_for(
        "both folders to be picked up",
        Duration::from_secs_f64(quiet + 15.0),
        || {
            let m = fx.out_messages(&mb.user);
            (m.len() == 2).then_some(m)
        },
    );
    let mut got: Vec<Vec<(String, u64)>> = msgs
        .iter()
        .map(|m| {
            let mut v: Vec<(String, u64)> =
                m.files.iter().map(|f| (f.name.clone(), f.size)).collect();
            v.sort();
            v
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            vec![("done.txt".to_string(), 4), ("open.txt".to_string(), 20)],
            vec![("real.txt".to_string(), 4), ("upload.txt".to_string(), 3)],
        ]
    );
}

#[test]
fn batch_folder_is_picked_up_at_once_when_renamed_to_ready() {
    let Some(fx) = fixture!(Settings {
        batch_quiet_secs: 600.0,
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let dir = mb.outbox().join("multi");
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("part{i}.dat"), random_bytes(5000 * (i + 1))))
        .collect();
    fx.as_user(&mb.user, || {
        ok(ops::mkdir(&dir), "mkdir");
        for (n, d) in &files {
            ok(ops::put(&dir.join(n), d), "put");
        }
    });
    assert!(fx.out_messages(&mb.user).is_empty());
    let t = Instant::now();
    fx.as_user(&mb.user, || {
        ok(
            ops::rename(&dir, &mb.outbox().join("multi.ready")),
            "rename to .ready",
        )
    });
    let m = wait_for(
        "the .ready folder to be picked up",
        Duration::from_secs(3),
        || fx.out_messages(&mb.user).into_iter().next(),
    );
    println!("picked up {:?} after the rename to .ready", t.elapsed());
    assert_eq!(m.state, "queued");
    let mut got: Vec<MessageFile> = m.files.clone();
    got.sort_by(|a, b| a.name.cmp(&b.name));
    let want: Vec<MessageFile> = files
        .iter()
        .map(|(n, d)| MessageFile {
            name: n.clone(),
            size: d.len() as u64,
            sha256: sha256_hex(d),
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn ready_folder_with_an_open_file_is_picked_up_when_it_closes() {
    let Some(fx) = fixture!(Settings {
        batch_quiet_secs: 600.0,
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let dir = mb.outbox().join("late");
    let ready = mb.outbox().join("late.ready");
    let fd = fx.as_user(&mb.user, || {
        ok(ops::mkdir(&dir), "mkdir");
        ok(ops::put(&dir.join("a.txt"), b"a"), "put a");
        let fd = ok(ops::create(&dir.join("b.txt")), "create b");
        ok(ops::write_all(fd, b"bb"), "write b");
        ok(ops::rename(&dir, &ready), "rename to .ready with b open");
        fd
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        fx.out_messages(&mb.user).is_empty(),
        "not picked up while a file is open for writing"
    );
    fx.as_user(&mb.user, || ok(ops::close(fd), "close b"));
    let m = wait_for(
        "pickup after the last close",
        Duration::from_secs(3),
        || fx.out_messages(&mb.user).into_iter().next(),
    );
    let mut n: Vec<(String, u64)> = m.files.iter().map(|f| (f.name.clone(), f.size)).collect();
    n.sort();
    assert_eq!(n, vec![("a.txt".into(), 1), ("b.txt".into(), 2)]);
}

#[test]
fn empty_folder_is_never_picked_up() {
    let quiet = 1.0;
    let Some(fx) = fixture!(Settings {
        batch_quiet_secs: quiet,
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    fx.as_user(&mb.user, || {
        ok(ops::mkdir(&mb.outbox().join("empty")), "mkdir");
        ok(ops::mkdir(&mb.outbox().join("empty2")), "mkdir");
        ok(
            ops::rename(
                &mb.outbox().join("empty2"),
                &mb.outbox().join("empty2.ready"),
            ),
            "rename to .ready",
        );
    });
    std::thread::sleep(Duration::from_secs_f64(quiet * 3.0 + 1.0));
    assert!(fx.out_messages(&mb.user).is_empty(), "{:#?}", fx.messages());
    fx.as_user(&mb.user, || {
        assert_eq!(names(&mb.outbox()), set(&["empty", "empty2.ready"]));
        ok(ops::rmdir(&mb.outbox().join("empty")), "rmdir");
        ok(ops::rmdir(&mb.outbox().join("empty2.ready")), "rmdir");
        assert!(names(&mb.outbox()).is_empty());
    });
}

/// Waits until `failed/` holds `name` and `name.reason.txt`; returns the reason.
fn wait_failed(fx: &Fixture, mb: &Mailbox, name: &str) -> String {
    let reason = format!("{name}.reason.txt");
    fx.as_user(&mb.user, || {
        wait_until(
            &format!("{name} and {reason} in failed/"),
            Duration::from_secs(10),
            || {
                let n = names(&mb.failed());
                n.contains(name) && n.contains(&reason)
            },
        );
        String::from_utf8(ok(ops::read(&mb.failed().join(&reason)), "read reason"))
            .expect("reason is UTF-8")
    })
}

#[track_caller]
fn assert_one_sentence(reason: &str) {
    let r = reason.trim();
    assert!(!r.is_empty(), "reason is empty");
    assert!(!r.contains('\n'), "reason is one sentence: {reason:?}");
    assert!(r.len() > 10, "reason says why: {reason:?}");
}

#[test]
fn too_many_files_in_a_folder_move_to_failed_with_a_reason() {
    let Some(fx) = fixture!(Settings {
        max_files: Some(3),
        batch_quiet_secs: 600.0,
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let dir = mb.outbox().join("toomany");
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("f{i}.txt"), random_bytes(100 + i)))
        .collect();
    fx.as_user(&mb.user, || {
        ok(ops::mkdir(&dir), "mkdir");
        for (n, d) in &files {
            ok(ops::put(&dir.join(n), d), "put");
        }
        ok(
            ops::rename(&dir, &mb.outbox().join("toomany.ready")),
            "rename .ready",
        );
    });
    // The folder keeps its name in failed/ (SEMANTICS.md does not say whether with or
    // without `.ready`; accept both).
    let fname = fx.as_user(&mb.user, || {
        wait_for("the folder in failed/", Duration::from_secs(10), || {
            let n = names(&mb.failed());
            ["toomany", "toomany.ready"]
                .into_iter()
                .find(|c| n.contains(*c) && n.contains(&format!("{c}.reason.txt")))
                .map(|c| c.to_string())
        })
    });
    let reason = fx.as_user(&mb.user, || {
        ok(
            ops::read(&mb.failed().join(format!("{fname}.reason.txt"))),
            "read reason",
        )
    });
    let reason = String::from_utf8(reason).expect("reason is UTF-8");
    assert_one_sentence(&reason);
    fx.as_user(&mb.user, || {
        let fdir = mb.failed().join(&fname);
        assert_eq!(names(&fdir), files.iter().map(|f| f.0.clone()).collect());
        for (n, d) in &files {
            assert_eq!(&ok(ops::read(&fdir.join(n)), "read failed file"), d);
        }
        wait_until(
            "the folder to leave the outbox",
            Duration::from_secs(5),
            || names(&mb.outbox()).is_empty(),
        );
    });
    let msgs = fx.out_messages(&mb.user);
    assert!(
        msgs.iter().all(|m| m.state != "queued"),
        "no queued message: {msgs:#?}"
    );
    assert_eq!(
        msgs.len(),
        1,
        "the message is recorded as failed: {msgs:#?}"
    );
    assert_eq!(msgs[0].state, "failed");
    assert!(
        msgs[0].detail.as_deref().is_some_and(|d| !d.is_empty()),
        "failed with a reason: {msgs:#?}"
    );
}

#[test]
fn too_many_bytes_in_one_file_move_it_to_failed_with_a_reason() {
    let Some(fx) = fixture!(Settings {
        max_bytes: Some(1000),
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let big = random_bytes(2000);
    let exact = random_bytes(1000);
    let close_result = fx.as_user(&mb.user, || {
        // Exactly max_bytes is allowed.
        ok(
            ops::put(&mb.outbox().join("exact.bin"), &exact),
            "put exactly max_bytes",
        );
        ops::put_staged(&mb.outbox().join("big.bin"), &big)
    });
    println!("put of an oversized file returned {close_result:?}");
    assert_queued_single(&fx, &mb, "exact.bin", &exact);
    let reason = wait_failed(&fx, &mb, "big.bin");
    assert_one_sentence(&reason);
    fx.as_user(&mb.user, || {
        assert_eq!(
            ok(ops::read(&mb.failed().join("big.bin")), "read failed file"),
            big
        );
        wait_until(
            "big.bin to leave the outbox",
            Duration::from_secs(5),
            || !names(&mb.outbox()).contains("big.bin"),
        );
    });
    let msgs = msgs_named(&fx, &mb, "big.bin");
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert_eq!(msgs[0].state, "failed", "{msgs:#?}");
    assert!(msgs[0].detail.as_deref().is_some_and(|d| !d.is_empty()));

    // A second failure of the same name gets a stamp prefix in failed/.
    fx.as_user(&mb.user, || {
        let _ = ops::put(&mb.outbox().join("big.bin"), &big);
        let what = format!(
            "a stamped big.bin in failed/ (failed/ now: {:?})",
            names(&mb.failed())
        );
        let entry = wait_for(&what, Duration::from_secs(10), || {
            names(&mb.failed())
                .into_iter()
                .find(|n| n.ends_with("-big.bin") && stamp_like(&n[..n.len() - "-big.bin".len()]))
        });
        assert_eq!(ok(ops::read(&mb.failed().join(&entry)), "read"), big);
    });
    assert!(msgs_named(&fx, &mb, "big.bin")
        .iter()
        .all(|m| m.state == "failed"));
}

#[test]
fn too_many_bytes_in_a_folder_move_it_to_failed() {
    let Some(fx) = fixture!(Settings {
        max_bytes: Some(10_000),
        batch_quiet_secs: 600.0,
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let dir = mb.outbox().join("heavy");
    fx.as_user(&mb.user, || {
        ok(ops::mkdir(&dir), "mkdir");
        ok(ops::put(&dir.join("a"), &random_bytes(6000)), "put a");
        ok(ops::put(&dir.join("b"), &random_bytes(6000)), "put b");
        ok(
            ops::rename(&dir, &mb.outbox().join("heavy.ready")),
            "rename",
        );
    });
    let found = fx.as_user(&mb.user, || {
        wait_for("the folder in failed/", Duration::from_secs(10), || {
            let n = names(&mb.failed());
            ["heavy", "heavy.ready"]
                .into_iter()
                .find(|c| n.contains(*c) && n.contains(&format!("{c}.reason.txt")))
                .map(str::to_string)
        })
    });
    fx.as_user(&mb.user, || {
        assert_eq!(names(&mb.failed().join(&found)), set(&["a", "b"]))
    });
    let msgs = fx.out_messages(&mb.user);
    assert!(
        msgs.iter().all(|m| m.state == "failed") && msgs.len() == 1,
        "{msgs:#?}"
    );
}

#[test]
fn root_acts_with_the_users_rights_in_the_outbox() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let path = mb.outbox().join("by-root.txt");
    fx.as_root(|| ok(ops::put(&path, b"admin upload"), "put as root"));
    assert_queued_single(&fx, &mb, "by-root.txt", b"admin upload");
    let md = fx.as_user(&mb.user, || ok(ops::stat(&path), "stat as user"));
    assert_eq!(
        (md.uid(), md.gid()),
        (mb.user.uid, mb.user.gid),
        "listed as the user's file"
    );
    fx.as_root(|| {
        assert_errno(
            ops::create(&mb.partner_dir.join("x")),
            EACCES,
            "root creating in a partner folder",
        );
        ok(ops::mkdir(&mb.outbox().join("d")), "mkdir as root");
        assert_errno(
            ops::mkdir(&mb.outbox().join("d/e")),
            EPERM,
            "nested mkdir as root",
        );
    });
}

#[test]
fn test_partner_outbox_queues_test_messages() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox_with(None, None, true);
    assert!(mb.outbox().ends_with(Path::new("test/outbox")));
    fx.as_user(&mb.user, || {
        ok(ops::put(&mb.outbox().join("t.txt"), b"test message"), "put")
    });
    let m = assert_queued_single(&fx, &mb, "t.txt", b"test message");
    assert!(m.test);
}

/// A process holding an outbox file open for writing runs another program (fork + execve):
/// the kernel closes the close-on-exec descriptor inside `execve`, which sends a FUSE flush
/// from a process that is in the middle of `execve`. The mount must answer it (the program
/// runs, the file stays open in the parent, not sent) and must not wedge.
#[test]
fn exec_while_an_outbox_file_is_open_does_not_hang_the_mount() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let path = mb.outbox().join("report.csv");
    let fd = fx.as_user(&mb.user, || {
        // O_CLOEXEC (ops::open always sets it), as most programs and runtimes do.
        let fd = ok(ops::create(&path), "create");
        ok(ops::write_all(fd, b"first half,"), "write");
        fd
    });
    // Spawn a program; only our descriptor is left for execve to close (other tests'
    // descriptors are closed before execve so that they are not involved).
    let (tx, rx) = std::sync::mpsc::channel();
    let spawner = std::thread::spawn(move || {
        let r = command_keeping_fd("/bin/true", fd).status();
        let _ = tx.send(());
        r
    });
    let finished = rx.recv_timeout(Duration::from_secs(15)).is_ok();
    if !finished {
        // Unblock everything before failing.
        fx.watch().abort();
    }
    let status = spawner.join().unwrap();
    assert!(
        finished,
        "fork+execve of /bin/true while an outbox file was open for writing hung for 15 s \
         (the mount was aborted to unblock it): the flush sent from inside execve is never \
         answered (a mount worker reading /proc/<pid>/stat of a process in execve deadlocks)"
    );
    assert!(status.unwrap().success());
    // The parent still holds the file: not sent yet; finishing it sends it once.
    assert!(
        fx.out_messages(&mb.user).is_empty(),
        "the child's flush must not send the file"
    );
    fx.as_user(&mb.user, || {
        ok(
            ops::write_all(fd, b"second half"),
            "write after the child exec'd",
        );
        ok(ops::close(fd), "close");
    });
    assert_queued_single(&fx, &mb, "report.csv", b"first half,second half");
}

/// A child inherits an outbox descriptor (without close-on-exec, like a shell's `exec 3>f`)
/// and exits while the parent goes on writing: the child's close is not the last one, so
/// the file is sent only when the parent closes it, complete.
#[test]
fn a_child_closing_an_inherited_descriptor_does_not_send_the_file() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let path = mb.outbox().join("shared.txt");
    let (uid, gid) = (mb.user.uid, mb.user.gid);
    let outcome = fx.as_user(&mb.user, || {
        let fd = ok(
            ops::open(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
            "create",
        );
        // Clear close-on-exec so that the child inherits it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        ok(ops::write_all(fd, b"parent part 1;"), "write");
        let mut child = {
            use std::os::unix::process::CommandExt;
            command_keeping_fd("/bin/sh", fd)
                .args(["-c", "exit 0"])
                .uid(uid)
                .gid(gid)
                .spawn()
                .expect("spawn sh")
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let exited = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (fd, exited, child)
    });
    let (fd, exited, mut child) = outcome;
    if !exited {
        fx.watch().abort();
        let _ = child.wait();
        panic!("a child that inherited an outbox descriptor did not exit within 15 s (the mount was aborted)");
    }
    assert!(
        fx.out_messages(&mb.user).is_empty(),
        "the child's close is not the last close: nothing may be sent yet: {:#?}",
        fx.out_messages(&mb.user)
    );
    fx.as_user(&mb.user, || {
        ok(
            ops::write_all(fd, b"parent part 2"),
            "write after the child exited",
        );
        ok(ops::close(fd), "close");
    });
    assert_queued_single(&fx, &mb, "shared.txt", b"parent part 1;parent part 2");
}

/// A `Command` whose child closes every inherited descriptor above 2 except `keep` before
/// execve.
fn command_keeping_fd(program: &str, keep: i32) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    let keep = keep as u32;
    unsafe {
        cmd.pre_exec(move || {
            if keep > 3 {
                libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32);
            }
            libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd
}

/// Everyday tools run as the user (each as its own process): a shell redirection, cp, dd,
/// and mv from a temporary name each send exactly one complete message.
#[test]
fn real_tools_run_as_the_user_send_each_file_once_and_complete() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let src = fx.dir.join("src").join("tool-input.bin");
    let data = random_bytes(700_000);
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let ob = mb.outbox();
    let o = |n: &str| ob.join(n).to_string_lossy().into_owned();
    let s = src.to_string_lossy().into_owned();
    let script = format!(
        "set -e; echo hello > '{a}'; cp '{s}' '{b}'; dd if='{s}' of='{c}' bs=65536 status=none; \
         cp '{s}' '{d}'; mv '{d}' '{e}'",
        a = o("shell.txt"),
        b = o("cp.bin"),
        c = o("dd.bin"),
        d = o("mv.bin.part"),
        e = o("mv.bin"),
    );
    let out = run(
        &["/bin/sh".into(), "-c".into(), script],
        &[],
        Some((mb.user.uid, mb.user.gid)),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "tools failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_queued_single(&fx, &mb, "shell.txt", b"hello\n");
    for n in ["cp.bin", "dd.bin", "mv.bin"] {
        assert_queued_single(&fx, &mb, n, &data);
    }
    assert_eq!(
        fx.out_messages(&mb.user).len(),
        4,
        "{:#?}",
        fx.out_messages(&mb.user)
    );
    // ls -l as the user shows them with the user as owner.
    let ls = run(
        &[
            "/bin/ls".into(),
            "-ln".into(),
            ob.to_string_lossy().into_owned(),
        ],
        &[],
        Some((mb.user.uid, mb.user.gid)),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(
        text.lines()
            .filter(|l| l.contains(&format!(" {} {} ", mb.user.uid, mb.user.gid)))
            .count()
            == 4,
        "ls -ln of the outbox:\n{text}"
    );
}
