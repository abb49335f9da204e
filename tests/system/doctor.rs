//! `as2box doctor`: each failure it reports, provoked on a real mount and daemon: the mount
//! process killed (dead FUSE connection), a group-writable folder above the mount point, an
//! expired (and a soon expiring) partner certificate (but not an expired one beside a
//! valid one, a rollover), `as2box serve` stopped. Each failing
//! check must say how to fix it, and doctor must exit 1.
//!
//! Needs root and /dev/fuse like the other system tests (see tests/system/common).

use crate::common;
use crate::common::daemon as daemon_common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use daemon_common::*;
use serde_json::Value;

/// Points the fixture's config at its own mount point (doctor reads mount.path).
fn doctor_fixture(fx: &Fixture) {
    let mut config = std::fs::read_to_string(&fx.config).unwrap();
    let path = format!("path = {:?}\n", fx.mnt.display().to_string());
    // The settings may have a [mount] table already (AS2BOX_TEST_PASSTHROUGH).
    if config.contains("[mount]\n") {
        config = config.replacen("[mount]\n", &format!("[mount]\n{path}"), 1);
    } else {
        config += &format!("\n[mount]\n{path}");
    }
    std::fs::write(&fx.config, config).unwrap();
}

/// `as2box doctor --json`: (exit success, the checks).
fn doctor(fx: &Fixture) -> (bool, Vec<Value>) {
    let sshd_config = fx.dir.join("sshd_config");
    let out = fx.cli(&[
        "doctor",
        "--json",
        "--sshd-config",
        &sshd_config.to_string_lossy(),
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        report["ok"].as_bool().unwrap(),
        out.status.success(),
        "exit status and \"ok\" disagree: {report}"
    );
    (
        out.status.success(),
        report["checks"].as_array().unwrap().clone(),
    )
}

/// The checks named `name`.
fn named<'a>(checks: &'a [Value], name: &str) -> Vec<&'a Value> {
    checks.iter().filter(|c| c["name"] == name).collect()
}

fn status(c: &Value) -> &str {
    c["status"].as_str().unwrap()
}

/// The one check `name` whose detail contains `needle`.
#[track_caller]
fn find<'a>(checks: &'a [Value], name: &str, needle: &str) -> &'a Value {
    named(checks, name)
        .into_iter()
        .find(|c| c["detail"].as_str().unwrap().contains(needle))
        .unwrap_or_else(|| panic!("no {name} check mentioning {needle:?} in {checks:#?}"))
}

#[test]
fn a_killed_mount_fails_and_says_how_to_remount() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    doctor_fixture(&fx);
    let (_, checks) = doctor(&fx);
    let mount = named(&checks, "mount");
    assert!(
        mount.iter().all(|c| status(c) == "ok"),
        "a live mount: {mount:?}"
    );
    let mp = named(&checks, "mount-point");
    assert!(mp.iter().all(|c| status(c) == "ok"), "{mp:?}");
    // The FUSE data path the running mount uses, as its log named it.
    let path = named(&checks, "fuse-data-path");
    assert_eq!(path.len(), 1, "{checks:?}");
    let detail = path[0]["detail"].as_str().unwrap();
    let pid = fx.mount_pid().unwrap();
    assert!(detail.contains(&format!("pid {pid}")), "{detail}");
    let log = fx.mount_log();
    if log.contains("\"passthrough\"") {
        assert!(detail.starts_with("passthrough"), "{detail}\n{log}");
    } else {
        assert!(detail.starts_with("through the mount"), "{detail}\n{log}");
    }

    fx.stop_mount(libc::SIGKILL);
    let (ok, checks) = doctor(&fx);
    assert!(!ok, "doctor must exit 1 with a dead mount");
    let c = find(&checks, "mount", "not connected");
    assert_eq!(status(c), "fail", "{c}");
    assert!(c["fix"].as_str().unwrap().contains("umount -l"), "{c}");
    let c = find(&checks, "fuse-data-path", "not running");
    assert_eq!(status(c), "warn", "{c}");
    // The mount point itself cannot be examined, its parents still are: no false alarm.
    let mp = named(&checks, "mount-point");
    assert!(mp.iter().all(|c| status(c) == "ok"), "{mp:?}");
}

