//! One open directory stream per OPENDIR handle, addressed by the source's
//! own `d_off` cookies.
//!
//! POSIX `readdir(3)` on one open stream returns every name that stays in
//! the directory during the traversal exactly once, whatever is created or
//! unlinked meanwhile: the source file system keeps the position (ext4's
//! hash cookie, tmpfs's stable offsets), not a list. A FUSE daemon that
//! re-reads and re-sorts the directory on every READDIR loses that
//! guarantee (a program unlinking as it reads skips names), so each handle
//! owns one descriptor of the directory, opened at OPENDIR and closed at
//! RELEASEDIR, read with `getdents64(2)` (rustix's `RawDir`).
//!
//! The offset of each entry sent to the kernel is the source's own `d_off`
//! of that entry (the cookie of the position after it), as in libfuse's
//! `passthrough_hp` and virtiofsd: the kernel hands it back as the file
//! position of the directory on the mount, so `telldir(3)` there answers
//! the source's cookie and `seekdir(3)` to it resumes exactly where the
//! source resumes. A READDIR at the offset where the stream stands goes on
//! reading; any other offset (the kernel asking again for entries that did
//! not fit in the caller's buffer, a `seekdir`, `rewinddir`: offset 0) is
//! an `lseek(2)` of the descriptor to that cookie first.

use rustix::fs::SeekFrom;
use rustix::fs::{FileType, RawDir};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// Bytes asked of `getdents64` per refill (about 200 entries of short
/// names; a longer name than fits would be EINVAL, so it is more than one
/// `linux_dirent64` with a 255-byte name).
const BUF: usize = 32 << 10;

/// One entry read from the source.
pub struct Entry {
    name: Box<[u8]>,
    ino: u64,
    kind: FileType,
    /// The source's `d_off`: where the stream stands after this entry.
    off: u64,
}

impl Entry {
    pub fn name(&self) -> &OsStr {
        OsStr::from_bytes(&self.name)
    }

    /// The source's `d_ino`.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The source's `d_type`; `FileType::Unknown` for `DT_UNKNOWN`.
    pub fn kind(&self) -> FileType {
        self.kind
    }

    /// The source's `d_off`.
    pub fn offset(&self) -> u64 {
        self.off
    }
}

pub struct DirStream {
    fd: OwnedFd,
    /// Entries read from `fd` and not yet passed to the kernel.
    pending: VecDeque<Entry>,
    /// The cookie of the position before the first pending entry (after
    /// the last one passed on); 0 at the start.
    at: u64,
    buf: Vec<u8>,
}

impl DirStream {
    /// Opens `dir` (an `O_PATH` descriptor of a directory) for reading: a
    /// descriptor of its own, so its position is this handle's alone.
    pub fn open(dir: impl AsFd) -> rustix::io::Result<DirStream> {
        use rustix::fs::{openat, Mode, OFlags};
        let fd = openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(DirStream {
            fd,
            pending: VecDeque::new(),
            at: 0,
            buf: Vec::new(),
        })
    }

    /// One `getdents64` into `pending`; false at the end of the directory.
    fn fill(&mut self) -> rustix::io::Result<bool> {
        if self.buf.capacity() < BUF {
            self.buf = Vec::with_capacity(BUF);
        }
        let mut dir = RawDir::new(self.fd.as_fd(), self.buf.spare_capacity_mut());
        let mut any = false;
        // Every entry of the one getdents64 call: the descriptor's position
        // is already past all of them.
        while let Some(e) = dir.next() {
            let e = e?;
            any = true;
            self.pending.push_back(Entry {
                name: e.file_name().to_bytes().into(),
                ino: e.ino(),
                kind: e.file_type(),
                off: e.next_entry_cookie(),
            });
            if dir.is_buffer_empty() {
                break;
            }
        }
        Ok(any)
    }

    /// Entries from cookie `offset` on: `add(entry)` is called for each
    /// until it answers `true` (the reply is full; that entry stays for the
    /// next request) or the directory ends.
    pub fn read_from(
        &mut self,
        offset: u64,
        mut add: impl FnMut(&Entry) -> bool,
    ) -> rustix::io::Result<()> {
        if offset != self.at {
            rustix::fs::seek(&self.fd, SeekFrom::Start(offset))?;
            self.pending.clear();
            self.at = offset;
        }
        loop {
            if self.pending.is_empty() && !self.fill()? {
                return Ok(());
            }
            while let Some(e) = self.pending.front() {
                if add(e) {
                    return Ok(());
                }
                self.at = e.off;
                self.pending.pop_front();
            }
        }
    }
}
