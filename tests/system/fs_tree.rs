//! The tree and who may do what in it (docs/SEMANTICS.md "The tree", "Who may do what"):
//! layout of users, stations, partners and `test/`; ownership and modes as OpenSSH's
//! chroot requires; the read-only structure with its errnos; other users shut out; no
//! links, symlinks or device nodes; names; xattrs; live configuration changes.

use crate::common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::ops;
use common::*;

const EACCES: i32 = libc::EACCES;
const EPERM: i32 = libc::EPERM;

#[test]
fn tree_lists_user_stations_partners_and_boxes() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let user = fx.add_user(None);
    let s1 = fx.add_station(&user, None);
    let s2 = fx.add_station(&user, Some("plain"));
    let p1 = fx.add_partner(&user, false);
    let p2 = fx.add_partner(&user, false);
    let home = fx.user_dir(&user);
    fx.as_user(&user, || {
        assert_eq!(
            names(&home),
            set(&[".ssh", "as2gateway"]),
            "{}",
            home.display()
        );
        assert_eq!(names(&home.join(".ssh")), set(&["authorized_keys"]));
        let gw = home.join("as2gateway");
        assert_eq!(names(&gw), set(&[&s1, &s2]));
        for s in [&s1, &s2] {
            // Every station folder lists every partner of the user.
            assert_eq!(names(&gw.join(s)), set(&[&p1, &p2]), "station {s}");
            for p in [&p1, &p2] {
                let pd = gw.join(s).join(p);
                assert_eq!(
                    names(&pd),
                    set(&["failed", "inbox", "outbox"]),
                    "{}",
                    pd.display()
                );
                for b in ["inbox", "outbox", "failed"] {
                    assert!(
                        names(&pd.join(b)).is_empty(),
                        "{b} of a new partner is empty"
                    );
                }
            }
        }
        // authorized_keys is readable (may be empty).
        ok(
            ops::read(&home.join(".ssh/authorized_keys")),
            "read authorized_keys",
        );
    });
}

#[test]
fn root_folder_lists_every_user_to_everybody() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let a = fx.add_user(None);
    let b = fx.add_user(None);
    let want = set(&[&a.name, &b.name]);
    assert_eq!(fx.as_root(|| names(&fx.mnt)), want, "as root");
    assert_eq!(fx.as_user(&a, || names(&fx.mnt)), want, "as {}", a.name);
    assert_eq!(
        fx.as_ids(65534, 65534, || names(&fx.mnt)),
        want,
        "as nobody"
    );
    let md = fx.as_ids(65534, 65534, || ok(ops::stat(&fx.mnt), "stat /"));
    assert_eq!(perm(&md), (0o755, 0, 0), "/ is root:root 0755");
    assert!(md.is_dir());
}

/// Ownership and modes of every folder, as listed in SEMANTICS.md and as OpenSSH's
/// ChrootDirectory requires (root-owned, not group/other-writable, on every component).
#[test]
fn stat_reports_owners_and_modes_of_the_tree() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let user = fx.add_user(None);
    let station = fx.add_station(&user, None);
    let partner = fx.add_partner(&user, false);
    fx.add_partner_id(&user, &partner, true);
    let (uid, gid) = (user.uid, user.gid);
    assert_ne!(uid, 0);
    let home = fx.user_dir(&user);
    let gw = home.join("as2gateway");
    let pd = gw.join(&station).join(&partner);
    let mut expect: Vec<(PathBuf, u32, u32, u32, bool)> = vec![
        (fx.mnt.clone(), 0o755, 0, 0, true),
        (home.clone(), 0o750, 0, gid, true),
        (home.join(".ssh"), 0o550, 0, gid, true),
        (home.join(".ssh/authorized_keys"), 0o440, 0, gid, false),
        (gw.clone(), 0o550, 0, gid, true),
        (gw.join(&station), 0o550, 0, gid, true),
        (pd.clone(), 0o550, 0, gid, true),
        (pd.join("test"), 0o550, 0, gid, true),
    ];
    for b in ["inbox", "outbox", "failed"] {
        expect.push((pd.join(b), 0o750, uid, gid, true));
        expect.push((pd.join("test").join(b), 0o750, uid, gid, true));
    }
    for (who, as_root) in [("root", true), ("the user", false)] {
        for (path, mode, o, g, dir) in &expect {
            let md = if as_root {
                fx.as_root(|| ops::stat(path))
            } else {
                fx.as_user(&user, || ops::stat(path))
            };
            let md = ok(md, &format!("stat {} as {who}", path.display()));
            assert_eq!(
                perm(&md),
                (*mode, *o, *g),
                "{} as {who}: (mode, uid, gid)",
                path.display()
            );
            assert_eq!(md.is_dir(), *dir, "{} is a folder: {dir}", path.display());
            assert_eq!(md.is_file(), !*dir, "{} is a regular file", path.display());
        }
    }
    // The chroot chain: every component from / down to the user's folder is root-owned and
    // not writable by group or other (including the folders above the mount point).
    let mut p: &Path = &home;
    loop {
        let md = std::fs::metadata(p).unwrap();
        assert_eq!(
            md.uid(),
            0,
            "{} must be owned by root for ChrootDirectory",
            p.display()
        );
        assert_eq!(
            md.mode() & 0o022,
            0,
            "{} must not be group/other-writable for ChrootDirectory",
            p.display()
        );
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
}

