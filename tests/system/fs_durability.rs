//! Durability (docs/SEMANTICS.md "Durability"): `kill -9` of the mount during a stream of
//! uploads loses no file whose close() (or rename) succeeded and shows no partial file;
//! a dead mount answers ENOTCONN and `as2box mount` cleans it up; SIGTERM unmounts.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::ops;
use common::*;

/// The writer process (runs as the mailbox user, started by the test through the spawn
/// helper): streams files into `AS2BOX_WRITER_DIR`, logging `I name sha` before starting a
/// file and `D name sha` once its close() (or the rename that sends it) succeeded, each
/// line fsync'd. Every third file is uploaded as `.part` and renamed. Stops at the first
/// error (the mount was killed).
#[test]
#[ignore = "helper process of fs_durability, started by the test itself"]
fn zz_durability_writer() {
    let (Some(dir), Some(log)) = (
        std::env::var_os("AS2BOX_WRITER_DIR"),
        std::env::var_os("AS2BOX_WRITER_LOG"),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .unwrap();
    let mut line = |l: String| {
        log.write_all(l.as_bytes()).unwrap();
        log.sync_all().unwrap();
    };
    for i in 0..5000usize {
        let size = 1000 + (i * 7919) % (400 * 1024);
        let data = random_bytes(size);
        let sha = sha256_hex(&data);
        let name = format!("f{i:05}.dat");
        line(format!("I {name} {sha}\n"));
        let result = if i % 3 == 2 {
            let part = dir.join(format!("{name}.part"));
            ops::put(&part, &data).and_then(|_| ops::rename(&part, &dir.join(&name)))
        } else {
            ops::put(&dir.join(&name), &data)
        };
        match result {
            Ok(()) => line(format!("D {name} {sha}\n")),
            Err(e) => {
                eprintln!("writer stops at {name}: {e}");
                return;
            }
        }
    }
}

/// `(intents, done)`: name -> sha from the writer's log.
fn read_log(path: &Path) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut intents, mut done) = (BTreeMap::new(), BTreeMap::new());
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() != 3 {
            continue;
        }
        match f[0] {
            "I" => intents.insert(f[1].to_string(), f[2].to_string()),
            "D" => done.insert(f[1].to_string(), f[2].to_string()),
            _ => None,
        };
    }
    (intents, done)
}

