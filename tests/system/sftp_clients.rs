//! What common clients do after an upload, with paramiko (the second client library) and
//! with the key as `as2box user add` generated it (encrypted with a passphrase).

use crate::common::sshd;

use sshd::{partner_dir, text, Env, PASSPHRASE};

#[test]
fn paramiko_put_stats_after_close_and_the_file_is_queued_once() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let f = env.local("p.edi", &vec![b'x'; 100_000]);
    // The encrypted key as generated, opened by paramiko with the passphrase.
    let o = env.paramiko(
        &u,
        &u.encrypted_key,
        Some(PASSPHRASE),
        &format!(
            r#"
sftp = connect()
attrs = sftp.put("{}", "{}/outbox/p.edi")   # confirm=True: stats the file after close
assert attrs.st_size == 100000, attrs
print("OK", attrs.st_size)
"#,
            f.display(),
            partner_dir(&u.name)
        ),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("OK 100000"));
    let msgs = env.messages(&u.name);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["state"], "queued");
    assert_eq!(msgs[0]["files"][0]["size"], 100_000);
}

#[test]
fn paramiko_rename_from_filepart_sends_under_the_final_name() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let f = env.local("w.edi", b"WinSCP style\n");
    let pd = partner_dir(&u.name);
    let o = env.paramiko(
        &u,
        &u.key,
        None,
        &format!(
            "sftp = connect()\nsftp.chdir('{pd}/outbox')\nsftp.put('{}', 'w.edi.filepart')\nprint('HELD', sorted(sftp.listdir()))\n",
            f.display()
        ),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("w.edi.filepart"), "{out}");
    assert!(env.messages(&u.name).is_empty(), "held until renamed");
    // A plain SFTP rename (sftp-server tries link(), gets EPERM, falls back to rename()).
    let o = env.paramiko(
        &u,
        &u.key,
        None,
        &format!(
            "sftp = connect()\nsftp.chdir('{pd}/outbox')\nsftp.rename('w.edi.filepart', 'w.edi')\nprint('RENAMED', sftp.stat('w.edi').st_size, sorted(sftp.listdir()))\n"
        ),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("RENAMED 13"), "{out}");
    assert!(!out.contains("w.edi.filepart"), "{out}");
    let msgs = env.messages(&u.name);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["name"], "w.edi");
}

#[test]
fn filepart_is_held_until_renamed() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let f = env.local("h.edi", b"held\n");
    let pd = partner_dir(&u.name);
    env.sftp_ok(
        &u,
        &format!("cd {pd}/outbox\nput {} h.edi.filepart\n", f.display()),
    );
    assert!(env.messages(&u.name).is_empty(), "a .filepart is not sent");
    let o = env.paramiko(
        &u,
        &u.key,
        None,
        &format!("sftp = connect()\nsftp.posix_rename('{pd}/outbox/h.edi.filepart', '{pd}/outbox/h.edi')\nprint(sftp.stat('{pd}/outbox/h.edi').st_size)\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let msgs = env.messages(&u.name);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["name"], "h.edi");
    assert_eq!(msgs[0]["files"][0]["size"], 5);
}

#[test]
fn openssh_client_uses_the_encrypted_generated_key_through_askpass() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let askpass = env.dir.join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{PASSPHRASE}'\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    let batch = env.local("askpass-batch", b"pwd\n");
    let o = std::process::Command::new("sftp")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=no",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(&u.encrypted_key)
        .arg("-P")
        .arg(env.port.to_string())
        .arg("-b")
        .arg(&batch)
        .arg(format!("{}@127.0.0.1", u.name))
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("Remote working directory: /\n"), "{t}");
}

/// A client uploading in parallel opens 20 sessions at once from one address: all 20 log
/// in (the guide promises 20 concurrent connections per IP; a global `MaxStartups` below
/// that dropped some at random before the handshake).
#[test]
fn twenty_simultaneous_logins_from_one_client_all_get_through() {
    // 20 handshakes at once must finish within sshd's LoginGraceTime: not beside other tests.
    let _alone = crate::common::gate::enter_alone(crate::common::gate::Kind::DirectChildren);
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let children: Vec<_> = (0..20)
        .map(|_| env.sftp_spawn(&u.name, &u.key, "ls -1\n"))
        .collect();
    let failed: Vec<String> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .filter(|o| !o.status.success())
        .map(|o| text(&o))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 20 logins failed: {failed:?}\nsshd log:\n{}",
        failed.len(),
        env.sshd_log()
    );
}

