//! A SCSI direct-access disk backed by a file: the commands Linux's sd
//! driver needs, everything else rejected with fixed-format sense.
//!
//! Thin provisioning: READ CAPACITY(16) sets LBPME and LBPRZ, VPD 0xb2
//! advertises UNMAP and WRITE SAME with UNMAP, so Linux sends discards as
//! UNMAP (punched holes in the backing file) and write-zeroes as WRITE SAME
//! (a zeroed range, or a hole with the UNMAP bit); a WRITE SAME of any other
//! block writes it repeatedly.

use reclaim_scope::NoFsFile;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;

pub const VENDOR: &[u8; 8] = b"RSCOPE  ";
pub const PRODUCT: &[u8; 16] = b"TCMU-FILE       ";

/// Sense key + additional sense code/qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

pub const ILLEGAL_REQUEST: u8 = 0x05;
pub const MEDIUM_ERROR: u8 = 0x03;
pub const HARDWARE_ERROR: u8 = 0x04;

impl Sense {
    pub const INVALID_OPCODE: Sense = Sense::new(ILLEGAL_REQUEST, 0x20, 0);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(ILLEGAL_REQUEST, 0x21, 0);
    pub const INVALID_FIELD: Sense = Sense::new(ILLEGAL_REQUEST, 0x24, 0);
    pub const READ_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x11, 0);
    pub const WRITE_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x0c, 0);
    /// The ring entry itself was unusable (iovecs outside the data area).
    pub const TARGET_FAILURE: Sense = Sense::new(HARDWARE_ERROR, 0x44, 0);

    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq }
    }

    /// Fixed format, current error.
    pub fn fixed(self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}

/// The command's data buffer (the ring's iovecs).
pub trait DataBuf {
    fn len(&self) -> usize;
    /// Data-in: copy `src` to the initiator's buffer; bytes copied.
    fn fill(&mut self, src: &[u8]) -> usize;
    /// Data-out: copy the initiator's data into `dst`; bytes copied.
    fn gather(&self, dst: &mut [u8]) -> usize;
}

#[derive(Default, Debug)]
pub struct Counters {
    pub commands: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub syncs: AtomicU64,
    /// WRITE SAME(10/16) and UNMAP commands served.
    pub write_sames: AtomicU64,
    pub unmaps: AtomicU64,
    pub errors: AtomicU64,
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

pub struct Disk {
    pub file: NoFsFile,
    pub block_size: u32,
    pub blocks: u64,
    /// Plain pread/pwrite/fdatasync instead of NoFsFile (`--unprotected`).
    pub plain_io: bool,
    pub serial: String,
    /// NAA-5 identifier for VPD 0x83.
    pub naa: u64,
    pub counters: Counters,
    /// hw_max_sectors of the backstore (512-byte sectors), for VPD 0xb0.
    pub max_sectors: u32,
}

/// VPD 0xb0 limits for WRITE SAME and UNMAP, in logical blocks.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 1 << 20;
pub const MAX_UNMAP_BLOCKS: u64 = 1 << 20;
pub const MAX_UNMAP_DESCRIPTORS: usize = 64;
/// A WRITE SAME of a non-zero block is written in pieces of this size.
const WRITE_SAME_CHUNK: usize = 1 << 20;

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}
fn be32(b: &[u8]) -> u64 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// CDB length from the opcode's group code; None for the variable-length
/// and reserved groups.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

impl Disk {
    /// Execute one command; Err is CHECK CONDITION with that sense.
    pub fn execute(
        &self,
        cdb: &[u8],
        data: &mut dyn DataBuf,
        buf: &mut Vec<u8>,
    ) -> Result<(), Sense> {
        self.counters.commands.fetch_add(1, Ordering::Relaxed);
        let r = self.dispatch(cdb, data, buf);
        if let Err(sense) = r {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            let op = cdb.first().copied().unwrap_or(0);
            if sense.key == ILLEGAL_REQUEST && self.counters.refuse(op) {
                let hex: Vec<String> = cdb.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!(
                    "tcmu-file: refused opcode {op:#04x} with ILLEGAL REQUEST, ASC {:#04x} \
                     (cdb {}); later refusals of this opcode are only counted",
                    sense.asc,
                    hex.join(" ")
                );
            }
        }
        r
    }