#[test]
fn kill_9_during_a_stream_of_uploads_keeps_every_closed_file_and_shows_no_partial_file() {
    let Some(fx) = fixture!(Settings {
        linger_secs: 3600.0,
        ..Settings::default()
    }) else {
        return;
    };
    let mb = fx.mailbox();
    let logdir = fx.dir.join("writer");
    std::fs::create_dir(&logdir).unwrap();
    std::os::unix::fs::chown(&logdir, Some(mb.user.uid), Some(mb.user.gid)).unwrap();
    let log = logdir.join("log");
    let exe = std::env::current_exe().unwrap();
    let writer = spawner::call(spawner::Request::Spawn {
        args: vec![
            exe.to_string_lossy().into_owned(),
            "--exact".into(),
            "fs_durability::zz_durability_writer".into(),
            "--ignored".into(),
            "--nocapture".into(),
        ],
        env: vec![
            (
                "AS2BOX_WRITER_DIR".into(),
                mb.outbox().to_string_lossy().into_owned(),
            ),
            (
                "AS2BOX_WRITER_LOG".into(),
                log.to_string_lossy().into_owned(),
            ),
        ],
        ids: Some((mb.user.uid, mb.user.gid)),
        log: fx.dir.join("writer.out").to_string_lossy().into_owned(),
    })
    .pid;
    // Let it get going, then kill the mount in the middle of the stream.
    wait_until(
        "the writer to complete 40 files",
        Duration::from_secs(120),
        || read_log(&log).1.len() >= 40 || wait_pid(writer, Duration::ZERO).exited,
    );
    let status = fx.stop_mount(libc::SIGKILL);
    assert_eq!(signalled(&status), Some(libc::SIGKILL));
    let w = wait_pid(writer, Duration::from_secs(60));
    assert!(
        w.exited,
        "the writer did not stop within 60 s of the mount's death"
    );
    let (intents, done) = read_log(&log);
    println!(
        "writer: {} files started, {} completed before the kill; its output: {}",
        intents.len(),
        done.len(),
        std::fs::read_to_string(fx.dir.join("writer.out"))
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or("")
    );
    assert!(
        done.len() >= 40,
        "writer log: only {} files done",
        done.len()
    );
    assert!(
        intents.len() > done.len() || intents.len() == 5000,
        "the kill came mid-stream"
    );

    // Restart (clean the dead mount point first: this test is about the data).
    fx.lazy_unmount();
    fx.mount();

    // Every completed upload is a queued message with the right content.
    let msgs = fx.out_messages(&mb.user);
    let mut sent: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for m in &msgs {
        assert_eq!(m.files.len(), 1, "{m:#?}");
        assert_eq!(m.state, "queued", "{m:#?}");
        let f = &m.files[0];
        let dup = sent.insert(f.name.clone(), (f.sha256.clone(), f.size));
        assert!(dup.is_none(), "{} was queued twice", f.name);
    }
    let mut missing = Vec::new();
    for (name, sha) in &done {
        match sent.get(name) {
            Some((s, _)) if s == sha => {}
            Some((s, _)) => panic!("{name}: queued with sha256 {s}, but the writer wrote {sha}"),
            None => missing.push(name.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "closed files lost by kill -9: {missing:?}"
    );
    // Anything queued beyond the log was complete (its close was in flight at the kill).
    for (name, (sha, _)) in &sent {
        assert_eq!(
            intents.get(name),
            Some(sha),
            "{name} queued with content the writer never wrote"
        );
    }
    // No partial file anywhere in the user's tree: every visible file is exactly what the
    // writer wrote under that name (lingering sent files, or held .part files complete).
    fx.as_user(&mb.user, || {
        let mut seen = 0;
        for entry in ok(ops::list(&mb.outbox()), "ls outbox") {
            let p = mb.outbox().join(&entry);
            let data = ok(ops::read(&p), &format!("read {entry}"));
            let base = entry.trim_end_matches(".part");
            let want = intents
                .get(base)
                .unwrap_or_else(|| panic!("unexpected file {entry} in the outbox"));
            assert_eq!(
                &sha256_hex(&data),
                want,
                "{entry} in the outbox is partial or corrupt ({} bytes)",
                data.len()
            );
            if !entry.ends_with(".part") {
                assert!(
                    sent.contains_key(base),
                    "{entry} is listed as sent but has no message"
                );
            }
            seen += 1;
        }
        println!("{seen} files visible in the outbox after the restart, all intact");
        assert!(names(&mb.inbox()).is_empty());
        assert!(
            names(&mb.failed()).is_empty(),
            "nothing moved to failed/: {:?}",
            names(&mb.failed())
        );
    });
}

#[test]
fn dead_mount_answers_enotconn_and_mount_cleans_it_up() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    fx.as_user(&mb.user, || {
        ok(ops::put(&mb.outbox().join("before.txt"), b"before"), "put")
    });
    fx.stop_mount(libc::SIGKILL);
    assert!(
        fx.is_mounted(),
        "the kernel keeps listing a dead FUSE mount"
    );
    // (The kernel may answer from its attribute cache for up to a second.)
    wait_until(
        "stat in the dead mount to fail with ENOTCONN",
        Duration::from_secs(3),
        || {
            ops::stat(&fx.mnt.join(&mb.user.name))
                .err()
                .and_then(|e| e.raw_os_error())
                == Some(libc::ENOTCONN)
        },
    );
    fx.as_user(&mb.user, || {
        assert_errno(
            ops::list(&mb.outbox()),
            libc::ENOTCONN,
            "ls in a dead mount as the user",
        );
    });
    // `as2box mount` cleans up the dead mount point by itself (no umount first).
    fx.mount();
    fx.as_user(&mb.user, || {
        assert!(names(&mb.outbox()).contains("before.txt"));
        assert_eq!(
            ok(ops::read(&mb.outbox().join("before.txt")), "read"),
            b"before"
        );
    });
    assert_eq!(fx.out_messages(&mb.user).len(), 1);
}

#[test]
fn sigterm_unmounts_and_exits_cleanly() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let _mb = fx.mailbox();
    let status = fx.stop_mount(libc::SIGTERM);
    assert!(
        status.success(),
        "mount exited with {status:?} on SIGTERM; log:\n{}",
        fx.mount_log()
    );
    assert!(!fx.is_mounted(), "still mounted after SIGTERM");
    fx.mount();
    let status = fx.stop_mount(libc::SIGINT);
    assert!(status.success(), "mount exited with {status:?} on SIGINT");
    assert!(!fx.is_mounted(), "still mounted after SIGINT");
}