#[test]
fn user_add_creates_a_system_account_without_shell_or_home() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let user = fx.add_user(None);
    let line = passwd_line(&user.name).unwrap();
    let f: Vec<&str> = line.split(':').collect();
    assert!(
        f[6].ends_with("nologin") || f[6].ends_with("/false"),
        "no shell: {line}"
    );
    assert!(
        !Path::new(f[5]).exists() || f[5] == "/nonexistent",
        "no home: {line}"
    );
    // The mount reports that account's ids.
    let pd_inbox = fx
        .mailbox_of(
            &user,
            &fx.add_station(&user, None),
            &fx.add_partner(&user, false),
            false,
        )
        .inbox();
    let md = fx.as_root(|| ok(ops::stat(&pd_inbox), "stat inbox"));
    assert_eq!((md.uid(), md.gid()), (user.uid, user.gid));
}

#[test]
fn test_only_partner_shows_only_a_test_folder() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox_with(None, None, true);
    fx.as_user(&mb.user, || {
        assert_eq!(names(&mb.partner_dir), set(&["test"]));
        assert_eq!(
            names(&mb.partner_dir.join("test")),
            set(&["failed", "inbox", "outbox"])
        );
        assert_errno(
            ops::stat(&mb.partner_dir.join("outbox")),
            libc::ENOENT,
            "no production outbox",
        );
    });
}

#[test]
fn production_and_test_partner_sharing_an_id_show_boxes_and_test_side_by_side() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    fx.add_partner_id(&mb.user, &mb.partner, true);
    let tmb = fx.mailbox_of(&mb.user, &mb.station, &mb.partner, true);
    fx.as_user(&mb.user, || {
        wait_until("test/ to appear", Duration::from_secs(5), || {
            names(&mb.partner_dir) == set(&["failed", "inbox", "outbox", "test"])
        });
        assert_eq!(names(&tmb.boxes_dir()), set(&["failed", "inbox", "outbox"]));
        // The two outboxes are distinct: a file in one does not show in the other.
        ok(
            ops::put(&mb.outbox().join("prod.txt"), b"production"),
            "put prod.txt",
        );
        ok(
            ops::put(&tmb.outbox().join("test.txt"), b"test"),
            "put test.txt",
        );
        assert_eq!(names(&mb.outbox()), set(&["prod.txt"]));
        assert_eq!(names(&tmb.outbox()), set(&["test.txt"]));
    });
    // And the messages carry the test flag of the box they came from.
    let msgs = fx.out_messages(&mb.user);
    assert_eq!(msgs.len(), 2, "{msgs:#?}");
    for m in &msgs {
        let name = &m.files[0].name;
        assert_eq!(m.test, name == "test.txt", "test flag of {name}: {m:#?}");
        assert_eq!(m.partner, mb.partner);
        assert_eq!(m.station, mb.station);
    }
}

