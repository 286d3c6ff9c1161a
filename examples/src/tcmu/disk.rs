//! The SCSI direct-access disk over its backing store (a regular file or a
//! block device): decoded commands ([`super::scsi::parse`]) executed with
//! `NoFsFile` I/O, responses from [`super::pages`], backing-store errors
//! turned into sense data ([`super::scsi::errno_fail`]).
//!
//! Thin provisioning: READ CAPACITY(16) sets LBPME and LBPRZ, VPD 0xb2
//! advertises UNMAP and WRITE SAME with UNMAP, so Linux sends discards as
//! UNMAP (holes punched in the backing file; on a block device the kernel
//! unmaps and zeroes) and write-zeroes as WRITE SAME (a zeroed range, or a
//! hole with the UNMAP bit); a WRITE SAME of any other block writes it
//! repeatedly. Where the backing store cannot punch, zeros are written, so
//! an unmapped block always reads as zeros, as LBPRZ promises.
//!
//! Zoned (`--zbc`, [`super::zbc`]): no thin provisioning; reads, writes
//! and WRITE SAME go through the zone rules (blocks past a write pointer
//! read as zeros), ZBC IN / ZBC OUT report and manage the zones, and
//! SYNCHRONIZE CACHE and FUA writes make the zone state durable after the
//! data.

use super::pages::{
    self, ModeArgs, Unit, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS,
};
use super::scsi::{
    errno_fail, parse, ByteCheck, Command, Fail, IoDir, Range, Sense, ILLEGAL_REQUEST,
};
use crate::daemon::{FileIo, IoError};
use reclaim_scope::{NoFsFile, NoFsIoError};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The command's data buffer (the ring's iovecs).
pub trait DataBuf {
    /// The buffer's length in bytes.
    fn len(&self) -> usize;
    /// Whether the command carries no data.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Data-in: copy `src` to the start of the initiator's buffer and zero
    /// the rest of it (no stale bytes); bytes of `src` copied.
    fn fill(&mut self, src: &[u8]) -> usize;
    /// Data-out: copy the initiator's data into `dst`; bytes copied.
    fn gather(&self, dst: &mut [u8]) -> usize;
}

/// Bounce buffers, reused from command to command.
#[derive(Default)]
pub struct Scratch {
    a: Vec<u8>,
    b: Vec<u8>,
}

#[derive(Default, Debug)]
pub struct Counters {
    pub commands: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub syncs: AtomicU64,
    /// WRITE SAME(10/16) commands served.
    pub write_sames: AtomicU64,
    pub unmaps: AtomicU64,
    pub verifies: AtomicU64,
    pub errors: AtomicU64,
    /// Backing-store I/O errors (each also counted in `errors`).
    pub io_errors: AtomicU64,
    /// Opcodes answered with ILLEGAL REQUEST, as a 256-bit set: each is
    /// logged the first time, so an operator learns what the initiator asks
    /// for that this target does not do, without a log line per command.
    pub refused: [AtomicU64; 4],
}

