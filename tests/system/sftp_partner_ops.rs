//! The operations the hosted service documents, run exactly as a partner runs them with
//! the OpenSSH `sftp` client in batch mode, through a real sshd and the real mount.

use crate::common::sshd;

use sshd::{listing, partner_dir};

#[test]
fn inbox_get_rm_cd_up_rmdir_as_documented() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    env.deliver(&u, false, "invoice.edi", b"UNA:+.? 'UNB+UNOC:3'\n");
    let pd = partner_dir(&u.name);
    // Sessions start at the top of the chroot, as the hosted service documents.
    let out = env.sftp_ok(&u, "pwd\nls -1\n");
    assert!(out.contains("Remote working directory: /\n"), "{out}");
    assert!(out.contains("as2gateway"), "{out}");
    let out = env.sftp_ok(&u, &format!("cd {pd}/inbox\nls -1\n"));
    let folders: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("sftp>") && !l.trim().is_empty())
        .collect();
    assert_eq!(folders.len(), 1, "one message folder: {out}");
    let folder = folders[0].trim().rsplit('/').next().unwrap().to_owned();
    let got = env.dir.join("got.edi");
    env.sftp_ok(
        &u,
        &format!(
            "cd {pd}/inbox/{folder}\nget invoice.edi {}\nrm invoice.edi\ncd ..\nrmdir {folder}\n",
            got.display()
        ),
    );
    assert_eq!(std::fs::read(&got).unwrap(), b"UNA:+.? 'UNB+UNOC:3'\n");
    let out = env.sftp_ok(&u, &format!("cd {pd}/inbox\nls -1a\n"));
    assert!(!out.contains(&folder), "message folder removed: {out}");
}

#[test]
fn put_into_outbox_becomes_one_queued_message() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let f = env.local("order.edi", b"ORDERS 1\n");
    env.sftp_ok(
        &u,
        &format!("cd {}/outbox\nput {}\n", partner_dir(&u.name), f.display()),
    );
    // The close returned after the commit: the message is queued now, no waiting.
    let msgs = env.messages(&u.name);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["state"], "queued");
    assert_eq!(msgs[0]["name"], "order.edi");
    assert_eq!(msgs[0]["test"], false);
    assert_eq!(msgs[0]["files"][0]["size"], 9);
}

