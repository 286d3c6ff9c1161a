//! The data path of [`NoFsFile`]: positioned reads and writes, whole-buffer
//! loops and the vectored `preadv2`/`pwritev2` forms.

use super::*;

impl NoFsFile {
    /// `pread64(2)` inside the scope: one syscall, reading up to
    /// `buf.len()` bytes (at most `0x7ffff000`, the kernel's limit per call)
    /// at `offset`. Returns the count read; 0 at end of file.
    ///
    /// Like [`FileExt::read_at`](std::os::unix::fs::FileExt::read_at) a
    /// signal may make it fail with [`io::ErrorKind::Interrupted`]; use
    /// [`read_exact_at_nofs`](Self::read_exact_at_nofs) for a loop that
    /// retries and continues.
    ///
    /// See [pread(2)](https://man7.org/linux/man-pages/man2/pread.2.html).
    ///
    /// # Errors
    ///
    /// The errno of `pread64` (`EBADF` if not open for reading, `EISDIR`,
    /// `EINVAL` for an unaligned `O_DIRECT` buffer, `EIO`, `EINTR` as
    /// `Interrupted`); an `offset` beyond `i64::MAX` is `InvalidInput` before
    /// any syscall.
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/zero")?);
    /// let mut buf = [0xffu8; 4096];
    /// let n = file.pread_nofs(&mut buf, 0)?;
    /// assert!(buf[..n].iter().all(|&b| b == 0));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "pread")]
    #[doc(alias = "pread64")]
    #[inline]
    pub fn pread_nofs(&self, buf: &mut [u8], offset: u64) -> Result<usize, NoFsIoError> {
        let len = buf.len() as u64;
        check_range(Op::Pread, offset, len, RwFlags::empty())?;
        let chunk = buf.len().min(sio::MAX_RW_COUNT);
        let r = {
            let _scope = self.enter(Op::Pread, offset, len, RwFlags::empty())?;
            sio::pread(&self.file, &mut buf[..chunk], offset)
        };
        r.map_err(|e| os_error(Op::Pread, offset, len, RwFlags::empty(), e))
    }

    /// `pwrite64(2)` inside the scope: one syscall, writing up to
    /// `buf.len()` bytes (at most `0x7ffff000` per call) at `offset`.
    /// Returns the count written, which may be short.
    ///
    /// This is the call of the seed deadlock: a buffered write allocates
    /// page cache, here with `GFP_NOIO`. A signal may make it fail with
    /// [`io::ErrorKind::Interrupted`]; use
    /// [`write_all_at_nofs`](Self::write_all_at_nofs) for a loop that retries
    /// and continues.
    ///
    /// See [pwrite(2)](https://man7.org/linux/man-pages/man2/pwrite.2.html).
    ///
    /// # Errors
    ///
    /// The errno of `pwrite64` (`EBADF` if not open for writing, `ENOSPC`,
    /// `EFBIG`, `EDQUOT`, `EIO`, `EINTR` as `Interrupted`); a range ending
    /// beyond `i64::MAX` is `InvalidInput` before any syscall.
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-pwrite-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// assert_eq!(file.pwrite_nofs(b"sector", 512)?, 6);
    /// assert_eq!(file.get_ref().metadata()?.len(), 518);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "pwrite")]
    #[doc(alias = "pwrite64")]
    #[inline]
    pub fn pwrite_nofs(&self, buf: &[u8], offset: u64) -> Result<usize, NoFsIoError> {
        let len = buf.len() as u64;
        check_range(Op::Pwrite, offset, len, RwFlags::empty())?;
        let chunk = buf.len().min(sio::MAX_RW_COUNT);
        let r = {
            let _scope = self.enter(Op::Pwrite, offset, len, RwFlags::empty())?;
            sio::pwrite(&self.file, &buf[..chunk], offset)
        };
        r.map_err(|e| os_error(Op::Pwrite, offset, len, RwFlags::empty(), e))
    }

