//! Privilege separation that holds when the AS2 daemon is compromised: whatever the
//! daemon's service account does to the state folder (it is shared with the account's
//! group), the mount (root) deletes nothing outside its spool, writes nothing outside the
//! blob store, serves nothing outside it, and no login or mailbox is granted.
//!
//! Each test acts as the service account with real processes (`ln`, `mv`, `python3`'s
//! sqlite3 on the database files), as a compromised daemon would, then looks through the
//! real mount. Needs root and /dev/fuse like the other system tests (see tests/system/common).

use crate::common;
use crate::common::daemon as daemon_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use daemon_common::files_in;

/// A system account for this test only (like the packaged `as2box` service account) that
/// shares the state folder (`as2box init --service-user`); removed when dropped.
struct ServiceAccount {
    name: String,
    uid: u32,
    gid: u32,
}

impl ServiceAccount {
    fn share(fx: &Fixture) -> ServiceAccount {
        let name = format!("as2svc{}", random_hex(3));
        let args: Vec<String> = [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // useradd fails while another test holds the passwd lock: try again.
        for _ in 0..20 {
            if run(&args, &[], None, Duration::from_secs(60))
                .status
                .success()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let (uid, gid) = passwd_ids(&name).expect("the new service account");
        let svc = ServiceAccount { name, uid, gid };
        fx.cli_ok(&["init", "--service-user", &svc.name]);
        svc
    }

    /// Runs `args` as the account; returns the output (success is not required: the
    /// defences make most of these fail).
    fn run(&self, args: &[&str]) -> std::process::Output {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        run(
            &args,
            &[],
            Some((self.uid, self.gid)),
            Duration::from_secs(60),
        )
    }

    /// Runs SQL on the database file `db` as the account, directly with SQLite as a
    /// compromised daemon could.
    fn sql(&self, db: &Path, sql: &str) -> std::process::Output {
        self.run(&[
            "python3",
            "-c",
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=30)\nc.executescript(sys.argv[2])\nc.commit()",
            &db.to_string_lossy(),
            sql,
        ])
    }
}

impl Drop for ServiceAccount {
    fn drop(&mut self) {
        run_quiet(&["userdel", &self.name]);
        run_quiet(&["groupdel", &self.name]);
    }
}

/// The database file the daemon writes (entries, messages): `data/as2box.db`, or the one
/// database of an older layout.
fn operational_db(fx: &Fixture) -> PathBuf {
    let split = fx.state_dir.join("data/as2box.db");
    if split.exists() {
        split
    } else {
        fx.state_dir.join("as2box.db")
    }
}

/// The database file with users, keys and stations.
fn config_db(fx: &Fixture) -> PathBuf {
    let split = fx.state_dir.join("config.db");
    if split.exists() {
        split
    } else {
        fx.state_dir.join("as2box.db")
    }
}

/// A root-only folder with one file of random content, outside the state folder: what a
/// compromised daemon would like root to delete, overwrite or leak.
fn victim(fx: &Fixture, name: &str) -> (PathBuf, PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = fx.dir.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = dir.join("secret.txt");
    let secret = format!("root-only secret {}", random_hex(16));
    std::fs::write(&file, &secret).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, file, secret)
}

/// A folder that lets the account reach `victim`'s folder by a symlink target path (the
/// account cannot look inside it: the link is followed by root or not at all).
fn symlink_as(svc: &ServiceAccount, target: &Path, at: &Path) -> std::process::Output {
    svc.run(&["ln", "-s", &target.to_string_lossy(), &at.to_string_lossy()])
}

#[test]
fn compromised_daemon_account_a_spool_symlink_planted_makes_the_mount_delete_nothing() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let svc = ServiceAccount::share(&fx);
    let (dir, file, secret) = victim(&fx, "victim");
    let spool = fx.state_dir.join("spool");
    // Move root's spool away and put a link to the victim folder in its place; the
    // daemon's own spool too, in case root clears that.
    for s in [spool.clone(), fx.state_dir.join("serve-spool")] {
        let aside = s.with_extension("aside");
        svc.run(&["mv", &s.to_string_lossy(), &aside.to_string_lossy()]);
        symlink_as(&svc, &dir, &s);
    }
    fx.stop_mount(libc::SIGTERM);
    fx.mount();
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some(secret.as_str()),
        "the mount's start deleted a file outside its spool:\n{}",
        fx.mount_log()
    );
    // And uploads still work (the spool is a real folder again).
    let mb = fx.mailbox();
    let data = random_bytes(10_000);
    fx.as_user(&mb.user, || {
        ok(ops::put(&mb.outbox().join("after.edi"), &data), "put")
    });
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn compromised_daemon_account_an_upload_is_never_moved_through_a_blob_folder_symlink() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let svc = ServiceAccount::share(&fx);
    let (dir, _, _) = victim(&fx, "victim");
    // The account knows (or guesses) what a user will upload, hence its blob's folder.
    // (Padded past INLINE_MAX: smaller contents are stored in the database, never renamed.)
    let mut data = format!("* * * * * root touch {}/owned\n", fx.dir.display()).into_bytes();
    data.resize(as2box::store::INLINE_MAX as usize + 1000, b'#');
    let sha = sha256_hex(&data);
    let prefix = fx.state_dir.join("blobs").join(&sha[..2]);
    svc.run(&["rm", "-rf", &prefix.to_string_lossy()]);
    let out = symlink_as(&svc, &dir, &prefix);
    assert!(
        out.status.success(),
        "blobs/ is the account's to write: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let put = fx.as_user(&mb.user, || ops::put(&mb.outbox().join("cron.edi"), &data));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["secret.txt"],
        "root moved an upload into a folder outside the blob store"
    );
    // The link was replaced by a real folder: the upload is stored where it belongs.
    put.expect("the upload succeeds");
    assert!(std::fs::symlink_metadata(&prefix).unwrap().is_dir());
    assert!(prefix.join(&sha).is_file());
}