/// The per-source limit still holds: with 20 unauthenticated connections from one address
/// open (each has had sshd's banner, so sshd counts it), the 21st is closed before the
/// banner.
#[test]
fn the_21st_unauthenticated_connection_from_one_address_is_refused() {
    if !sshd::ready("the_21st_unauthenticated_connection_from_one_address_is_refused") {
        return;
    }
    use std::io::Read;
    let env = Env::start();
    let banner = |s: &mut std::net::TcpStream| -> Option<String> {
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            _ => None,
        }
    };
    let mut held = Vec::new();
    for i in 0..20 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
        let b = banner(&mut s);
        assert!(
            b.as_deref().is_some_and(|b| b.starts_with("SSH-2.0-")),
            "connection {} got no banner: {b:?}\n{}",
            i + 1,
            env.sshd_log()
        );
        held.push(s);
    }
    let mut s21 = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    // sshd says "Exceeded MaxStartups" (or just closes) instead of its banner.
    let b = banner(&mut s21);
    assert!(
        !b.as_deref().is_some_and(|b| b.starts_with("SSH-2.0-")),
        "the 21st connection was served: {b:?}"
    );
    drop(held);
}

/// One user closing an 8 TiB sparse upload (the mount must fsync and hash all of it) does
/// not hold up anybody else: while that close is still running, another user logs in
/// through sshd (which reads `authorized_keys` from the mount) and uploads a file. Before
/// the outbox lock was per outbox, the close held a lock of the whole mount that every
/// upload, rename and close waited for, and four such waiters took every FUSE thread.
#[test]
fn a_huge_sparse_close_does_not_stall_another_users_login_and_put() {
    use std::time::{Duration, Instant};
    // Extending a file sparsely is limited to outbox.max_bytes (SEMANTICS.md "Limits");
    // raise it so that the close really has 8 TiB to hash.
    let Some(mut env) = sftp_env!("[outbox]\nmax_bytes = 17592186044416\n") else {
        return;
    };
    let slow = env.user();
    let other = env.user();
    let uid = sshd::uid_of(&slow.name).unwrap();
    // paramiko: open, ftruncate to 8 TiB (SSH_FXP_FSETSTAT), close. The close blocks in
    // the user's sftp-server, whose close() is the mount's commit.
    let mut huge = env.paramiko_spawn(
        &slow,
        &slow.key,
        None,
        &format!(
            "sftp = connect()\nf = sftp.open('{}/outbox/huge.part', 'w')\nf.truncate(8 << 40)\nf.close()\nprint('CLOSED')\n",
            partner_dir(&slow.name)
        ),
    );
    sshd::wait_for(60.0, "the user's sftp-server to be inside close()", || {
        if let Some(status) = huge.try_wait().unwrap() {
            panic!("the 8 TiB upload ended before its close was seen: {status}");
        }
        in_close_as(uid).then_some(())
    });
    let started = Instant::now();
    let f = env.local("o.edi", b"other user's order\n");
    // A liveness bound, not a speed goal: a stalled mount would wait for the whole hash.
    let mut put = env.sftp_spawn(
        &other.name,
        &other.key,
        &format!("put {} {}/outbox/\n", f.display(), partner_dir(&other.name)),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while put.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if put.try_wait().unwrap().is_none() {
        let _ = put.kill();
    }
    let put = put.wait_with_output().unwrap();
    let took = started.elapsed();
    let still_closing = huge.try_wait().unwrap().is_none();
    println!(
        "the other user's login and put took {took:?}; huge close still running: {still_closing}"
    );
    assert!(put.status.success(), "{}\n{}", text(&put), env.sshd_log());
    assert!(
        still_closing,
        "the 8 TiB close ended before the other user's put: the test proved nothing"
    );
    let msgs = env.messages(&other.name);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let _ = huge.kill();
    let _ = huge.wait();
}

/// Whether a process of uid `uid` is inside close().
fn in_close_as(uid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let owned = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
            == Some(uid);
        let syscall = std::fs::read_to_string(e.path().join("syscall")).unwrap_or_default();
        let nr = syscall
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<i64>().ok());
        owned && nr == Some(libc::SYS_close)
    })
}
