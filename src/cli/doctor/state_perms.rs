//! The modes and groups of the state folder, against what `store::perms` would give it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{fail, ok, warn, Check};

/// The modes and groups of the state folder against what `store::perms` gives it.
///
/// The expectations are not repeated here: doctor builds a scratch copy of the state
/// folder's shape (same folders; one empty file per kind of name in each folder) with
/// sentinel modes, lets [`crate::store::share_state_dir`] set it up as `as2box init` would,
/// and reads back what it set. So when the store's layout or its permission rules change,
/// this check follows without an edit. Only what `share_state_dir` sets is compared.
pub(super) fn check_state_perms(state_dir: &Path, service_gid: Option<u32>) -> Vec<Check> {
    let name = "state-perms";
    let shown = state_dir.display().to_string();
    let top = match std::fs::metadata(state_dir) {
        Ok(m) => m,
        Err(e) => {
            return vec![fail(
                name,
                format!("{shown}: {e}"),
                "as2box init --service-user as2box",
            )]
        }
    };
    // Shared (setgid, a group other than root's) or root's alone.
    let shared_gid = (top.mode() & 0o2000 != 0 && top.gid() != 0).then_some(top.gid());
    let mut checks = Vec::new();
    if top.uid() != 0 {
        checks.push(fail(
            name,
            format!("{shown} is owned by uid {}, not root", top.uid()),
            format!("chown root {shown}"),
        ));
    }
    match (shared_gid, service_gid) {
        (None, Some(_)) => checks.push(fail(
            name,
            format!(
                "{shown} is root's alone: as2box serve (the service account) cannot open the store"
            ),
            "as2box init --service-user as2box",
        )),
        (Some(g), Some(s)) if g != s => checks.push(fail(
            name,
            format!("{shown} is shared with gid {g}, not the service account's group (gid {s})"),
            "as2box init --service-user as2box",
        )),
        _ => {}
    }
    match expected_perms(state_dir, shared_gid) {
        Ok(expect) => {
            let mut wrong = Vec::new();
            let mut seen = 0usize;
            compare_tree(state_dir, Path::new(""), &expect, &mut wrong, &mut seen);
            if wrong.is_empty() {
                checks.push(ok(
                    name,
                    format!(
                        "{shown}: {seen} entries with the modes and group of {}",
                        match shared_gid {
                            Some(g) => format!("a folder shared with gid {g}"),
                            None => "a root-only folder".into(),
                        }
                    ),
                ));
            } else {
                let n = wrong.len();
                let mut detail = wrong.into_iter().take(3).collect::<Vec<_>>().join("; ");
                if n > 3 {
                    detail += &format!("; and {} more", n - 3);
                }
                checks.push(fail(
                    name,
                    detail,
                    "as2box init --service-user as2box (applies the modes and group again)",
                ));
            }
        }
        Err(e) => checks.push(warn(
            name,
            format!("could not work out the expected modes: {e}"),
            "run doctor as root",
        )),
    }
    checks
}

/// Files are grouped by the shape of their name (digits and hex letters alike), so that a
/// folder of 100 000 blobs is one file in the scratch copy.
fn name_shape(name: &str) -> String {
    if name.len() >= 16 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        return "<hex>".into();
    }
    name.chars()
        .map(|c| if c.is_ascii_digit() { '0' } else { c })
        .collect()
}

const SENTINEL_DIR: u32 = 0o701;
const SENTINEL_FILE: u32 = 0o001;

/// Expected (mode, gid) by relative path (folders) or relative folder + name shape (files);
/// None where `share_state_dir` sets nothing.
type Expect = BTreeMap<(PathBuf, String), (Option<u32>, Option<u32>)>;