    /// Fills `buf` from `offset`, inside one scope: `EINTR` is retried,
    /// short reads are continued, lengths above `0x7ffff000` are split.
    ///
    /// End of file before `buf` is full fails with
    /// [`io::ErrorKind::UnexpectedEof`], naming the offset, the length and
    /// where the file ended; [`NoFsIoError::bytes_done`] says how much of
    /// `buf` was filled.
    ///
    /// # Errors
    ///
    /// `UnexpectedEof` when the file ends before `buf` is full; otherwise the
    /// errno of the `pread64` that failed, with the bytes read before it
    /// ([`NoFsIoError::bytes_done`]); `EINTR` is retried.
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// let file = reclaim_scope::NoFsFile::new(std::fs::File::open("/dev/zero")?);
    /// let mut block = vec![1u8; 64 * 1024];
    /// file.read_exact_at_nofs(&mut block, 1 << 20)?;
    /// assert!(block.iter().all(|&b| b == 0));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "read_exact_at")]
    pub fn read_exact_at_nofs(&self, buf: &mut [u8], offset: u64) -> Result<(), NoFsIoError> {
        let len = buf.len() as u64;
        check_range(Op::ReadExact, offset, len, RwFlags::empty())?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut done = 0usize;
        let fail = {
            let _scope = self.enter(Op::ReadExact, offset, len, RwFlags::empty())?;
            loop {
                if done == buf.len() {
                    break None;
                }
                let end = done + (buf.len() - done).min(sio::MAX_RW_COUNT);
                match sio::pread(&self.file, &mut buf[done..end], offset + done as u64) {
                    Ok(0) => break Some(Cause::Eof),
                    Ok(n) => done += n.min(end - done),
                    Err(sio::EINTR) => {}
                    Err(e) => break Some(Cause::Os(e)),
                }
            }
        };
        match fail {
            None => Ok(()),
            Some(cause) => Err(loop_error(Op::ReadExact, offset, len, done, cause)),
        }
    }

