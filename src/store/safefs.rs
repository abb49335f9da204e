//! File access beneath a directory descriptor that never follows a symbolic link.
//!
//! Parts of the state folder are writable by the AS2 daemon's service account (`blobs/`,
//! the daemon's spool, the operational database). Root (the mount, the CLI) must treat
//! every name in those folders as possibly planted by a compromised daemon: a symlink there
//! would otherwise redirect root's reads, writes, renames and deletions anywhere on the
//! system. So root walks them one component at a time with `O_NOFOLLOW`, opens files
//! non-blocking (a FIFO cannot hang a FUSE thread), and accepts only regular files with a
//! single link (a hard link to a root file is refused).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// An open folder; every operation is relative to it and refuses symlinks.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// One path component: no `/`, not `.` or `..`, not empty (so nothing can climb out).
fn component(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        )
    };
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(invalid());
    }
    CString::new(b).map_err(|_| invalid())
}

fn fstat(fd: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: fstat writes into the zeroed struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// Refuses anything but a regular file with one link.
pub fn check_regular(file: &File) -> io::Result<libc::stat> {
    let st = fstat(file.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if st.st_nlink != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the file has {} links (a hard link is refused)",
                st.st_nlink
            ),
        ));
    }
    Ok(st)
}

impl Dir {
    /// Opens the folder at `path`. The path itself comes from the administrator (e.g.
    /// `--state-dir`) and may pass through symlinks; what is below it may not.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: a plain open of a NUL-terminated path.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd was just opened and is owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The sub-folder `name`; a symlink in its place fails (ELOOP or ENOTDIR).
    pub fn dir(&self, name: impl AsRef<OsStr>) -> io::Result<Dir> {
        let c = component(name.as_ref())?;
        // SAFETY: openat relative to a descriptor we own.
        let fd = cvt(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd was just opened.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The sub-folder `name`, created with `mode` if missing. `created` tells the caller
    /// to give it its owner and mode (mkdir's mode is masked by the umask).
    pub fn make_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<(Dir, bool)> {
        let c = component(name.as_ref())?;
        // SAFETY: mkdirat relative to a descriptor we own.
        let r = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) };
        let created = match cvt(r) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(e),
        };
        Ok((self.dir(name)?, created))
    }

    /// Opens the file `name` with `flags` (`O_CREAT` uses `mode`), never through a symlink
    /// and never blocking on a FIFO; only a regular file with one link is returned.
    pub fn file(&self, name: impl AsRef<OsStr>, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let c = component(name.as_ref())?;
        // SAFETY: openat relative to a descriptor we own.
        let fd = cvt(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: fd was just opened.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        check_regular(&file)?;
        // O_NONBLOCK only guarded the open; regular files ignore it, but clear it anyway.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
        Ok(file)
    }

    /// Creates the new file `name` (fails if anything has that name, a symlink included).
    pub fn create_new(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        self.file(name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, mode)
    }

    /// Removes the entry `name` (a symlink is removed itself, never its target).
    pub fn unlink(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let c = component(name.as_ref())?;
        // SAFETY: unlinkat relative to a descriptor we own.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// Removes the empty folder `name`.
    pub fn rmdir(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let c = component(name.as_ref())?;
        // SAFETY: unlinkat relative to a descriptor we own.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
            .map(|_| ())
    }

    /// Renames `name` to `to_name` in `to` (replacing what is there: a symlink there is
    /// replaced, not followed).
    pub fn rename(
        &self,
        name: impl AsRef<OsStr>,
        to: &Dir,
        to_name: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        let (a, b) = (component(name.as_ref())?, component(to_name.as_ref())?);
        // SAFETY: renameat between descriptors we own.
        cvt(unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                a.as_ptr(),
                to.fd.as_raw_fd(),
                b.as_ptr(),
            )
        })
        .map(|_| ())
    }

    /// `lstat` of the entry `name`; None when there is none.
    pub fn stat_at(&self, name: impl AsRef<OsStr>) -> io::Result<Option<libc::stat>> {
        let c = component(name.as_ref())?;
        // SAFETY: fstatat writes into the zeroed struct we pass.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        match cvt(r) {
            Ok(_) => Ok(Some(st)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `fstat` of the folder itself.
    pub fn stat(&self) -> io::Result<libc::stat> {
        fstat(self.fd.as_raw_fd())
    }

    /// Sets the folder's owner (None keeps it) and mode.
    pub fn set_owner_mode(&self, uid: Option<u32>, gid: Option<u32>, mode: u32) -> io::Result<()> {
        set_owner_mode(self.fd.as_raw_fd(), uid, gid, mode)
    }

    /// The names in the folder (without `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        // fdopendir takes ownership of its descriptor: give it a duplicate.
        // SAFETY: dup of a descriptor we own; the DIR is closed below.
        let fd = cvt(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        let d = unsafe { libc::fdopendir(fd) };
        if d.is_null() {
            let e = io::Error::last_os_error();
            unsafe { libc::close(fd) };
            return Err(e);
        }
        // The duplicate shares the offset: start from the top every time.
        unsafe { libc::rewinddir(d) };
        let mut out = Vec::new();
        loop {
            // SAFETY: readdir on the open DIR; the entry is copied before the next call.
            let ent = unsafe { libc::readdir(d) };
            if ent.is_null() {
                break;
            }
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
            let b = name.to_bytes();
            if b != b"." && b != b".." {
                out.push(OsStr::from_bytes(b).to_owned());
            }
        }
        // SAFETY: closes the DIR and its descriptor (the duplicate).
        unsafe { libc::closedir(d) };
        Ok(out)
    }

    /// fsync of the folder (makes creates, renames and unlinks inside it durable).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fsync on a descriptor we own.
        cvt(unsafe { libc::fsync(self.fd.as_raw_fd()) }).map(|_| ())
    }
}

