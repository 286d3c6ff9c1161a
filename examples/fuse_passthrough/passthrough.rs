//! The file system of the FUSE passthrough example: every operation is
//! forwarded to a source directory, and every read, write, truncate and sync
//! of file data goes through `NoFsFile`.
//!
//! The threads that read `/dev/fuse` and run these methods are the ones the
//! kernel may wait on while it reclaims memory (dirty pages of this mount are
//! written back through them), so each one is an I/O flusher for its whole
//! life: [`Passthrough::serve_guard`] enters an `IoFlusher` on the first
//! request a thread serves and keeps it until the thread ends. fuser creates
//! its worker threads itself (`fuser-0`, ...), so the guard cannot be
//! entered around their spawn.
//!
//! Inodes are numbered by this file system (root = 1), one per source file
//! (`(st_dev, st_ino)`: hard links share one), and mapped to the names they
//! are known by, relative to the source; a rename moves the name of the
//! entry and of everything below it. Each entry counts the kernel's references (one per
//! LOOKUP, MKDIR or CREATE reply) and is dropped when FORGET returns them
//! all, or when the name is unlinked, so the table holds what the kernel's
//! inode cache holds, not every name ever seen: a daemon that runs for months
//! under `find /` must not grow without bound. READDIR registers nothing: a
//! name the kernel has not looked up gets `d_ino` 0xffffffff (libfuse's
//! `FUSE_UNKNOWN_INO`, as its `readdir_ino` option does).

#![allow(dead_code)] // shared with tests/fuse_passthrough.rs and tests/vm_fuse.rs

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, Session,
    SessionUnmounter, TimeOrNow, WriteFlags,
};
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use reclaim_scope::{IoFlusher, NoFsFile, NoFsIoError};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Attributes and entries are cached by the kernel this long. Short: the
/// source directory may change behind the mount's back.
const TTL: Duration = Duration::from_secs(1);

/// How serving threads get their allocation context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarding {
    /// Each serving thread holds an `IoFlusher`; best effort (a refusal was
    /// reported at start-up).
    IoFlusher,
    /// Like `IoFlusher`, but the mount is refused unless the thread that
    /// mounts can be an I/O flusher.
    Strict,
    /// No `IoFlusher`: the baseline for comparison.
    None,
}

/// The passthrough file system over `source`.
pub struct Passthrough {
    source: PathBuf,
    guarding: Guarding,
    /// File data bypasses `NoFsFile`: plain `pread`/`pwrite`/`fdatasync`/
    /// `ftruncate` (`--unprotected`). With `Guarding::None` alone every
    /// data access is still NOIO-scoped per call by `NoFsFile`.
    pub plain_io: bool,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<NoFsFile>>>,
    next_fh: AtomicU64,
    stats: Arc<Stats>,
}

/// Counters a test or the daemon can read while the file system is mounted
/// (`Passthrough::stats`, taken before `mount` moves the file system).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests served.
    pub requests: AtomicU64,
    /// Entries in the inode table, the root included.
    pub inodes: AtomicU64,
    /// Kernel references returned by FORGET.
    pub forgotten: AtomicU64,
}

/// Value of `d_ino` for a name the kernel has not looked up (libfuse's
/// `FUSE_UNKNOWN_INO`).
pub const UNKNOWN_INO: u64 = 0xffff_ffff;

/// The source file an inode stands for: `(st_dev, st_ino)`.
type SourceId = (u64, u64);

struct Inodes {
    /// ino → the names it is known by, relative to the source ("" is the
    /// root), the last one looked up first; requests use the first. Hard
    /// links give one inode two names.
    names: HashMap<u64, Vec<PathBuf>>,
    by_path: HashMap<PathBuf, u64>,
    /// ino ↔ the source file it stands for, so that every name of one file
    /// is one kernel inode with one page and attribute cache.
    by_source: HashMap<SourceId, u64>,
    source_of: HashMap<u64, SourceId>,
    /// ino → references the kernel holds (entry replies not yet forgotten).
    lookups: HashMap<u64, u64>,
    next: u64,
    stats: Arc<Stats>,
}