    fn dispatch(&self, cdb: &[u8], data: &mut dyn DataBuf, buf: &mut Vec<u8>) -> Result<(), Sense> {
        let op = *cdb.first().ok_or(Sense::INVALID_OPCODE)?;
        match cdb_len(op) {
            Some(n) if cdb.len() >= n => {}
            _ => return Err(Sense::INVALID_OPCODE),
        }
        match op {
            0x00 => Ok(()), // TEST UNIT READY
            0x12 => self.inquiry(cdb, data),
            0x25 => {
                // READ CAPACITY(10)
                let last = self.blocks - 1;
                let mut r = [0u8; 8];
                r[..4].copy_from_slice(&(last.min(0xffff_ffff) as u32).to_be_bytes());
                r[4..].copy_from_slice(&self.block_size.to_be_bytes());
                data.fill(&r);
                Ok(())
            }
            0x9e if cdb[1] & 0x1f == 0x10 => {
                // SERVICE ACTION IN(16) / READ CAPACITY(16)
                let mut r = [0u8; 32];
                r[..8].copy_from_slice(&(self.blocks - 1).to_be_bytes());
                r[8..12].copy_from_slice(&self.block_size.to_be_bytes());
                // LBPME: thin provisioned (UNMAP works); LBPRZ: an unmapped
                // block reads as zeros (a hole in the backing file).
                r[14] = 0x80 | 0x40;
                let alloc = be32(&cdb[10..14]) as usize;
                data.fill(&r[..alloc.min(32)]);
                Ok(())
            }
            0x1a => self.mode_sense(cdb[2], be16(&[0, cdb[4]]), false, data),
            0x5a => self.mode_sense(cdb[2], be16(&cdb[7..9]), true, data),
            0x08 | 0x0a => {
                let lba = (((cdb[1] & 0x1f) as u64) << 16) | ((cdb[2] as u64) << 8) | cdb[3] as u64;
                let n = if cdb[4] == 0 { 256 } else { cdb[4] as u64 };
                self.rw(op == 0x0a, lba, n, data, buf)
            }
            0x28 | 0x2a => self.rw(
                op == 0x2a,
                be32(&cdb[2..6]),
                be16(&cdb[7..9]) as u64,
                data,
                buf,
            ),
            0x88 | 0x8a => self.rw(op == 0x8a, be64(&cdb[2..10]), be32(&cdb[10..14]), data, buf),
            // WRITE SAME(10/16); byte 1 bit 3 is UNMAP.
            0x41 => self.write_same(
                be32(&cdb[2..6]),
                be16(&cdb[7..9]) as u64,
                cdb[1] & 0x08 != 0,
                data,
                buf,
            ),
            0x93 => self.write_same(
                be64(&cdb[2..10]),
                be32(&cdb[10..14]),
                cdb[1] & 0x08 != 0,
                data,
                buf,
            ),
            0x42 => self.unmap(data, buf),
            0x35 | 0x91 => {
                self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                let r = if self.plain_io {
                    self.file.get_ref().sync_data()
                } else {
                    self.file.sync_data_nofs().map_err(io::Error::from)
                };
                r.map_err(|e| {
                    eprintln!("tcmu-file: sync: {e}");
                    Sense::WRITE_ERROR
                })
            }
            _ => Err(Sense::INVALID_OPCODE),
        }
    }

    fn rw(
        &self,
        write: bool,
        lba: u64,
        blocks: u64,
        data: &mut dyn DataBuf,
        buf: &mut Vec<u8>,
    ) -> Result<(), Sense> {
        self.check_range(lba, blocks)?;
        if blocks == 0 {
            return Ok(());
        }
        let bytes = blocks * self.block_size as u64;
        // The kernel sizes the buffer from the CDB: a mismatch is a malformed
        // entry, and nothing is transferred. The bounce buffer stays bounded:
        // at most 4 × the largest transfer VPD 0xb0 advertises.
        if bytes != data.len() as u64 || bytes > self.max_sectors as u64 * 512 * 4 {
            return Err(Sense::INVALID_FIELD);
        }
        let bytes = bytes as usize;
        let off = lba * self.block_size as u64;
        buf.resize(bytes, 0);
        let b = &mut buf[..bytes];
        if write {
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
            data.gather(b);
            self.write_at(b, off)
                .map_err(|e| io_sense(e, "write", Sense::WRITE_ERROR))
        } else {
            self.counters.reads.fetch_add(1, Ordering::Relaxed);
            let r = if self.plain_io {
                self.file.get_ref().read_exact_at(b, off)
            } else {
                self.file.read_exact_at_nofs(b, off).map_err(io::Error::from)
            };
            r.map_err(|e| io_sense(e, "read", Sense::READ_ERROR))?;
            data.fill(b);
            Ok(())
        }
    }

