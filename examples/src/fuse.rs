//! The file system of the FUSE passthrough example: a file-handle
//! passthrough in the manner of libfuse's `passthrough_hp.cc` and
//! virtiofsd. Every inode the kernel knows holds an `O_PATH` descriptor of
//! its source file ([`inodes`]), every request reaches the source through
//! the `*at()` calls relative to descriptors (or `/proc/self/fd/N`), each
//! OPENDIR handle owns one directory stream ([`dirstream`]), and each
//! creating request runs with the caller's fsuid/fsgid ([`creds`]). Every
//! read, write, truncate, sync, allocation, hole punch and SEEK_DATA/HOLE of
//! file data goes through `NoFsFile`; the other fallocate modes,
//! copy_file_range and fsyncdir run inside a `NoFsScope::run` scope.
//! Extended attributes go to the source through `/proc/self/fd/N` with the
//! xattr crate (rustix for SETXATTR's flags); SETXATTR and REMOVEXATTR run
//! with the caller's fsuid/fsgid. `fcntl` locks are OFD locks on the
//! source, one open file description per lock owner (as virtiofsd), see
//! [`Passthrough::setlk`].
//!
//! The threads that read `/dev/fuse` and run these methods are the ones the
//! kernel may wait on while it reclaims memory (dirty pages of this mount are
//! written back through them), so each one is an I/O flusher for its whole
//! life: `Passthrough::serve_guard` enters an `IoFlusher` on the first
//! request a thread serves and keeps it until the thread ends. fuser creates
//! its worker threads itself (`fuser-0`, ...), so the guard cannot be
//! entered around their spawn.
//!
//! Caching, chosen deliberately: the writeback cache is off (every write is
//! sent at once, so a write error reaches the writer and the source sees
//! each write in order); an open file gets neither `FOPEN_KEEP_CACHE` (the
//! source may change behind the mount, so each open starts with a clean
//! page cache) nor, unless opened with `O_APPEND`, `FOPEN_DIRECT_IO` (reads
//! and mmap are cached between opens). `FUSE_AUTO_INVAL_DATA` drops cached
//! pages when a refreshed size or mtime shows the file changed. An
//! `O_APPEND` open keeps `O_APPEND` on the source descriptor, so every
//! append lands at the true end of the file even when someone else
//! appended in the source; it is opened `FOPEN_DIRECT_IO` because the
//! kernel computes the offset of an append from the size it has cached,
//! and would otherwise put the appended bytes in its page cache at that
//! (possibly stale) offset.

pub mod creds;
pub mod dirstream;
pub mod inodes;
pub mod rig;

pub use inodes::Stats;