/// Structure folders: create file or folder, rmdir, unlink, rename fail with EACCES;
/// chmod, chown, utimes (the user is not the owner) with EPERM; writing authorized_keys
/// fails with EACCES.
#[test]
fn structure_folders_are_read_only_with_eacces() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    fx.add_partner_id(&mb.user, &mb.partner, true);
    let home = fx.user_dir(&mb.user);
    let gw = home.join("as2gateway");
    let station_dir = gw.join(&mb.station);
    let test_dir = mb.partner_dir.join("test");
    let structure = [
        home.clone(),
        home.join(".ssh"),
        gw.clone(),
        station_dir.clone(),
        mb.partner_dir.clone(),
        test_dir.clone(),
    ];
    let keys = home.join(".ssh/authorized_keys");
    fx.as_user(&mb.user, || {
        let mut c = Checks::new();
        wait_until("test/ to appear", Duration::from_secs(5), || {
            ops::stat(&test_dir).is_ok()
        });
        for d in &structure {
            let d_ = d.display();
            c.errno(
                ops::create(&d.join("new-file")),
                EACCES,
                &format!("create in {d_}"),
            );
            c.errno(
                ops::mkdir(&d.join("new-dir")),
                EACCES,
                &format!("mkdir in {d_}"),
            );
            // Not the owner: chmod, chown, utimes answer EPERM.
            c.errno(ops::chmod(d, 0o777), EPERM, &format!("chmod {d_}"));
            c.errno(
                ops::chown(d, mb.user.uid, mb.user.gid),
                EPERM,
                &format!("chown {d_}"),
            );
            c.errno(
                ops::set_times(d, 1_000_000, 1_000_000),
                EPERM,
                &format!("utimes {d_}"),
            );
        }
        // rmdir and rename of every structure folder and of the boxes inside them.
        let mut folders: Vec<PathBuf> = vec![
            home.join(".ssh"),
            gw.clone(),
            station_dir.clone(),
            mb.partner_dir.clone(),
            test_dir.clone(),
        ];
        for b in ["inbox", "outbox", "failed"] {
            folders.push(mb.partner_dir.join(b));
            folders.push(test_dir.join(b));
        }
        for f in &folders {
            c.errno(ops::rmdir(f), EACCES, &format!("rmdir {}", f.display()));
            let to = f.with_file_name("renamed");
            c.errno(
                ops::rename(f, &to),
                EACCES,
                &format!("rename {}", f.display()),
            );
        }
        c.errno(ops::unlink(&keys), EACCES, "unlink authorized_keys");
        c.errno(
            ops::rename(&keys, &home.join(".ssh/other")),
            EACCES,
            "rename authorized_keys",
        );
        c.errno(
            ops::open(&keys, libc::O_WRONLY),
            EACCES,
            "open authorized_keys for writing",
        );
        c.errno(
            ops::open(&keys, libc::O_RDWR | libc::O_APPEND),
            EACCES,
            "open authorized_keys for appending",
        );
        c.errno(ops::truncate(&keys, 0), EACCES, "truncate authorized_keys");
        c.errno(ops::chmod(&keys, 0o666), EPERM, "chmod authorized_keys");
        c.errno(ops::set_times(&keys, 1, 1), EPERM, "utimes authorized_keys");
        // Nothing changed.
        assert_eq!(names(&home), set(&[".ssh", "as2gateway"]));
        assert_eq!(
            names(&mb.partner_dir),
            set(&["failed", "inbox", "outbox", "test"])
        );
        c.finish();
    });
}