impl Inodes {
    fn new(root: Option<SourceId>, stats: Arc<Stats>) -> Inodes {
        let mut t = Inodes {
            names: HashMap::new(),
            by_path: HashMap::new(),
            by_source: HashMap::new(),
            source_of: HashMap::new(),
            lookups: HashMap::new(),
            next: INodeNo::ROOT.0 + 1,
            stats,
        };
        t.add_name(INodeNo::ROOT.0, PathBuf::new());
        if let Some(id) = root {
            t.by_source.insert(id, INodeNo::ROOT.0);
            t.source_of.insert(INodeNo::ROOT.0, id);
        }
        t.count();
        t
    }

    /// `rel` names `ino`, as a LOOKUP just saw: it goes first, so requests
    /// use the name last seen to exist (an older one may have been renamed
    /// behind the mount's back).
    fn add_name(&mut self, ino: u64, rel: PathBuf) {
        self.by_path.insert(rel.clone(), ino);
        let names = self.names.entry(ino).or_default();
        names.retain(|p| *p != rel);
        names.insert(0, rel);
    }

    /// The path requests for `ino` use.
    fn path(&self, ino: u64) -> Option<&PathBuf> {
        self.names.get(&ino).and_then(|v| v.first())
    }

    /// The inode of the file `id` found at `rel`, allocated if new, with one
    /// more kernel reference: only for replies that hand the kernel an entry.
    /// A second name of a known file (a hard link) joins its inode; a name
    /// whose file was replaced behind the mount leaves the old inode.
    fn lookup(&mut self, rel: &Path, id: SourceId) -> u64 {
        let ino = match self.by_path.get(rel).copied() {
            Some(ino) if self.source_of.get(&ino) == Some(&id) => ino,
            stale => {
                if stale.is_some() {
                    self.unname(rel);
                }
                match self.by_source.get(&id).copied() {
                    Some(ino) => {
                        self.add_name(ino, rel.to_owned());
                        ino
                    }
                    None => {
                        let ino = self.next;
                        self.next += 1;
                        self.add_name(ino, rel.to_owned());
                        self.by_source.insert(id, ino);
                        self.source_of.insert(ino, id);
                        self.count();
                        ino
                    }
                }
            }
        };
        *self.lookups.entry(ino).or_insert(0) += 1;
        ino
    }

    /// The inode of `rel` if the kernel knows it.
    fn known(&self, rel: &Path) -> Option<u64> {
        self.by_path.get(rel).copied()
    }

    /// FORGET: the kernel returns `n` references to `ino`. An inode unlinked
    /// meanwhile is already gone; the root is never dropped.
    fn forget(&mut self, ino: u64, n: u64) {
        self.stats.forgotten.fetch_add(n, Ordering::Relaxed);
        if ino == INodeNo::ROOT.0 {
            return;
        }
        let Some(left) = self.lookups.get_mut(&ino) else {
            return;
        };
        *left = left.saturating_sub(n);
        if *left == 0 {
            self.drop_inode(ino);
        }
    }

    fn drop_inode(&mut self, ino: u64) {
        self.lookups.remove(&ino);
        for p in self.names.remove(&ino).unwrap_or_default() {
            self.by_path.remove(&p);
        }
        if let Some(id) = self.source_of.remove(&ino) {
            self.by_source.remove(&id);
        }
        self.count();
    }

    /// The name is gone from the source (unlink, rmdir, replaced by a
    /// rename). An inode with another name (a hard link) lives on under it;
    /// one without is dropped: later requests for it get ENOENT, and its
    /// FORGET finds nothing.
    fn unname(&mut self, rel: &Path) {
        let Some(ino) = self.by_path.remove(rel) else {
            return;
        };
        let left = self.names.get_mut(&ino).map_or(0, |v| {
            v.retain(|p| p != rel);
            v.len()
        });
        if left == 0 && ino != INodeNo::ROOT.0 {
            self.drop_inode(ino);
        }
    }