    fn check_range(&self, lba: u64, blocks: u64) -> Result<(u64, u64), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks => {
                let bs = self.block_size as u64;
                Ok((lba * bs, blocks * bs))
            }
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    fn write_at(&self, b: &[u8], off: u64) -> io::Result<()> {
        if self.plain_io {
            self.file.get_ref().write_all_at(b, off)
        } else {
            self.file.write_all_at_nofs(b, off).map_err(io::Error::from)
        }
    }

    /// Zero a range: a hole (`punch`) or zeroed, allocated blocks.
    fn zero(&self, off: u64, len: u64, punch: bool) -> io::Result<()> {
        if self.plain_io {
            use nix::fcntl::{fallocate, FallocateFlags as F};
            let mode = if punch {
                F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE
            } else {
                F::FALLOC_FL_ZERO_RANGE | F::FALLOC_FL_KEEP_SIZE
            };
            let (o, l) = (off as libc::off_t, len as libc::off_t);
            return fallocate(self.file.get_ref(), mode, o, l).map_err(io::Error::from);
        }
        if punch {
            self.file.punch_hole_nofs(off, len).map_err(io::Error::from)
        } else {
            self.file.zero_range_nofs(off, len).map_err(io::Error::from)
        }
    }

    /// WRITE SAME: one block of data-out, repeated over the range. Zeros
    /// become a zeroed range (a hole with UNMAP: LBPRZ says holes read as
    /// zeros); anything else is written in 1 MiB pieces.
    fn write_same(
        &self,
        lba: u64,
        blocks: u64,
        unmap: bool,
        data: &mut dyn DataBuf,
        buf: &mut Vec<u8>,
    ) -> Result<(), Sense> {
        if blocks == 0 || blocks > MAX_WRITE_SAME_BLOCKS {
            return Err(Sense::INVALID_FIELD);
        }
        let (off, len) = self.check_range(lba, blocks)?;
        let bs = self.block_size as usize;
        if data.len() != bs {
            return Err(Sense::INVALID_FIELD);
        }
        self.counters.write_sames.fetch_add(1, Ordering::Relaxed);
        buf.resize(bs, 0);
        data.gather(&mut buf[..bs]);
        if buf[..bs].iter().all(|&b| b == 0) {
            return self
                .zero(off, len, unmap)
                .map_err(|e| io_sense(e, "write same (zeros)", Sense::WRITE_ERROR));
        }
        let per_chunk = (WRITE_SAME_CHUNK / bs).max(1).min(blocks as usize);
        for _ in 1..per_chunk {
            buf.extend_from_within(..bs);
        }
        let mut done = 0u64;
        while done < blocks {
            let n = (blocks - done).min(per_chunk as u64) as usize;
            self.write_at(&buf[..n * bs], off + done * bs as u64)
                .map_err(|e| io_sense(e, "write same", Sense::WRITE_ERROR))?;
            done += n as u64;
        }
        Ok(())
    }

    /// UNMAP: a parameter list of (LBA, count) descriptors, each punched
    /// out of the backing file. Every descriptor is checked before any is
    /// applied, so a bad list changes nothing.
    fn unmap(&self, data: &mut dyn DataBuf, buf: &mut Vec<u8>) -> Result<(), Sense> {
        let n = data.len();
        if n == 0 {
            return Ok(());
        }
        if !(8..=8 + 16 * MAX_UNMAP_DESCRIPTORS).contains(&n) {
            return Err(Sense::INVALID_FIELD);
        }
        self.counters.unmaps.fetch_add(1, Ordering::Relaxed);
        buf.resize(n, 0);
        data.gather(&mut buf[..n]);
        let desc_len = be16(&buf[2..4]).min(n - 8);
        let mut ranges = Vec::new();
        for d in buf[8..8 + desc_len].chunks_exact(16) {
            let (lba, blocks) = (be64(&d[..8]), be32(&d[8..12]));
            if blocks > MAX_UNMAP_BLOCKS {
                return Err(Sense::INVALID_FIELD);
            }
            ranges.push(self.check_range(lba, blocks)?);
        }
        for (off, len) in ranges.into_iter().filter(|&(_, len)| len > 0) {
            self.zero(off, len, true)
                .map_err(|e| io_sense(e, "unmap", Sense::WRITE_ERROR))?;
        }
        Ok(())
    }