#[test]
fn a_group_writable_folder_above_the_mount_point_fails() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    doctor_fixture(&fx);
    std::fs::set_permissions(&fx.dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    let (ok, checks) = doctor(&fx);
    std::fs::set_permissions(&fx.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!ok);
    let c = find(&checks, "mount-point", &fx.dir.display().to_string());
    assert_eq!(status(c), "fail", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("0775"), "{c}");
    assert_eq!(
        c["fix"].as_str().unwrap(),
        format!("chown root:root {0} && chmod go-w {0}", fx.dir.display())
    );
    let (_, checks) = doctor(&fx);
    let mp = named(&checks, "mount-point");
    assert!(mp.iter().all(|c| status(c) == "ok"), "{mp:?}");
}

/// A self-signed certificate valid from `from_days` to `to_days` (relative to now).
fn certificate(dir: &Path, name: &str, from_days: i64, to_days: i64) -> PathBuf {
    use openssl::asn1::Asn1Time;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509NameBuilder, X509};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", name).unwrap();
    let subject = subject.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(&subject).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now + from_days * 86400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + to_days * 86400).unwrap())
        .unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, b.build().to_pem().unwrap()).unwrap();
    path
}

#[test]
fn an_expired_certificate_fails_and_one_expiring_soon_warns() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    doctor_fixture(&fx);
    let user = fx.add_user(None);
    let station = fx.add_station(&user, None);
    fx.cli_ok(&["station", "set", &station, "--generate-cert"]);
    let (old, soon) = (fx.add_partner(&user, false), fx.add_partner(&user, false));
    let src = fx.dir.join("src");
    let expired = certificate(&src, "expired", -400, -2);
    let expiring = certificate(&src, "expiring", -300, 10);
    for (partner, cert) in [(&old, &expired), (&soon, &expiring)] {
        fx.cli_ok(&[
            "partner",
            "set",
            "--user",
            &user.name,
            partner,
            "--cert",
            &cert.to_string_lossy(),
        ]);
    }
    let (ok, checks) = doctor(&fx);
    assert!(!ok);
    let c = find(&checks, "certificates", &format!("partner {old} "));
    assert_eq!(status(c), "fail", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("EXPIRED"), "{c}");
    assert!(
        c["fix"].as_str().unwrap().contains(&format!(
            "as2box partner cert add --user {} {old} ",
            user.name
        )),
        "{c}"
    );
    let c = find(&checks, "certificates", &format!("partner {soon} "));
    assert_eq!(status(c), "warn", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("expires in"), "{c}");
    let c = find(&checks, "certificates", &format!("station {station}"));
    assert_eq!(status(c), "ok", "{c}");

    // A rollover: the expired certificate stays beside a new one; the new one counts.
    let valid = certificate(&src, "valid", -1, 365);
    fx.cli_ok(&[
        "partner",
        "cert",
        "add",
        "--user",
        &user.name,
        &old,
        &valid.to_string_lossy(),
    ]);
    let (_, checks) = doctor(&fx);
    let c = find(&checks, "certificates", &format!("partner {old} "));
    assert_eq!(status(c), "ok", "{c}");
}

#[test]
fn a_stopped_serve_fails_and_says_how_to_start_it() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    doctor_fixture(&fx);
    let daemon = start_daemon(&fx);
    let (_, checks) = doctor(&fx);
    let c = &named(&checks, "serve")[0];
    assert_eq!(status(c), "ok", "{c}");
    daemon.kill9();
    let (ok, checks) = doctor(&fx);
    assert!(!ok);
    let c = &named(&checks, "serve")[0];
    assert_eq!(status(c), "fail", "{c}");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .starts_with("systemctl start as2box-serve"),
        "{c}"
    );
    // The store is as init left it: intact and with the modes store::perms gives it.
    for name in ["store", "blobs", "state-perms"] {
        let v = named(&checks, name);
        assert!(v.iter().all(|c| status(c) == "ok"), "{name}: {v:?}");
    }
}

/// A partner whose inbound security was turned off is named with a warning (SECURITY.md,
/// "Forged sender"); the secure default gives none.
#[test]
fn a_partner_that_may_send_unsigned_messages_is_warned_about() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    doctor_fixture(&fx);
    let mb = fx.mailbox();
    let (_, checks) = doctor(&fx);
    assert!(named(&checks, "inbound").is_empty(), "{checks:#?}");
    fx.partner_set(&mb, &["--require-signature", "no"]);
    let (_, checks) = doctor(&fx);
    let c = find(&checks, "inbound", "unsigned");
    assert_eq!(status(c), "warn", "{c}");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("--require-signature yes"),
        "{c}"
    );
}