    fn count(&self) {
        self.stats
            .inodes
            .store(self.names.len() as u64, Ordering::Relaxed);
    }

    /// `from` (and everything below it) is now called `to`.
    fn rename(&mut self, from: &Path, to: &Path) {
        // An entry replaced by the rename loses its name.
        let replaced: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(to))
            .cloned()
            .collect();
        for p in replaced {
            self.unname(&p);
        }
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (old, ino) in moved {
            // Not `to.join("")`: that appends a '/', and "file/" is ENOTDIR.
            let below = old.strip_prefix(from).expect("prefix");
            let new = if below.as_os_str().is_empty() {
                to.to_owned()
            } else {
                to.join(below)
            };
            self.by_path.remove(&old);
            self.by_path.insert(new.clone(), ino);
            if let Some(p) = self
                .names
                .get_mut(&ino)
                .and_then(|v| v.iter_mut().find(|p| **p == old))
            {
                *p = new;
            }
        }
    }
}

thread_local! {
    /// The serving thread's `IoFlusher`, entered on its first request.
    static SERVE_GUARD: RefCell<Option<IoFlusher>> = const { RefCell::new(None) };
}

/// The errno of an I/O error, also when `NoFsFile` wrapped it.
pub fn errno(e: &io::Error) -> Errno {
    let raw = NoFsIoError::of(e)
        .and_then(NoFsIoError::raw_os_error)
        .or_else(|| e.raw_os_error());
    match raw {
        Some(n) => Errno::from_i32(n),
        None => match e.kind() {
            io::ErrorKind::NotFound => Errno::ENOENT,
            io::ErrorKind::PermissionDenied => Errno::EACCES,
            io::ErrorKind::AlreadyExists => Errno::EEXIST,
            io::ErrorKind::InvalidInput => Errno::EINVAL,
            _ => Errno::EIO,
        },
    }
}

fn kind_of(ft: fs::FileType) -> FileType {
    FileType::from_std(ft).unwrap_or(FileType::RegularFile)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn attr_of(ino: u64, m: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind: kind_of(m.file_type()),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

/// Open options for the access mode and the flags std knows; `O_APPEND` is
/// dropped (the kernel sends the offset of each write), `O_CREAT`/`O_EXCL`
/// are the caller's.
fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => o.write(true),
        libc::O_RDWR => o.read(true).write(true),
        _ => o.read(true),
    };
    if flags & libc::O_TRUNC != 0 {
        o.truncate(true);
    }
    let keep = libc::O_NOATIME | libc::O_DSYNC | libc::O_SYNC;
    o.custom_flags(flags & keep);
    o
}

impl Passthrough {
    pub fn new(source: PathBuf, guarding: Guarding) -> Passthrough {
        let stats = Arc::new(Stats::default());
        let root = fs::metadata(&source).ok().map(|m| (m.dev(), m.ino()));
        Passthrough {
            source,
            guarding,
            plain_io: false,
            inodes: Mutex::new(Inodes::new(root, stats.clone())),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            stats,
        }
    }

