//! What a partner must not be able to do over SFTP/SSH, each tried with the real clients
//! through the real sshd: every refusal is checked by the client's failure and by the
//! absence of its effect.

use crate::common::sshd;

use sshd::{partner_dir, station, text, Env, User};

/// Runs one sftp batch that must fail, and returns its output text.
fn refused(env: &Env, u: &User, commands: &str) -> String {
    let o = env.sftp(&u.name, &u.key, commands);
    let t = text(&o);
    assert!(
        !o.status.success(),
        "expected a refusal for:\n{commands}\ngot {t}"
    );
    t
}

#[test]
fn box_rules_refuse_writes_where_partners_must_not_write() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let other = env.user();
    box_rules(&env, &u);
    env.crash_and_restart_mount(&u, &[&other.name]);
    box_rules(&env, &u);
}

/// Writes where partners must not write are refused and leave no trace.
fn box_rules(env: &Env, u: &User) {
    let pd = partner_dir(&u.name);
    let f = env.local("x.edi", b"x\n");
    let root = env.tree(u);

    // put into inbox
    let t = refused(env, u, &format!("cd {pd}/inbox\nput {}\n", f.display()));
    assert!(t.contains("ermission denied"), "{t}");
    assert!(!root.join(&pd[1..]).join("inbox/x.edi").exists());

    // mkdir in a station folder, in as2gateway, at the top
    for dir in [
        format!("/as2gateway/{}/newdir", station(&u.name)),
        "/as2gateway/newdir".into(),
        "/newdir".into(),
    ] {
        refused(env, u, &format!("mkdir {dir}\n"));
        assert!(!root.join(&dir[1..]).exists(), "{dir} created");
    }

    // symlink and hard link, also in the outbox
    env.sftp_ok(
        u,
        &format!("cd {pd}/outbox\nput {} held.filepart\n", f.display()),
    );
    let t = refused(
        env,
        u,
        &format!("cd {pd}/outbox\nln -s held.filepart sym.filepart\n"),
    );
    assert!(
        t.contains("ermission denied") || t.contains("Failure"),
        "{t}"
    );
    let t = refused(
        env,
        u,
        &format!("cd {pd}/outbox\nln held.filepart hard.filepart\n"),
    );
    assert!(
        t.contains("ermission denied") || t.contains("Failure"),
        "{t}"
    );
    let out = env.sftp_ok(u, &format!("cd {pd}/outbox\nls -1a\n"));
    assert!(
        !out.contains("sym.filepart") && !out.contains("hard.filepart"),
        "{out}"
    );

    // chmod/chown/chgrp of the structure
    for target in [
        "/as2gateway".to_owned(),
        format!("/as2gateway/{}", station(&u.name)),
        pd.clone(),
        "/.ssh/authorized_keys".into(),
    ] {
        refused(env, u, &format!("chmod 777 {target}\n"));
        refused(env, u, &format!("chown 0 {target}\n"));
        refused(env, u, &format!("chgrp 0 {target}\n"));
        let md = std::fs::metadata(root.join(&target[1..])).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(md.uid(), 0, "{target} still root's");
        assert_eq!(md.mode() & 0o022, 0, "{target} not group/other-writable");
    }
    // Nothing was sent by any of this.
    assert!(env
        .messages(&u.name)
        .iter()
        .all(|m| m["direction"] != "out"));
}

#[test]
fn chroot_holds_against_dotdot_absolute_paths_and_other_users() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let other = env.user();
    env.deliver(&other, false, "secret.edi", b"other user's data\n");
    chroot_holds(&env, &u, &other);
    env.crash_and_restart_mount(&u, &[&other.name, "secret", "other user's data"]);
    chroot_holds(&env, &u, &other);
}