impl Counters {
    /// Record that `op` was refused; true the first time for this opcode.
    pub fn refuse(&self, op: u8) -> bool {
        let bit = 1u64 << (op % 64);
        self.refused[usize::from(op / 64)].fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    /// The opcodes refused so far, in order.
    pub fn refused_opcodes(&self) -> Vec<u8> {
        (0..=255u8)
            .filter(|&op| {
                self.refused[usize::from(op / 64)].load(Ordering::Relaxed) & (1 << (op % 64)) != 0
            })
            .collect()
    }
}

/// I/O errors logged one line each; later ones only counted.
const IO_ERRORS_LOGGED: u64 = 16;
/// A WRITE SAME of a non-zero block, and VERIFY, work in pieces this big.
const CHUNK: usize = 1 << 20;

/// A failed backing-store call: its errno and the byte offset reached.
struct IoErr {
    errno: Option<i32>,
    at: Option<u64>,
    text: String,
}

impl From<NoFsIoError> for IoErr {
    fn from(e: NoFsIoError) -> IoErr {
        IoErr {
            errno: e.raw_os_error(),
            at: Some(e.offset() + e.bytes_done()),
            text: e.to_string(),
        }
    }
}

impl From<IoError> for IoErr {
    fn from(e: IoError) -> IoErr {
        match e {
            IoError::Plain(e) => e.into(),
            IoError::NoFs(e) => e.into(),
        }
    }
}

impl From<io::Error> for IoErr {
    fn from(e: io::Error) -> IoErr {
        IoErr {
            errno: e.raw_os_error(),
            at: None,
            text: e.to_string(),
        }
    }
}

pub struct Disk {
    pub file: NoFsFile,
    pub unit: Unit,
    /// Plain pread/pwrite/fdatasync/fallocate instead of NoFsFile
    /// (`--unprotected`).
    pub plain_io: bool,
    pub counters: Counters,
    /// The zones of a ZBC host-managed disk (`--zbc`); `None`: a
    /// conventional disk.
    pub zones: Option<super::zbc::Zones>,
}

/// Send `r`, at most `alloc` bytes of it, as data-in; the length sent.
fn send(data: &mut dyn DataBuf, r: &[u8], alloc: usize) -> usize {
    let n = r.len().min(alloc).min(data.len());
    data.fill(&r[..n])
}

impl Disk {
    /// Execute one CDB. `Ok(Some(n))`: GOOD with `n` bytes of data-in;
    /// `Ok(None)`: GOOD without data-in; `Err`: CHECK CONDITION or BUSY.
    pub fn execute(
        &self,
        cdb: &[u8],
        data: &mut dyn DataBuf,
        scratch: &mut Scratch,
    ) -> Result<Option<usize>, Fail> {
        self.counters.commands.fetch_add(1, Ordering::Relaxed);
        let zoned = self.zones.is_some();
        let r = parse(cdb, zoned).map_err(Fail::Check).and_then(|c| {
            self.run(c, data, scratch)
                .map(|n| n.filter(|_| c.data_in()))
        });
        if let Err(fail) = r {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            let op = cdb.first().copied().unwrap_or(0);
            if let Fail::Check(sense) = fail {
                // The zone rules' refusals (21h/04h, 05h, 07h) are the
                // initiator's addressing, not an opcode this disk lacks.
                let zone_rule = sense.asc == 0x21 && matches!(sense.ascq, 0x04 | 0x05 | 0x07);
                if sense.key == ILLEGAL_REQUEST && !zone_rule && self.counters.refuse(op) {
                    let hex: Vec<String> = cdb.iter().map(|b| format!("{b:02x}")).collect();
                    let name = super::scsi::lookup(cdb, zoned).map_or("unsupported", |c| c.name);
                    eprintln!(
                        "tcmu-file: refused opcode {op:#04x} ({name}) with ILLEGAL REQUEST, ASC \
                         {:#04x}/{:#04x} (cdb {}); later refusals of this opcode are only counted",
                        sense.asc,
                        sense.ascq,
                        hex.join(" ")
                    );
                }
            }
        }
        r
    }

    fn bs(&self) -> u64 {
        self.unit.block_size as u64
    }