#[test]
fn mkdir_in_outbox_and_several_puts_is_one_multi_attachment_message() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let a = env.local("a.edi", b"first\n");
    let b = env.local("b.edi", b"second file\n");
    let c = env.local("c.pdf", b"%PDF-1.4 third\n");
    env.sftp_ok(
        &u,
        &format!(
            "cd {}/outbox\nmkdir batch1\ncd batch1\nput {}\nput {}\nput {}\ncd ..\nrename batch1 batch1.ready\n",
            partner_dir(&u.name),
            a.display(),
            b.display(),
            c.display()
        ),
    );
    let msgs = sshd::wait_for(10.0, "the folder to be picked up", || {
        let m = env.messages(&u.name);
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(msgs.len(), 1, "one message: {msgs:?}");
    assert_eq!(msgs[0]["name"], "batch1");
    assert_eq!(msgs[0]["state"], "queued");
    let mut names: Vec<String> = msgs[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.edi", "b.edi", "c.pdf"]);
}

#[test]
fn put_p_keeps_times_and_ls_l_shows_sizes() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let f = env.local("stamped.edi", b"0123456789");
    // 2001-09-09 01:46:40 UTC
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(t)
        .unwrap();
    let out = env.sftp_ok(
        &u,
        &format!(
            "cd {}/outbox\nput -p {}\nls -l\n",
            partner_dir(&u.name),
            f.display()
        ),
    );
    let l = listing(&out);
    let line = l
        .get("stamped.edi")
        .unwrap_or_else(|| panic!("listed: {out}"));
    assert!(line.contains(" 10 "), "size 10 in {line}");
    assert!(line.contains("2001"), "mtime from put -p in {line}");
    // As root through the mount, the same time.
    let md = std::fs::metadata(
        env.tree(&u)
            .join(&partner_dir(&u.name)[1..])
            .join("outbox/stamped.edi"),
    )
    .unwrap();
    assert_eq!(md.modified().unwrap(), t);
    assert_eq!(env.messages(&u.name).len(), 1);
}

#[test]
fn test_partner_boxes_under_test() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    env.deliver(&u, true, "test-in.edi", b"from the test partner\n");
    let f = env.local("test-out.edi", b"to the test partner\n");
    let pd = partner_dir(&u.name);
    let out = env.sftp_ok(
        &u,
        &format!(
            "cd {pd}/test\nls -1\ncd outbox\nput {}\ncd ../inbox\nls -1\n",
            f.display()
        ),
    );
    for b in ["inbox", "outbox", "failed"] {
        assert!(out.contains(b), "test/{b} listed: {out}");
    }
    let msgs = env.messages(&u.name);
    let out_msgs: Vec<_> = msgs.iter().filter(|m| m["direction"] == "out").collect();
    assert_eq!(out_msgs.len(), 1, "{msgs:?}");
    assert_eq!(out_msgs[0]["test"], true);
    // The delivered test message is in test/inbox (one stamp folder), not in inbox/.
    let out = env.sftp_ok(&u, &format!("cd {pd}/test/inbox\nls -1\n"));
    let stamp = out
        .lines()
        .filter(|l| !l.starts_with("sftp>") && !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .next()
        .unwrap_or_else(|| panic!("a message folder in test/inbox: {out}"));
    let got = env.dir.join("got-test.edi");
    env.sftp_ok(
        &u,
        &format!(
            "cd {pd}/test/inbox/{stamp}\nget test-in.edi {}\n",
            got.display()
        ),
    );
    assert_eq!(std::fs::read(&got).unwrap(), b"from the test partner\n");
    let out = env.sftp_ok(&u, &format!("cd {pd}/inbox\nls -1\n"));
    assert!(
        out.lines()
            .all(|l| l.starts_with("sftp>") || l.trim().is_empty()),
        "production inbox stays empty: {out}"
    );
}

#[test]
fn sftp_operations_are_in_the_audit_log() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let content = b"audited upload\n";
    let f = env.local("audited.edi", content);
    let pd = partner_dir(&u.name);
    env.sftp_ok(&u, &format!("cd {pd}/outbox\nput {}\n", f.display()));
    env.deliver(&u, false, "incoming.edi", b"for the audit\n");
    let stamp = env
        .sftp_ok(&u, &format!("cd {pd}/inbox\nls -1\n"))
        .lines()
        .filter(|l| !l.starts_with("sftp>") && !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .next()
        .unwrap();
    let got = env.dir.join("incoming.edi");
    env.sftp_ok(
        &u,
        &format!(
            "cd {pd}/inbox/{stamp}\nget incoming.edi {}\nrm incoming.edi\n",
            got.display()
        ),
    );
    let hex: String = openssl::sha::sha256(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let entries = loop {
        let out = env.ok(&["audit", "--user", &u.name, "--since", "1h", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let items: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect();
        let put_ok = items
            .iter()
            .any(|e| e.contains("audited.edi") && e.contains(&hex) && e.contains("outbox"));
        let get = items
            .iter()
            .any(|e| e.contains("\"get\"") && e.contains("incoming.edi"));
        let rm = items
            .iter()
            .any(|e| e.contains("\"rm\"") && e.contains("incoming.edi"));
        if put_ok && get && rm {
            break items;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit lacks the put, get or rm:\n{out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(entries.iter().all(|e| e.contains(&u.name)), "{entries:?}");
}

/// The hosted service's guide, verbatim: after login the user sees `.ssh` and
/// `as2gateway`, and its commands are relative to the top: `put <file>
/// as2gateway/<station ID>/<partner ID>/outbox/` and `cd
/// as2gateway/<station>/<partner>/inbox/<timestamp>-<random number>/`. The WinSCP-style
/// absolute path keeps working.
#[test]
fn the_guides_relative_commands_work_as_written() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let (st, pa) = (sshd::station(&u.name), sshd::partner(&u.name));
    let out = env.sftp_ok(&u, "pwd\nls -1a\n");
    assert!(out.contains("Remote working directory: /\n"), "{out}");
    let top: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("sftp>") && !l.starts_with("Remote"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "." && *l != "..")
        .collect();
    assert_eq!(top, [".ssh", "as2gateway"], "{out}");

    let f = env.local("order.edi", b"ORDERS 1\n");
    env.sftp_ok(
        &u,
        &format!("put {} as2gateway/{st}/{pa}/outbox/\n", f.display()),
    );
    let msgs = env.messages(&u.name);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["name"], "order.edi");

    env.deliver(&u, false, "invoice.edi", b"INVOIC\n");
    let out = env.sftp_ok(&u, &format!("ls -1 as2gateway/{st}/{pa}/inbox/\n"));
    let folder = out
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .map(|l| l.trim().rsplit('/').next().unwrap().to_owned())
        .find(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("no message folder: {out}"));
    let got = env.dir.join("invoice.got");
    env.sftp_ok(
        &u,
        &format!(
            "cd as2gateway/{st}/{pa}/inbox/{folder}/\nget invoice.edi {}\n",
            got.display()
        ),
    );
    assert_eq!(std::fs::read(&got).unwrap(), b"INVOIC\n");
    // WinSCP-style absolute paths.
    let out = env.sftp_ok(
        &u,
        &format!("cd {}/inbox/{folder}\nls -1\n", partner_dir(&u.name)),
    );
    assert!(out.contains("invoice.edi"), "{out}");
}