/// A user's tree answers only that user and root: every other uid gets EACCES for
/// everything, even stat and ls of /<user>/.
#[test]
fn other_users_get_eacces_for_everything_inside_a_tree_even_stat() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let a = fx.mailbox();
    let b = fx.mailbox();
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join("a.dat.part"), b"held"), "put")
    });
    fx.deliver(&a, &[("in.txt", b"for a")]);
    let a_home = fx.user_dir(&a.user);
    let a_inbox_entry = fx.as_user(&a.user, || names(&a.inbox()).into_iter().next().unwrap());
    let targets = [
        a_home.clone(),
        a_home.join(".ssh"),
        a_home.join(".ssh/authorized_keys"),
        a_home.join("as2gateway"),
        a.partner_dir.clone(),
        a.outbox(),
        a.outbox().join("a.dat.part"),
        a.inbox().join(&a_inbox_entry),
    ];
    let mut c = Checks::new();
    for (who, uid, gid) in [
        (b.user.name.as_str(), b.user.uid, b.user.gid),
        ("nobody", 65534, 65534),
    ] {
        fx.as_ids(uid, gid, || {
            for t in &targets {
                let t_ = t.display();
                if *t == a_home {
                    // The user folder itself shows root:<gid> 0750, as /home/<user> does;
                    // everything in it is closed.
                    match ops::stat(t) {
                        Ok(md) => c.check(perm(&md) == (0o750, 0, a.user.gid), || {
                            format!(
                                "stat {t_} as {who}: want root:<gid> 0750, got {:?}",
                                perm(&md)
                            )
                        }),
                        Err(e) => c.check(false, || format!("stat {t_} as {who} failed: {e}")),
                    }
                } else {
                    c.errno(ops::stat(t), EACCES, &format!("stat {t_} as {who}"));
                }
                if !t.ends_with("authorized_keys") && !t.ends_with("a.dat.part") {
                    c.errno(ops::list(t), EACCES, &format!("ls {t_} as {who}"));
                }
                c.errno(
                    ops::open(t, libc::O_RDONLY),
                    EACCES,
                    &format!("open {t_} as {who}"),
                );
            }
            c.errno(
                ops::create(&a.outbox().join("intruder")),
                EACCES,
                &format!("create in the other user's outbox as {who}"),
            );
            c.errno(
                ops::unlink(&a.outbox().join("a.dat.part")),
                EACCES,
                &format!("unlink in the other user's outbox as {who}"),
            );
            c.errno(
                ops::mkdir(&a.outbox().join("d")),
                EACCES,
                &format!("mkdir in the other user's outbox as {who}"),
            );
            c.errno(
                ops::rename(&a.outbox().join("a.dat.part"), &b.outbox().join("stolen")),
                EACCES,
                &format!("rename out of the other user's outbox as {who}"),
            );
            c.errno(
                ops::statvfs(&a_home),
                EACCES,
                &format!("statfs of the other user's tree as {who}"),
            );
        });
    }
    // Nothing of a's changed.
    fx.as_user(&a.user, || {
        assert_eq!(names(&a.outbox()), set(&["a.dat.part"]));
    });
    c.finish();
}

#[test]
fn two_users_are_isolated() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let a = fx.mailbox();
    let b = fx.mailbox();
    fx.as_user(&a.user, || {
        ok(ops::put(&a.outbox().join("from-a.txt"), b"a"), "put as a")
    });
    fx.as_user(&b.user, || {
        ok(ops::put(&b.outbox().join("from-b.txt"), b"bb"), "put as b")
    });
    fx.deliver(&a, &[("to-a.txt", b"x")]);
    fx.as_user(&a.user, || {
        assert_eq!(names(&a.outbox()), set(&["from-a.txt"]));
        assert_eq!(
            names(&fx.user_dir(&a.user).join("as2gateway")),
            set(&[&a.station])
        );
        assert_eq!(names(&a.inbox()).len(), 1);
    });
    fx.as_user(&b.user, || {
        assert_eq!(names(&b.outbox()), set(&["from-b.txt"]));
        assert_eq!(
            names(&fx.user_dir(&b.user).join("as2gateway")),
            set(&[&b.station])
        );
        assert!(names(&b.inbox()).is_empty(), "b's inbox is empty");
    });
    let ma = fx.out_messages(&a.user);
    let mb_ = fx.out_messages(&b.user);
    assert_eq!(ma.len(), 1, "{ma:#?}");
    assert_eq!(mb_.len(), 1, "{mb_:#?}");
    assert_eq!(
        (ma[0].station.as_str(), ma[0].files[0].name.as_str()),
        (a.station.as_str(), "from-a.txt")
    );
    assert_eq!(
        (mb_[0].station.as_str(), mb_[0].files[0].name.as_str()),
        (b.station.as_str(), "from-b.txt")
    );
}

