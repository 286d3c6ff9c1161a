//! One open directory stream per OPENDIR handle, read forward across
//! READDIR requests.
//!
//! POSIX `readdir(3)` on one open stream returns every name that stays in
//! the directory during the traversal exactly once, whatever is created or
//! unlinked meanwhile: the source file system keeps the position (ext4's
//! hash cookie, tmpfs's cursor), not a list. A FUSE daemon that re-reads and
//! re-sorts the directory on every READDIR loses that guarantee (a program
//! unlinking as it reads skips names), so each handle owns one stream,
//! opened at OPENDIR and closed at RELEASEDIR.
//!
//! The offset of each entry is its position in this handle's stream
//! (1 after the first entry, 2 after the second, ...). The kernel asks for
//! the offset of the last entry it passed on; it may ask again for entries
//! it fetched but could not fit in the caller's buffer, so the entries of
//! the last reply are kept until a later offset shows they were consumed.
//! A `seekdir(3)` back to an older position (or `rewinddir(3)`: offset 0)
//! reopens the stream and reads forward to it.
//!
//! Why not the source's own `d_off` cookies: seeking a stream to one
//! (`seekdir`, `lseek` on the directory, or `getdents64` with the cookies)
//! has no safe wrapper in `nix` 0.31 (its `Dir` neither exposes `d_off` nor
//! seeks), and the examples contain no `unsafe`. Sequential reading, the
//! case that matters, is exact either way; only a jump back to an old
//! position inside a directory changed since behaves like
//! `rewinddir` + skip, where cookies would resume exactly.

use nix::dir::{Dir, Entry, OwningIter};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use std::collections::VecDeque;
use std::os::fd::AsFd;

pub struct DirStream {
    iter: OwningIter,
    /// Index of the next entry `iter` yields.
    next: u64,
    /// Entries already read from `iter`, from index `next - window.len()`:
    /// sent in the last reply but maybe not consumed by the kernel.
    window: VecDeque<Entry>,
}

/// Opens `dir` (an `O_PATH` descriptor of a directory) for reading.
fn open_stream(dir: impl AsFd) -> nix::Result<OwningIter> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(Dir::from_fd(fd)?.into_iter())
}

impl DirStream {
    pub fn open(dir: impl AsFd) -> nix::Result<DirStream> {
        Ok(DirStream {
            iter: open_stream(dir)?,
            next: 0,
            window: VecDeque::new(),
        })
    }

    /// Index of the first entry in the window.
    fn base(&self) -> u64 {
        self.next - self.window.len() as u64
    }

    /// Entries from position `offset` on: `add(next_offset, entry)` is
    /// called for each until it answers `true` (the reply is full; that
    /// entry stays for the next request) or the stream ends. `dir` reopens
    /// the stream when `offset` lies before what is kept.
    pub fn read_from(
        &mut self,
        dir: impl AsFd,
        offset: u64,
        mut add: impl FnMut(u64, &Entry) -> bool,
    ) -> nix::Result<()> {
        if offset < self.base() {
            // seekdir back / rewinddir: read forward from a fresh stream.
            self.iter = open_stream(dir)?;
            self.next = 0;
            self.window.clear();
        }
        // Entries before `offset` were consumed by the kernel.
        while self.base() < offset && !self.window.is_empty() {
            self.window.pop_front();
        }
        while self.next < offset {
            match self.iter.next() {
                Some(e) => {
                    e?;
                    self.next += 1;
                }
                None => return Ok(()),
            }
        }
        // Now base() == offset: the window, then the stream.
        let mut pos = offset;
        for e in &self.window {
            pos += 1;
            if add(pos, e) {
                return Ok(());
            }
        }
        for e in self.iter.by_ref() {
            let e = e?;
            self.next += 1;
            pos += 1;
            let full = add(pos, &e);
            self.window.push_back(e);
            if full {
                return Ok(());
            }
        }
        Ok(())
    }
}
