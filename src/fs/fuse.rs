//! The `fuser::Filesystem` adapter: kernel requests in, `MailboxFs` calls, replies out. No
//! policy lives here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Errno as FuseErrno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use super::core::{
    lock, Attr, Caller, DataPath, Errno, Kind, MailboxFs, RenameMode, SetAttr, BLOCK,
};
use crate::timefmt::{ms_to_system_time, system_time_ms};
use tracing::warn;

/// How long the kernel may cache names and attributes: short, so that configuration
/// changes and deliveries by other processes show within a second.
const TTL: Duration = Duration::from_secs(1);

/// How long the kernel may remember that a name is absent from a folder whose names are
/// fixed (`MailboxFs::names_are_fixed`). sftp-server in its chroot looks up `/etc/passwd`
/// and `/etc/group` for every line of `ls -l`; without this, each was a request.
const ABSENT_TTL: Duration = Duration::from_secs(60);

/// The cache time for a node: none for nodes only some callers may see.
fn ttl(a: &Attr) -> &'static Duration {
    const NONE: Duration = Duration::ZERO;
    if a.cacheable {
        &TTL
    } else {
        &NONE
    }
}

/// The adapter around the core.
pub struct FuseAdapter {
    core: Arc<MailboxFs>,
    backings: Mutex<Backings>,
}

/// The kernel's backing files for passthrough. The kernel allows one backing file per
/// inode at a time (another is refused with EIO at open), so open handles of an inode share
/// it; each handle keeps it registered until its release.
#[derive(Default)]
struct Backings {
    /// Per inode: which file (device, inode) backs it, while any handle uses it.
    by_inode: HashMap<u64, ((u64, u64), Weak<BackingId>)>,
    by_handle: HashMap<u64, Arc<BackingId>>,
}

/// What an open is answered with.
enum Opened {
    /// Passed through to this backing file.
    Passthrough(Arc<BackingId>),
    /// Served by the mount, with these flags.
    Mount(FopenFlags),
}

impl FuseAdapter {
    /// Wraps `core`.
    pub fn new(core: Arc<MailboxFs>) -> FuseAdapter {
        FuseAdapter {
            core,
            backings: Mutex::new(Backings::default()),
        }
    }

    /// How to answer the open of handle `fh` on inode `ino`: passed through if the core
    /// allows it and the inode has no other backing file right now; `register` is the
    /// reply's `open_backing`.
    fn opened(
        &self,
        ino: u64,
        fh: u64,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Opened {
        let served = Opened::Mount(self.open_flags(fh));
        let Some(file) = self.core.passthrough_file(fh) else {
            return served;
        };
        let Ok(meta) = file.metadata() else {
            return served;
        };
        let identity = (meta.dev(), meta.ino());
        let mut b = lock(&self.backings);
        let id = match b.by_inode.get(&ino) {
            Some((known, id)) => match id.upgrade() {
                Some(id) if *known == identity => Some(id),
                // Another file backs this inode now (a held upload rewritten while the
                // stored file is still read, say): the mount serves this handle.
                Some(_) => return served,
                None => None,
            },
            None => None,
        };
        let id = match id {
            Some(id) => id,
            None => match register(&file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    b.by_inode.insert(ino, (identity, Arc::downgrade(&id)));
                    id
                }
                Err(e) => {
                    self.core.passthrough_failed(&e);
                    return served;
                }
            },
        };
        b.by_handle.insert(fh, id.clone());
        Opened::Passthrough(id)
    }

    /// Drops handle `fh`'s hold on its backing file (the kernel's goes with the last one).
    fn release_backing(&self, ino: u64, fh: u64) {
        let mut b = lock(&self.backings);
        if b.by_handle.remove(&fh).is_some()
            && b.by_inode
                .get(&ino)
                .is_some_and(|(_, id)| id.strong_count() == 0)
        {
            b.by_inode.remove(&ino);
        }
    }

    /// The errno for the kernel. An error that is ours rather than the caller's (it
    /// carries a cause: EIO, a full disk) is logged here, once per failed request, with
    /// the operation and the path.
    fn fail(&self, op: &'static str, ino: u64, name: Option<&str>, e: Errno) -> FuseErrno {
        if let Some(cause) = &e.cause {
            let path = self.core.describe(ino, name);
            warn!(op, %path, errno = e.code, %cause, "request failed");
        }
        FuseErrno::from_i32(e.code)
    }

    /// Runs `f` on the UTF-8 form of `name` in folder `parent`, failing as [`Self::fail`].
    fn named<T>(
        &self,
        op: &'static str,
        parent: INodeNo,
        name: &OsStr,
        f: impl FnOnce(&str) -> Result<T, Errno>,
    ) -> Result<T, FuseErrno> {
        let n = name_str(name)?;
        f(n).map_err(|e| self.fail(op, parent.0, Some(n), e))
    }