/// `link()` answers exactly EPERM (sftp-server then falls back to rename); symlink and
/// mknod (fifo, socket, devices) EPERM.
#[test]
fn link_symlink_and_mknod_are_refused_with_eperm() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    fx.deliver(&mb, &[("in.txt", b"inbox file")]);
    fx.as_user(&mb.user, || {
        let held = mb.outbox().join("held.filepart");
        ok(ops::put(&held, b"held"), "put held.filepart");
        ok(ops::mkdir(&mb.outbox().join("batch")), "mkdir batch");
        assert_errno(
            ops::link(&held, &mb.outbox().join("held")),
            EPERM,
            "link in outbox",
        );
        assert_errno(
            ops::link(&held, &mb.outbox().join("batch/held")),
            EPERM,
            "link into an outbox folder",
        );
        let msg_dir = mb
            .inbox()
            .join(names(&mb.inbox()).into_iter().next().unwrap());
        assert_errno(
            ops::link(&msg_dir.join("in.txt"), &msg_dir.join("in2.txt")),
            EPERM,
            "link in inbox",
        );
        assert_errno(
            ops::symlink("held.filepart", &mb.outbox().join("sym")),
            EPERM,
            "symlink in outbox",
        );
        assert_errno(
            ops::symlink("/etc/passwd", &mb.outbox().join("batch/sym")),
            EPERM,
            "symlink in outbox folder",
        );
        assert_errno(
            ops::mknod(&mb.outbox().join("fifo"), libc::S_IFIFO | 0o644, 0),
            EPERM,
            "mkfifo in outbox",
        );
        assert_errno(
            ops::mknod(&mb.outbox().join("sock"), libc::S_IFSOCK | 0o644, 0),
            EPERM,
            "mknod socket in outbox",
        );
        assert_errno(
            ops::mknod(
                &mb.outbox().join("chr"),
                libc::S_IFCHR | 0o644,
                libc::makedev(1, 3),
            ),
            EPERM,
            "mknod char device in outbox",
        );
        // Nothing was created, the held file is still held (not picked up by the link).
        assert_eq!(names(&mb.outbox()), set(&["batch", "held.filepart"]));
        assert!(names(&mb.outbox().join("batch")).is_empty());
    });
    // Also as root (root acts with the user's rights).
    fx.as_root(|| {
        assert_errno(
            ops::link(&mb.outbox().join("held.filepart"), &mb.outbox().join("x")),
            EPERM,
            "link in outbox as root",
        );
        assert_errno(
            ops::mknod(&mb.outbox().join("fifo"), libc::S_IFIFO | 0o644, 0),
            EPERM,
            "mkfifo as root",
        );
    });
    assert!(
        fx.out_messages(&mb.user).is_empty(),
        "no message from a refused link"
    );
    // And no file of an odd type appeared anywhere.
    fx.as_user(&mb.user, || {
        for e in std::fs::read_dir(mb.outbox()).unwrap() {
            let t = e.unwrap().file_type().unwrap();
            assert!(!t.is_symlink() && !t.is_fifo() && !t.is_socket() && !t.is_char_device());
        }
    });
}

