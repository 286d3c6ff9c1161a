//! A SCSI direct-access disk backed by a file: the commands Linux's sd
//! driver needs, everything else rejected with fixed-format sense.

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
            0x35 | 0x91 => {
                self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                let r = if self.plain_io {
                    self.file.get_ref().sync_data()
                } else {
                    self.file.sync_data_nofs()
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
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks => {}
            _ => return Err(Sense::LBA_OUT_OF_RANGE),
        }
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
            let r = if self.plain_io {
                self.file.get_ref().write_all_at(b, off)
            } else {
                self.file.write_all_at_nofs(b, off)
            };
            r.map_err(|e| io_sense(e, "write", Sense::WRITE_ERROR))
        } else {
            self.counters.reads.fetch_add(1, Ordering::Relaxed);
            let r = if self.plain_io {
                self.file.get_ref().read_exact_at(b, off)
            } else {
                self.file.read_exact_at_nofs(b, off)
            };
            r.map_err(|e| io_sense(e, "read", Sense::READ_ERROR))?;
            data.fill(b);
            Ok(())
        }
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
                0x00 => vec![0x00, 0x80, 0x83, 0xb0],
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
                    d
                }
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