    fn inquiry(&self, cdb: &[u8], data: &mut dyn DataBuf) -> Result<(), Sense> {
        let alloc = be16(&cdb[3..5]);
        let mut r = Vec::with_capacity(64);
        if cdb[1] & 1 == 0 {
            if cdb[2] != 0 {
                return Err(Sense::INVALID_FIELD);
            }
            r.extend_from_slice(&[0x00, 0x00, 0x06, 0x02, 31, 0x00, 0x00, 0x02]);
            r.extend_from_slice(VENDOR);
            r.extend_from_slice(PRODUCT);
            r.extend_from_slice(b"0001");
        } else {
            let page = cdb[2];
            let body: Vec<u8> = match page {
                0x00 => vec![0x00, 0x80, 0x83, 0xb0, 0xb2],
                0x80 => self.serial.as_bytes().to_vec(),
                0x83 => {
                    // NAA designator, binary, associated with the LU.
                    let mut d = vec![0x01, 0x03, 0x00, 0x08];
                    d.extend_from_slice(&self.naa.to_be_bytes());
                    d
                }
                0xb0 => {
                    let mut d = vec![0u8; 0x3c];
                    // Maximum and optimal transfer length, in blocks.
                    let max = (self.max_sectors as u64 * 512 / self.block_size as u64) as u32;
                    d[4..8].copy_from_slice(&max.to_be_bytes());
                    d[8..12].copy_from_slice(&max.to_be_bytes());
                    // WSNZ: a WRITE SAME of 0 blocks is refused, not "to the end".
                    d[0] = 0x01;
                    d[16..20].copy_from_slice(&(MAX_UNMAP_BLOCKS as u32).to_be_bytes());
                    d[20..24].copy_from_slice(&(MAX_UNMAP_DESCRIPTORS as u32).to_be_bytes());
                    d[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
                    d
                }
                // Logical block provisioning: LBPU (UNMAP), LBPWS (WRITE
                // SAME(16) with UNMAP), LBPWS10, LBPRZ; provisioning type thin.
                0xb2 => vec![0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00],
                _ => return Err(Sense::INVALID_FIELD),
            };
            r.extend_from_slice(&[0x00, page]);
            r.extend_from_slice(&(body.len() as u16).to_be_bytes());
            r.extend_from_slice(&body);
        }
        data.fill(&r[..alloc.min(r.len())]);
        Ok(())
    }

    fn mode_sense(
        &self,
        pc_page: u8,
        alloc: usize,
        ten: bool,
        data: &mut dyn DataBuf,
    ) -> Result<(), Sense> {
        let page = pc_page & 0x3f;
        let pages: Vec<u8> = match page {
            // Caching mode page, WCE: Linux then sends SYNCHRONIZE CACHE on
            // flushes, which become fdatasync of the backing file.
            0x08 | 0x3f => {
                let mut p = vec![0u8; 20];
                p[0] = 0x08;
                p[1] = 0x12;
                if pc_page >> 6 != 1 {
                    p[2] = 0x04;
                }
                p
            }
            _ => return Err(Sense::INVALID_FIELD),
        };
        let mut r = Vec::new();
        if ten {
            r.extend_from_slice(&((6 + pages.len()) as u16).to_be_bytes());
            r.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        } else {
            r.extend_from_slice(&[(3 + pages.len()) as u8, 0, 0, 0]);
        }
        r.extend_from_slice(&pages);
        data.fill(&r[..alloc.min(r.len())]);
        Ok(())
    }
}

fn io_sense(e: io::Error, what: &str, sense: Sense) -> Sense {
    eprintln!("tcmu-file: {what}: {e}");
    sense
}