#[test]
fn names_with_control_characters_are_einval_and_long_names_enametoolong() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    fx.as_user(&mb.user, || {
        let ob = mb.outbox();
        for bad in [
            "a\u{1}b",
            "tab\there",
            "new\nline",
            "del\u{7f}",
            "esc\u{1b}[0m",
        ] {
            assert_errno(
                ops::create(&ob.join(bad)),
                libc::EINVAL,
                &format!("create {bad:?}"),
            );
            assert_errno(
                ops::mkdir(&ob.join(bad)),
                libc::EINVAL,
                &format!("mkdir {bad:?}"),
            );
        }
        ok(ops::put(&ob.join("ok.tmp"), b"x"), "put ok.tmp");
        assert_errno(
            ops::rename(&ob.join("ok.tmp"), &ob.join("re\u{1}named")),
            libc::EINVAL,
            "rename to a name with a control character",
        );
        let long = "x".repeat(256);
        assert_errno(
            ops::create(&ob.join(&long)),
            libc::ENAMETOOLONG,
            "create 256-byte name",
        );
        assert_errno(
            ops::mkdir(&ob.join(&long)),
            libc::ENAMETOOLONG,
            "mkdir 256-byte name",
        );
        // 255 bytes is fine (a temp name, so it stays listed).
        let longest = format!("{}.tmp", "y".repeat(251));
        assert_eq!(longest.len(), 255);
        ok(ops::put(&ob.join(&longest), b"y"), "put a 255-byte name");
        // Non-ASCII UTF-8 is a normal name.
        ok(
            ops::put(&ob.join("résumé ünïcode.tmp"), b"z"),
            "put a UTF-8 name",
        );
        assert_eq!(names(&ob), set(&["ok.tmp", &longest, "résumé ünïcode.tmp"]));
    });
}

#[test]
fn extended_attributes_are_absent_and_cannot_be_set() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    fx.as_user(&mb.user, || {
        let f = mb.outbox().join("f.part");
        ok(ops::put(&f, b"x"), "put");
        for p in [&f, &mb.outbox(), &mb.partner_dir] {
            assert_errno(
                ops::getxattr(p, "user.test"),
                libc::EOPNOTSUPP,
                &format!("getxattr {}", p.display()),
            );
            assert_errno(
                ops::getxattr(p, "security.capability"),
                libc::EOPNOTSUPP,
                &format!("getxattr security.capability {}", p.display()),
            );
        }
        assert_errno(
            ops::setxattr(&f, "user.test", b"v"),
            EPERM,
            "setxattr on an outbox file",
        );
    });
}

#[test]
fn folders_can_be_entered_and_access_checks_agree() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let home = fx.user_dir(&mb.user);
    fx.as_user(&mb.user, || {
        for d in [
            home.clone(),
            home.join("as2gateway"),
            mb.partner_dir.clone(),
            mb.outbox(),
            mb.inbox(),
        ] {
            ok(
                ops::open_dir(&d),
                &format!("open {} as a folder", d.display()),
            );
            ok(
                ops::access(&d, libc::R_OK | libc::X_OK),
                &format!("access(R|X) {}", d.display()),
            );
        }
        assert_errno(
            ops::access(&home, libc::W_OK),
            EACCES,
            "access(W) of the user folder",
        );
        ok(
            ops::access(&mb.outbox(), libc::W_OK),
            "access(W) of the outbox",
        );
    });
}

