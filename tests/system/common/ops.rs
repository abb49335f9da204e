//! Thin wrappers over the file system syscalls the tests make, each returning the raw
//! `io::Error` (errno) so that tests can assert exact errnos. Unlike `std::fs`, writing
//! helpers check the result of `close()`: pickup on close and quota errors show there.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::path::Path;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path with NUL")
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `open(path, flags, 0644)`.
pub fn open(path: &Path, flags: i32) -> io::Result<RawFd> {
    let p = c(path);
    check(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o644 as libc::c_uint) })
}

/// Opens for writing, creating and truncating (what `put` does).
pub fn create(path: &Path) -> io::Result<RawFd> {
    open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)
}

/// Writes all of `data` in chunks of at most 1 MiB.
pub fn write_all(fd: RawFd, data: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        let end = (off + (1 << 20)).min(data.len());
        let n = unsafe {
            libc::write(
                fd,
                data[off..end].as_ptr() as *const libc::c_void,
                end - off,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
        }
        off += n as usize;
    }
    Ok(())
}

/// `close(fd)`, with its result.
pub fn close(fd: RawFd) -> io::Result<()> {
    check(unsafe { libc::close(fd) }).map(|_| ())
}

pub fn fsync(fd: RawFd) -> io::Result<()> {
    check(unsafe { libc::fsync(fd) }).map(|_| ())
}

/// Where a `put` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Open,
    Write,
    Close,
}

/// create + write + close, reporting the stage that failed. On a write error the file is
/// still closed (and that close's result ignored).
pub fn put_staged(path: &Path, data: &[u8]) -> Result<(), (Stage, io::Error)> {
    let fd = create(path).map_err(|e| (Stage::Open, e))?;
    if let Err(e) = write_all(fd, data) {
        let _ = close(fd);
        return Err((Stage::Write, e));
    }
    close(fd).map_err(|e| (Stage::Close, e))
}

/// create + write + close; an error from any of them.
pub fn put(path: &Path, data: &[u8]) -> io::Result<()> {
    put_staged(path, data).map_err(|(_, e)| e)
}

/// Reads a whole file.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Names in a folder (without `.` and `..`), sorted.
pub fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

/// `lstat`.
pub fn stat(path: &Path) -> io::Result<std::fs::Metadata> {
    std::fs::symlink_metadata(path)
}

pub fn mkdir(path: &Path) -> io::Result<()> {
    let p = c(path);
    check(unsafe { libc::mkdir(p.as_ptr(), 0o755) }).map(|_| ())
}

pub fn rmdir(path: &Path) -> io::Result<()> {
    let p = c(path);
    check(unsafe { libc::rmdir(p.as_ptr()) }).map(|_| ())
}

pub fn unlink(path: &Path) -> io::Result<()> {
    let p = c(path);
    check(unsafe { libc::unlink(p.as_ptr()) }).map(|_| ())
}

pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    let (a, b) = (c(from), c(to));
    check(unsafe { libc::rename(a.as_ptr(), b.as_ptr()) }).map(|_| ())
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const RENAME_WHITEOUT: u32 = 4;

/// `renameat2(AT_FDCWD, from, AT_FDCWD, to, flags)` (raw syscall).
pub fn rename2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (c(from), c(to));
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn link(from: &Path, to: &Path) -> io::Result<()> {
    let (a, b) = (c(from), c(to));
    check(unsafe { libc::link(a.as_ptr(), b.as_ptr()) }).map(|_| ())
}

pub fn symlink(target: &str, at: &Path) -> io::Result<()> {
    let t = CString::new(target).unwrap();
    let p = c(at);
    check(unsafe { libc::symlink(t.as_ptr(), p.as_ptr()) }).map(|_| ())
}

pub fn mknod(path: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let p = c(path);
    check(unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) }).map(|_| ())
}

pub fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    let p = c(path);
    check(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }).map(|_| ())
}

/// `chown`; `u32::MAX` leaves that id unchanged.
pub fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let p = c(path);
    check(unsafe { libc::chown(p.as_ptr(), uid, gid) }).map(|_| ())
}

/// `utimensat` with explicit access and modification times (seconds since the epoch).
pub fn set_times(path: &Path, atime: i64, mtime: i64) -> io::Result<()> {
    let p = c(path);
    let ts = [
        libc::timespec {
            tv_sec: atime,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    ];
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) }).map(|_| ())
}

/// `utimensat(path, NULL)`: set both times to now (what `touch` does).
pub fn touch_now(path: &Path) -> io::Result<()> {
    let p = c(path);
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), std::ptr::null(), 0) }).map(|_| ())
}

pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let p = c(path);
    check(unsafe { libc::truncate(p.as_ptr(), len as libc::off_t) }).map(|_| ())
}

pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let p = c(path);
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statvfs(p.as_ptr(), &mut s) })?;
    Ok(s)
}

/// `lgetxattr`: the value's length.
pub fn getxattr(path: &Path, name: &str) -> io::Result<usize> {
    let p = c(path);
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 256];
    let r = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

pub fn setxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = c(path);
    let n = CString::new(name).unwrap();
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    })
    .map(|_| ())
}

/// `access(path, mode)`.
pub fn access(path: &Path, mode: i32) -> io::Result<()> {
    let p = c(path);
    check(unsafe { libc::access(p.as_ptr(), mode) }).map(|_| ())
}

/// `chdir` is process-wide: use `open(O_DIRECTORY)` + `fchdir` semantics instead, i.e.
/// check that a folder can be opened as a directory.
pub fn open_dir(path: &Path) -> io::Result<()> {
    let fd = open(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
    close(fd)
}