/// `u` sees its own tree and nothing else: not the host, not `other`'s tree or data.
fn chroot_holds(env: &Env, u: &User, other: &User) {
    // cd /.. stays at the chroot's root, which holds only the user's own tree.
    let out = env.sftp_ok(u, "cd /..\npwd\nls -1a\n");
    assert!(out.contains("Remote working directory: /\n"), "{out}");
    assert!(out.contains("as2gateway"), "{out}");
    assert!(!out.contains(&other.name), "{out}");

    // Absolute paths outside the chroot do not exist for the user.
    let got = env.dir.join("passwd");
    refused(env, u, &format!("get /etc/passwd {}\n", got.display()));
    refused(env, u, "ls /etc\n");
    refused(env, u, "ls /../../etc\n");
    assert!(!got.exists());

    // Another user's tree: neither by name nor by climbing.
    for path in [
        format!("/{}", other.name),
        format!("/../{}", other.name),
        format!("/../../{}/as2gateway", other.name),
        format!("{}/{}", env.mnt.display(), other.name),
    ] {
        refused(env, u, &format!("ls {path}\n"));
        refused(env, u, &format!("cd {path}\n"));
    }
    let got = env.dir.join("secret");
    refused(
        env,
        u,
        &format!(
            "get /../{}{}/inbox/*/secret.edi {}\n",
            other.name,
            partner_dir(&other.name),
            got.display()
        ),
    );
    assert!(!got.exists());
}

#[test]
fn ssh_refuses_password_wrong_key_shell_forwarding_and_scp() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let other = env.user();
    login_refusals(&env, &u, &other);
    session_refusals(&env, &u);
    env.crash_and_restart_mount(&u, &[&other.name]);
    // Keys come from the mount: the restarted mount serves them as strictly.
    login_refusals(&env, &u, &other);
}

/// Only `u`'s own key opens `u`'s account; passwords are not even offered.
fn login_refusals(env: &Env, u: &User, other: &User) {
    // Password (and keyboard-interactive) login: not even offered.
    let o = env.ssh(
        &u.name,
        &u.key,
        &[
            "-v",
            "-o",
            "BatchMode=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ],
        &["true"],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.lines()
            .filter_map(|l| l.split("Authentications that can continue: ").nth(1))
            .all(|methods| methods.trim() == "publickey")
            && t.contains("Authentications that can continue: publickey"),
        "only publickey offered: {t}"
    );
    assert!(t.contains("Permission denied (publickey)"), "{t}");

    // A key that is not the user's.
    let (wrong, _) = env.own_key("ed25519");
    let o = env.sftp(&u.name, &wrong, "ls\n");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("Permission denied (publickey)"),
        "{}",
        text(&o)
    );
    // The right key of another user.
    let o = env.sftp(&u.name, &other.key, "ls\n");
    assert!(
        text(&o).contains("Permission denied (publickey)"),
        "{}",
        text(&o)
    );
    // And the user's own key still works.
    env.sftp_ok(u, "ls\n");
}

/// No shell, no command, no forwarding, no legacy scp: sshd's settings, not the mount's.
fn session_refusals(env: &Env, u: &User) {
    // A shell or a command: no TTY, and the command runs internal-sftp, never `id`.
    let o = env.ssh(&u.name, &u.key, &["-tt"], &["id"]);
    let t = text(&o);
    assert!(!t.contains("uid="), "{t}");
    assert!(t.contains("PTY allocation request failed"), "{t}");
    let o = env.ssh(&u.name, &u.key, &["-T"], &["id; echo RAN"]);
    let t = text(&o);
    assert!(!t.contains("uid=") && !t.contains("RAN"), "{t}");

    // Port forwarding of every kind.
    let o = env.ssh(
        &u.name,
        &u.key,
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-W",
            &format!("127.0.0.1:{}", env.port),
        ],
        &[],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("stdio forwarding failed") || t.contains("prohibited"),
        "{t}"
    );
    assert!(
        env.sshd_log().contains("refused")
            || env.sshd_log().contains("prohibited")
            || env.sshd_log().contains("disabled"),
        "sshd logs the refused forwarding: {}",
        env.sshd_log()
    );
    let o = env.ssh(
        &u.name,
        &u.key,
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-N",
            "-R",
            "127.0.0.1:0:127.0.0.1:22",
        ],
        &[],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("remote port forwarding failed"), "{t}");

    // scp's legacy protocol: the forced internal-sftp does not speak it.
    let f = env.local("via-scp.edi", b"scp\n");
    let o = std::process::Command::new("scp")
        .args([
            "-O",
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(&u.key)
        .arg("-P")
        .arg(env.port.to_string())
        .arg(&f)
        .arg(format!(
            "{}@127.0.0.1:{}/outbox/",
            u.name,
            partner_dir(&u.name)
        ))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "scp -O must fail: {}", text(&o));
    assert!(env.messages(&u.name).is_empty(), "nothing queued by scp -O");
    assert!(!env
        .tree(u)
        .join(&partner_dir(&u.name)[1..])
        .join("outbox/via-scp.edi")
        .exists());
}