/// Users, stations and partners added or removed while mounted show up (or vanish) without
/// a remount; the kernel caches for at most a second.
#[test]
fn configuration_changes_show_up_live() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let gw = fx.user_dir(&mb.user).join("as2gateway");
    let limit = Duration::from_secs(5);
    // Warm the kernel caches first, so that the test sees invalidation, not a cold lookup.
    fx.as_user(&mb.user, || {
        assert_eq!(names(&gw.join(&mb.station)), set(&[&mb.partner]));
        assert!(ops::stat(&gw.join(&mb.station).join("NEWPARTNER")).is_err());
    });

    // Partner added.
    let p2 = fx.add_partner(&mb.user, false);
    let took = fx.as_user(&mb.user, || {
        wait_until("a new partner to show", limit, || {
            names(&gw.join(&mb.station)).contains(&p2)
                && ops::stat(&gw.join(&mb.station).join(&p2).join("outbox")).is_ok()
        })
    });
    println!("new partner visible after {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "partner visible only after {took:?}"
    );

    // Station added: lists every partner.
    let s2 = fx.add_station(&mb.user, None);
    fx.as_user(&mb.user, || {
        wait_until("a new station to show with both partners", limit, || {
            ops::list(&gw.join(&s2))
                .map(|v| v.len() == 2)
                .unwrap_or(false)
        })
    });

    // Test partner of the same id added: test/ appears.
    fx.add_partner_id(&mb.user, &p2, true);
    fx.as_user(&mb.user, || {
        wait_until("test/ to show", limit, || {
            ops::stat(&gw.join(&mb.station).join(&p2).join("test/outbox")).is_ok()
        })
    });

    // Partner removed.
    fx.cli_ok(&["partner", "remove", "--user", &mb.user.name, &p2, "--force"]);
    fx.as_user(&mb.user, || {
        wait_until(
            "the removed production partner's boxes to vanish",
            limit,
            || ops::stat(&gw.join(&mb.station).join(&p2).join("outbox")).is_err(),
        );
        // its test side is still there
        ok(
            ops::stat(&gw.join(&mb.station).join(&p2).join("test")),
            "test/ of the remaining test partner",
        );
    });
    fx.cli_ok(&[
        "partner",
        "remove",
        "--user",
        &mb.user.name,
        &p2,
        "--test",
        "--force",
    ]);
    fx.as_user(&mb.user, || {
        wait_until("the removed partner to vanish", limit, || {
            !names(&gw.join(&mb.station)).contains(&p2)
                && ops::stat(&gw.join(&mb.station).join(&p2)).is_err()
        })
    });

    // Station removed.
    fx.cli_ok(&["station", "remove", &s2, "--force"]);
    fx.as_user(&mb.user, || {
        wait_until("the removed station to vanish", limit, || {
            names(&gw) == set(&[&mb.station]) && ops::stat(&gw.join(&s2)).is_err()
        })
    });

    // User added and removed.
    let u2 = fx.add_user(None);
    fx.as_root(|| {
        wait_until("a new user to show in /", limit, || {
            names(&fx.mnt).contains(&u2.name)
        })
    });
    fx.cli_ok(&["user", "remove", &u2.name, "--force"]);
    fx.as_root(|| {
        wait_until("a removed user to vanish from /", limit, || {
            !names(&fx.mnt).contains(&u2.name) && ops::stat(&fx.mnt.join(&u2.name)).is_err()
        })
    });
    assert!(
        passwd_line(&u2.name).is_none(),
        "user remove --force deletes the system account"
    );

    // The mount is still healthy.
    assert!(
        fx.mount_exited().is_none(),
        "mount exited: {}",
        fx.mount_log()
    );
}

/// statfs inside a tree without a quota reports the disk that holds the state folder.
#[test]
fn statfs_without_quota_reports_the_state_disk() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let disk = ops::statvfs(&fx.state_dir).unwrap();
    let disk_size = disk.f_blocks as u128 * disk.f_frsize as u128;
    let s = fx.as_user(&mb.user, || ok(ops::statvfs(&mb.outbox()), "statfs outbox"));
    let size = s.f_blocks as u128 * s.f_frsize as u128;
    let free = s.f_bavail as u128 * s.f_frsize as u128;
    let disk_free = disk.f_bavail as u128 * disk.f_frsize as u128;
    let tol = disk_size / 100;
    assert!(
        size.abs_diff(disk_size) <= tol,
        "size {size} vs disk {disk_size}"
    );
    assert!(
        free.abs_diff(disk_free) <= tol.max(1 << 30),
        "free {free} vs disk {disk_free}"
    );
    assert!(
        s.f_namemax >= 255 || s.f_namemax == 0,
        "namemax {}",
        s.f_namemax
    );
}

/// Programs ask `isatty` of every file they open (Python's `open` does): the mount answers
/// "not a terminal" (ENOTTY) and logs nothing for it.
#[test]
fn isatty_on_a_mailbox_file_is_enotty_and_quiet() {
    let Some(fx) = fixture!(Settings::default()) else {
        return;
    };
    let mb = fx.mailbox();
    let path = mb.outbox().join("upload.part");
    fx.as_user(&mb.user, || {
        ok(ops::put(&path, b"held"), "put");
        let fd = ok(ops::open(&path, libc::O_RDONLY), "open");
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::ioctl(fd, libc::TCGETS, &mut t) };
        let e = std::io::Error::last_os_error().raw_os_error();
        unsafe { libc::close(fd) };
        assert_eq!((r, e), (-1, Some(libc::ENOTTY)));
    });
    let log = fx.mount_log();
    assert!(!log.contains("ioctl"), "the mount logged the ioctl:\n{log}");
}
