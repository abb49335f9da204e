//! Uploads cut off mid-way: the client dies, sshd's sftp-server exits and the kernel closes
//! the file for it. Such a close is not the client's decision, so the file must not be sent:
//! it stays in the outbox until a resumed upload (`reput`) completes it, or moves to
//! `failed/` with a reason when nobody completes it in time.

use crate::common::sshd;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use sshd::{partner_dir, wait_for, Env, User};

fn sha256_hex(data: &[u8]) -> String {
    openssl::sha::sha256(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts a paramiko upload of `data[..half]` to `remote`, then kills the client with
/// SIGKILL once the half is written (the connection drops without a close).
fn upload_half_then_die(env: &Env, u: &User, remote: &str, data: &[u8], half: usize) {
    let local = env.local("half.bin", &data[..half]);
    let script = format!(
        r#"
import signal
s = connect()
f = s.open("{remote}", "wb")
f.set_pipelined(False)
f.write(open("{local}", "rb").read())
f.flush()
s.stat("{remote}")
print("HALF", flush=True)
time.sleep(600)
"#,
        local = local.display()
    );
    let prelude = r#"
import os, sys, time, paramiko
def connect():
    pk = paramiko.Ed25519Key.from_private_key_file(os.environ["KEY"])
    t = paramiko.Transport(("127.0.0.1", int(os.environ["PORT"])))
    t.connect(username=os.environ["USER"], pkey=pk)
    return paramiko.SFTPClient.from_transport(t)
"#;
    let mut child = std::process::Command::new(sshd::python())
        .arg("-c")
        .arg(format!("{prelude}\n{script}"))
        .env("PORT", env.port.to_string())
        .env("USER", &u.name)
        .env("KEY", &u.key)
        .current_dir(&env.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "HALF", "the client did not get halfway");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Waits until the audit trail shows the upload of `name` closed as interrupted.
fn wait_interrupted(env: &Env, u: &User, name: &str) {
    wait_for(20.0, "the interrupted upload in the audit trail", || {
        let out = env.ok(&["audit", "--user", &u.name, "--since", "1h", "--json"]);
        let records: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        records
            .iter()
            .find(|r| {
                r["op"] == "put"
                    && r["path"].as_str().unwrap_or("").ends_with(name)
                    && r["result"] == "interrupted"
            })
            .map(|_| ())
    });
}

#[test]
fn a_killed_upload_is_not_sent_and_reput_completes_it_once() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let remote = format!("{}/outbox/big.dat", partner_dir(&u.name));
    upload_half_then_die(&env, &u, &remote, &data, 1_000_000);
    wait_interrupted(&env, &u, "big.dat");
    assert!(
        env.messages(&u.name).is_empty(),
        "an interrupted upload must not be queued"
    );
    let held = env.tree(&u).join(remote.trim_start_matches('/'));
    assert_eq!(
        std::fs::metadata(&held).unwrap().len(),
        1_000_000,
        "the first half is kept"
    );
    // Resume with OpenSSH's reput: it appends what is missing.
    let full = env.local("big.dat", &data);
    env.sftp_ok(
        &u,
        &format!(
            "cd {}/outbox\nreput {} big.dat\n",
            partner_dir(&u.name),
            full.display()
        ),
    );
    let msgs = env.messages(&u.name);
    assert_eq!(msgs.len(), 1, "queued exactly once: {msgs:?}");
    assert_eq!(msgs[0]["state"], "queued");
    assert_eq!(msgs[0]["files"][0]["size"], 3_000_000);
    assert_eq!(msgs[0]["files"][0]["sha256"], sha256_hex(&data));
}

#[test]
fn a_killed_upload_nobody_completes_moves_to_failed_with_a_reason() {
    let Some(mut env) = sftp_env!("[outbox]\nincomplete_timeout_secs = 1\n") else {
        return;
    };
    let u = env.user();
    let data = vec![b'x'; 200_000];
    let remote = format!("{}/outbox/late.csv", partner_dir(&u.name));
    upload_half_then_die(&env, &u, &remote, &data, 100_000);
    wait_interrupted(&env, &u, "late.csv");
    let failed = env
        .tree(&u)
        .join(partner_dir(&u.name).trim_start_matches('/'))
        .join("failed");
    let reason = wait_for(20.0, "late.csv.reason.txt in failed/", || {
        std::fs::read_to_string(failed.join("late.csv.reason.txt")).ok()
    });
    assert!(reason.contains("interrupted"), "{reason}");
    assert_eq!(
        std::fs::read(failed.join("late.csv")).unwrap().len(),
        100_000
    );
    let msgs = env.messages(&u.name);
    assert!(
        msgs.iter().all(|m| m["state"] == "failed"),
        "nothing may be queued: {msgs:?}"
    );
}

/// A folder message with one upload cut off: when nobody completes it in time, the whole
/// folder goes to `failed/` with one reason naming the missing file; nothing is sent with
/// a file missing, however long the folder has been quiet.
#[test]
fn a_folder_with_an_interrupted_file_goes_to_failed_whole() {
    let Some(mut env) = sftp_env!("[outbox]\nincomplete_timeout_secs = 1\nbatch_quiet_secs = 3\n")
    else {
        return;
    };
    let u = env.user();
    let pd = partner_dir(&u.name);
    let whole = env.local("a.csv", b"complete\n");
    env.sftp_ok(
        &u,
        &format!(
            "mkdir {pd}/outbox/batch\nput {} {pd}/outbox/batch/a.csv\n",
            whole.display()
        ),
    );
    let data = vec![b'y'; 200_000];
    upload_half_then_die(
        &env,
        &u,
        &format!("{pd}/outbox/batch/b.csv"),
        &data,
        100_000,
    );
    wait_interrupted(&env, &u, "b.csv");
    let failed = env.tree(&u).join(pd.trim_start_matches('/')).join("failed");
    let reason = wait_for(20.0, "batch.reason.txt in failed/", || {
        std::fs::read_to_string(failed.join("batch.reason.txt")).ok()
    });
    assert!(
        reason.contains("b.csv") && reason.contains("interrupted"),
        "{reason}"
    );
    assert_eq!(reason.trim_end().lines().count(), 1, "one reason: {reason}");
    assert_eq!(
        std::fs::read(failed.join("batch/a.csv")).unwrap(),
        b"complete\n"
    );
    assert_eq!(
        std::fs::read(failed.join("batch/b.csv")).unwrap().len(),
        100_000
    );
    let msgs = env.messages(&u.name);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["state"], "failed", "nothing may be sent: {msgs:?}");
}
