//! The TCMU command ring (`include/uapi/linux/target_core_user.h`), mapped
//! from `/dev/uioN`.
//!
//! This is the one module of the example with `unsafe`: mapping the uio
//! region needs `mmap(2)` (a crate such as `memmap2` would only move the
//! `unsafe` to its `map_mut` call), and the ring is memory the kernel writes
//! concurrently. Every access is bounds-checked against the mapping here;
//! the rest of the example sees offsets and byte copies only. `cmd_head`
//! (written by the kernel) is read with an acquire load and `cmd_tail`
//! (ours) is published with a release store, so the kernel sees the
//! response written into an entry before it sees the entry completed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

/// struct tcmu_mailbox (packed): version u16 @0, flags u16 @2, cmdr_off u32
/// @4, cmdr_size u32 @8, cmd_head u32 @12, cmd_tail u32 @64 (own cache line).
const MB_VERSION: usize = 0;
const MB_FLAGS: usize = 2;
const MB_CMDR_OFF: usize = 4;
const MB_CMDR_SIZE: usize = 8;
const MB_CMD_HEAD: usize = 12;
const MB_CMD_TAIL: usize = 64;
/// Bytes of the mailbox we touch.
pub const MAILBOX_LEN: usize = 68;

/// The fields of the mailbox the kernel sets once.
#[derive(Clone, Copy, Debug)]
pub struct Mailbox {
    pub version: u16,
    pub flags: u16,
    pub cmdr_off: u32,
    pub cmdr_size: u32,
}

/// The shared mapping of one TCMU device and its uio file descriptor.
pub struct Ring {
    file: File,
    base: *mut u8,
    len: usize,
}

impl Ring {
    /// Open `dev` (`/dev/uioN`) and map its region 0 (`len` bytes, from
    /// `/sys/class/uio/uioN/maps/map0/size`) shared, read-write.
    pub fn open(dev: &Path, len: usize) -> io::Result<Ring> {
        if len < MAILBOX_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("uio map0 of {} is only {len} bytes", dev.display()),
            ));
        }
        let file = OpenOptions::new().read(true).write(true).open(dev)?;
        // SAFETY: a fresh mapping (address chosen by the kernel, so it
        // overlaps nothing of ours) of `len` bytes of an fd we own; the
        // result is checked against MAP_FAILED before use. Offset 0 selects
        // uio map 0.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Ring {
            file,
            base: p.cast(),
            len,
        })
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 32-bit mailbox word at `off` (12 or 64) as an atomic.
    fn word(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= MAILBOX_LEN);
        // SAFETY: `off + 4 <= MAILBOX_LEN <= len` (checked in `open`), the
        // mapping is page-aligned so `base + off` is 4-aligned, AtomicU32 has
        // the layout of u32, and the mapping outlives `&self`. The kernel
        // accesses these words with single 32-bit loads/stores too.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    pub fn mailbox(&self) -> Mailbox {
        let mut b = [0u8; 12];
        self.read(0, &mut b);
        Mailbox {
            version: u16::from_ne_bytes([b[MB_VERSION], b[MB_VERSION + 1]]),
            flags: u16::from_ne_bytes([b[MB_FLAGS], b[MB_FLAGS + 1]]),
            cmdr_off: u32::from_ne_bytes(b[MB_CMDR_OFF..MB_CMDR_OFF + 4].try_into().unwrap()),
            cmdr_size: u32::from_ne_bytes(b[MB_CMDR_SIZE..MB_CMDR_SIZE + 4].try_into().unwrap()),
        }
    }

    /// The kernel's producer index; entries up to it are visible after this
    /// acquire load.
    pub fn cmd_head(&self) -> u32 {
        self.word(MB_CMD_HEAD).load(Ordering::Acquire)
    }

    /// Our consumer index (only we write it).
    pub fn cmd_tail(&self) -> u32 {
        self.word(MB_CMD_TAIL).load(Ordering::Relaxed)
    }

    /// Publish the consumer index; everything written to the ring before
    /// (responses) is visible to the kernel first.
    pub fn set_cmd_tail(&self, tail: u32) {
        self.word(MB_CMD_TAIL).store(tail, Ordering::Release)
    }

    /// Copy `buf.len()` bytes at `off` out of the mapping; false (and
    /// nothing copied) if the range is not inside it.
    pub fn read(&self, off: usize, buf: &mut [u8]) -> bool {
        if !self.contains(off, buf.len()) {
            return false;
        }
        // SAFETY: `off..off+len` is inside the mapping (checked above) and
        // `buf` is our own memory, so the ranges do not overlap. The kernel
        // does not write an entry or its data buffers while the command is
        // outstanding (between cmd_head and cmd_tail).
        unsafe { ptr::copy_nonoverlapping(self.base.add(off), buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Copy `data` into the mapping at `off`; false (and nothing written) if
    /// the range is not inside it.
    pub fn write(&self, off: usize, data: &[u8]) -> bool {
        if !self.contains(off, data.len()) {
            return false;
        }
        // SAFETY: as in `read`; the kernel reads an entry's response and
        // data-in buffers only after cmd_tail has moved past the entry.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off), data.len()) };
        true
    }

    pub fn contains(&self, off: usize, len: usize) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// Tell the kernel that cmd_tail moved (uio irqcontrol write).
    pub fn kick(&self) -> io::Result<()> {
        (&self.file).write_all(&1u32.to_ne_bytes())
    }

    /// Wait up to `timeout_ms` for the kernel's next notification; true if
    /// one arrived (and was consumed).
    pub fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on our stack, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(false);
        }
        let mut count = [0u8; 4];
        (&self.file).read_exact(&mut count)?;
        Ok(true)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `open`; no reference into it
        // outlives `self` (`word` borrows `self`).
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}
