//! Small files (issue 12): contents of at most `INLINE_MAX` bytes are committed inside the
//! database transaction that records them (one fsync per close, no blob file). A close
//! that succeeded is durable all the same (kill -9 right after it), the content reads back
//! byte for byte over SFTP, and retention removes such contents like blob files.

use std::path::Path;
use std::time::Duration;

use crate::common::{random_bytes, sha256_hex, sshd};

use as2box::store::{Store, INLINE_MAX};
use sshd::{partner_dir, Env};

/// Whether content `sha` has a blob file in the state folder.
fn blob_file_exists(env: &Env, sha: &str) -> bool {
    env.state.join("blobs").join(&sha[..2]).join(sha).exists()
}

/// Whether content `sha` is stored inside the database (read as the CLI does).
fn stored_inline(state: &Path, sha: &str) -> bool {
    Store::open(state).unwrap().is_inline(sha).unwrap()
}

#[test]
fn small_uploads_survive_kill_9_right_after_close_and_read_back_exact_over_sftp() {
    let Some(mut env) = sftp_env!("[outbox]\nlinger_secs = 3600.0\n") else {
        return;
    };
    let u = env.user();
    let pd = partner_dir(&u.name);
    let limit = INLINE_MAX as usize;
    let sizes = [
        0,
        1,
        100,
        4096,
        30_000,
        limit - 1,
        limit,
        limit + 1,
        200_000,
    ];
    let mut files = Vec::new();
    let mut batch = String::new();
    for (i, size) in sizes.iter().enumerate() {
        let data = random_bytes(*size);
        let name = format!("s{i}-{size}.edi");
        let local = env.local(&name, &data);
        batch += &format!("put {} {pd}/outbox/{name}\n", local.display());
        files.push((name, data));
    }
    // Every close has returned when the batch ends; the mount dies at once after it.
    env.sftp_ok(&u, &batch);
    // Nothing of them is left in the spool (inline: its spool file removed after the
    // commit; larger: renamed into the blob folder).
    let spool: Vec<_> = std::fs::read_dir(env.state.join("spool"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    env.kill_and_restart_mount();
    assert!(
        spool.is_empty(),
        "spool files left after the closes: {spool:?}"
    );

    let back = env.dir.join("back");
    std::fs::create_dir(&back).unwrap();
    let mut batch = String::new();
    for (name, _) in &files {
        batch += &format!("get {pd}/outbox/{name} {}/{name}\n", back.display());
    }
    env.sftp_ok(&u, &batch);
    for (name, data) in &files {
        let got = std::fs::read(back.join(name)).unwrap();
        assert!(
            &got == data,
            "{name}: {} bytes read back over sftp after kill -9, {} written (or different bytes)",
            got.len(),
            data.len()
        );
        let sha = sha256_hex(data);
        let small = data.len() <= limit;
        assert_eq!(
            stored_inline(&env.state, &sha),
            small,
            "{name}: stored inline must be exactly the contents up to {limit} bytes"
        );
        assert_eq!(
            blob_file_exists(&env, &sha),
            !small,
            "{name}: a blob file exactly for contents over {limit} bytes"
        );
    }
    // Each upload was picked up once, with the content that was written.
    let msgs = env.messages(&u.name);
    assert_eq!(msgs.len(), files.len(), "{msgs:#?}");
    for (name, data) in &files {
        let m = msgs
            .iter()
            .find(|m| m["files"][0]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no message for {name}: {msgs:#?}"));
        assert_eq!(m["state"], "queued", "{m:#?}");
        assert_eq!(m["files"][0]["sha256"], sha256_hex(data).as_str(), "{m:#?}");
    }
}

#[test]
fn retention_and_deletion_remove_inline_contents() {
    // Inbox files and message records expire within about 2 s; the mount never sweeps
    // on its own (an hour), `as2box gc` does.
    let Some(mut env) = sftp_env!(
        "[retention]\nfiles_hours = 0.0005\nmessages_days = 0.00002\nsweep_secs = 3600.0\n"
    ) else {
        return;
    };
    let u = env.user();
    let pd = partner_dir(&u.name);
    // A delivered small file (the daemon's and the CLI's path) and a held small upload.
    let delivered = b"UNA:+.? 'UNB+UNOC:3+inline delivered'".to_vec();
    env.deliver(&u, false, "in.edi", &delivered);
    let held = random_bytes(3000);
    let local = env.local("held.edi.part", &held);
    env.sftp_ok(
        &u,
        &format!("put {} {pd}/outbox/held.edi.part\n", local.display()),
    );
    let (sha_in, sha_held) = (sha256_hex(&delivered), sha256_hex(&held));
    assert!(stored_inline(&env.state, &sha_in));
    assert!(stored_inline(&env.state, &sha_held));
    let listing = env.sftp_ok(&u, &format!("ls -1 {pd}/inbox/*\n"));
    assert!(listing.contains("in.edi"), "{listing}");

    // The held upload is deleted by its user; the delivered file expires.
    env.sftp_ok(&u, &format!("rm {pd}/outbox/held.edi.part\n"));
    std::thread::sleep(Duration::from_millis(2500)); // let the retention times pass
    env.ok(&["gc"]);
    assert!(
        !stored_inline(&env.state, &sha_held),
        "the deleted upload's content is still stored"
    );
    assert!(
        !stored_inline(&env.state, &sha_in),
        "the expired inbox file's content is still stored"
    );
    let listing = env.sftp_ok(&u, &format!("ls -1 {pd}/inbox\n"));
    let left: Vec<&str> = listing
        .lines()
        .filter(|l| !l.starts_with("sftp>") && !l.trim().is_empty())
        .collect();
    assert!(left.is_empty(), "the inbox still shows {left:?}");
    assert!(
        env.messages(&u.name).is_empty(),
        "message records expired too"
    );
}

#[test]
fn a_held_file_rewritten_reads_back_new_content_though_the_kernel_keeps_stored_files_cached() {
    // Stored files are opened with FOPEN_KEEP_CACHE: what the kernel cached of a held
    // file must never outlive a rewrite through the mount.
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let pd = partner_dir(&u.name);
    let first = random_bytes(10_000);
    let second = random_bytes(3_000);
    let third = random_bytes(20_000);
    let (a, b, c) = (
        env.local("first", &first),
        env.local("second", &second),
        env.local("third", &third),
    );
    let back = env.dir.join("back");
    std::fs::create_dir(&back).unwrap();
    let get = |env: &Env, n: u32| -> Vec<u8> {
        let to = back.join(format!("got-{n}"));
        env.sftp_ok(
            &u,
            &format!("get {pd}/outbox/held.edi.part {}\n", to.display()),
        );
        std::fs::read(to).unwrap()
    };
    env.sftp_ok(
        &u,
        &format!("put {} {pd}/outbox/held.edi.part\n", a.display()),
    );
    assert!(get(&env, 1) == first, "first content");
    assert!(get(&env, 2) == first, "first content, read again");
    env.sftp_ok(
        &u,
        &format!("put {} {pd}/outbox/held.edi.part\n", b.display()),
    );
    assert!(
        get(&env, 3) == second,
        "the shorter rewrite, not the cached first"
    );
    env.sftp_ok(
        &u,
        &format!("put {} {pd}/outbox/held.edi.part\n", c.display()),
    );
    assert!(get(&env, 4) == third, "the longer rewrite");
}

#[test]
fn ls_l_in_the_chroot_shows_every_file_and_absent_names_in_the_home_stay_absent() {
    let Some(mut env) = sftp_env!() else {
        return;
    };
    let u = env.user();
    let pd = partner_dir(&u.name);
    // `ls -l` in the chroot makes sftp-server look up /etc/passwd and /etc/group for each
    // line: the home answers "absent" in a way the kernel may remember.
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("m{i:03}.edi"), random_bytes(100 + i)))
        .collect();
    let locals: Vec<_> = files
        .iter()
        .map(|(n, d)| env.local(n, d).display().to_string())
        .collect();
    let (st, pa) = (sshd::station(&u.name), sshd::partner(&u.name));
    let mut args = vec!["deliver", "--station", &st, "--partner", &pa];
    args.extend(locals.iter().map(String::as_str));
    env.ok(&args);
    let out = env.sftp_ok(&u, &format!("ls -l {pd}/inbox/*/\n"));
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(".edi")).collect();
    assert_eq!(lines.len(), files.len(), "{out}");
    for (name, data) in &files {
        let line = lines
            .iter()
            .find(|l| l.ends_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} missing from ls -l: {out}"));
        assert!(
            line.split_whitespace().any(|w| w == data.len().to_string()),
            "{name} has size {} but ls -l shows {line}",
            data.len()
        );
    }
    // Absent names stay absent, asked twice (the second answer may come from the
    // kernel's memory); the fixed names are there.
    for _ in 0..2 {
        let o = env.sftp(&u.name, &u.key, "ls /etc\n");
        assert!(!o.status.success(), "{}", sshd::text(&o));
        assert!(sshd::text(&o).contains("not found"), "{}", sshd::text(&o));
    }
    let out = env.sftp_ok(&u, "ls -1a /\n");
    assert!(out.contains("as2gateway") && out.contains(".ssh"), "{out}");
    let out = env.sftp_ok(&u, "ls -1 /as2gateway\n");
    assert!(out.contains(&st), "{out}");
}