#[test]
fn compromised_daemon_account_a_blob_name_it_sets_serves_nothing_outside_the_blob_store() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox_with(None, Some("plain"), false);
    let svc = ServiceAccount::share(&fx);
    let (_, file, secret) = victim(&fx, "victim");
    let names = ["absolute.edi", "dotdot.edi", "linked.edi"];
    // Past INLINE_MAX, so that each has a blob file (smaller ones live in the database).
    let size = as2box::store::INLINE_MAX as usize + 100;
    let contents: Vec<Vec<u8>> = names.iter().map(|_| random_bytes(size)).collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&contents)
        .map(|(n, c)| (*n, c.as_slice()))
        .collect();
    fx.deliver(&mb, &files);
    // Blob names the database now gives: an absolute path; a relative one that climbs
    // out of blobs/<2 chars>/ (the old path join took the first two characters as the
    // folder); and a real hash whose blob file the account replaced by a symlink.
    let relative = format!("../{}", file.strip_prefix(&fx.dir).unwrap().display());
    let linked_sha = sha256_hex(&contents[2]);
    let blob_file = fx
        .state_dir
        .join("blobs")
        .join(&linked_sha[..2])
        .join(&linked_sha);
    svc.run(&["rm", "-f", &blob_file.to_string_lossy()]);
    symlink_as(&svc, &file, &blob_file);
    let size = secret.len();
    let sql = format!(
        "UPDATE entries SET blob = '{}', size = {size} WHERE name = 'absolute.edi';
         UPDATE entries SET blob = '{relative}', size = {size} WHERE name = 'dotdot.edi';
         UPDATE entries SET size = {size} WHERE name = 'linked.edi';",
        file.display()
    );
    let out = svc.sql(&operational_db(&fx), &sql);
    assert!(
        out.status.success(),
        "the account writes the operational database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A fresh mount: nothing of the earlier reads is cached.
    fx.stop_mount(libc::SIGTERM);
    fx.mount();
    let shown = fx.as_user(&mb.user, || files_in(&mb.inbox()));
    for name in names {
        let Some(path) = shown.iter().find(|p| p.ends_with(name)) else {
            continue;
        };
        let read = fx.as_user(&mb.user, || ops::read(path));
        if let Ok(data) = &read {
            assert!(
                !String::from_utf8_lossy(data).contains("root-only secret"),
                "{name} served a root-only file outside the blob store"
            );
        }
        assert_errno(read, libc::EIO, name);
    }
}

#[test]
fn compromised_daemon_account_a_key_row_or_station_owner_it_writes_grants_no_access() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let victim_box = fx.mailbox();
    let intruder = fx.add_user(None);
    let svc = ServiceAccount::share(&fx);
    let evil_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfQ+zdaemonPlantedThisKeyAAAAAAAAAAAAAAAAAAAA evil";
    let grant = format!(
        "INSERT INTO user_keys (user_id, public_key, created_ms)
             SELECT id, '{evil_key}', 0 FROM users WHERE name = '{}';
         UPDATE stations SET user_id = (SELECT id FROM users WHERE name = '{}')
             WHERE as2_id = '{}';",
        victim_box.user.name, intruder.name, victim_box.station
    );
    svc.sql(&config_db(&fx), &grant);
    // The same tables created in the file the account can write, to shadow root's.
    let shadow = format!(
        "CREATE TABLE IF NOT EXISTS user_keys (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL, public_key TEXT NOT NULL, created_ms INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, uid INTEGER NOT NULL, gid INTEGER NOT NULL, quota INTEGER, created_ms INTEGER NOT NULL);
         INSERT OR IGNORE INTO users VALUES (1, '{}', {}, {}, NULL, 0);
         INSERT INTO user_keys (user_id, public_key, created_ms) VALUES (1, '{evil_key}', 0);",
        victim_box.user.name, victim_box.user.uid, victim_box.user.gid
    );
    svc.sql(&operational_db(&fx), &shadow);
    fx.stop_mount(libc::SIGTERM);
    fx.mount();
    let keys = fx.as_user(&victim_box.user, || {
        ops::read(&fx.user_dir(&victim_box.user).join(".ssh/authorized_keys"))
    });
    let keys = String::from_utf8_lossy(&ok(keys, "read authorized_keys")).into_owned();
    assert!(
        !keys.contains("daemonPlantedThisKey"),
        "a key the daemon's account wrote is offered to sshd:\n{keys}"
    );
    let stations = fx.as_user(&intruder, || {
        ops::list(&fx.user_dir(&intruder).join("as2gateway"))
    });
    assert!(
        !stations.unwrap_or_default().contains(&victim_box.station),
        "the daemon's account gave another user's station to {}",
        intruder.name
    );
    let own = fx.as_user(&victim_box.user, || ops::list(&victim_box.boxes_dir()));
    assert!(own.is_ok(), "the owner keeps the station: {own:?}");
}
