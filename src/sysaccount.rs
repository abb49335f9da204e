//! The system accounts that back mailbox users: created and removed with the shadow-utils
//! commands, recognised by their comment so that we never adopt or delete an account that
//! as2box did not create.

use std::ffi::CString;
use std::process::Command;

/// The comment (GECOS) field of every account we create.
pub const COMMENT: &str = "as2box mailbox user";

/// Errors creating or removing accounts.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The name belongs to an account as2box did not create.
    #[error("a system account {0:?} already exists and was not created by as2box: choose another user name")]
    Foreign(String),
    /// A command failed.
    #[error("{command} failed: {stderr} (as2box must run as root to manage accounts)")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// The command could not be started.
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
}

/// A system account.
#[derive(Debug, Clone, Copy)]
pub struct Account {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

/// Whether group `name` exists in the group database.
pub fn group_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 65536];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into grp/buf, both owned here.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    rc == 0 && !result.is_null()
}

/// Looks up `name` in the passwd database: (uid, gid, comment).
pub fn lookup(name: &str) -> Option<(u32, u32, String)> {
    let c = CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into pwd/buf, both owned here and large enough (ERANGE
    // otherwise, which we treat as not found).
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    let gecos = if pwd.pw_gecos.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated string inside buf.
        unsafe { std::ffi::CStr::from_ptr(pwd.pw_gecos) }
            .to_string_lossy()
            .into_owned()
    };
    Some((pwd.pw_uid, pwd.pw_gid, gecos))
}

fn run(program: &str, args: &[&str]) -> Result<(), AccountError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| AccountError::Spawn(command.clone(), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AccountError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Creates the account `name` (no shell, no home, member of `group`), or adopts one that
/// as2box created before.
pub fn ensure(name: &str, group: &str) -> Result<Account, AccountError> {
    if let Some((uid, gid, comment)) = lookup(name) {
        if comment != COMMENT {
            return Err(AccountError::Foreign(name.to_owned()));
        }
        return Ok(Account { uid, gid });
    }
    run("groupadd", &["-f", "--system", group])?;
    // '*' rather than useradd's '!': sshd without PAM refuses locked ('!') accounts even for
    // key logins, while '*' only rules out passwords.
    run(
        "useradd",
        &[
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            COMMENT,
            "--user-group",
            "--groups",
            group,
            "--password",
            "*",
            name,
        ],
    )?;
    let (uid, gid, _) = lookup(name).ok_or_else(|| AccountError::Command {
        command: format!("useradd {name}"),
        stderr: "the account is not there after useradd".into(),
    })?;
    Ok(Account { uid, gid })
}

/// Fails when `name` is an account that as2box did not create (before anything is
/// written for a new user).
pub fn check_free(name: &str) -> Result<(), AccountError> {
    match lookup(name) {
        Some((_, _, comment)) if comment != COMMENT => Err(AccountError::Foreign(name.to_owned())),
        _ => Ok(()),
    }
}

/// Removes the account `name` if as2box created it.
pub fn remove(name: &str) -> Result<(), AccountError> {
    match lookup(name) {
        Some((_, _, comment)) if comment == COMMENT => run("userdel", &[name]),
        _ => Ok(()),
    }
}