/// Sets owner (None keeps it) and mode of an open file or folder, changing only what
/// differs (so an immutable or read-only folder that is already right is no error).
pub fn set_owner_mode(
    fd: libc::c_int,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
) -> io::Result<()> {
    let st = fstat(fd)?;
    let uid = uid.filter(|&u| u != st.st_uid);
    let gid = gid.filter(|&g| g != st.st_gid);
    if uid.is_some() || gid.is_some() {
        let (u, g) = (
            uid.map_or(u32::MAX, |u| u) as libc::uid_t,
            gid.map_or(u32::MAX, |g| g) as libc::gid_t,
        );
        // SAFETY: fchown on an open descriptor; -1 keeps that id.
        cvt(unsafe { libc::fchown(fd, u, g) })?;
    } else if st.st_mode & 0o7777 == mode {
        return Ok(());
    }
    // After chown, which clears the setgid bit.
    // SAFETY: fchmod on an open descriptor.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_fifos_and_hard_links_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        let inner = t.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::os::unix::fs::symlink(&outside, inner.join("link")).unwrap();
        std::os::unix::fs::symlink(t.path(), inner.join("dirlink")).unwrap();
        std::fs::hard_link(&outside, inner.join("hard")).unwrap();
        let fifo = CString::new(inner.join("fifo").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::write(inner.join("plain"), b"ok").unwrap();
        let d = Dir::open(&inner).unwrap();
        assert!(d.file("link", libc::O_RDONLY, 0).is_err());
        assert!(d.dir("dirlink").is_err());
        assert!(d.file("hard", libc::O_RDONLY, 0).is_err());
        assert!(
            d.file("fifo", libc::O_RDONLY, 0).is_err(),
            "and did not block"
        );
        assert!(d.file("../outside", libc::O_RDONLY, 0).is_err());
        assert!(d.file("..", libc::O_RDONLY, 0).is_err());
        assert!(d.create_new("link", 0o600).is_err());
        let mut s = String::new();
        use std::io::Read;
        d.file("plain", libc::O_RDONLY, 0)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "ok");
        d.unlink("link").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
        let mut names = d.names().unwrap();
        names.sort();
        assert_eq!(names, ["dirlink", "fifo", "hard", "plain"]);
    }
}
