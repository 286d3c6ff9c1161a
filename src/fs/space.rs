//! The rest of [`NoFsFile`]'s calls: `fsync`/`fdatasync`, the file's size,
//! space management (`fallocate`, hole punching, discard, zeroing) and
//! `SEEK_DATA`/`SEEK_HOLE`.

use super::*;

impl NoFsFile {
    /// `fdatasync(2)` inside the scope (`EINTR` retried): the data, and the
    /// metadata needed to read it back, are durable.
    ///
    /// # Errors
    ///
    /// The errno of `fdatasync` (`EIO` for a failed writeback, reported
    /// once; `ENOSPC`, `EDQUOT`; `EINVAL` for a file that cannot be synced).
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-fdatasync-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(b"journal block", 0)?;
    /// file.sync_data_nofs()?; // NBD FLUSH
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "fdatasync")]
    pub fn sync_data_nofs(&self) -> Result<(), NoFsIoError> {
        self.plain(Op::Fdatasync, 0, 0, || sio::fdatasync(&self.file))
    }

    /// `fsync(2)` inside the scope (`EINTR` retried): data and all metadata
    /// are durable.
    ///
    /// # Errors
    ///
    /// The errno of `fsync`, as [`sync_data_nofs`](Self::sync_data_nofs).
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-fsync-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.set_len_nofs(1 << 20)?;
    /// file.sync_all_nofs()?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "fsync")]
    pub fn sync_all_nofs(&self) -> Result<(), NoFsIoError> {
        self.plain(Op::Fsync, 0, 0, || sio::fsync(&self.file))
    }

    /// `ftruncate(2)` inside the scope (`EINTR` retried): sets a regular
    /// file's size. `len` beyond `i64::MAX` fails with `InvalidInput` before
    /// any syscall, and so does a block device (its size is the device's:
    /// the error names the device and how to resize it).
    ///
    /// # Errors
    ///
    /// The errno of `ftruncate` (`EINVAL` or `EBADF` for a file not open for
    /// writing, `EFBIG`, `EPERM` for an append-only or immutable file); a
    /// `len` beyond `i64::MAX`, or a block device, is `InvalidInput` before
    /// any syscall.
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-setlen-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.set_len_nofs(4 << 30)?; // a sparse 4 GiB backing file
    /// assert_eq!(file.size_nofs()?, 4 << 30);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "ftruncate")]
    #[doc(alias = "set_len")]
    pub fn set_len_nofs(&self, len: u64) -> Result<(), NoFsIoError> {
        check_range(Op::Ftruncate, len, 0, RwFlags::empty())?;
        if let Some((major, minor)) = self.block_device() {
            let why = format!(
                "{} is a block device ({major}:{minor}); its size is the device's and \
                 ftruncate cannot change it: resize the device itself (lvextend, \
                 losetup --set-capacity, …)",
                self.display_path()
            );
            return Err(NoFsIoError::new(
                Op::Ftruncate,
                len,
                0,
                Cause::InvalidOwned(why.into()),
            ));
        }
        self.plain(Op::Ftruncate, len, 0, || sio::ftruncate(&self.file, len))
    }

    /// The size in bytes of the backing store, inside the scope: `st_size`
    /// of a regular file (`fstat(2)`), the device's size of a block device
    /// (`ioctl(BLKGETSIZE64)`), where `metadata().len()` says 0.
    ///
    /// # Errors
    ///
    /// The errno of `fstat` or of the ioctl (e.g. `ENOTTY` for a character
    /// device, whose size it reports as its `st_size` instead: 0).
    ///
    /// # Examples
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// assert_eq!(file.size_nofs()?, 0); // a character device
    /// if let Ok(disk) = std::fs::File::open("/dev/loop0") {
    ///     // A block device: its real size, not metadata().len()'s 0.
    ///     println!("{} bytes", reclaim_scope::NoFsFile::new(disk).size_nofs()?);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// See [fstat(2)](https://man7.org/linux/man-pages/man2/fstat.2.html)
    /// and `BLKGETSIZE64` in `<linux/fs.h>` (what
    /// [blockdev(8)](https://man7.org/linux/man-pages/man8/blockdev.8.html)
    /// `--getsize64` asks).
    #[doc(alias = "BLKGETSIZE64")]
    #[doc(alias = "len")]
    pub fn size_nofs(&self) -> Result<u64, NoFsIoError> {
        let _scope = self.enter(Op::Fstat, 0, 0, RwFlags::empty())?;
        // A descriptor's file type never changes: once it is known to be a
        // device, one ioctl answers (zeroing and seeking ask for every call).
        if self.kind.load(Ordering::Relaxed) == KIND_BLOCK {
            return sio::blk_size(&self.file)
                .map_err(|e| os_error(Op::BlkGetSize64, 0, 0, RwFlags::empty(), e));
        }
        let (kind, len) = sio::fstat_kind(&self.file)
            .map_err(|e| os_error(Op::Fstat, 0, 0, RwFlags::empty(), e))?;
        match self.remember_kind(kind) {
            KIND_BLOCK => sio::blk_size(&self.file)
                .map_err(|e| os_error(Op::BlkGetSize64, 0, 0, RwFlags::empty(), e)),
            _ => Ok(len),
        }
    }

    /// Whether the backing store is a block device (a disk, partition, LVM
    /// volume or loop device) rather than a file. One `fstat(2)` on the
    /// first call, remembered; `false` if `fstat` fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/null")?);
    /// assert!(!file.is_block_device());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_block_device(&self) -> bool {
        self.kind() == KIND_BLOCK
    }

    fn kind(&self) -> u8 {
        match self.kind.load(Ordering::Relaxed) {
            KIND_UNKNOWN => match sio::fstat_kind(&self.file) {
                Ok((k, _)) => self.remember_kind(k),
                Err(_) => KIND_OTHER,
            },
            k => k,
        }
    }

    fn remember_kind(&self, kind: sio::FileKind) -> u8 {
        let k = match kind {
            sio::FileKind::Regular => KIND_REGULAR,
            sio::FileKind::Block(..) => KIND_BLOCK,
            sio::FileKind::Other => KIND_OTHER,
        };
        self.kind.store(k, Ordering::Relaxed);
        k
    }

    /// `Some((major, minor))` for a block device.
    fn block_device(&self) -> Option<(u32, u32)> {
        if !self.is_block_device() {
            return None;
        }
        match sio::fstat_kind(&self.file) {
            Ok((sio::FileKind::Block(major, minor), _)) => Some((major, minor)),
            _ => None,
        }
    }

    fn display_path(&self) -> String {
        match sio::fd_path(&self.file) {
            Some(p) => p.display().to_string(),
            None => format!("descriptor {}", self.file.as_raw_fd()),
        }
    }

    /// `fallocate(2)` with `mode` over a checked range; `len == 0` is a
    /// no-op without syscall (the kernel would answer `EINVAL`).
    fn falloc(&self, op: Op, mode: i32, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        check_range(op, offset, len, RwFlags::empty())?;
        if len == 0 {
            return Ok(());
        }
        self.plain(op, offset, len, || {
            sio::fallocate(&self.file, mode, offset, len)
        })
    }

    /// `fallocate(2)` mode 0 inside the scope: allocates blocks for
    /// `offset..offset + len`, extending the file if needed, so later
    /// writes there cannot fail with `ENOSPC`. Linux only (else
    /// `ENOSYS`); `len == 0` does nothing. Block devices answer
    /// `EOPNOTSUPP` (their blocks always exist).
    ///
    /// # Errors
    ///
    /// The errno of `fallocate` (`ENOSPC`, `EOPNOTSUPP` where the file
    /// system cannot preallocate, `EBADF` if not open for writing, `EFBIG`);
    /// a range beyond `i64::MAX` is `InvalidInput` before any syscall.
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-alloc-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// match file.allocate_nofs(0, 1 << 20) {
    ///     Ok(()) => assert_eq!(file.size_nofs()?, 1 << 20),
    ///     Err(e) => println!("no fallocate here: {e}"),
    /// }
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "fallocate")]
    pub fn allocate_nofs(&self, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        self.falloc(Op::Allocate, 0, offset, len)
    }

    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` inside the
    /// scope: deallocates `offset..offset + len`, which then reads as zeros;
    /// the size is unchanged. On a block device the kernel zeroes the range
    /// by unmapping it, and answers `EOPNOTSUPP` when the device cannot
    /// (it never writes zeros for it). A file system without hole punching
    /// answers `EOPNOTSUPP` too; `len == 0` does nothing.
    ///
    /// For a discard that may leave any data behind (NBD `TRIM`, SCSI
    /// `UNMAP` without LBPRZ) use [`discard_nofs`](Self::discard_nofs).
    ///
    /// # Errors
    ///
    /// The errno of `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`
    /// (`EOPNOTSUPP` where the file system cannot punch holes, `EBADF` if not
    /// open for writing); a range beyond `i64::MAX` is `InvalidInput` before
    /// any syscall.
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-punch-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[9u8; 8192], 0)?;
    /// if file.punch_hole_nofs(0, 4096).is_ok() {
    ///     let mut b = [1u8; 4096];
    ///     file.read_exact_at_nofs(&mut b, 0)?;
    ///     assert_eq!(b, [0u8; 4096]);
    ///     assert_eq!(file.size_nofs()?, 8192);
    /// }
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "FALLOC_FL_PUNCH_HOLE")]
    pub fn punch_hole_nofs(&self, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        self.falloc(
            Op::PunchHole,
            sio::FALLOC_FL_PUNCH_HOLE | sio::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Tells the backing store that `offset..offset + len` is no longer
    /// needed, inside the scope: a hole punched in a regular file
    /// ([`punch_hole_nofs`](Self::punch_hole_nofs): reads as zeros), an
    /// `ioctl(BLKDISCARD)` on a block device (what the range reads as
    /// afterwards is up to the device). This is NBD `TRIM` and SCSI `UNMAP`.
    /// `len == 0` does nothing.
    ///
    /// # Errors
    ///
    /// `EOPNOTSUPP` where the file system or device cannot discard (a
    /// discard is advisory: a daemon may ignore that), `EINVAL` for a block
    /// device range not aligned to its logical block size or beyond its
    /// end, `EBADF` if not open for writing.
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-discard-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[9u8; 8192], 0)?;
    /// match file.discard_nofs(0, 4096) {
    ///     Ok(()) => {}
    ///     Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {} // advisory
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "BLKDISCARD")]
    #[doc(alias = "trim")]
    #[doc(alias = "unmap")]
    pub fn discard_nofs(&self, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        if !self.is_block_device() {
            return self.punch_hole_nofs(offset, len);
        }
        check_range(Op::Discard, offset, len, RwFlags::empty())?;
        if len == 0 {
            return Ok(());
        }
        self.plain(Op::Discard, offset, len, || {
            sio::blk_discard(&self.file, offset, len)
        })
    }

    /// Makes `offset..offset + len` read as zeros **and stay allocated**,
    /// whatever the backing store, extending a regular file if the range
    /// ends beyond it. This is NBD `WRITE_ZEROES` (also with
    /// `NBD_CMD_FLAG_NO_HOLE`: the range is never left as a hole) and SCSI
    /// `WRITE SAME` of zeros. `len == 0` does nothing.
    ///
    /// Punching is an optimisation, never a requirement; in order:
    /// 1. `fallocate(FALLOC_FL_ZERO_RANGE)` — ext4, XFS, and block devices
    ///    (where the kernel uses the device's WRITE ZEROES or writes zeros
    ///    itself);
    /// 2. where that is `EOPNOTSUPP` (tmpfs, NFS, …): punch a hole, then
    ///    allocate the range (`fallocate` mode 0), as QEMU's file driver
    ///    does;
    /// 3. where either is unsupported too, or for a block-device range not
    ///    aligned to the device's logical block size (`BLKSSZGET`: 512 or
    ///    4096): zeros written with `pwrite64`, 64 KiB at a time, from a
    ///    static buffer (no allocation).
    ///
    /// Each step that answered `EOPNOTSUPP` is remembered per file.
    ///
    /// # Errors
    ///
    /// The errno of the step that failed for another reason: `ENOSPC`
    /// (e.g. when step 2's allocation fails: the range then reads as zeros
    /// but is a hole), `EFBIG`, `EIO`, `EBADF`, …; step 3's error says how
    /// many bytes were zeroed ([`NoFsIoError::bytes_done`]). A block-device
    /// range that ends beyond the device fails with `InvalidInput` before
    /// anything is written (no errno: no syscall was made).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-zero-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[9u8; 8192], 0)?;
    /// file.zero_range_nofs(4096, 8192)?;
    /// let mut b = [1u8; 8192];
    /// file.read_exact_at_nofs(&mut b, 4096)?;
    /// assert_eq!(b, [0u8; 8192]);
    /// assert_eq!(file.size_nofs()?, 12288); // extended
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "FALLOC_FL_ZERO_RANGE")]
    #[doc(alias = "write_zeroes")]
    #[doc(alias = "BLKZEROOUT")]
    pub fn zero_range_nofs(&self, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        check_range(Op::ZeroRange, offset, len, RwFlags::empty())?;
        if len == 0 {
            return Ok(());
        }
        // The kernel zeroes a device only in whole logical blocks (512 or
        // 4096 bytes: EINVAL otherwise); other ranges are written as zeros.
        let unaligned_block = self.is_block_device() && {
            let lbs = u64::from(sio::blk_logical_block_size(&self.file).unwrap_or(4096));
            offset % lbs != 0 || len % lbs != 0
        };
        if self.is_block_device() {
            let size = self.size_nofs()?;
            if offset.saturating_add(len) > size {
                let why = format!(
                    "the range ends beyond the end of {} ({size} bytes)",
                    self.display_path()
                );
                return Err(NoFsIoError::new(
                    Op::ZeroRange,
                    offset,
                    len,
                    Cause::InvalidOwned(why.into()),
                ));
            }
        }
        let mut mode = self.zero_mode.load(Ordering::Relaxed);
        if unaligned_block {
            mode = ZERO_WRITE;
        }
        if mode == ZERO_FALLOCATE {
            match self.falloc(Op::ZeroRange, sio::FALLOC_FL_ZERO_RANGE, offset, len) {
                Err(e) if e.raw_os_error() == Some(sio::EOPNOTSUPP) => {
                    mode = ZERO_PUNCH_ALLOCATE;
                    self.zero_mode.store(mode, Ordering::Relaxed);
                }
                r => return r,
            }
        }
        if mode == ZERO_PUNCH_ALLOCATE {
            let r = self
                .punch_hole_nofs(offset, len)
                .and_then(|()| self.allocate_nofs(offset, len));
            match r {
                Err(e) if e.raw_os_error() == Some(sio::EOPNOTSUPP) => {
                    self.zero_mode.store(ZERO_WRITE, Ordering::Relaxed);
                }
                r => return r,
            }
        }
        self.write_zeros(offset, len)
    }

    /// Step 3 of [`zero_range_nofs`](Self::zero_range_nofs): zeros written
    /// inside one scope, `EINTR` retried, short writes continued.
    fn write_zeros(&self, offset: u64, len: u64) -> Result<(), NoFsIoError> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut done = 0u64;
        let fail = {
            let _scope = self.enter(Op::WriteZeros, offset, len, RwFlags::empty())?;
            loop {
                if done == len {
                    break None;
                }
                let n = (len - done).min(ZEROS.len() as u64) as usize;
                match sio::pwrite(&self.file, &ZEROS[..n], offset + done) {
                    Ok(0) => break Some(Cause::WriteZero),
                    Ok(w) => done += w.min(n) as u64,
                    Err(sio::EINTR) => {}
                    Err(e) => break Some(Cause::Os(e)),
                }
            }
        };
        match fail {
            None => Ok(()),
            Some(cause) => Err(loop_error(
                Op::WriteZeros,
                offset,
                len,
                done as usize,
                cause,
            )),
        }
    }

    /// `lseek(2)` with `SEEK_DATA` inside the scope: the start of the first
    /// data region at or after `offset`, or `None` when only a hole follows
    /// up to the end of the file (the kernel's `ENXIO`), or `offset` is at
    /// or beyond the end. File systems without hole tracking report the
    /// whole file as data, and so does this method for a block device
    /// (whose `lseek` has no `SEEK_DATA`: it asks the device's size). The file position is
    /// changed (every `NoFsFile` transfer is positional).
    ///
    /// With [`seek_hole_nofs`](Self::seek_hole_nofs) this maps a sparse
    /// backing file (NBD `BLOCK_STATUS`, SCSI `GET LBA STATUS`).
    ///
    /// # Errors
    ///
    /// An offset beyond `i64::MAX` fails with `InvalidInput` before any
    /// syscall (no errno); the kernel answers `EINVAL` where the file does
    /// not support `SEEK_DATA`, `ESPIPE` for a pipe, `EBADF`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-seek-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.set_len_nofs(1 << 20)?;                     // 1 MiB hole
    /// file.write_all_at_nofs(&[7u8; 4096], 512 << 10)?; // data in the middle
    /// let data = file.seek_data_nofs(0)?.expect("there is data");
    /// assert!(data <= 512 << 10); // = 512 KiB where the file system tracks holes
    /// let hole = file.seek_hole_nofs(data)?.expect("before the end");
    /// assert!(hole > data);
    /// assert_eq!(file.seek_data_nofs(1 << 20)?, None); // at the end
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "SEEK_DATA")]
    #[doc(alias = "lseek")]
    pub fn seek_data_nofs(&self, offset: u64) -> Result<Option<u64>, NoFsIoError> {
        self.seek(Op::SeekData, offset, true)
    }

    /// `lseek(2)` with `SEEK_HOLE` inside the scope: the start of the first
    /// hole at or after `offset` — the end of the file counts as a hole —
    /// or `None` when `offset` is at or beyond the end (`ENXIO`). Errors as
    /// for [`seek_data_nofs`](Self::seek_data_nofs).
    ///
    /// # Errors
    ///
    /// As [`seek_data_nofs`](Self::seek_data_nofs).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-seekhole-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[7u8; 4096], 0)?;
    /// assert_eq!(file.seek_hole_nofs(0)?, Some(4096)); // the end of the file
    /// assert_eq!(file.seek_hole_nofs(4096)?, None);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "SEEK_HOLE")]
    pub fn seek_hole_nofs(&self, offset: u64) -> Result<Option<u64>, NoFsIoError> {
        self.seek(Op::SeekHole, offset, false)
    }

    fn seek(&self, op: Op, offset: u64, data: bool) -> Result<Option<u64>, NoFsIoError> {
        check_range(op, offset, 0, RwFlags::empty())?;
        if self.is_block_device() {
            // Block devices' llseek knows no SEEK_DATA/SEEK_HOLE (EINVAL):
            // a device is data from start to end, as SEEK_DATA's generic
            // form says of any file without hole tracking.
            let size = self.size_nofs()?;
            return Ok((offset < size).then_some(if data { offset } else { size }));
        }
        let r = {
            let _scope = self.enter(op, offset, 0, RwFlags::empty())?;
            sio::seek_data_hole(&self.file, offset, data)
        };
        match r {
            Ok(at) => Ok(Some(at)),
            Err(sio::ENXIO) => Ok(None),
            Err(e) => Err(os_error(op, offset, 0, RwFlags::empty(), e)),
        }
    }
}