    /// Live counters of this file system, readable after `mount` took it.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Called first by every request: makes the serving thread an I/O
    /// flusher for the rest of its life (once; later calls cost a
    /// thread-local read).
    fn serve_guard(&self) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if self.guarding == Guarding::None {
            return;
        }
        SERVE_GUARD.with(|g| {
            let mut g = g.borrow_mut();
            if g.is_none() {
                *g = Some(IoFlusher::enter());
            }
        });
    }

    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.inodes
            .lock()
            .expect("inode table")
            .path(ino.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.source.join(rel)
    }

    /// `lstat` of a relative path and its inode number (allocated if new),
    /// for a reply that gives the kernel a reference to the entry.
    fn entry(&self, rel: &Path) -> Result<FileAttr, Errno> {
        let m = fs::symlink_metadata(self.full(rel)).map_err(|e| errno(&e))?;
        let id = (m.dev(), m.ino());
        let ino = self.inodes.lock().expect("inode table").lookup(rel, id);
        Ok(attr_of(ino, &m))
    }

    /// UNLINK and RMDIR: remove the name in the source, then from the table.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        op: impl FnOnce(&Path) -> io::Result<()>,
        reply: ReplyEmpty,
    ) {
        let r = self.child(parent, name).and_then(|rel| {
            op(&self.full(&rel)).map_err(|e| errno(&e))?;
            self.inodes.lock().expect("inode table").unname(&rel);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<NoFsFile>, Errno> {
        self.handles
            .lock()
            .expect("handle table")
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn add_handle(&self, f: NoFsFile) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .expect("handle table")
            .insert(fh, Arc::new(f));
        FileHandle(fh)
    }

    fn read_at(&self, f: &NoFsFile, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let n = if self.plain_io {
                f.get_ref().read_at(&mut buf[done..], offset + done as u64)
            } else {
                f.pread_nofs(&mut buf[done..], offset + done as u64).map_err(io::Error::from)
            };
            match n {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&self, f: &NoFsFile, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.plain_io {
            f.get_ref().write_all_at(buf, offset)
        } else {
            f.write_all_at_nofs(buf, offset).map_err(io::Error::from)
        }
    }

    fn sync(&self, f: &NoFsFile, datasync: bool) -> io::Result<()> {
        match (self.plain_io, datasync) {
            (true, true) => f.get_ref().sync_data(),
            (true, false) => f.get_ref().sync_all(),
            (false, true) => f.sync_data_nofs().map_err(io::Error::from),
            (false, false) => f.sync_all_nofs().map_err(io::Error::from),
        }
    }

    fn set_len(&self, f: &NoFsFile, len: u64) -> io::Result<()> {
        if self.plain_io {
            f.get_ref().set_len(len)
        } else {
            f.set_len_nofs(len).map_err(io::Error::from)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let rel = self.rel(ino)?;
        let path = self.full(&rel);
        let io = |e: io::Error| errno(&e);
        if let Some(mode) = mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(io)?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid).map_err(io)?;
        }
        if let Some(size) = size {
            match fh {
                Some(fh) => self.set_len(&*self.handle(fh)?, size).map_err(io)?,
                None => {
                    let f = NoFsFile::open(&path, OpenOptions::new().write(true)).map_err(|e| io(e.into()))?;
                    self.set_len(&f, size).map_err(io)?;
                }
            }
        }
        if atime.is_some() || mtime.is_some() {
            let ts = |t: Option<TimeOrNow>| match t {
                None => TimeSpec::UTIME_OMIT,
                Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
                Some(TimeOrNow::SpecificTime(t)) => {
                    TimeSpec::from(t.duration_since(UNIX_EPOCH).unwrap_or_default())
                }
            };
            utimensat(
                AT_FDCWD,
                &path,
                &ts(atime),
                &ts(mtime),
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| Errno::from_i32(e as i32))?;
        }
        let m = fs::symlink_metadata(&path).map_err(io)?;
        Ok(attr_of(ino.0, &m))
    }
}

impl Filesystem for Passthrough {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Runs on the thread that mounts, inside its own IoFlusher (`mount`):
        // no thread-local guard here, it would outlive that one.
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        // Large writes: fewer round trips (the kernel clamps to its limit).
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.serve_guard();
        match self.child(parent, name).and_then(|rel| self.entry(&rel)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    // BATCH_FORGET arrives here too: fuser's default `batch_forget` calls
    // `forget` per node (its `ForgetOne` is not public in 0.18).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.serve_guard();
        self.inodes
            .lock()
            .expect("inode table")
            .forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve_guard();
        // An open file is stat'ed through its descriptor: it may be unlinked.
        let m = match fh.map(|fh| self.handle(fh)) {
            Some(Ok(f)) => f.get_ref().metadata().map_err(|e| errno(&e)),
            _ => self
                .rel(ino)
                .and_then(|rel| fs::symlink_metadata(self.full(&rel)).map_err(|e| errno(&e))),
        };
        match m {
            Ok(m) => reply.attr(&TTL, &attr_of(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.serve_guard();
        match self.do_setattr(ino, mode, uid, gid, size, atime, mtime, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.serve_guard();
        let r = self.child(parent, name).and_then(|rel| {
            let path = self.full(&rel);
            fs::create_dir(&path).map_err(|e| errno(&e))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & !umask & 0o7777))
                .map_err(|e| errno(&e))?;
            self.entry(&rel)
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve_guard();
        match self
            .rel(ino)
            .and_then(|rel| fs::read_link(self.full(&rel)).map_err(|e| errno(&e)))
        {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.serve_guard();
        let r = self.child(parent, link_name).and_then(|rel| {
            std::os::unix::fs::symlink(target, self.full(&rel)).map_err(|e| errno(&e))?;
            self.entry(&rel)
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// A hard link: the new name joins the inode of the file (the table is
    /// keyed by the source's `(st_dev, st_ino)`), so both names share one
    /// kernel inode and its caches.
    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.serve_guard();
        let r = self.rel(ino).and_then(|from| {
            let to = self.child(newparent, newname)?;
            fs::hard_link(self.full(&from), self.full(&to)).map_err(|e| errno(&e))?;
            self.entry(&to)
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve_guard();
        self.remove(parent, name, |p| fs::remove_file(p), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve_guard();
        self.remove(parent, name, |p| fs::remove_dir(p), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.serve_guard();
        if flags.bits() != 0 {
            // RENAME_NOREPLACE / RENAME_EXCHANGE would need renameat2.
            return reply.error(Errno::EINVAL);
        }
        let r = self.child(parent, name).and_then(|from| {
            let to = self.child(newparent, newname)?;
            fs::rename(self.full(&from), self.full(&to)).map_err(|e| errno(&e))?;
            self.inodes.lock().expect("inode table").rename(&from, &to);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.serve_guard();
        let r = self.rel(ino).and_then(|rel| {
            NoFsFile::open(self.full(&rel), &open_options(flags.0)).map_err(|e| errno(&e.into()))
        });
        match r {
            Ok(f) => reply.opened(self.add_handle(f), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.serve_guard();
        let r = self.child(parent, name).and_then(|rel| {
            let mut o = open_options(flags);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
            if flags & libc::O_ACCMODE == libc::O_RDONLY {
                // std refuses create without write access; the kernel does not.
                o.write(true);
            }
            o.mode(mode & !umask & 0o7777);
            let f = NoFsFile::open(self.full(&rel), &o).map_err(|e| errno(&e.into()))?;
            Ok((self.entry(&rel)?, f))
        });
        match r {
            Ok((attr, f)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                self.add_handle(f),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.serve_guard();
        let r = self.handle(fh).and_then(|f| {
            let mut buf = vec![0; size as usize];
            let n = self.read_at(&f, &mut buf, offset).map_err(|e| errno(&e))?;
            buf.truncate(n);
            Ok(buf)
        });
        match r {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.serve_guard();
        let r = self
            .handle(fh)
            .and_then(|f| self.write_at(&f, data, offset).map_err(|e| errno(&e)));
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.serve_guard();
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.serve_guard();
        self.handles.lock().expect("handle table").remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.serve_guard();
        match self
            .handle(fh)
            .and_then(|f| self.sync(&f, datasync).map_err(|e| errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.serve_guard();
        match self.rel(ino).and_then(|rel| {
            let m = fs::metadata(self.full(&rel)).map_err(|e| errno(&e))?;
            if m.is_dir() {
                Ok(())
            } else {
                Err(Errno::ENOTDIR)
            }
        }) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.serve_guard();
        let r = self.rel(ino).and_then(|rel| {
            let mut names: Vec<(PathBuf, FileType)> = Vec::new();
            for e in fs::read_dir(self.full(&rel)).map_err(|e| errno(&e))? {
                let e = e.map_err(|e| errno(&e))?;
                let kind = e.file_type().map(kind_of).unwrap_or(FileType::RegularFile);
                names.push((rel.join(e.file_name()), kind));
            }
            // A stable order: offsets are indices into this listing.
            names.sort_by(|a, b| a.0.cmp(&b.0));
            Ok((rel, names))
        });
        let (rel, names) = match r {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let parent = rel.parent().map(Path::to_owned).unwrap_or_default();
        let inodes = self.inodes.lock().expect("inode table");
        let d_ino = |p: &Path| inodes.known(p).unwrap_or(UNKNOWN_INO);
        let mut all = vec![
            (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
            (
                d_ino(&parent),
                FileType::Directory,
                OsStr::new("..").to_owned(),
            ),
        ];
        for (path, kind) in &names {
            let name = path.file_name().expect("entry name").to_owned();
            all.push((d_ino(path), *kind, name));
        }
        drop(inodes);
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.serve_guard();
        match nix::sys::statvfs::statvfs(&self.source) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }
}

/// A mounted, serving passthrough file system.
pub struct Mounted {
    pub mountpoint: PathBuf,
    unmounter: Option<SessionUnmounter>,
    serving: Option<JoinHandle<io::Result<()>>>,
}

impl Mounted {
    /// Unmount (the kernel ends the session) and wait for the serving
    /// threads.
    pub fn unmount(mut self) -> io::Result<()> {
        if let Some(u) = &mut self.unmounter {
            u.unmount()?;
        }
        self.join()
    }

    /// Wait until the session ends (someone unmounted it).
    pub fn join(&mut self) -> io::Result<()> {
        match self.serving.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("serving thread panicked"))),
            None => Ok(()),
        }
    }

    /// What unmounts this mount, for a signal handler (once).
    pub fn take_unmounter(&mut self) -> Option<SessionUnmounter> {
        self.unmounter.take()
    }
}

/// Mount `fs` at `mountpoint` and serve it with `threads` worker threads,
/// from a thread named `fuse-serve` that holds an `IoFlusher` (unless
/// `Guarding::None`): the mount and the FUSE handshake already run as an I/O
/// flusher, and fuser's workers start flagged (they enter their own guard on
/// their first request). Returns once the kernel has sent INIT.
pub fn mount(fs: Passthrough, mountpoint: &Path, threads: usize) -> io::Result<Mounted> {
    let guarding = fs.guarding;
    let mut config = Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("passthrough:{}", fs.source.display())),
        fuser::MountOption::Subtype("reclaim-scope".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(threads.max(1));
    config.clone_fd = threads > 1;
    let mp = mountpoint.to_owned();
    let (tx, rx) = mpsc::channel();
    let serving = std::thread::Builder::new()
        .name("fuse-serve".into())
        .spawn(move || {
            let _guard = match guarding {
                Guarding::None => None,
                Guarding::IoFlusher => Some(IoFlusher::enter()),
                Guarding::Strict => match IoFlusher::try_enter() {
                    Ok(g) => Some(g),
                    Err(e) => {
                        let e = io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("refusing to serve unprotected (--strict): {e}"),
                        );
                        let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                },
            };
            let mut session = match Session::new(fs, &mp, &config) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            };
            let _ = tx.send(Ok(session.unmount_callable()));
            session.run()
        })?;
    match rx.recv() {
        Ok(Ok(unmounter)) => Ok(Mounted {
            mountpoint: mountpoint.to_owned(),
            unmounter: Some(unmounter),
            serving: Some(serving),
        }),
        Ok(Err(e)) => {
            let _ = serving.join();
            Err(e)
        }
        Err(_) => Err(match serving.join() {
            Ok(Err(e)) => e,
            _ => io::Error::other("serving thread ended before mounting"),
        }),
    }
}