    /// How the kernel should treat an opened file not passed through: see
    /// `MailboxFs::direct_io`.
    fn open_flags(&self, fh: u64) -> FopenFlags {
        if self.core.direct_io(fh) {
            FopenFlags::FOPEN_DIRECT_IO
        } else if self.core.keep_cache(fh) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// Answers a request that returns nothing but success or an errno.
fn empty(r: Result<(), FuseErrno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn name_str(name: &OsStr) -> Result<&str, FuseErrno> {
    // Names are UTF-8 in SFTP (draft-ietf-secsh-filexfer-13 §6) and in our database.
    name.to_str().ok_or(FuseErrno::EINVAL)
}

fn file_attr(a: &Attr) -> FileAttr {
    let t = ms_to_system_time(a.mtime_ms);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.mode,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLOCK as u32,
        flags: 0,
    }
}

/// The answer to a lookup of a name that does not exist, as a negative entry (inode 0).
fn absent_attr() -> FileAttr {
    file_attr(&Attr {
        ino: 0,
        kind: Kind::File,
        size: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        mtime_ms: 0,
        cacheable: true,
    })
}

fn time_ms(t: TimeOrNow) -> i64 {
    match t {
        TimeOrNow::SpecificTime(t) => system_time_ms(t),
        TimeOrNow::Now => system_time_ms(SystemTime::now()),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Listing with attributes in one round trip makes `ls -l` of large inboxes cheap;
        // atomic O_TRUNC spares copying a held upload that is about to be overwritten.
        // The write-back cache lets a writer's write() return once its data is in the page
        // cache, like on a local disk, and sends it to us in large requests; the kernel
        // writes every dirty page back before it sends the flush of a close, so the
        // upload's commit (at flush) still sees all of it. Handles that need every write
        // to reach us are opened with direct I/O (`MailboxFs::direct_io`).
        //
        // With passthrough (which the kernel grants only without the write-back cache),
        // the kernel reads and writes the spool and blob files itself: the mount sees no
        // data at all. Handles it cannot pass through (users with a quota, generated
        // files) then use direct I/O, so every write still reaches us and is checked.
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let offered = config.capabilities();
        let (path, why) = if !self.core.passthrough_allowed() {
            (DataPath::Mount, "passthrough = \"off\" in [mount]")
        } else if !offered.contains(InitFlags::FUSE_PASSTHROUGH) {
            (
                DataPath::Mount,
                "the kernel offers no FUSE passthrough (Linux 6.9 or later has it)",
            )
        } else if config.set_max_stack_depth(2).is_err() {
            (
                DataPath::Mount,
                "the kernel refused the stacking depth passthrough needs",
            )
        } else {
            (DataPath::Passthrough, "the kernel offers FUSE passthrough")
        };
        if path == DataPath::Passthrough {
            wanted |= InitFlags::FUSE_PASSTHROUGH;
        } else {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let _ = config.add_capabilities(wanted & offered);
        self.core.set_data_path(path, why);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // The number found may be forgotten (the kernel dropping its previous reference)
        // before it is counted: then look it up again, under a new number. A forget per
        // attempt is needed to lose a race, so a few attempts suffice.
        let mut r = Err(FuseErrno::ESTALE);
        for _ in 0..4 {
            r = self.named("lookup", parent, name, |n| {
                self.core.lookup(&caller(req), parent.0, n)
            });
            match &r {
                Ok(a) if !self.core.remember(a.ino) => r = Err(FuseErrno::ESTALE),
                _ => break,
            }
        }
        match r {
            Ok(a) => reply.entry(ttl(&a), &file_attr(&a), Generation(0)),
            // Inode 0: "no such name", with a time the kernel may remember it.
            Err(FuseErrno::ENOENT) if self.core.names_are_fixed(parent.0) => {
                reply.entry(&ABSENT_TTL, &absent_attr(), Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(&caller(req), ino.0) {
            Ok(a) => reply.attr(ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(self.fail("getattr", ino.0, None, e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // chmod is accepted and ignored, atime is not kept (SEMANTICS.md): neither reaches
        // the core.
        let s = SetAttr {
            uid,
            gid,
            size,
            mtime_ms: mtime.map(time_ms),
        };
        match self.core.setattr(&caller(req), ino.0, s) {
            Ok(a) => reply.attr(ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(self.fail("setattr", ino.0, None, e)),
        }
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(FuseErrno::EINVAL);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(FuseErrno::EPERM);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.named("mkdir", parent, name, |n| {
            self.core.mkdir(&caller(req), parent.0, n)
        });
        match r {
            Ok(a) => {
                self.core.remember(a.ino);
                reply.entry(ttl(&a), &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.named("unlink", parent, name, |n| {
            self.core.unlink(&caller(req), parent.0, n)
        });
        empty(r, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.named("rmdir", parent, name, |n| {
            self.core.rmdir(&caller(req), parent.0, n)
        });
        empty(r, reply);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(FuseErrno::EPERM);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(FuseErrno::EINVAL);
        }
        let mode = if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else {
            RenameMode::Replace
        };
        let Ok(nn) = name_str(newname) else {
            return reply.error(FuseErrno::EINVAL);
        };
        let r = self.named("rename", parent, name, |n| {
            (self.core).rename(&caller(req), parent.0, n, newparent.0, nn, mode)
        });
        empty(r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Exactly EPERM: sftp-server then falls back to rename().
        reply.error(FuseErrno::EPERM);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        let truncate = flags.0 & libc::O_TRUNC != 0;
        match self.core.open(&caller(req), ino.0, write, truncate) {
            Ok(fh) => match self.opened(ino.0, fh, |f| reply.open_backing(f)) {
                Opened::Passthrough(id) => {
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id)
                }
                Opened::Mount(flags) => reply.opened(FileHandle(fh), flags),
            },
            Err(e) => reply.error(self.fail("open", ino.0, None, e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.core.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(self.fail("read", ino.0, None, e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.core.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(self.fail("write", ino.0, None, e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let r = self.core.flush(&caller(req), fh.0);
        empty(r.map_err(|e| self.fail("flush", ino.0, None, e)), reply);
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(&caller(req), fh.0);
        self.release_backing(ino.0, fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.core.fsync(fh.0);
        empty(r.map_err(|e| self.fail("fsync", ino.0, None, e)), reply);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.opendir(&caller(req), ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(self.fail("opendir", ino.0, None, e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = match self.core.dir_items(fh.0) {
            Ok(items) => items,
            Err(e) => return reply.error(FuseErrno::from_i32(e.code)),
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let kind = match item.attr.kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            if reply.add(INodeNo(item.attr.ino), i as u64 + 1, kind, &item.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let items = match self.core.dir_items(fh.0) {
            Ok(items) => items,
            Err(e) => return reply.error(FuseErrno::from_i32(e.code)),
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let attr = file_attr(&item.attr);
            if reply.add(
                INodeNo(item.attr.ino),
                i as u64 + 1,
                &item.name,
                ttl(&item.attr),
                &attr,
                Generation(0),
            ) {
                break;
            }
            // The kernel takes a reference to every entry but the dot entries.
            if item.name != "." && item.name != ".." {
                self.core.remember(item.attr.ino);
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.release(&caller(req), fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every change to a folder is committed before its call returns.
        reply.ok();
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.core.statfs(&caller(req), ino.0) {
            Ok(s) => reply.statfs(
                s.blocks,
                s.free,
                s.free,
                s.files,
                s.files_free,
                BLOCK as u32,
                255,
                BLOCK as u32,
            ),
            Err(e) => reply.error(self.fail("statfs", ino.0, None, e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(FuseErrno::EPERM);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // ENOSYS once tells the kernel we keep no extended attributes: it then answers
        // EOPNOTSUPP itself, sparing a round trip per write (security.capability) and per
        // file of `ls -l` (ACLs).
        reply.error(FuseErrno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(FuseErrno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(FuseErrno::EPERM);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.core.access(&caller(req), ino.0, mask.bits()) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(self.fail("access", ino.0, None, e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let truncate = flags & libc::O_TRUNC != 0;
        let r = self.named("create", parent, name, |n| {
            self.core.create(&caller(req), parent.0, n, truncate)
        });
        match r {
            Ok((a, fh)) => {
                self.core.remember(a.ino);
                match self.opened(a.ino, fh, |f| reply.open_backing(f)) {
                    Opened::Passthrough(id) => reply.created_passthrough(
                        ttl(&a),
                        &file_attr(&a),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                        &id,
                    ),
                    Opened::Mount(flags) => reply.created(
                        ttl(&a),
                        &file_attr(&a),
                        Generation(0),
                        FileHandle(fh),
                        flags,
                    ),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(FuseErrno::from_i32(libc::EOPNOTSUPP));
    }

    /// No ioctl is meaningful on a mailbox file: "not a terminal", quietly. Every program
    /// that asks `isatty` of a file it opens (Python's `open` does) sends TCGETS; fuser's
    /// default answers ENOSYS with a multi-line warning each time.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(FuseErrno::from_i32(libc::ENOTTY));
    }
}
