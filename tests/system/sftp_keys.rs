//! The key lifecycle through the real sshd: generated keys, the partner's own keys,
//! several keys, removal, rekey, reset (which also ends live sessions), `user show`, the
//! read-only `.ssh/authorized_keys`, and the shipped sshd configuration.

use crate::common::sshd;

use std::process::Command;

use sshd::{partner_dir, text, Env};

fn logs_in(env: &Env, user: &str, key: &std::path::Path) -> bool {
    env.sftp(user, key, "pwd\n").status.success()
}

fn fingerprint(public: &std::path::Path) -> String {
    let o = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

#[test]
fn generated_key_show_and_authorized_keys_view() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    // The generated private key is OpenSSH format, encrypted, mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(&u.encrypted_key).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let pem = std::fs::read_to_string(&u.encrypted_key).unwrap();
    assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let o = Command::new("ssh-keygen")
        .args(["-y", "-P", "wrong passphrase", "-f"])
        .arg(&u.encrypted_key)
        .output()
        .unwrap();
    assert!(!o.status.success(), "the key must need its passphrase");
    let o = Command::new("ssh-keygen")
        .args(["-y", "-P", sshd::PASSPHRASE, "-f"])
        .arg(&u.encrypted_key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let public = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    let pubfile = env.local("gen.pub", format!("{public}\n").as_bytes());
    let fp = fingerprint(&pubfile);

    // user show: how to connect.
    let show = env.ok(&["user", "show", &u.name, "--host", "sftp.example.com"]);
    assert!(show.contains("port 9193"), "{show}");
    assert!(show.contains(&fp), "{show}");
    assert!(
        show.contains(&format!(
            "sftp -o Port=9193 -o IdentityFile=PRIVATE_KEY_FILE {}@sftp.example.com",
            u.name
        )),
        "{show}"
    );

    // .ssh/authorized_keys: the user's public key, readable, not writable.
    let got = env.dir.join("ak");
    env.sftp_ok(
        &u,
        &format!("get /.ssh/authorized_keys {}\n", got.display()),
    );
    let ak = std::fs::read_to_string(&got).unwrap();
    assert_eq!(ak.lines().count(), 1, "{ak}");
    assert!(ak.starts_with(&public[..60]), "{ak}\n{public}");
    let evil = env.local(
        "evil",
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0wn2M2o8NlTuw3JQ1MxXn4w0bK0v8Mq0S0Sx2Ojx1x evil\n",
    );
    let o = env.sftp(
        &u.name,
        &u.key,
        &format!("put {} /.ssh/authorized_keys\n", evil.display()),
    );
    assert!(!o.status.success(), "{}", text(&o));
    let o = env.sftp(
        &u.name,
        &u.key,
        &format!("put {} /.ssh/other_keys\n", evil.display()),
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(env.tree(&u).join(".ssh/authorized_keys")).unwrap(),
        ak
    );
}

#[test]
fn own_keys_added_listed_removed() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let (ed, ed_pub) = env.own_key("ed25519");
    let (rsa, rsa_pub) = env.own_key("rsa");
    assert!(!logs_in(&env, &u.name, &ed));
    env.ok(&["user", "key", "add", &u.name, ed_pub.to_str().unwrap()]);
    env.ok(&["user", "key", "add", &u.name, rsa_pub.to_str().unwrap()]);
    // The same key twice is refused.
    assert!(!env
        .as2box(&["user", "key", "add", &u.name, ed_pub.to_str().unwrap()])
        .status
        .success());
    // A private key instead of a public one is refused with a hint.
    let o = env.as2box(&["user", "key", "add", &u.name, ed.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("public key"), "{}", text(&o));
    // All three keys work (the generated one and both own keys). The kernel may keep the
    // old size of authorized_keys for up to 1 s (attribute cache), so allow that.
    for k in [&u.key, &ed, &rsa] {
        sshd::wait_for(5.0, "the added key to work", || {
            logs_in(&env, &u.name, k).then_some(())
        });
    }
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["user", "key", "list", &u.name, "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let ed_fp = fingerprint(&ed_pub);
    let entry = list
        .iter()
        .find(|k| k["fingerprint"] == ed_fp.as_str())
        .expect("listed");
    assert_eq!(entry["type"], "ssh-ed25519");
    assert!(list
        .iter()
        .any(|k| k["fingerprint"] == fingerprint(&rsa_pub).as_str()));

    // Remove by fingerprint: that key is refused at once, the others still work.
    env.ok(&["user", "key", "remove", &u.name, &ed_fp]);
    assert!(!logs_in(&env, &u.name, &ed), "removed key refused");
    assert!(logs_in(&env, &u.name, &rsa));
    // Remove by id.
    let rsa_id = list.iter().find(|k| k["type"] == "ssh-rsa").unwrap()["id"].to_string();
    env.ok(&["user", "key", "remove", &u.name, &rsa_id]);
    assert!(!logs_in(&env, &u.name, &rsa), "removed key refused");
    assert!(logs_in(&env, &u.name, &u.key));
}

#[test]
fn rekey_refuses_old_keys_and_keeps_files() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let (own, own_pub) = env.own_key("ed25519");
    env.ok(&["user", "key", "add", &u.name, own_pub.to_str().unwrap()]);
    env.deliver(&u, false, "keep.edi", b"kept\n");
    let new_key = env.dir.join("rekeyed.key");
    let pass = env.local("pass2", b"another passphrase\n");
    let out = env.ok(&[
        "user",
        "rekey",
        &u.name,
        "--key-type",
        "rsa",
        "--private-key-out",
        new_key.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(out.contains("old keys refused"), "{out}");
    assert!(!logs_in(&env, &u.name, &u.key), "old generated key refused");
    assert!(!logs_in(&env, &u.name, &own), "old own key refused");
    let plain = env.decrypted_copy(&new_key, "another passphrase");
    let pem = std::fs::read_to_string(&plain).unwrap();
    assert!(pem.contains("OPENSSH PRIVATE KEY"));
    let o = Command::new("ssh-keygen")
        .args(["-y", "-f"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("ssh-rsa "),
        "{}",
        text(&o)
    );
    sshd::wait_for(5.0, "the new key to work", || {
        logs_in(&env, &u.name, &plain).then_some(())
    });
    let user = sshd::User {
        key: plain,
        ..u.clone()
    };
    let out = env.sftp_ok(
        &user,
        &format!("cd {}/inbox\nls -1\n", partner_dir(&u.name)),
    );
    assert!(
        out.lines()
            .any(|l| !l.starts_with("sftp>") && !l.trim().is_empty()),
        "files kept: {out}"
    );
}

#[test]
fn reset_ends_live_sessions_refuses_old_keys_and_empties_mailboxes() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    env.deliver(&u, false, "gone.edi", b"to be removed\n");
    // A live session that lists its inbox until the connection dies.
    let ready = env.dir.join("session-ready");
    let live = Command::new(sshd::python())
        .arg("-c")
        .arg(format!(
            r#"
import os, sys, time, paramiko
pk = paramiko.Ed25519Key.from_private_key_file("{key}")
t = paramiko.Transport(("127.0.0.1", {port}))
t.connect(username="{user}", pkey=pk)
s = paramiko.SFTPClient.from_transport(t)
s.listdir("{pd}/inbox")
open("{ready}", "w").write("ok")
deadline = time.time() + 60
while time.time() < deadline:
    try:
        s.listdir("{pd}/inbox")
    except Exception as e:
        print("ENDED", type(e).__name__)
        sys.exit(0)
    time.sleep(0.05)
print("STILL ALIVE")
sys.exit(1)
"#,
            key = u.key.display(),
            port = env.port,
            user = u.name,
            pd = partner_dir(&u.name),
            ready = ready.display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sshd::wait_for(30.0, "the live session", || ready.exists().then_some(()));
    assert!(
        env.processes_of(&u.name) > 0,
        "a session process runs as the user"
    );

    let new_key = env.dir.join("reset.key");
    let out = env.ok(&[
        "user",
        "reset",
        &u.name,
        "--private-key-out",
        new_key.to_str().unwrap(),
        "--passphrase-file",
        env.local("pass3", b"third passphrase\n").to_str().unwrap(),
    ]);
    assert!(out.contains("1 file(s) removed"), "{out}");
    let o = live.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the live session must end: {}",
        text(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("ENDED"));
    assert_eq!(env.processes_of(&u.name), 0);

    assert!(
        !logs_in(&env, &u.name, &u.key),
        "old key refused after reset"
    );
    let plain = env.decrypted_copy(&new_key, "third passphrase");
    sshd::wait_for(5.0, "the new key to work", || {
        logs_in(&env, &u.name, &plain).then_some(())
    });
    let user = sshd::User {
        key: plain,
        ..u.clone()
    };
    let out = env.sftp_ok(
        &user,
        &format!("cd {}/inbox\nls -1\n", partner_dir(&u.name)),
    );
    assert!(
        out.lines()
            .all(|l| l.starts_with("sftp>") || l.trim().is_empty()),
        "mailboxes emptied: {out}"
    );
}

#[test]
fn user_add_refuses_foreign_accounts_and_existing_key_files() {
    let Some(env) = sftp_env!() else {
        return;
    };
    let out = env.dir.join("daemon.key");
    let pass = env.local("p", b"long enough passphrase\n");
    let o = env.as2box(&[
        "user",
        "add",
        "daemon",
        "--private-key-out",
        out.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not created by as2box"), "{}", text(&o));
    assert!(!out.exists(), "no key file written for a refused user");
    // An existing private key file is never overwritten.
    let existing = env.local("exists.key", b"keep me");
    let o = env.as2box(&[
        "user",
        "add",
        "sfnever1",
        "--private-key-out",
        existing.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    assert!(sshd::uid_of("sfnever1").is_none());
    // A short passphrase is refused before anything is created.
    let short = env.local("short", b"short\n");
    let key = env.dir.join("short.key");
    let o = env.as2box(&[
        "user",
        "add",
        "sfnever2",
        "--private-key-out",
        key.to_str().unwrap(),
        "--passphrase-file",
        short.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(sshd::uid_of("sfnever2").is_none());
    assert!(!key.exists());
}

#[test]
fn shipped_dropin_is_accepted_by_the_system_sshd_config() {
    let Some(env) = sftp_env!() else {
        return;
    };
    // The system's sshd_config with our drop-in in its Include folder.
    let dropdir = env.dir.join("sshd_config.d");
    std::fs::create_dir(&dropdir).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/sshd_config.d/as2box.conf"),
        dropdir.join("as2box.conf"),
    )
    .unwrap();
    let main = std::fs::read_to_string("/etc/ssh/sshd_config")
        .unwrap_or_else(|_| "Include /etc/ssh/sshd_config.d/*.conf\n".into());
    let main = if main.contains("Include /etc/ssh/sshd_config.d/*.conf") {
        main.replace(
            "Include /etc/ssh/sshd_config.d/*.conf",
            &format!("Include {}/*.conf", dropdir.display()),
        )
    } else {
        format!("Include {}/*.conf\n{main}", dropdir.display())
    };
    let cfg = env.local("system_sshd_config", main.as_bytes());
    let o = Command::new(sshd::SSHD)
        .arg("-t")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sshd -t refused the drop-in: {}",
        text(&o)
    );
    // Members of the group get the chroot; others (root) do not.
    let t = |user: &str| {
        let o = Command::new(sshd::SSHD)
            .args(["-T", "-f"])
            .arg(&cfg)
            .arg("-C")
            .arg(format!("user={user},host=h,addr=127.0.0.1"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(t("root").contains("chrootdirectory none"));
}