use creds::AsCaller;
use dirstream::DirStream;
use fuser::{
    AccessFlags, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session,
    SessionACL, SessionUnmounter, TimeOrNow, WriteFlags,
};
use inodes::{Inode, Inodes};
use nix::fcntl::{openat, AtFlags, FallocateFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{
    fchmod, fchmodat, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use reclaim_scope::{IoFlusher, NoFsFile, NoFsIoError, NoFsScope};
use rustix::fs::XattrFlags;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Attributes and entries are cached by the kernel this long. Short: the
/// source directory may change behind the mount's back.
const TTL: Duration = Duration::from_secs(1);

/// Value of `d_ino` for a name the kernel has not looked up (libfuse's
/// `FUSE_UNKNOWN_INO`).
pub const UNKNOWN_INO: u64 = 0xffff_ffff;

/// How serving threads get their allocation context (under `Strict` the
/// mount is refused unless the thread that mounts can be an I/O flusher).
pub use crate::daemon::Guarding;
use crate::daemon::{FileIo, IoError};

/// The passthrough file system over `source`.
pub struct Passthrough {
    source: PathBuf,
    guarding: Guarding,
    /// File data bypasses `NoFsFile`: plain `pread`/`pwrite`/`fdatasync`/
    /// `ftruncate` (`--unprotected`). With `Guarding::None` alone every
    /// data access is still NOIO-scoped per call by `NoFsFile`.
    pub plain_io: bool,
    /// Ask the kernel for READDIRPLUS (adaptive: `FUSE_READDIRPLUS_AUTO`),
    /// which looks every listed name up in the same request.
    pub readdirplus: bool,
    /// Mount with `allow_other`: other users may use the mount (their
    /// permissions are checked by the kernel, `default_permissions`).
    pub allow_other: bool,
    /// Serve extended attributes (`--no-xattr` turns them off). With them
    /// the kernel asks GETXATTR `security.capability` before every cached
    /// write(2) (`file_remove_privs`: FUSE never marks an inode `S_NOSEC`),
    /// one more round trip per write; without them the first xattr request
    /// answers ENOSYS, the kernel stops asking and callers get
    /// `EOPNOTSUPP`, as on a file system without xattrs. libfuse's
    /// `passthrough_ll` (`-o xattr`) and virtiofsd (`--xattr`) make them
    /// opt-in for this reason; here they are on, as issue 15 asks.
    pub xattr: bool,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<NoFsFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Mutex<DirStream>>>>,
    /// The source descriptors that hold the POSIX locks taken through the
    /// mount, one per `(inode, lock owner)` (see [`Passthrough::setlk`]).
    locks: Mutex<HashMap<(u64, u64), LockFd>>,
    next_fh: AtomicU64,
    stats: Arc<Stats>,
}

thread_local! {
    /// The serving thread's `IoFlusher`, entered on its first request.
    static SERVE_GUARD: RefCell<Option<IoFlusher>> = const { RefCell::new(None) };
}

/// The FUSE errno of a failed system call: the source's own.
fn sys(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

/// The FUSE errno of a failed rustix call: the source's own.
fn rsys(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

/// The FUSE errno of an I/O error: its OS error, or one that says the same
/// for the few errors made without one.
pub fn io_errno(e: &io::Error) -> Errno {
    match e.raw_os_error() {
        Some(n) => Errno::from_i32(n),
        None => match e.kind() {
            io::ErrorKind::NotFound => Errno::ENOENT,
            io::ErrorKind::PermissionDenied => Errno::EACCES,
            io::ErrorKind::AlreadyExists => Errno::EEXIST,
            io::ErrorKind::InvalidInput => Errno::EINVAL,
            io::ErrorKind::Unsupported => Errno::EOPNOTSUPP,
            _ => Errno::EIO,
        },
    }
}

/// The FUSE errno of a failed `NoFsFile` call: the errno it keeps.
pub fn nofs_errno(e: NoFsIoError) -> Errno {
    match e.raw_os_error() {
        Some(n) => Errno::from_i32(n),
        None => io_errno(&io::Error::from(e)),
    }
}

/// The errno for the kernel of a backing-file I/O error.
fn backing_errno(e: IoError) -> Errno {
    match e {
        IoError::Plain(e) => io_errno(&e),
        IoError::NoFs(e) => nofs_errno(e),
    }
}

fn file_type(kind: SFlag) -> FileType {
    match kind {
        SFlag::S_IFDIR => FileType::Directory,
        SFlag::S_IFLNK => FileType::Symlink,
        SFlag::S_IFIFO => FileType::NamedPipe,
        SFlag::S_IFCHR => FileType::CharDevice,
        SFlag::S_IFBLK => FileType::BlockDevice,
        SFlag::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// A `d_type`; `None` for `DT_UNKNOWN`.
fn dirent_type(t: rustix::fs::FileType) -> Option<FileType> {
    use rustix::fs::FileType as T;
    Some(match t {
        T::Directory => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::Fifo => FileType::NamedPipe,
        T::CharacterDevice => FileType::CharDevice,
        T::BlockDevice => FileType::BlockDevice,
        T::Socket => FileType::Socket,
        T::RegularFile => FileType::RegularFile,
        _ => return None,
    })
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

/// `st_rdev` (glibc's `dev_t`) as FUSE's `rdev`, the kernel's
/// `new_encode_dev` form; and back.
fn encode_dev(dev: u64) -> u32 {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

fn decode_dev(rdev: u32) -> u64 {
    let rdev = u64::from(rdev);
    let major = (rdev >> 8) & 0xfff;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    nix::sys::stat::makedev(major, minor)
}

fn attr_of(ino: u64, st: &FileStat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        // Not in FUSE's attributes on Linux (no statx btime in fuser 0.18).
        crtime: time(st.st_ctime, st.st_ctime_nsec),
        kind: file_type(inodes::kind_of(st)),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_dev(st.st_rdev),
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// Flags of an OPEN kept on the source descriptor: the access mode,
/// `O_APPEND` (appends land at the source's true end), and the
/// synchronisation and atime flags. `O_DIRECT` is not kept: the kernel
/// already bypasses its page cache for it, and the daemon's buffers are
/// not aligned for the source. `O_CREAT`/`O_EXCL`/`O_TRUNC` do not come
/// with OPEN (the kernel truncates with SETATTR).
fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => o.write(true),
        libc::O_RDWR => o.read(true).write(true),
        _ => o.read(true),
    };
    if flags & libc::O_APPEND != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
        o.append(true);
    }
    let keep = libc::O_NOATIME | libc::O_DSYNC | libc::O_SYNC;
    o.custom_flags(flags & keep);
    o
}

/// `FOPEN_DIRECT_IO` for appends (see the module documentation), the page
/// cache for everything else.
fn fopen_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_APPEND != 0 {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

fn timespec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::from(d),
            Err(e) => {
                let d = e.duration();
                let (s, ns) = (d.as_secs() as i64, d.subsec_nanos() as i64);
                if ns == 0 {
                    TimeSpec::new(-s, 0)
                } else {
                    TimeSpec::new(-s - 1, 1_000_000_000 - ns)
                }
            }
        },
    }
}

/// The open file description on the source that holds one lock owner's
/// locks on one file, and the file handles it was used through.
struct LockFd {
    fd: Arc<OwnedFd>,
    fhs: Vec<u64>,
}

/// A FUSE lock range (`start..=end`, `end` = `OFFSET_MAX` for "to the end
/// of the file") of type `typ` as a `struct flock` from the start of the
/// file; EINVAL for a range the kernel never sends.
fn flock_of(start: u64, end: u64, typ: i32) -> Result<libc::flock, Errno> {
    let max = i64::MAX as u64;
    if start > max || end < start {
        return Err(Errno::EINVAL);
    }
    Ok(libc::flock {
        l_type: typ as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start as i64,
        l_len: if end >= max {
            0
        } else {
            (end - start + 1) as i64
        },
        l_pid: 0,
    })
}

/// `F_OFD_SETLKW` on a lock descriptor, again after EINTR.
fn setlkw(fd: &OwnedFd, fl: &libc::flock) -> nix::Result<()> {
    loop {
        match nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_OFD_SETLKW(fl)) {
            Err(nix::errno::Errno::EINTR) => {}
            r => return r.map(drop),
        }
    }
}

/// The path the xattr calls take to an inode: `/proc/self/fd/N` of its
/// `O_PATH` descriptor, *followed* (getxattr(2), the `_deref` calls of the
/// xattr crate), as virtiofsd does. `f*xattr` on an `O_PATH` descriptor
/// answers EBADF, and opening the file for them would block on a FIFO and
/// fail on a symlink. Following the magic link lands on the file the
/// descriptor holds and stops there, so for a symlink the calls act on the
/// symlink itself, which is what the kernel asks (it follows a symlink
/// itself before it sends a request for the target). The `l*xattr` calls
/// (the crate's `get`/`set`/...) would act on the magic link, a procfs
/// file (EOPNOTSUPP). The source's own rules then apply as on a local
/// file system: `user.*` on a symlink or device is EPERM to set and
/// ENODATA to read (the kernel already refuses both on the mount before
/// it sends the request), `trusted.*` and `security.*` work.
fn xattr_path(inode: &Inode) -> String {
    inode.proc_path()
}

/// A GETXATTR/LISTXATTR answer: the size if the kernel asked with size 0,
/// the bytes if they fit, else ERANGE.
fn sized_reply(reply: ReplyXattr, data: &[u8], size: u32) {
    match u32::try_from(data.len()) {
        Ok(len) if size == 0 => reply.size(len),
        Ok(len) if len <= size => reply.data(data),
        _ => reply.error(Errno::ERANGE),
    }
}

fn is_dot(name: &OsStr) -> bool {
    name == "." || name == ".."
}

impl Passthrough {
    /// The passthrough over `source` (a directory, opened now: its
    /// descriptor is the root inode).
    pub fn new(source: PathBuf, guarding: Guarding) -> io::Result<Passthrough> {
        let stats = Arc::new(Stats::default());
        let root = openat(
            AT_FDCWD,
            &source,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let st = fstat(&root).map_err(io::Error::from)?;
        Ok(Passthrough {
            source,
            guarding,
            plain_io: false,
            readdirplus: true,
            allow_other: false,
            xattr: true,
            inodes: Mutex::new(Inodes::new(root, &st, stats.clone())),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            stats,
        })
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

    fn table(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().expect("inode table")
    }

    fn inode(&self, ino: INodeNo) -> Result<Arc<Inode>, Errno> {
        self.table().get(ino.0).ok_or(Errno::ESTALE)
    }

    /// An entry for the kernel: the file `fd` (`O_PATH`) with one more
    /// reference.
    fn entry_of(&self, fd: OwnedFd) -> Result<FileAttr, Errno> {
        let st = fstat(&fd).map_err(sys)?;
        let (ino, _) = self.table().lookup(fd, &st);
        Ok(attr_of(ino, &st))
    }

    /// LOOKUP of `name` in `parent`, also after a creating request.
    fn lookup_child(&self, parent: &Inode, name: &OsStr) -> Result<FileAttr, Errno> {
        let fd = openat(
            &parent.fd,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys)?;
        self.entry_of(fd)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<NoFsFile>, Errno> {
        self.files
            .lock()
            .expect("file handles")
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn dir(&self, fh: FileHandle) -> Result<Arc<Mutex<DirStream>>, Errno> {
        self.dirs
            .lock()
            .expect("dir handles")
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn add_file(&self, f: NoFsFile) -> FileHandle {
        let fh = self.new_fh();
        self.files
            .lock()
            .expect("file handles")
            .insert(fh, Arc::new(f));
        FileHandle(fh)
    }

    fn read_at(&self, f: &NoFsFile, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = self
                .io(f)
                .read_at(&mut buf[done..], at)
                .map_err(backing_errno);
            match n {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e == Errno::EINTR => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// `f`'s data I/O: through `NoFsFile`, or plain under `--unprotected`.
    fn io<'f>(&self, f: &'f NoFsFile) -> FileIo<'f> {
        FileIo {
            file: f,
            plain: self.plain_io,
        }
    }

    fn write_at(&self, f: &NoFsFile, buf: &[u8], offset: u64) -> Result<(), Errno> {
        self.io(f).write_all_at(buf, offset).map_err(backing_errno)
    }

    fn sync(&self, f: &NoFsFile, datasync: bool) -> Result<(), Errno> {
        if datasync {
            self.io(f).sync_data().map_err(backing_errno)
        } else {
            self.io(f).sync_all().map_err(backing_errno)
        }
    }

    fn set_len(&self, f: &NoFsFile, len: u64) -> Result<(), Errno> {
        self.io(f).set_len(len).map_err(backing_errno)
    }

    /// SETATTR in `passthrough_hp`'s order: mode, owner, size, times, each
    /// through the open file when the kernel sent its handle (the name may
    /// be gone), else through the inode's descriptor.
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
        let inode = self.inode(ino)?;
        let file = fh.and_then(|fh| self.file(fh).ok());
        if let Some(mode) = mode {
            let mode = Mode::from_bits_truncate(mode & 0o7777);
            match &file {
                Some(f) => fchmod(f.as_fd(), mode),
                None => fchmodat(
                    AT_FDCWD,
                    inode.proc_path().as_str(),
                    mode,
                    FchmodatFlags::FollowSymlink,
                ),
            }
            .map_err(sys)?;
        }
        if uid.is_some() || gid.is_some() {
            let (uid, gid) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
            match &file {
                Some(f) => nix::unistd::fchown(f.as_fd(), uid, gid),
                None => nix::unistd::fchownat(&inode.fd, "", uid, gid, AtFlags::AT_EMPTY_PATH),
            }
            .map_err(sys)?;
        }
        if let Some(size) = size {
            match &file {
                Some(f) => self.set_len(f, size)?,
                None => {
                    let f = NoFsFile::open(inode.proc_path(), OpenOptions::new().write(true))
                        .map_err(nofs_errno)?;
                    self.set_len(&f, size)?;
                }
            }
        }
        if atime.is_some() || mtime.is_some() {
            let (a, m) = (timespec(atime), timespec(mtime));
            match &file {
                Some(f) => futimens(f.as_fd(), &a, &m),
                None => utimensat(
                    AT_FDCWD,
                    inode.proc_path().as_str(),
                    &a,
                    &m,
                    UtimensatFlags::FollowSymlink,
                ),
            }
            .map_err(sys)?;
        }
        let st = match &file {
            Some(f) => fstat(f.as_fd()),
            None => fstat(&inode.fd),
        }
        .map_err(sys)?;
        Ok(attr_of(ino.0, &st))
    }

    /// A creating request (`op` makes `name` in `parent`) run as the caller,
    /// then looked up as the daemon.
    fn create_as(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        op: impl FnOnce(&Inode) -> nix::Result<()>,
    ) -> Result<FileAttr, Errno> {
        let parent = self.inode(parent)?;
        {
            let _as = AsCaller::of(req)?;
            op(&parent).map_err(sys)?;
        }
        self.lookup_child(&parent, name)
    }

    /// The lock descriptor of `owner` on `ino`, opened (read-write where
    /// the source allows, else with the access mode of `fh`: the kernel
    /// has checked the mode against the lock type already) if `create`.
    fn lock_fd(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        owner: LockOwner,
        create: bool,
    ) -> Result<Option<Arc<OwnedFd>>, Errno> {
        let key = (ino.0, owner.0);
        if let Some(l) = self.locks.lock().expect("locks").get_mut(&key) {
            if !l.fhs.contains(&fh.0) {
                l.fhs.push(fh.0);
            }
            return Ok(Some(l.fd.clone()));
        }
        if !create {
            return Ok(None);
        }
        let inode = self.inode(ino)?;
        let path = inode.proc_path();
        let flags = OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        let fd = match openat(
            AT_FDCWD,
            path.as_str(),
            flags | OFlag::O_RDWR,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(_) => {
                let f = self.file(fh)?;
                let mode = nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_GETFL)
                    .map_err(sys)?
                    & libc::O_ACCMODE;
                openat(
                    AT_FDCWD,
                    path.as_str(),
                    flags | OFlag::from_bits_truncate(mode),
                    Mode::empty(),
                )
                .map_err(sys)?
            }
        };
        let fd = Arc::new(fd);
        let mut locks = self.locks.lock().expect("locks");
        // Another request of the same owner may have raced us: keep one.
        let l = locks.entry(key).or_insert(LockFd {
            fd,
            fhs: Vec::new(),
        });
        if !l.fhs.contains(&fh.0) {
            l.fhs.push(fh.0);
        }
        Ok(Some(l.fd.clone()))
    }

    /// ENOSYS for every xattr request under `--no-xattr` (see
    /// [`Passthrough::xattr`]).
    fn xattrs_on(&self) -> Result<(), Errno> {
        if self.xattr {
            Ok(())
        } else {
            Err(Errno::ENOSYS)
        }
    }

    /// `d_ino` for a READDIR entry: the ino of a file the kernel knows, else
    /// `FUSE_UNKNOWN_INO` (READDIR hands out no references).
    fn d_ino(&self, t: &Inodes, dir: INodeNo, dir_inode: &Inode, name: &OsStr, ino: u64) -> u64 {
        if name == "." || (name == ".." && dir == INodeNo::ROOT) {
            return dir.0;
        }
        t.known((dir_inode.id.0, ino)).unwrap_or(UNKNOWN_INO)
    }
}

impl Filesystem for Passthrough {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Runs on the thread that mounts, inside its own IoFlusher (`mount`):
        // no thread-local guard here, it would outlive that one.
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        // Large writes: fewer round trips (the kernel clamps to its limit).
        let _ = config.set_max_write(1 << 20);
        // Each where the kernel offers it; none is needed for correctness.
        // FUSE_POSIX_LOCKS: fcntl locks go to the source ([`Self::setlk`]).
        // Not requested: FUSE_WRITEBACK_CACHE (appends and write errors, see
        // the module documentation), FUSE_FLOCK_LOCKS (fuser 0.18 does not
        // pass the request's FUSE_LK_FLOCK flag on, so a flock could not
        // be told from a whole-file fcntl lock: flock locks stay the
        // kernel's, among the mount's users), and FUSE_ATOMIC_O_TRUNC.
        let mut wanted = InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_POSIX_LOCKS;
        if self.readdirplus {
            wanted |= InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        }
        for flag in wanted.iter() {
            let _ = config.add_capabilities(flag);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.serve_guard();
        match self.inode(parent).and_then(|p| self.lookup_child(&p, name)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    // BATCH_FORGET arrives here too: fuser's default `batch_forget` calls
    // `forget` per node.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.serve_guard();
        self.stats.forgotten.fetch_add(nlookup, Ordering::Relaxed);
        self.table().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve_guard();
        // An open file is stat'ed through its descriptor, the rest through
        // the inode's: both work for a file unlinked or renamed meanwhile.
        let st = match fh.and_then(|fh| self.file(fh).ok()) {
            Some(f) => fstat(f.as_fd()).map_err(sys),
            None => self.inode(ino).and_then(|i| fstat(&i.fd).map_err(sys)),
        };
        match st {
            Ok(st) => reply.attr(&TTL, &attr_of(ino.0, &st)),
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

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve_guard();
        match self
            .inode(ino)
            .and_then(|i| nix::fcntl::readlinkat(&i.fd, "").map_err(sys))
        {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.serve_guard();
        let kind = SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits());
        let perm = Mode::from_bits_truncate(mode & !umask & 0o7777);
        match self.create_as(req, parent, name, |p| {
            mknodat(&p.fd, name, kind, perm, decode_dev(rdev))
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.serve_guard();
        let perm = Mode::from_bits_truncate(mode & !umask & 0o7777);
        match self.create_as(req, parent, name, |p| mkdirat(&p.fd, name, perm)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve_guard();
        // The inode keeps its descriptor until FORGET: an open file stays
        // usable, as on a local file system.
        match self.inode(parent).and_then(|p| {
            nix::unistd::unlinkat(&p.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(sys)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve_guard();
        match self.inode(parent).and_then(|p| {
            nix::unistd::unlinkat(&p.fd, name, nix::unistd::UnlinkatFlags::RemoveDir).map_err(sys)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.serve_guard();
        match self.create_as(req, parent, link_name, |p| {
            nix::unistd::symlinkat(target, &p.fd, link_name)
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
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
        // Inodes follow their files: nothing in the table changes.
        let r = (|| {
            let flags = nix::fcntl::RenameFlags::from_bits(flags.bits()).ok_or(Errno::EINVAL)?;
            let (from, to) = (self.inode(parent)?, self.inode(newparent)?);
            nix::fcntl::renameat2(&from.fd, name, &to.fd, newname, flags).map_err(sys)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// A hard link: the new name joins the inode of the file (the table is
    /// keyed by the source's `(st_dev, st_ino)`), so both names share one
    /// kernel inode and its caches.
    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.serve_guard();
        let r = self.inode(ino).and_then(|inode| {
            if inode.is_symlink() {
                // `/proc/self/fd/N` would be followed to the link's target;
                // AT_EMPTY_PATH links the symlink itself (needs
                // CAP_DAC_READ_SEARCH: the daemon's, not the caller's).
                let parent = self.inode(newparent)?;
                nix::unistd::linkat(&inode.fd, "", &parent.fd, newname, AtFlags::AT_EMPTY_PATH)
                    .map_err(sys)?;
                self.lookup_child(&parent, newname)
            } else {
                self.create_as(req, newparent, newname, |p| {
                    nix::unistd::linkat(
                        AT_FDCWD,
                        inode.proc_path().as_str(),
                        &p.fd,
                        newname,
                        AtFlags::AT_SYMLINK_FOLLOW,
                    )
                })
            }
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.serve_guard();
        let r = self.inode(ino).and_then(|i| {
            NoFsFile::open(i.proc_path(), &open_options(flags.0)).map_err(nofs_errno)
        });
        match r {
            Ok(f) => reply.opened(self.add_file(f), fopen_flags(flags.0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.serve_guard();
        let r = (|| {
            let parent = self.inode(parent)?;
            let keep = libc::O_ACCMODE
                | libc::O_APPEND
                | libc::O_EXCL
                | libc::O_TRUNC
                | libc::O_NOATIME
                | libc::O_DSYNC
                | libc::O_SYNC;
            let oflags = OFlag::from_bits_truncate(flags & keep)
                | OFlag::O_CREAT
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            let perm = Mode::from_bits_truncate(mode & !umask & 0o7777);
            let fd = {
                let _as = AsCaller::of(req)?;
                openat(&parent.fd, name, oflags, perm).map_err(sys)?
            };
            // The inode's O_PATH descriptor from the open file itself: the
            // same file even if the name was replaced meanwhile.
            let path_fd = openat(
                AT_FDCWD,
                format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys)?;
            Ok((self.entry_of(path_fd)?, NoFsFile::from(fd)))
        })();
        match r {
            Ok((attr, f)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                self.add_file(f),
                fopen_flags(flags),
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
        let r = self.file(fh).and_then(|f| {
            let mut buf = vec![0; size as usize];
            let n = self.read_at(&f, &mut buf, offset)?;
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
        // On an O_APPEND descriptor the source ignores `offset` and appends.
        match self.file(fh).and_then(|f| self.write_at(&f, data, offset)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    /// Every close(2) on the mount: POSIX drops the closing process's
    /// locks on the file (the kernel sends that process's lock owner), so
    /// its lock descriptor on the source is closed, which drops them there.
    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.serve_guard();
        self.locks
            .lock()
            .expect("locks")
            .remove(&(ino.0, lock_owner.0));
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
        self.files.lock().expect("file handles").remove(&fh.0);
        // Locks owned by the open file itself (`F_OFD_SETLK` on the mount:
        // the owner is the file, which no FLUSH names) end with it.
        self.locks
            .lock()
            .expect("locks")
            .retain(|_, l| !l.fhs.contains(&fh.0));
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
        match self.file(fh).and_then(|f| self.sync(&f, datasync)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.serve_guard();
        match self
            .inode(ino)
            .and_then(|i| DirStream::open(&i.fd).map_err(rsys))
        {
            Ok(d) => {
                let fh = self.new_fh();
                self.dirs
                    .lock()
                    .expect("dir handles")
                    .insert(fh, Arc::new(Mutex::new(d)));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.serve_guard();
        let (inode, stream) = match self.inode(ino).and_then(|i| Ok((i, self.dir(fh)?))) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let mut stream = stream.lock().expect("dir stream");
        let table = self.table();
        let mut added = 0;
        let r = stream.read_from(offset, |e| {
            let name = e.name();
            let kind = match dirent_type(e.kind()) {
                Some(t) => t,
                // DT_UNKNOWN: ask the source.
                None => fstatat(&inode.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_or(FileType::RegularFile, |st| file_type(inodes::kind_of(&st))),
            };
            let d_ino = self.d_ino(&table, ino, &inode, name, e.ino());
            let full = reply.add(INodeNo(d_ino), e.offset(), kind, name);
            if !full {
                added += 1;
            }
            full
        });
        drop(table);
        match r {
            Err(e) if added == 0 => reply.error(rsys(e)),
            _ => reply.ok(),
        }
    }

    /// READDIR with a LOOKUP of each name: each entry sent is one more
    /// kernel reference (the kernel counts every entry of the reply, also
    /// those it cannot pass on); one that did not fit is given back at once.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.serve_guard();
        let (inode, stream) = match self.inode(ino).and_then(|i| Ok((i, self.dir(fh)?))) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let mut stream = stream.lock().expect("dir stream");
        let mut added = 0;
        let mut failed = None;
        let r = stream.read_from(offset, |e| {
            let name = e.name();
            let attr = if is_dot(name) {
                // The kernel links no inode for "." and "..": no reference.
                match fstatat(&inode.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => {
                        let d_ino = self.d_ino(&self.table(), ino, &inode, name, st.st_ino);
                        attr_of(d_ino, &st)
                    }
                    Err(_) => return false,
                }
            } else {
                match self.lookup_child(&inode, name) {
                    Ok(attr) => attr,
                    // Gone since the stream read it: as if read after.
                    Err(e) if e == Errno::ENOENT => return false,
                    Err(e) => {
                        failed = Some(e);
                        return true;
                    }
                }
            };
            let full = reply.add(attr.ino, e.offset(), name, &TTL, &attr, Generation(0));
            if full {
                if !is_dot(name) {
                    self.table().forget(attr.ino.0, 1);
                }
            } else {
                added += 1;
            }
            full
        });
        match (r, failed) {
            (Err(e), _) if added == 0 => reply.error(rsys(e)),
            (_, Some(e)) if added == 0 => reply.error(e),
            _ => reply.ok(),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.serve_guard();
        self.dirs.lock().expect("dir handles").remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.serve_guard();
        let r = self.inode(ino).and_then(|i| {
            let d = openat(
                &i.fd,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys)?;
            NoFsScope::run(|| {
                if datasync {
                    nix::unistd::fdatasync(&d)
                } else {
                    nix::unistd::fsync(&d)
                }
            })
            .map_err(sys)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.serve_guard();
        let inode = self
            .inode(ino)
            .or_else(|_| self.inode(INodeNo::ROOT))
            .expect("the root is never forgotten");
        match nix::sys::statvfs::fstatvfs(&inode.fd) {
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
            Err(e) => reply.error(sys(e)),
        }
    }

    /// SETXATTR as the caller (like the creating requests), with the
    /// kernel's `XATTR_CREATE`/`XATTR_REPLACE` passed to the source so it
    /// answers EEXIST/ENODATA itself, atomically. Through the inode's
    /// `/proc/self/fd/N` path, following it (see `xattr_path`).
    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        self.serve_guard();
        let r = self
            .xattrs_on()
            .and_then(|()| self.inode(ino))
            .and_then(|i| {
                // `position` is macOS's resource-fork offset; Linux sends 0.
                if position != 0 {
                    return Err(Errno::EINVAL);
                }
                // Unknown bits go to the source, which answers EINVAL itself.
                let flags = XattrFlags::from_bits_retain(flags as u32);
                let _as = AsCaller::of(req)?;
                rustix::fs::setxattr(xattr_path(&i).as_str(), name, value, flags).map_err(rsys)
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// GETXATTR: `size` 0 asks for the value's size, a value longer than
    /// `size` is ERANGE (the FUSE protocol, as getxattr(2) itself); a
    /// missing attribute is the source's ENODATA.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.serve_guard();
        let r = self
            .xattrs_on()
            .and_then(|()| self.inode(ino))
            .and_then(|i| {
                xattr::get_deref(xattr_path(&i), name)
                    .map_err(|e| io_errno(&e))?
                    .ok_or(Errno::ENODATA)
            });
        match r {
            Ok(v) => sized_reply(reply, &v, size),
            Err(e) => reply.error(e),
        }
    }

    /// LISTXATTR: the names, each ended by a NUL, with GETXATTR's size
    /// rules. The source lists only what the daemon may see (`trusted.*`
    /// needs `CAP_SYS_ADMIN`, which the daemon has as root); the kernel
    /// passes the list on unfiltered.
    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.serve_guard();
        let r = self
            .xattrs_on()
            .and_then(|()| self.inode(ino))
            .and_then(|i| {
                let names = xattr::list_deref(xattr_path(&i)).map_err(|e| io_errno(&e))?;
                let mut list = Vec::new();
                for n in names {
                    list.extend_from_slice(n.as_bytes());
                    list.push(0);
                }
                Ok(list)
            });
        match r {
            Ok(list) => sized_reply(reply, &list, size),
            Err(e) => reply.error(e),
        }
    }

    /// REMOVEXATTR as the caller, like SETXATTR; a missing attribute is
    /// the source's ENODATA.
    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve_guard();
        let r = self
            .xattrs_on()
            .and_then(|()| self.inode(ino))
            .and_then(|i| {
                let _as = AsCaller::of(req)?;
                xattr::remove_deref(xattr_path(&i), name).map_err(|e| io_errno(&e))
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Only without `default_permissions` does the kernel send ACCESS; the
    /// answer is the source's, for the caller's fsuid/fsgid.
    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.serve_guard();
        let r = self.inode(ino).and_then(|i| {
            let _as = AsCaller::of(req)?;
            nix::unistd::faccessat(
                AT_FDCWD,
                i.proc_path().as_str(),
                nix::unistd::AccessFlags::from_bits_truncate(mask.bits()),
                AtFlags::AT_EACCESS,
            )
            .map_err(sys)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// F_GETLK: the source's answer for a fresh open file description (or
    /// the owner's own, whose locks never conflict with themselves), with
    /// `F_OFD_GETLK`: the first lock there that conflicts, whoever holds it
    /// (through the mount or directly on the source), or `F_UNLCK`. OFD
    /// locks have no pid: the reply's pid is 0.
    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        self.serve_guard();
        let r = (|| {
            let mut fl = flock_of(start, end, typ)?;
            let fd = match self.lock_fd(ino, fh, lock_owner, false)? {
                Some(fd) => fd,
                // F_OFD_GETLK needs an open file, any access mode: a new
                // description holds no locks, so it sees every other's.
                None => Arc::new(
                    openat(
                        AT_FDCWD,
                        self.inode(ino)?.proc_path().as_str(),
                        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
                        Mode::empty(),
                    )
                    .map_err(sys)?,
                ),
            };
            nix::fcntl::fcntl(&*fd, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut fl)).map_err(sys)?;
            Ok(fl)
        })();
        match r {
            Ok(fl) if i32::from(fl.l_type) == libc::F_UNLCK => {
                reply.locked(start, end, libc::F_UNLCK, 0)
            }
            Ok(fl) => {
                let s = fl.l_start as u64;
                let e = if fl.l_len == 0 {
                    i64::MAX as u64
                } else {
                    s + fl.l_len as u64 - 1
                };
                reply.locked(s, e, i32::from(fl.l_type), 0)
            }
            Err(e) => reply.error(e),
        }
    }

    /// F_SETLK/F_SETLKW: the lock is taken on the source with an OFD lock
    /// (`F_OFD_SETLK`) on the lock owner's own open file description of the
    /// source file, as virtiofsd does: one per `(inode, owner)`, so the
    /// locks of one process through several descriptors are one owner's
    /// (POSIX), they conflict with every lock taken on the source directly
    /// and with those of other owners through the mount, and closing that
    /// description (at FLUSH for the owner, at RELEASE for locks owned by
    /// the open file) drops them all.
    ///
    /// F_SETLKW never blocks a serving thread (with `--threads 1` a blocked
    /// worker could never serve the unlock that frees it): when the lock is
    /// taken, the wait (`F_OFD_SETLKW`) runs on a thread of its own, which
    /// replies once the lock is granted. fuser 0.18 does not handle
    /// FUSE_INTERRUPT, so a process waiting in F_SETLKW on the mount
    /// cannot be interrupted by a signal until the lock is granted or the
    /// daemon ends. OFD locks have no deadlock detection (no EDEADLK).
    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        use nix::fcntl::FcntlArg;
        self.serve_guard();
        let fl = match flock_of(start, end, typ) {
            Ok(fl) => fl,
            Err(e) => return reply.error(e),
        };
        let fd = match self.lock_fd(ino, fh, lock_owner, typ != libc::F_UNLCK) {
            Ok(Some(fd)) => fd,
            // Unlocking what this owner never locked here: nothing to do.
            Ok(None) => return reply.ok(),
            Err(e) => return reply.error(e),
        };
        match nix::fcntl::fcntl(&*fd, FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => reply.ok(),
            Err(nix::errno::Errno::EAGAIN) if sleep => {
                // The crate's builder: the waiter starts in this serving
                // thread's context (an I/O flusher), kernel flag and
                // bookkeeping alike, for the reply it writes to /dev/fuse.
                let spawned = reclaim_scope::thread::Builder::new()
                    .name("fuse-setlkw".into())
                    .spawn(move || match setlkw(&fd, &fl) {
                        Ok(()) => reply.ok(),
                        Err(e) => reply.error(sys(e)),
                    });
                // fuser answers EIO for the reply dropped with the closure.
                if let Err(e) = spawned {
                    eprintln!("fuse-passthrough: cannot wait for a lock: {e}");
                }
            }
            Err(e) => reply.error(sys(e)),
        }
    }

    /// Mode 0 and hole punching through `NoFsFile`; the other modes
    /// (`KEEP_SIZE`, `ZERO_RANGE`, `COLLAPSE_RANGE`, `INSERT_RANGE`,
    /// `UNSHARE_RANGE`) as the kernel sent them, in a NOIO scope: the
    /// source answers each with its own errno.
    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.serve_guard();
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let r = self.file(fh).and_then(|f| match mode {
            0 if !self.plain_io => f.allocate_nofs(offset, length).map_err(nofs_errno),
            m if m == punch && !self.plain_io => {
                f.punch_hole_nofs(offset, length).map_err(nofs_errno)
            }
            m => {
                let (off, len) = (
                    i64::try_from(offset).map_err(|_| Errno::EINVAL)?,
                    i64::try_from(length).map_err(|_| Errno::EINVAL)?,
                );
                NoFsScope::run(|| {
                    nix::fcntl::fallocate(f.as_fd(), FallocateFlags::from_bits_retain(m), off, len)
                })
                .map_err(sys)
            }
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// SEEK_DATA and SEEK_HOLE (the kernel answers the other whences
    /// itself) from the source's own extent map.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.serve_guard();
        let r = self.file(fh).and_then(|f| {
            let off = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
            let found = match whence {
                libc::SEEK_DATA => f.seek_data_nofs(off),
                libc::SEEK_HOLE => f.seek_hole_nofs(off),
                _ => return Err(Errno::EINVAL),
            }
            .map_err(nofs_errno)?;
            found.map(|o| o as i64).ok_or(Errno::ENXIO)
        });
        match r {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    /// `copy_file_range(2)` between the two source descriptors (the source
    /// may reflink or copy in the kernel), in a NOIO scope.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.serve_guard();
        let r = (|| {
            if flags.bits() != 0 {
                return Err(Errno::EINVAL);
            }
            let (fin, fout) = (self.file(fh_in)?, self.file(fh_out)?);
            let mut off_in = i64::try_from(offset_in).map_err(|_| Errno::EINVAL)?;
            let mut off_out = i64::try_from(offset_out).map_err(|_| Errno::EINVAL)?;
            // The reply counts bytes in 32 bits.
            let len = len.min(1 << 30) as usize;
            NoFsScope::run(|| {
                nix::fcntl::copy_file_range(
                    fin.as_fd(),
                    Some(&mut off_in),
                    fout.as_fd(),
                    Some(&mut off_out),
                    len,
                )
            })
            .map_err(sys)
        })();
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }
}

/// Check `--source` and `--mountpoint` before mounting; returns both
/// canonicalized.
///
/// Both must be existing directories (`ENOENT`/`ENOTDIR` otherwise, with the
/// flag named). A mountpoint *inside* the source is refused (`EINVAL`): the
/// source's own directory would then contain the mount, so looking up its
/// name walks into the mount and asks this daemon again, which waits on
/// itself (with one serving thread, a caller hangs in D state for ever).
/// The mountpoint *being* the source is allowed: the source is opened before
/// mounting, so the daemon serves the directory underneath (a shadowing
/// mount).
pub fn check_mount_paths(source: &Path, mountpoint: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let dir = |flag: &str, p: &Path| -> io::Result<PathBuf> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{flag} {}: {e}", p.display()));
        let c = p.canonicalize().map_err(named)?;
        if !c.metadata().map_err(named)?.is_dir() {
            return Err(named(io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        Ok(c)
    };
    let source = dir("--source", source)?;
    let mountpoint = dir("--mountpoint", mountpoint)?;
    if mountpoint != source && mountpoint.starts_with(&source) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--mountpoint {} is inside --source {}: looking it up through the \
                 mount would ask this daemon again and wait on itself; mount \
                 elsewhere (or on the source itself, to shadow it)",
                mountpoint.display(),
                source.display()
            ),
        ));
    }
    Ok((source, mountpoint))
}

/// How a mount ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// `umount(2)` succeeded: nothing used the mount.
    Clean,
    /// The mount was busy (`EBUSY`): detached with `MNT_DETACH`, gone from
    /// the namespace; users of open files keep them until the daemon exits.
    Lazily,
}

/// Unmount with `unmounter`; if the mount is busy, detach it lazily
/// (`umount2(MNT_DETACH)`), so it never stays behind.
pub fn unmount_or_detach(
    unmounter: &mut SessionUnmounter,
    mountpoint: &Path,
) -> io::Result<Unmounted> {
    match unmounter.unmount() {
        Ok(()) => Ok(Unmounted::Clean),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
                .map_err(io::Error::from)?;
            Ok(Unmounted::Lazily)
        }
        Err(e) => Err(e),
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

    /// Whether the session has ended (the serving thread returned).
    pub fn ended(&self) -> bool {
        self.serving.as_ref().is_none_or(|t| t.is_finished())
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
    if fs.allow_other {
        // fuser adds the `allow_other` mount option for this.
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(threads.max(1));
    config.clone_fd = threads > 1;
    let mp = mountpoint.to_owned();
    let (tx, rx) = mpsc::channel();
    let serving = std::thread::Builder::new()
        .name("fuse-serve".into())
        .spawn(move || {
            let _guard = match guarding.enter() {
                Ok(g) => g,
                Err(e) => {
                    let e = io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("refusing to serve unprotected (--strict): {e}"),
                    );
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            };
            let mut session = match Session::new(fs, &mp, &config) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            };
            let _ = tx.send(Ok(session.unmount_callable()));
            match session.run() {
                // fuser ends on ENODEV (unmounted). A worker reading its
                // cloned /dev/fuse descriptor while the kernel tears the
                // connection down can get ECONNABORTED instead (seen on 6.18,
                // once in about 30 lazy detaches): the session is over just
                // the same, nothing is left to serve or to lose.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
                r => r,
            }
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
