//! The inode table: one `O_PATH` descriptor per source file the kernel
//! knows, keyed by the source's `(st_dev, st_ino)` and counted by the
//! kernel's references (one per entry reply, returned by FORGET).
//!
//! A descriptor, not a path, is what makes a file handle passthrough: every
//! request reaches its file through `openat(2)` and friends relative to the
//! descriptor (or through `/proc/self/fd/N`), so a file renamed or unlinked
//! behind the mount, or while open, is still the same file, and no name can
//! go stale. This is how libfuse's `passthrough_hp.cc` and virtiofsd's
//! `passthrough` module hold their inodes.
//!
//! The descriptor also pins the source inode: its `(st_dev, st_ino)` cannot
//! be reused by a new file while the kernel still refers to it, so the key
//! is unambiguous for as long as the entry lives.

use fuser::INodeNo;
use nix::sys::stat::{FileStat, SFlag};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The source file an inode stands for: `(st_dev, st_ino)`.
pub type SourceId = (u64, u64);

/// One source file the kernel holds a reference to.
#[derive(Debug)]
pub struct Inode {
    /// `O_PATH | O_NOFOLLOW` descriptor of the file itself.
    pub fd: OwnedFd,
    pub id: SourceId,
    /// `st_mode & S_IFMT`: a file never changes its type.
    pub kind: SFlag,
}

impl Inode {
    /// `/proc/self/fd/N` for this inode's descriptor: the way to reach the
    /// file itself for calls that have no `AT_EMPTY_PATH` form (open,
    /// chmod, utimes, link). Following this magic link lands on the file
    /// the descriptor holds, never on a name.
    pub fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }

    pub fn is_symlink(&self) -> bool {
        self.kind == SFlag::S_IFLNK
    }

    pub fn is_dir(&self) -> bool {
        self.kind == SFlag::S_IFDIR
    }
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

struct Entry {
    inode: Arc<Inode>,
    /// References the kernel holds (entry replies not yet forgotten).
    refs: u64,
}

/// ino → inode, and the source file → ino.
pub struct Inodes {
    map: HashMap<u64, Entry>,
    by_source: HashMap<SourceId, u64>,
    next: u64,
    stats: Arc<Stats>,
}

pub fn source_id(st: &FileStat) -> SourceId {
    (st.st_dev, st.st_ino)
}

pub fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

impl Inodes {
    /// A table holding the root (ino 1), which is never forgotten.
    pub fn new(root: OwnedFd, st: &FileStat, stats: Arc<Stats>) -> Inodes {
        let root = Arc::new(Inode {
            fd: root,
            id: source_id(st),
            kind: kind_of(st),
        });
        let mut t = Inodes {
            map: HashMap::new(),
            by_source: HashMap::new(),
            next: INodeNo::ROOT.0 + 1,
            stats,
        };
        t.by_source.insert(root.id, INodeNo::ROOT.0);
        t.map.insert(
            INodeNo::ROOT.0,
            Entry {
                inode: root,
                refs: 1,
            },
        );
        t.count();
        t
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.map.get(&ino).map(|e| e.inode.clone())
    }

    /// The ino of a source file the kernel knows, for `d_ino` in READDIR.
    pub fn known(&self, id: SourceId) -> Option<u64> {
        self.by_source.get(&id).copied()
    }

    /// The inode of the file `fd` (an `O_PATH` descriptor, `st` its
    /// `fstat`) with one more kernel reference: only for replies that hand
    /// the kernel an entry. A file already known (another name, a hard
    /// link, or looked up again) keeps its inode and `fd` is closed.
    pub fn lookup(&mut self, fd: OwnedFd, st: &FileStat) -> (u64, Arc<Inode>) {
        let id = source_id(st);
        if let Some(&ino) = self.by_source.get(&id) {
            let e = self.map.get_mut(&ino).expect("by_source and map agree");
            e.refs += 1;
            return (ino, e.inode.clone());
        }
        let ino = self.next;
        self.next += 1;
        let inode = Arc::new(Inode {
            fd,
            id,
            kind: kind_of(st),
        });
        self.by_source.insert(id, ino);
        self.map.insert(
            ino,
            Entry {
                inode: inode.clone(),
                refs: 1,
            },
        );
        self.count();
        (ino, inode)
    }

    /// FORGET (or an entry reply that did not reach the kernel): `n`
    /// references to `ino` are returned. The last one closes the
    /// descriptor; the root is never dropped.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == INodeNo::ROOT.0 {
            return;
        }
        let Some(e) = self.map.get_mut(&ino) else {
            return;
        };
        e.refs = e.refs.saturating_sub(n);
        if e.refs == 0 {
            let e = self.map.remove(&ino).expect("present");
            self.by_source.remove(&e.inode.id);
            self.count();
        }
    }

    /// References the kernel holds on `ino` (0 if unknown).
    pub fn refs(&self, ino: u64) -> u64 {
        self.map.get(&ino).map_or(0, |e| e.refs)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn count(&self) {
        self.stats
            .inodes
            .store(self.map.len() as u64, Ordering::Relaxed);
    }
}