    /// Writes all of `buf` at `offset`, inside one scope: `EINTR` is
    /// retried, short writes are continued, lengths above `0x7ffff000` are
    /// split.
    ///
    /// On failure nothing is written silently: the error says how many bytes
    /// (from `offset` on) were written before it
    /// ([`NoFsIoError::bytes_done`]); a write the kernel answers with 0 fails
    /// with [`io::ErrorKind::WriteZero`].
    ///
    /// # Errors
    ///
    /// `WriteZero` when a `pwrite64` wrote nothing; otherwise the errno of
    /// the call that failed (`ENOSPC`, `EFBIG`, `EIO`, …), with the bytes
    /// written before it ([`NoFsIoError::bytes_done`]); `EINTR` is retried.
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("rs-doc-writeall-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = reclaim_scope::NoFsFile::new(f);
    /// file.write_all_at_nofs(&[7u8; 8192], 0)?;
    /// assert_eq!(file.get_ref().metadata()?.len(), 8192);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "write_all_at")]
    pub fn write_all_at_nofs(&self, buf: &[u8], offset: u64) -> Result<(), NoFsIoError> {
        let len = buf.len() as u64;
        check_range(Op::WriteAll, offset, len, RwFlags::empty())?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut done = 0usize;
        let fail = {
            let _scope = self.enter(Op::WriteAll, offset, len, RwFlags::empty())?;
            loop {
                if done == buf.len() {
                    break None;
                }
                let end = done + (buf.len() - done).min(sio::MAX_RW_COUNT);
                match sio::pwrite(&self.file, &buf[done..end], offset + done as u64) {
                    Ok(0) => break Some(Cause::WriteZero),
                    Ok(n) => done += n.min(end - done),
                    Err(sio::EINTR) => {}
                    Err(e) => break Some(Cause::Os(e)),
                }
            }
        };
        match fail {
            None => Ok(()),
            Some(cause) => Err(loop_error(Op::WriteAll, offset, len, done, cause)),
        }
    }

    /// `preadv2(2)` inside the scope: one syscall reading into `bufs` from
    /// `offset` with per-call [`RwFlags`]. Returns the count read, which may
    /// be short (at most 1024 buffers and `0x7ffff000` bytes per call).
    ///
    /// - [`RwFlags::NOWAIT`] on data not in the page cache fails with
    ///   [`io::ErrorKind::WouldBlock`] (`EAGAIN`).
    /// - A flag the kernel rejects (`EOPNOTSUPP`, or `EINVAL` for e.g.
    ///   `RWF_ATOMIC` without `O_DIRECT`) fails with an error naming the
    ///   flags and the Linux version that added each.
    /// - Not on Linux, or Linux < 4.6: `Unsupported`.
    ///
    /// See [preadv2(2)](https://man7.org/linux/man-pages/man2/preadv2.2.html).
    ///
    /// # Errors
    ///
    /// The errno of `preadv2` (`EOPNOTSUPP` for a flag the file does not
    /// support, e.g. `RWF_NOWAIT`; `EAGAIN` when `RWF_NOWAIT` would block;
    /// `EINVAL` for an unknown flag; `Unsupported` before Linux 4.6); a range
    /// beyond `i64::MAX` is `InvalidInput` before any syscall.
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{NoFsFile, RwFlags};
    /// use std::io::IoSliceMut;
    ///
    /// let file = NoFsFile::new(std::fs::File::open("/dev/zero")?);
    /// let (mut head, mut body) = ([1u8; 8], [1u8; 56]);
    /// let n = file.preadv2_nofs(
    ///     &mut [IoSliceMut::new(&mut head), IoSliceMut::new(&mut body)],
    ///     0,
    ///     RwFlags::empty(),
    /// )?;
    /// assert_eq!(n, 64);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "preadv2")]
    #[doc(alias = "readv")]
    pub fn preadv2_nofs(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        offset: u64,
        flags: RwFlags,
    ) -> Result<usize, NoFsIoError> {
        let len = sio::total_len(bufs.iter().map(|b| &**b));
        check_range(Op::Preadv2, offset, len, flags)?;
        let r = {
            let _scope = self.enter(Op::Preadv2, offset, len, flags)?;
            sio::preadv2(&self.file, bufs, offset, flags.bits())
        };
        r.map_err(|e| os_error(Op::Preadv2, offset, len, flags, e))
    }

    /// `pwritev2(2)` inside the scope: one syscall writing `bufs` at
    /// `offset` with per-call [`RwFlags`]. Returns the count written, which
    /// may be short (at most 1024 buffers and `0x7ffff000` bytes per call).
    /// Errors as for [`preadv2_nofs`](Self::preadv2_nofs).
    ///
    /// See [pwritev2(2)](https://man7.org/linux/man-pages/man2/pwritev2.2.html).
    ///
    /// # Errors
    ///
    /// As [`preadv2_nofs`](Self::preadv2_nofs), with `pwritev2`'s errnos
    /// (`ENOSPC`, `EFBIG`, `EBADF` if not open for writing).
    /// Under [`NoFsPolicy::Strict`], the refusal of the scope (nothing attempted).
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::{NoFsFile, RwFlags};
    /// use std::io::IoSlice;
    ///
    /// # let path = std::env::temp_dir().join(format!("rs-doc-pwritev2-{}", std::process::id()));
    /// # let f = std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path)?;
    /// let file = NoFsFile::new(f);
    /// // An NBD write with the FUA flag: durable before the reply.
    /// let n = file.pwritev2_nofs(&[IoSlice::new(b"hdr"), IoSlice::new(b"data")], 0, RwFlags::DSYNC)?;
    /// assert_eq!(n, 7);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "pwritev2")]
    #[doc(alias = "writev")]
    pub fn pwritev2_nofs(
        &self,
        bufs: &[IoSlice<'_>],
        offset: u64,
        flags: RwFlags,
    ) -> Result<usize, NoFsIoError> {
        let len = sio::total_len(bufs.iter().map(|b| &**b));
        check_range(Op::Pwritev2, offset, len, flags)?;
        let r = {
            let _scope = self.enter(Op::Pwritev2, offset, len, flags)?;
            sio::pwritev2(&self.file, bufs, offset, flags.bits())
        };
        r.map_err(|e| os_error(Op::Pwritev2, offset, len, flags, e))
    }
}