fn expected_perms(state_dir: &Path, gid: Option<u32>) -> std::io::Result<Expect> {
    let scratch = std::env::temp_dir().join(format!("as2box-doctor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir(&scratch)?;
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700))?;
    let shadow = scratch.join("state");
    let result = (|| {
        let mut made = Vec::new();
        mirror(state_dir, &shadow, Path::new(""), &mut made)?;
        let before: Vec<_> = made
            .iter()
            .map(|(k, p)| std::fs::symlink_metadata(p).map(|m| (k.clone(), p.clone(), m.gid())))
            .collect::<Result<_, _>>()?;
        crate::store::share_state_dir(&shadow, gid)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut expect = Expect::new();
        for (key, path, gid_before) in before {
            let m = std::fs::symlink_metadata(&path)?;
            let mode = m.mode() & 0o7777;
            let sentinel = if m.is_dir() {
                SENTINEL_DIR
            } else {
                SENTINEL_FILE
            };
            expect.insert(
                key,
                (
                    (mode != sentinel).then_some(mode),
                    (m.gid() != gid_before).then_some(m.gid()),
                ),
            );
        }
        Ok(expect)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn mirror(
    real: &Path,
    shadow: &Path,
    rel: &Path,
    made: &mut Vec<((PathBuf, String), PathBuf)>,
) -> std::io::Result<()> {
    std::fs::create_dir(shadow)?;
    std::fs::set_permissions(shadow, std::fs::Permissions::from_mode(SENTINEL_DIR))?;
    made.push(((rel.to_owned(), String::new()), shadow.to_owned()));
    let mut shapes = BTreeSet::new();
    for entry in std::fs::read_dir(real)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if ft.is_dir() {
            mirror(&entry.path(), &shadow.join(&name), &rel.join(&name), made)?;
        } else if ft.is_file() {
            let shape = name_shape(&name);
            if shapes.insert(shape.clone()) {
                let p = shadow.join(&name);
                std::fs::write(&p, b"")?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(SENTINEL_FILE))?;
                made.push(((rel.to_owned(), shape), p));
            }
        }
    }
    Ok(())
}

fn compare_tree(
    dir: &Path,
    rel: &Path,
    expect: &Expect,
    wrong: &mut Vec<String>,
    seen: &mut usize,
) {
    let check = |path: &Path, key: (PathBuf, String), wrong: &mut Vec<String>| {
        let Ok(m) = std::fs::symlink_metadata(path) else {
            return;
        };
        let Some((mode, gid)) = expect.get(&key) else {
            return;
        };
        if let Some(want) = mode {
            let have = m.mode() & 0o7777;
            if have != *want {
                wrong.push(format!(
                    "{} has mode {have:04o}, expected {want:04o}",
                    path.display()
                ));
            }
        }
        if let Some(want) = gid {
            if m.gid() != *want {
                wrong.push(format!(
                    "{} has group {}, expected gid {want}",
                    path.display(),
                    m.gid()
                ));
            }
        }
    };
    *seen += 1;
    check(dir, (rel.to_owned(), String::new()), wrong);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        if ft.is_dir() {
            compare_tree(&entry.path(), &rel.join(&name), expect, wrong, seen);
        } else if ft.is_file() {
            *seen += 1;
            check(&entry.path(), (rel.to_owned(), name_shape(&name)), wrong);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn name_shapes_group_blobs_and_numbered_names() {
        assert_eq!(name_shape(&"ab".repeat(32)), "<hex>");
        assert_eq!(name_shape("as2box.db-wal"), "as0box.db-wal");
        assert_ne!(name_shape("as2box.db"), name_shape("audit.log"));
        assert_eq!(name_shape("spool-12"), "spool-00");
    }

    #[test]
    fn state_perms_follow_store_perms() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let blob = state.join("blobs/ab/".to_string() + &"ab".repeat(32));
        std::fs::create_dir_all(state.join("blobs/ab")).unwrap();
        std::fs::write(&blob, b"x").unwrap();
        std::fs::write(state.join("as2box.db"), b"").unwrap();
        // A group that is not root's: root may give files any group, others their own.
        // SAFETY: no preconditions.
        let gid = if unsafe { libc::geteuid() } == 0 {
            65534
        } else {
            unsafe { libc::getegid() }
        };
        if gid == 0 {
            return;
        }
        crate::store::share_state_dir(&state, Some(gid)).unwrap();
        let mode_failures = |checks: &[Check]| {
            checks
                .iter()
                .filter(|c| c.status == Status::Fail && c.detail.contains("mode"))
                .map(|c| c.detail.clone())
                .collect::<Vec<_>>()
        };
        // As `as2box init` left it: no complaint.
        let checks = check_state_perms(&state, Some(gid));
        assert!(mode_failures(&checks).is_empty(), "{checks:?}");
        // A blob made world-readable and a folder without its setgid bit are found.
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(
            state.join("blobs/ab"),
            std::fs::Permissions::from_mode(0o770),
        )
        .unwrap();
        let checks = check_state_perms(&state, Some(gid));
        let failures = mode_failures(&checks).join("\n");
        assert!(failures.contains("mode 0644, expected 0640"), "{failures}");
        assert!(failures.contains("mode 0770, expected 2770"), "{failures}");
    }
}