    /// The byte range of `r`: LOGICAL BLOCK ADDRESS OUT OF RANGE past the
    /// last block (a zero-length range must still start on the medium).
    fn span(&self, r: Range) -> Result<(u64, u64), Sense> {
        let end = r.lba.checked_add(r.blocks);
        match end {
            Some(end) if end <= self.unit.blocks && r.lba < self.unit.blocks => {
                Ok((r.lba * self.bs(), r.blocks * self.bs()))
            }
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    /// A transfer: at most MAXIMUM TRANSFER LENGTH, on the medium, with a
    /// data buffer at least that long. `(offset, bytes)`.
    fn transfer(&self, r: Range, data: &dyn DataBuf) -> Result<(u64, usize), Sense> {
        if r.blocks > self.unit.max_transfer as u64 {
            return Err(Sense::invalid_cdb_byte(r.len_at));
        }
        let (off, len) = self.span(r)?;
        if (data.len() as u64) < len {
            return Err(Sense::invalid_cdb_byte(r.len_at));
        }
        Ok((off, len as usize))
    }

    fn writable(&self) -> Result<(), Sense> {
        if self.unit.read_only {
            Err(Sense::WRITE_PROTECTED)
        } else {
            Ok(())
        }
    }

    fn run(
        &self,
        cmd: Command,
        data: &mut dyn DataBuf,
        s: &mut Scratch,
    ) -> Result<Option<usize>, Fail> {
        let u = &self.unit;
        let sent = |r: Result<Vec<u8>, Sense>, alloc: usize, data: &mut dyn DataBuf| {
            r.map(|r| Some(send(data, &r, alloc))).map_err(Fail::Check)
        };
        match cmd {
            Command::TestUnitReady => Ok(None),
            Command::RequestSense { desc, alloc } => {
                sent(Ok(pages::request_sense(desc)), alloc, data)
            }
            Command::Inquiry { evpd, page, alloc } => {
                let r = if evpd {
                    pages::vpd_page(u, page)
                } else {
                    Ok(pages::standard_inquiry(u))
                };
                sent(r, alloc, data)
            }
            Command::ModeSense {
                ten,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc,
            } => {
                let a = ModeArgs {
                    ten,
                    dbd,
                    llbaa,
                    pc,
                    page,
                    subpage,
                };
                sent(pages::mode_sense(u, &a), alloc, data)
            }
            Command::ReadCapacity10 => sent(Ok(pages::read_capacity10(u)), 8, data),
            Command::ReadCapacity16 { alloc } => sent(Ok(pages::read_capacity16(u)), alloc, data),
            Command::GetLbaStatus { lba, alloc } => {
                let extents = self.lba_status(lba, alloc)?;
                sent(Ok(pages::lba_status(&extents)), alloc, data)
            }
            Command::ReportLuns { select, alloc } => sent(pages::report_luns(select), alloc, data),
            Command::ReportOpcodes {
                rctd,
                options,
                op,
                sa,
                alloc,
            } => sent(pages::report_opcodes(u, rctd, options, op, sa), alloc, data),
            Command::Read { range, .. } => {
                let (off, n) = self.transfer(range, data)?;
                self.counters.reads.fetch_add(1, Ordering::Relaxed);
                s.a.resize(n, 0);
                self.read_medium(&mut s.a[..n], off, "read")?;
                Ok(Some(data.fill(&s.a[..n])))
            }
            Command::Write { range, fua } => {
                let (off, n) = self.transfer(range, data)?;
                self.writable()?;
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
                s.a.resize(n, 0);
                data.gather(&mut s.a[..n]);
                self.zone_write(range, || self.write_at(&s.a[..n], off))?
                    .map_err(|e| self.io_fail(e, IoDir::Write, "write"))?;
                if fua {
                    self.sync()
                        .map_err(|e| self.io_fail(e, IoDir::Write, "write (FUA) sync"))?;
                    self.persist_zones()?;
                }
                Ok(None)
            }
            Command::WriteVerify { range, check } => {
                let (off, n) = self.transfer(range, data)?;
                self.writable()?;
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
                s.a.resize(n, 0);
                data.gather(&mut s.a[..n]);
                self.zone_write(range, || self.write_at(&s.a[..n], off))?
                    .map_err(|e| self.io_fail(e, IoDir::Write, "write and verify"))?;
                self.sync()
                    .map_err(|e| self.io_fail(e, IoDir::Write, "write and verify: sync"))?;
                s.b.resize(n, 0);
                self.read_medium(&mut s.b[..n], off, "write and verify: read back")?;
                if check == ByteCheck::Each {
                    miscompare(&s.a[..n], &s.b[..n], 0)?;
                }
                Ok(None)
            }
            Command::Verify { range, check } => self.verify(range, check, data, s).map(|()| None),
            Command::PreFetch { range } => {
                // Nothing is fetched: GOOD is what SBC-4 asks when the
                // cache cannot take the blocks (CONDITION MET would claim
                // they are cached).
                self.span(self.to_end(range))?;
                Ok(None)
            }
            Command::SyncCache { range } => {
                self.span(self.to_end(range))?;
                self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                self.sync()
                    .map_err(|e| self.io_fail(e, IoDir::Write, "sync"))?;
                self.persist_zones()?;
                Ok(None)
            }
            Command::ReportZones {
                lba,
                alloc,
                partial,
                option,
            } => {
                let z = self.zones.as_ref().ok_or(Sense::INVALID_OPCODE)?;
                sent(z.report(lba, alloc, partial, option), alloc, data)
            }
            Command::ZoneOut {
                action,
                zone_id,
                count,
                all,
            } => {
                let z = self.zones.as_ref().ok_or(Sense::INVALID_OPCODE)?;
                self.writable()?;
                let bs = self.bs();
                z.manage(action, zone_id, count, all, |lba, blocks| {
                    self.zero(lba * bs, blocks * bs, true)
                        .map_err(|e| self.io_fail(e, IoDir::Write, "reset write pointer"))
                })?;
                self.persist_zones()?;
                Ok(None)
            }
            Command::WriteSame { range, unmap, ndob } => {
                self.write_same(range, unmap, ndob, data, s).map(|()| None)
            }
            Command::Unmap { param_len } => self.unmap(param_len, data, s).map(|()| None),
        }
    }

    /// The extents from `lba` on, as many as `alloc` bytes hold (1 to
    /// 64): mapped where the backing store has data, deallocated in its
    /// holes (`SEEK_DATA`/`SEEK_HOLE`; a block device is all mapped). A
    /// block holding any data is mapped.
    fn lba_status(&self, lba: u64, alloc: usize) -> Result<Vec<(u64, u32, u8)>, Fail> {
        if lba >= self.unit.blocks {
            return Err(Sense::LBA_OUT_OF_RANGE.into());
        }
        let bs = self.bs();
        let end = self.unit.blocks;
        let max = (alloc.saturating_sub(8) / 16).clamp(1, 64);
        let fail = |e: NoFsIoError| self.io_fail(e.into(), IoDir::Read, "get lba status");
        let mut out = Vec::new();
        let mut cur = lba;
        while cur < end && out.len() < max {
            let data = self.file.seek_data_nofs(cur * bs).map_err(fail)?;
            let (status, next) = match data.map(|d| d / bs) {
                Some(d) if d <= cur => {
                    let hole = self.file.seek_hole_nofs(cur * bs).map_err(fail)?;
                    let h = hole.map_or(end, |h| h.div_ceil(bs));
                    (pages::MAPPED, h.max(cur + 1))
                }
                Some(d) => (pages::DEALLOCATED, d),
                None => (pages::DEALLOCATED, end),
            };
            let next = next.min(end).min(cur + u32::MAX as u64);
            out.push((cur, (next - cur) as u32, status));
            cur = next;
        }
        Ok(out)
    }

    /// NUMBER OF LOGICAL BLOCKS 0: to the end of the medium.
    fn to_end(&self, r: Range) -> Range {
        if r.blocks == 0 && r.lba < self.unit.blocks {
            Range {
                blocks: self.unit.blocks - r.lba,
                ..r
            }
        } else {
            r
        }
    }

    /// VERIFY (SBC-4): BYTCHK 00b reads the range (the medium is
    /// readable), 01b compares it with the data-out, 11b with one block of
    /// data-out repeated. MISCOMPARE carries the data-out offset of the
    /// first differing byte.
    fn verify(
        &self,
        r: Range,
        check: ByteCheck,
        data: &mut dyn DataBuf,
        s: &mut Scratch,
    ) -> Result<(), Fail> {
        let bs = self.bs() as usize;
        let (off, len) = match check {
            ByteCheck::Each => {
                let (off, n) = self.transfer(r, data)?;
                (off, n as u64)
            }
            _ => self.span(r)?,
        };
        if check == ByteCheck::One && data.len() < bs {
            return Err(Sense::invalid_cdb_byte(r.len_at).into());
        }
        self.counters.verifies.fetch_add(1, Ordering::Relaxed);
        let want_len = match check {
            ByteCheck::None => 0,
            ByteCheck::Each => len as usize,
            ByteCheck::One => bs,
        };
        s.a.resize(want_len, 0);
        data.gather(&mut s.a[..want_len]);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            s.b.resize(n, 0);
            self.read_medium(&mut s.b[..n], off + done, "verify")?;
            match check {
                ByteCheck::None => {}
                ByteCheck::Each => {
                    miscompare(&s.a[done as usize..done as usize + n], &s.b[..n], done)?
                }
                ByteCheck::One => {
                    for (i, blk) in s.b[..n].chunks(bs).enumerate() {
                        miscompare(&s.a[..bs], blk, done + (i * bs) as u64)?;
                    }
                }
            }
            done += n as u64;
        }
        Ok(())
    }

    /// WRITE SAME (SBC-4): one block of data-out (zeros with
    /// NDOB) repeated over the range. Zeros become a zeroed range (a hole
    /// with UNMAP: LBPRZ says holes read as zeros); anything else is
    /// written in 1 MiB pieces.
    fn write_same(
        &self,
        r: Range,
        unmap: bool,
        ndob: bool,
        data: &mut dyn DataBuf,
        s: &mut Scratch,
    ) -> Result<(), Fail> {
        if r.blocks == 0 || r.blocks > MAX_WRITE_SAME_BLOCKS {
            return Err(Sense::invalid_cdb_byte(r.len_at).into());
        }
        let (off, len) = self.span(r)?;
        let bs = self.bs() as usize;
        if !ndob && data.len() < bs {
            return Err(Sense::PARAMETER_LIST_LENGTH.into());
        }
        self.writable()?;
        self.counters.write_sames.fetch_add(1, Ordering::Relaxed);
        s.a.clear();
        s.a.resize(bs, 0);
        if !ndob {
            data.gather(&mut s.a[..bs]);
        }
        if s.a.iter().all(|&b| b == 0) {
            return self.zone_write(r, || {
                self.zero(off, len, unmap)
                    .map_err(|e| self.io_fail(e, IoDir::Write, "write same (zeros)"))
            })?;
        }
        let per_chunk = (CHUNK / bs).max(1).min(r.blocks as usize);
        for _ in 1..per_chunk {
            s.a.extend_from_within(..bs);
        }
        let a = &s.a;
        self.zone_write(r, || {
            let mut done = 0u64;
            while done < r.blocks {
                let n = (r.blocks - done).min(per_chunk as u64) as usize;
                self.write_at(&a[..n * bs], off + done * bs as u64)
                    .map_err(|e| self.io_fail(e, IoDir::Write, "write same"))?;
                done += n as u64;
            }
            Ok(())
        })?
    }

    /// A write of the blocks of `r`: `io` as it is on a conventional disk;
    /// on a zoned one under the zone rules (their refusal the outer error,
    /// `io`'s failure the inner one).
    fn zone_write<E>(
        &self,
        r: Range,
        io: impl FnOnce() -> Result<(), E>,
    ) -> Result<Result<(), E>, Sense> {
        match &self.zones {
            Some(z) => z.write(r.lba, r.blocks, io),
            None => Ok(io()),
        }
    }

    /// Read the medium at byte `off` into `b` (whole blocks): on a zoned
    /// disk under the read rules, blocks past a write pointer as zeros.
    fn read_medium(&self, b: &mut [u8], off: u64, what: &str) -> Result<(), Fail> {
        let Some(z) = &self.zones else {
            return self
                .read_at(b, off)
                .map_err(|e| self.io_fail(e, IoDir::Read, what));
        };
        let bs = self.bs();
        let lba = off / bs;
        let extents = z.read_extents(lba, b.len() as u64 / bs)?;
        b.fill(0);
        for (l, n) in extents {
            let at = ((l - lba) * bs) as usize;
            self.read_at(&mut b[at..at + (n * bs) as usize], l * bs)
                .map_err(|e| self.io_fail(e, IoDir::Read, what))?;
        }
        Ok(())
    }

    /// Make the zone state durable (a zoned disk whose state changed).
    pub fn persist_zones(&self) -> Result<(), Fail> {
        match &self.zones {
            Some(z) => z
                .persist()
                .map_err(|e| self.io_fail(e.into(), IoDir::Write, "zone state")),
            None => Ok(()),
        }
    }

    /// UNMAP (SBC-4): the parameter list is checked whole before any
    /// descriptor is applied, so a bad list changes nothing.
    fn unmap(&self, param_len: usize, data: &mut dyn DataBuf, s: &mut Scratch) -> Result<(), Fail> {
        if param_len == 0 {
            return Ok(());
        }
        if param_len < 8 || data.len() < param_len {
            return Err(Sense::PARAMETER_LIST_LENGTH.into());
        }
        s.a.resize(param_len, 0);
        data.gather(&mut s.a[..param_len]);
        let list = &s.a[..param_len];
        if list[4..8].iter().any(|&b| b != 0) {
            return Err(Sense::invalid_param(4).into());
        }
        // A descriptor cut short by either length is ignored (5.32.2).
        let desc_len = (u16::from_be_bytes([list[2], list[3]]) as usize).min(param_len - 8);
        if desc_len / 16 > MAX_UNMAP_DESCRIPTORS {
            return Err(Sense::invalid_param(2).into());
        }
        let mut ranges = Vec::new();
        for (i, d) in list[8..8 + desc_len].chunks_exact(16).enumerate() {
            let at = 8 + 16 * i;
            let lba = u64::from_be_bytes(d[..8].try_into().unwrap());
            let blocks = u32::from_be_bytes(d[8..12].try_into().unwrap()) as u64;
            if blocks > MAX_UNMAP_BLOCKS {
                return Err(Sense::invalid_param(at + 8).into());
            }
            if d[12..].iter().any(|&b| b != 0) {
                return Err(Sense::invalid_param(at + 12).into());
            }
            if blocks > 0 {
                ranges.push(self.span(Range {
                    lba,
                    blocks,
                    len_at: 0,
                })?);
            }
        }
        if ranges.is_empty() {
            return Ok(());
        }
        self.writable()?;
        self.counters.unmaps.fetch_add(1, Ordering::Relaxed);
        for (off, len) in ranges {
            self.zero(off, len, true)
                .map_err(|e| self.io_fail(e, IoDir::Write, "unmap"))?;
        }
        Ok(())
    }

    /// Log (the first few) and map a backing-store error.
    fn io_fail(&self, e: IoErr, dir: IoDir, what: &str) -> Fail {
        let n = self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
        let lba = e.at.map(|at| at / self.bs());
        let fail = errno_fail(e.errno, dir, lba);
        if n < IO_ERRORS_LOGGED {
            eprintln!("tcmu-file: {what}: {} → {fail:?}", e.text);
            if n + 1 == IO_ERRORS_LOGGED {
                eprintln!("tcmu-file: later I/O errors are only counted");
            }
        }
        fail
    }

    fn io(&self) -> FileIo<'_> {
        FileIo {
            file: &self.file,
            plain: self.plain_io,
        }
    }

    fn read_at(&self, b: &mut [u8], off: u64) -> Result<(), IoErr> {
        Ok(self.io().read_exact_at(b, off)?)
    }

    fn write_at(&self, b: &[u8], off: u64) -> Result<(), IoErr> {
        Ok(self.io().write_all_at(b, off)?)
    }

    fn sync(&self) -> Result<(), IoErr> {
        Ok(self.io().sync_data()?)
    }

    /// Zero a range: a hole (`punch`) or zeroed blocks; where the backing
    /// store cannot punch, a zeroed range, and where it cannot do that
    /// either, written zeros.
    fn zero(&self, off: u64, len: u64, punch: bool) -> Result<(), IoErr> {
        let unsupported = |e: &IoErr| e.errno == Some(libc::EOPNOTSUPP);
        if self.plain_io {
            use nix::fcntl::{fallocate, FallocateFlags as F};
            let (o, l) = (off as libc::off_t, len as libc::off_t);
            let f = self.file.get_ref();
            let keep = F::FALLOC_FL_KEEP_SIZE;
            let mut r: Result<(), IoErr> =
                Err(IoErr::from(io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
            if punch {
                r = fallocate(f, F::FALLOC_FL_PUNCH_HOLE | keep, o, l)
                    .map_err(|e| io::Error::from(e).into());
            }
            if r.as_ref().is_err_and(unsupported) {
                r = fallocate(f, F::FALLOC_FL_ZERO_RANGE | keep, o, l)
                    .map_err(|e| io::Error::from(e).into());
            }
            if r.as_ref().is_err_and(unsupported) {
                let zeros = vec![0u8; CHUNK.min(len as usize)];
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(zeros.len() as u64) as usize;
                    f.write_all_at(&zeros[..n], off + done)?;
                    done += n as u64;
                }
                r = Ok(());
            }
            return r;
        }
        if punch {
            match self.file.punch_hole_nofs(off, len) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                r => return Ok(r?),
            }
        }
        // zero_range_nofs writes zeros itself where no fallocate mode works.
        Ok(self.file.zero_range_nofs(off, len)?)
    }
}

/// MISCOMPARE DURING VERIFY OPERATION at the first differing byte, its
/// offset counted from `base` in the data-out buffer.
fn miscompare(want: &[u8], got: &[u8], base: u64) -> Result<(), Sense> {
    match want.iter().zip(got).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(Sense::MISCOMPARE_DURING_VERIFY.with_info(base + i as u64)),
    }
}
