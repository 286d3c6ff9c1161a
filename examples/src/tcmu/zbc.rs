//! ZBC host-managed zoned block device emulation (`--zbc`): the zone model
//! of ZBC-2 (INCITS 550) over the disk's logical blocks, and its persistent
//! state.
//!
//! # Zones
//! The medium is cut into zones of `zone_blocks` logical blocks (a power of
//! two; the device size must be a whole number of zones): the first
//! `conventional` zones are CONVENTIONAL (written anywhere, condition NOT
//! WRITE POINTER), the rest SEQUENTIAL WRITE REQUIRED, each with a write
//! pointer and a condition (EMPTY, IMPLICITLY OPENED, EXPLICITLY OPENED,
//! CLOSED, FULL). The rules, as ZBC-2 and the two emulations checked for the
//! codes (Linux's `scsi_debug`, tcmu-runner's `file_zbc.c`) apply them:
//!
//! | command | condition | sense (key, ASC/ASCQ) |
//! |---|---|---|
//! | write in a conventional zone reaching a sequential one, or in a sequential zone crossing its end | — | ILLEGAL REQUEST, 21h/05h WRITE BOUNDARY VIOLATION |
//! | write in a FULL sequential zone | — | ILLEGAL REQUEST, 24h/00h INVALID FIELD IN CDB |
//! | write in a sequential zone not at its write pointer | — | ILLEGAL REQUEST, 21h/04h UNALIGNED WRITE COMMAND |
//! | write that must open an EMPTY/CLOSED zone while `max_open` zones are explicitly open | — | DATA PROTECT, 55h/0Eh INSUFFICIENT ZONE RESOURCES |
//! | read whose first and last blocks are in zones of different types | — | ILLEGAL REQUEST, 21h/07h READ BOUNDARY VIOLATION |
//! | ZBC OUT with ZONE ID past the last block | — | ILLEGAL REQUEST, 21h/00h LBA OUT OF RANGE |
//! | ZBC OUT with ZONE ID not a zone's first block, or naming a conventional zone | — | ILLEGAL REQUEST, 24h/00h INVALID FIELD IN CDB |
//! | OPEN ZONE (one, or ALL) needing more than `max_open` explicitly open zones | — | DATA PROTECT, 55h/0Eh INSUFFICIENT ZONE RESOURCES |
//!
//! URSWRZ is 1 (unrestricted reads): a read past a sequential zone's write
//! pointer returns zeros (the kernel refuses host-managed disks with
//! URSWRZ 0: `sd_zbc` "constrained reads devices are not supported").
//! A write that has to open a zone while `max_open` zones are open closes
//! an implicitly opened one first (the lowest-numbered). Closing a zone
//! whose write pointer is at its start makes it EMPTY, else CLOSED;
//! FINISH makes it FULL; RESET WRITE POINTER makes it EMPTY and deallocates
//! its blocks in the backing file (they read as zeros either way).
//!
//! # Zone-state file
//! The state lives in a file of its own (`--zone-state`, default the
//! backing file's path with `.zones` appended), so the data blocks keep
//! their offsets in the backing store. It holds two slots of
//! [`Zones::slot_len`] bytes (a multiple of 4096), written alternately; each
//! is, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `RSZBCST\0` |
//! | 8 | 4 | version, 1 |
//! | 12 | 4 | bytes covered by the CRC: 64 + 16 × zones |
//! | 16 | 8 | generation (the slot with the higher valid one is current) |
//! | 24 | 8 | device size in bytes |
//! | 32 | 4 | logical block size in bytes |
//! | 36 | 4 | number of zones |
//! | 40 | 8 | zone size in logical blocks |
//! | 48 | 4 | conventional zones |
//! | 52 | 4 | maximum open zones |
//! | 56 | 4 | flags: bit 0 URSWRZ |
//! | 60 | 4 | CRC-32 (IEEE) of the covered bytes with this field zeroed |
//! | 64 | 16 × zones | per zone: condition (u8, the ZBC code), 7 zero bytes, write pointer LBA (u64) |
//!
//! On start-up the slot with the highest generation whose magic, version
//! and CRC check is loaded; none valid, a geometry other than the command
//! line's, or a zone record that breaks the rules (a write pointer outside
//! its zone, an EMPTY zone not at its start, ...) is a start-up error.
//! Opened zones load as CLOSED (or EMPTY), as after a power cycle.
//!
//! When the state is written (only if it changed): on SYNCHRONIZE CACHE and
//! FUA writes, after the data's `fdatasync`, so a durable write pointer
//! never covers data that is not; after every ZBC OUT command; and on a
//! clean exit. A crash loses the write pointer advances since the last of
//! these (the data written past the saved write pointer reads as zeros
//! after the restart and is overwritten by the next writes), as a
//! write-back cache loses unsynchronized writes; a torn slot write leaves
//! the other slot current.

use super::scsi::{Fail, Sense, DATA_PROTECT, ILLEGAL_REQUEST};
use crate::daemon::FileIo;
use reclaim_scope::NoFsFile;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

pub const UNALIGNED_WRITE: Sense = Sense::new(ILLEGAL_REQUEST, 0x21, 0x04);
pub const WRITE_BOUNDARY_VIOLATION: Sense = Sense::new(ILLEGAL_REQUEST, 0x21, 0x05);
pub const READ_BOUNDARY_VIOLATION: Sense = Sense::new(ILLEGAL_REQUEST, 0x21, 0x07);
pub const INSUFFICIENT_ZONE_RESOURCES: Sense = Sense::new(DATA_PROTECT, 0x55, 0x0e);

/// Zone types (REPORT ZONES descriptor byte 0).
pub const TYPE_CONVENTIONAL: u8 = 0x1;
pub const TYPE_SEQ_REQUIRED: u8 = 0x2;

/// Zone conditions (descriptor byte 1, bits 7..4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Cond {
    NotWp = 0x0,
    Empty = 0x1,
    ImpOpen = 0x2,
    ExpOpen = 0x3,
    Closed = 0x4,
    Full = 0xe,
}

impl Cond {
    fn from_code(c: u8) -> Option<Cond> {
        Some(match c {
            0x0 => Cond::NotWp,
            0x1 => Cond::Empty,
            0x2 => Cond::ImpOpen,
            0x3 => Cond::ExpOpen,
            0x4 => Cond::Closed,
            0xe => Cond::Full,
            _ => return None,
        })
    }
    fn open(self) -> bool {
        matches!(self, Cond::ImpOpen | Cond::ExpOpen)
    }
}

/// REPORT ZONES reporting options (CDB byte 14, bits 5..0) this device
/// server accepts; any other value is INVALID FIELD IN CDB.
pub const REPORTING_OPTIONS: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x10, 0x11, 0x3f,
];

/// ZBC OUT service actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Close = 0x01,
    Finish = 0x02,
    Open = 0x03,
    Reset = 0x04,
}

/// The zone layout: every field in logical blocks or zones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Logical blocks of the device.
    pub blocks: u64,
    pub block_size: u32,
    /// Logical blocks per zone, a power of two.
    pub zone_blocks: u64,
    /// The first `conventional` zones are conventional.
    pub conventional: u32,
    /// MAXIMUM NUMBER OF OPEN SEQUENTIAL WRITE REQUIRED ZONES (VPD 0xb6), ≥ 1.
    pub max_open: u32,
}

impl Geometry {
    /// The geometry of `bytes` bytes cut in zones of `zone_bytes`; the
    /// reason when it is not one the kernel (and this emulation) takes.
    pub fn new(
        bytes: u64,
        block_size: u32,
        zone_bytes: u64,
        conventional: u32,
        max_open: u32,
    ) -> Result<Geometry, String> {
        let bs = u64::from(block_size);
        if !zone_bytes.is_power_of_two() || zone_bytes < bs {
            return Err(format!(
                "--zone-size {zone_bytes}: a power of two of at least one block ({bs} bytes)"
            ));
        }
        let zone_blocks = zone_bytes / bs;
        if bytes % zone_bytes != 0 || bytes == 0 {
            return Err(format!(
                "the device's {bytes} bytes are not a whole number of {zone_bytes}-byte zones"
            ));
        }
        let zones = bytes / zone_bytes;
        if zones > u64::from(u32::MAX) {
            return Err(format!("{zones} zones: at most {}", u32::MAX));
        }
        if u64::from(conventional) >= zones {
            return Err(format!(
                "--conventional-zones {conventional}: the device has {zones} zones and needs one \
                 sequential write required zone at least"
            ));
        }
        if max_open == 0 {
            return Err("--max-open-zones must be at least 1".to_owned());
        }
        Ok(Geometry {
            blocks: bytes / bs,
            block_size,
            zone_blocks,
            conventional,
            max_open,
        })
    }

    pub fn zones(&self) -> u32 {
        (self.blocks / self.zone_blocks) as u32
    }

    fn zone_of(&self, lba: u64) -> usize {
        (lba / self.zone_blocks) as usize
    }

    fn start(&self, z: usize) -> u64 {
        z as u64 * self.zone_blocks
    }

    fn conventional(&self, z: usize) -> bool {
        z < self.conventional as usize
    }

    fn zone_type(&self, z: usize) -> u8 {
        if self.conventional(z) {
            TYPE_CONVENTIONAL
        } else {
            TYPE_SEQ_REQUIRED
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone {
    pub cond: Cond,
    /// Write pointer LBA (sequential zones; the zone's end when FULL).
    pub wp: u64,
}

struct State {
    zones: Vec<Zone>,
    generation: u64,
    /// Changed since the last write of the state file.
    dirty: bool,
}

impl State {
    fn count(&self, c: Cond) -> u32 {
        self.zones.iter().filter(|z| z.cond == c).count() as u32
    }

    /// Close zone `z` if open: EMPTY at its start, else CLOSED.
    fn close(&mut self, g: &Geometry, z: usize) {
        let zone = &mut self.zones[z];
        if zone.cond.open() {
            zone.cond = if zone.wp == g.start(z) {
                Cond::Empty
            } else {
                Cond::Closed
            };
        }
    }

    /// Make room for one more open zone: when `max_open` zones are open,
    /// close an implicitly opened one (callers have checked that the
    /// explicitly opened ones leave room).
    fn make_room(&mut self, g: &Geometry) {
        let open = self.count(Cond::ImpOpen) + self.count(Cond::ExpOpen);
        if open >= g.max_open {
            if let Some(z) = self.zones.iter().position(|z| z.cond == Cond::ImpOpen) {
                self.close(g, z);
            }
        }
    }
}

/// The zones of one disk and their state file.
pub struct Zones {
    pub geo: Geometry,
    state: Mutex<State>,
    file: NoFsFile,
    /// Plain pwrite/fdatasync for the state file (`--unprotected`).
    plain_io: bool,
}

const MAGIC: &[u8; 8] = b"RSZBCST\0";
const VERSION: u32 = 1;
const HEADER: usize = 64;
const RECORD: usize = 16;
const FLAG_URSWRZ: u32 = 1;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Zones {
    /// Bytes of one slot of the state file for `zones` zones.
    pub fn slot_len(zones: u32) -> u64 {
        ((HEADER + RECORD * zones as usize) as u64).next_multiple_of(4096)
    }

    /// Encode a slot (covered bytes only).
    fn encode(g: &Geometry, st: &State) -> Vec<u8> {
        let n = g.zones() as usize;
        let len = HEADER + RECORD * n;
        let mut b = vec![0u8; len];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        b[16..24].copy_from_slice(&st.generation.to_le_bytes());
        b[24..32].copy_from_slice(&(g.blocks * u64::from(g.block_size)).to_le_bytes());
        b[32..36].copy_from_slice(&g.block_size.to_le_bytes());
        b[36..40].copy_from_slice(&g.zones().to_le_bytes());
        b[40..48].copy_from_slice(&g.zone_blocks.to_le_bytes());
        b[48..52].copy_from_slice(&g.conventional.to_le_bytes());
        b[52..56].copy_from_slice(&g.max_open.to_le_bytes());
        b[56..60].copy_from_slice(&FLAG_URSWRZ.to_le_bytes());
        for (i, z) in st.zones.iter().enumerate() {
            let at = HEADER + RECORD * i;
            b[at] = z.cond as u8;
            b[at + 8..at + 16].copy_from_slice(&z.wp.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode one slot: `Err` says why it is not a valid slot at all
    /// (magic, version, length, CRC); `Ok(Err)` that it is valid but does
    /// not describe `g` or breaks the zone rules.
    fn decode(g: &Geometry, b: &[u8]) -> Result<Result<State, String>, String> {
        if b.len() < HEADER || &b[..8] != MAGIC {
            return Err("no zone-state magic".into());
        }
        let v = le32(b, 8);
        if v != VERSION {
            return Err(format!(
                "zone-state version {v} (this program reads {VERSION})"
            ));
        }
        let len = le32(b, 12) as usize;
        if len < HEADER || len > b.len() || (len - HEADER) % RECORD != 0 {
            return Err(format!("zone-state length {len} out of range"));
        }
        let mut c = b[..len].to_vec();
        c[60..64].fill(0);
        if crc32fast::hash(&c) != le32(b, 60) {
            return Err("zone-state CRC mismatch".into());
        }
        let found = (
            le64(b, 24),
            le32(b, 32),
            le32(b, 36),
            le64(b, 40),
            le32(b, 48),
            le32(b, 52),
        );
        let want = (
            g.blocks * u64::from(g.block_size),
            g.block_size,
            g.zones(),
            g.zone_blocks,
            g.conventional,
            g.max_open,
        );
        if found != want {
            return Ok(Err(format!(
                "the zone state is of a device of {} bytes, {}-byte blocks, {} zones of {} blocks, \
                 {} conventional, {} open at most; the command line and backing store give {} \
                 bytes, {}-byte blocks, {} zones of {} blocks, {} conventional, {} open at most",
                found.0, found.1, found.2, found.3, found.4, found.5, want.0, want.1, want.2,
                want.3, want.4, want.5
            )));
        }
        if le32(b, 56) != FLAG_URSWRZ || len != HEADER + RECORD * g.zones() as usize {
            return Ok(Err(
                "zone-state flags or length disagree with the geometry".into()
            ));
        }
        let mut zones = Vec::with_capacity(g.zones() as usize);
        for i in 0..g.zones() as usize {
            let at = HEADER + RECORD * i;
            let (start, end) = (g.start(i), g.start(i) + g.zone_blocks);
            let wp = le64(b, at + 8);
            let bad = |why: &str| Ok(Err(format!("zone {i} (LBA {start}): {why}")));
            let Some(cond) = Cond::from_code(b[at]) else {
                return bad(&format!("condition {:#x} unknown", b[at]));
            };
            if b[at + 1..at + 8].iter().any(|&x| x != 0) {
                return bad("reserved bytes set");
            }
            let ok = match cond {
                Cond::NotWp => g.conventional(i) && wp == u64::MAX,
                _ if g.conventional(i) => false,
                Cond::Empty => wp == start,
                Cond::Full => wp == end,
                Cond::ImpOpen | Cond::ExpOpen => (start..end).contains(&wp),
                Cond::Closed => wp > start && wp < end,
            };
            if !ok {
                return bad(&format!("condition {cond:?} with write pointer {wp}"));
            }
            // Power on: opened zones are closed.
            let cond = match cond {
                Cond::ImpOpen | Cond::ExpOpen if wp == start => Cond::Empty,
                Cond::ImpOpen | Cond::ExpOpen => Cond::Closed,
                c => c,
            };
            zones.push(Zone { cond, wp });
        }
        Ok(Ok(State {
            zones,
            generation: le64(b, 16),
            dirty: false,
        }))
    }

    /// Open the state file at `path` for `g`: load it, or, when it is
    /// missing or empty (and not `read_only`), create it with every zone
    /// EMPTY. Errors are the start-up error's text.
    pub fn open(
        path: &Path,
        g: Geometry,
        read_only: bool,
        plain_io: bool,
    ) -> Result<Zones, String> {
        let p = path.display();
        let exists = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .create(!read_only)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("zone state {p}: {e}"))?;
        let file = NoFsFile::new(file);
        let size = file
            .size_nofs()
            .map_err(|e| format!("zone state {p}: {e}"))?;
        let slot = Self::slot_len(g.zones());
        if !exists || size == 0 {
            if read_only {
                return Err(format!(
                    "zone state {p}: missing or empty (and --read-only)"
                ));
            }
            let zones = (0..g.zones() as usize)
                .map(|z| {
                    if g.conventional(z) {
                        Zone {
                            cond: Cond::NotWp,
                            wp: u64::MAX,
                        }
                    } else {
                        Zone {
                            cond: Cond::Empty,
                            wp: g.start(z),
                        }
                    }
                })
                .collect();
            let z = Zones {
                geo: g,
                state: Mutex::new(State {
                    zones,
                    generation: 0,
                    dirty: true,
                }),
                file,
                plain_io,
            };
            z.file
                .set_len_nofs(2 * slot)
                .map_err(|e| format!("zone state {p}: {e}"))?;
            // Both slots, so neither is ever garbage.
            z.persist().map_err(|e| format!("zone state {p}: {e}"))?;
            z.lock().dirty = true;
            z.persist().map_err(|e| format!("zone state {p}: {e}"))?;
            return Ok(z);
        }
        let mut best: Option<State> = None;
        let mut why = Vec::new();
        for i in 0..2u64 {
            let mut b = vec![0u8; slot as usize];
            let n =
                read_some(&file, &mut b, i * slot).map_err(|e| format!("zone state {p}: {e}"))?;
            b.truncate(n);
            match Self::decode(&g, &b) {
                Err(e) => why.push(format!("slot {i}: {e}")),
                Ok(Err(e)) => return Err(format!("zone state {p}: {e}")),
                Ok(Ok(st)) => {
                    if best.as_ref().is_none_or(|b| st.generation > b.generation) {
                        best = Some(st);
                    }
                }
            }
        }
        let Some(st) = best else {
            return Err(format!(
                "zone state {p}: corrupt or not a zone-state file ({})",
                why.join("; ")
            ));
        };
        Ok(Zones {
            geo: g,
            state: Mutex::new(st),
            file,
            plain_io,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of every zone's state.
    pub fn snapshot(&self) -> Vec<Zone> {
        self.lock().zones.clone()
    }

    /// Write the state to the next slot and `fdatasync` it, if it changed.
    pub fn persist(&self) -> io::Result<()> {
        let mut st = self.lock();
        if !st.dirty {
            return Ok(());
        }
        st.generation += 1;
        let b = Self::encode(&self.geo, &st);
        let at = (st.generation % 2) * Self::slot_len(self.geo.zones());
        let io = FileIo {
            file: &self.file,
            plain: self.plain_io,
        };
        io.write_all_at(&b, at)?;
        io.sync_data()?;
        st.dirty = false;
        Ok(())
    }

    /// A read of `blocks` blocks at `lba` (on the medium): READ BOUNDARY
    /// VIOLATION when its first and last blocks are in zones of different
    /// types; else the extents (LBA, blocks) that hold data, the rest
    /// reading as zeros (past a write pointer).
    pub fn read_extents(&self, lba: u64, blocks: u64) -> Result<Vec<(u64, u64)>, Sense> {
        let g = &self.geo;
        if blocks == 0 {
            return Ok(Vec::new());
        }
        let (first, last) = (g.zone_of(lba), g.zone_of(lba + blocks - 1));
        if g.zone_type(first) != g.zone_type(last) {
            return Err(READ_BOUNDARY_VIOLATION);
        }
        let st = self.lock();
        let mut out = Vec::new();
        let end = lba + blocks;
        for z in first..=last {
            let from = lba.max(g.start(z));
            let zend = end.min(g.start(z) + g.zone_blocks);
            let upto = if g.conventional(z) {
                zend
            } else {
                zend.min(st.zones[z].wp)
            };
            if upto > from {
                out.push((from, upto - from));
            }
        }
        Ok(out)
    }

    /// A write of `blocks` blocks at `lba` (on the medium): checked against
    /// the write-pointer rules, the zone implicitly opened, `io` run, and
    /// on its success the write pointer advanced (FULL at the zone's end).
    /// The outer error is the zone rule broken; the inner one `io`'s.
    pub fn write<E>(
        &self,
        lba: u64,
        blocks: u64,
        io: impl FnOnce() -> Result<(), E>,
    ) -> Result<Result<(), E>, Sense> {
        let g = &self.geo;
        if blocks == 0 {
            return Ok(Ok(()));
        }
        let (z, last) = (g.zone_of(lba), g.zone_of(lba + blocks - 1));
        if g.conventional(z) {
            if !g.conventional(last) {
                return Err(WRITE_BOUNDARY_VIOLATION);
            }
            return Ok(io());
        }
        let mut st = self.lock();
        if last != z {
            return Err(WRITE_BOUNDARY_VIOLATION);
        }
        let zone = st.zones[z];
        if zone.cond == Cond::Full {
            return Err(Sense::invalid_cdb_byte(2));
        }
        if lba != zone.wp {
            return Err(UNALIGNED_WRITE);
        }
        if matches!(zone.cond, Cond::Empty | Cond::Closed) {
            if st.count(Cond::ExpOpen) >= g.max_open {
                return Err(INSUFFICIENT_ZONE_RESOURCES);
            }
            st.make_room(g);
            st.zones[z].cond = Cond::ImpOpen;
            st.dirty = true;
        }
        let r = io();
        if r.is_ok() {
            let zone = &mut st.zones[z];
            zone.wp += blocks;
            if zone.wp == g.start(z) + g.zone_blocks {
                zone.cond = Cond::Full;
            }
            st.dirty = true;
        }
        Ok(r)
    }

    /// ZBC OUT: `action` on the zones from `zone_id` (`count` of them, 0
    /// meaning 1), or with `all` on every zone it applies to. `reset` is
    /// called for each zone whose write pointer goes back to its start,
    /// with the zone's (LBA, blocks) written so far, before its state
    /// changes; its failure ends the command there.
    pub fn manage(
        &self,
        action: Action,
        zone_id: u64,
        count: u16,
        all: bool,
        mut reset: impl FnMut(u64, u64) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        let g = &self.geo;
        let n = g.zones() as usize;
        let targets: Vec<usize> = if all {
            (g.conventional as usize..n).collect()
        } else {
            if zone_id >= g.blocks {
                return Err(Sense::LBA_OUT_OF_RANGE.into());
            }
            let z = g.zone_of(zone_id);
            if zone_id != g.start(z) || g.conventional(z) {
                return Err(Sense::invalid_cdb_byte(2).into());
            }
            let count = usize::from(count.max(1));
            if z + count > n {
                return Err(Sense::invalid_cdb_byte(12).into());
            }
            (z..z + count).collect()
        };
        let mut st = self.lock();
        match action {
            Action::Open => {
                let wanted: Vec<usize> = targets
                    .iter()
                    .copied()
                    .filter(|&z| {
                        let c = st.zones[z].cond;
                        if all {
                            c == Cond::Closed
                        } else {
                            matches!(c, Cond::Empty | Cond::Closed | Cond::ImpOpen)
                        }
                    })
                    .collect();
                if st.count(Cond::ExpOpen) + wanted.len() as u32 > g.max_open {
                    return Err(INSUFFICIENT_ZONE_RESOURCES.into());
                }
                for z in wanted {
                    if st.zones[z].cond != Cond::ImpOpen {
                        st.make_room(g);
                    }
                    st.zones[z].cond = Cond::ExpOpen;
                    st.dirty = true;
                }
            }
            Action::Close => {
                for z in targets {
                    if st.zones[z].cond.open() {
                        st.close(g, z);
                        st.dirty = true;
                    }
                }
            }
            Action::Finish => {
                for z in targets {
                    let c = st.zones[z].cond;
                    // With ALL: the open and closed zones; one zone: EMPTY too.
                    if c.open() || c == Cond::Closed || (!all && c == Cond::Empty) {
                        st.zones[z] = Zone {
                            cond: Cond::Full,
                            wp: g.start(z) + g.zone_blocks,
                        };
                        st.dirty = true;
                    }
                }
            }
            Action::Reset => {
                for z in targets {
                    let zone = st.zones[z];
                    if zone.cond == Cond::Empty {
                        continue;
                    }
                    let start = g.start(z);
                    if zone.wp > start {
                        reset(start, zone.wp - start)?;
                    }
                    st.zones[z] = Zone {
                        cond: Cond::Empty,
                        wp: start,
                    };
                    st.dirty = true;
                }
            }
        }
        Ok(())
    }

    /// REPORT ZONES parameter data (ZBC-2 6.3): the 64-byte header (ZONE
    /// LIST LENGTH, SAME, MAXIMUM LBA), then one 64-byte descriptor per
    /// zone matching `option` from the zone holding `lba` on, as many as
    /// `alloc` holds. ZONE LIST LENGTH counts every matching zone, or with
    /// `partial` only those that fit in `alloc`; SAME is computed over the
    /// zones it counts.
    pub fn report(
        &self,
        lba: u64,
        alloc: usize,
        partial: bool,
        option: u8,
    ) -> Result<Vec<u8>, Sense> {
        let g = &self.geo;
        if lba >= g.blocks {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        let st = self.lock();
        let fit = alloc.saturating_sub(64) / 64;
        let matches = |z: usize| {
            let c = st.zones[z].cond;
            match option {
                0x00 => true,
                0x01 => c == Cond::Empty,
                0x02 => c == Cond::ImpOpen,
                0x03 => c == Cond::ExpOpen,
                0x04 => c == Cond::Closed,
                0x05 => c == Cond::Full,
                // READ ONLY, OFFLINE, RESET recommended, NON_SEQ: never here.
                0x06 | 0x07 | 0x10 | 0x11 => false,
                0x3f => c == Cond::NotWp,
                _ => unreachable!("reporting option {option:#x} passed parse"),
            }
        };
        let mut listed = Vec::new();
        for z in g.zone_of(lba)..g.zones() as usize {
            if matches(z) {
                if partial && listed.len() == fit {
                    break;
                }
                listed.push(z);
            }
        }
        let mut r = vec![0u8; 64];
        r[..4].copy_from_slice(&((listed.len() * 64) as u32).to_be_bytes());
        // SAME: every zone has one length; 1h one type too, 3h mixed types.
        let same = match listed.first() {
            None => 0,
            Some(&f) if listed.iter().all(|&z| g.zone_type(z) == g.zone_type(f)) => 1,
            Some(_) => 3,
        };
        r[4] = same;
        r[8..16].copy_from_slice(&(g.blocks - 1).to_be_bytes());
        // The descriptors `alloc` holds a byte of (the caller sends at most
        // `alloc` bytes).
        for &z in listed.iter().take(alloc.saturating_sub(64).div_ceil(64)) {
            let zone = st.zones[z];
            let mut d = [0u8; 64];
            d[0] = g.zone_type(z);
            d[1] = (zone.cond as u8) << 4;
            d[8..16].copy_from_slice(&g.zone_blocks.to_be_bytes());
            d[16..24].copy_from_slice(&g.start(z).to_be_bytes());
            d[24..32].copy_from_slice(&zone.wp.to_be_bytes());
            r.extend_from_slice(&d);
        }
        Ok(r)
    }
}

/// Read up to `b.len()` bytes at `off`; the bytes read (short at EOF).
fn read_some(f: &NoFsFile, b: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < b.len() {
        match f.pread_nofs(&mut b[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        // 8 zones of 64 blocks, 2 conventional, 2 open at most.
        Geometry::new(8 * 64 * 512, 512, 64 * 512, 2, 2).unwrap()
    }

    fn zones(tag: &str) -> (Zones, std::path::PathBuf) {
        let p = std::env::temp_dir().join(format!("zbc-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        (Zones::open(&p, geo(), false, false).unwrap(), p)
    }

    #[test]
    fn geometry_is_checked() {
        assert!(
            Geometry::new(1 << 20, 512, 3 << 10, 0, 1).is_err(),
            "not a power of two"
        );
        assert!(
            Geometry::new(1 << 20, 4096, 2048, 0, 1).is_err(),
            "smaller than a block"
        );
        assert!(
            Geometry::new((1 << 20) + 512, 512, 1 << 16, 0, 1).is_err(),
            "runt zone"
        );
        assert!(
            Geometry::new(1 << 20, 512, 1 << 16, 16, 1).is_err(),
            "no sequential zone"
        );
        assert!(
            Geometry::new(1 << 20, 512, 1 << 16, 0, 0).is_err(),
            "max open 0"
        );
        let g = Geometry::new(1 << 20, 512, 1 << 16, 15, 1).unwrap();
        assert_eq!((g.zones(), g.zone_blocks, g.blocks), (16, 128, 2048));
    }

    #[test]
    fn implicit_open_closes_the_lowest_implicitly_opened_zone_at_the_limit() {
        let (z, p) = zones("imp");
        let ok = || Ok::<(), ()>(());
        for zone in 2..5u64 {
            z.write(zone * 64, 1, ok).unwrap().unwrap();
        }
        let s = z.snapshot();
        assert_eq!(
            (s[2].cond, s[3].cond, s[4].cond),
            (Cond::Closed, Cond::ImpOpen, Cond::ImpOpen)
        );
        z.manage(Action::Open, 5 * 64, 0, false, |_, _| Ok(()))
            .unwrap();
        z.manage(Action::Open, 6 * 64, 0, false, |_, _| Ok(()))
            .unwrap();
        let s = z.snapshot();
        assert_eq!((s[3].cond, s[4].cond), (Cond::Closed, Cond::Closed));
        assert_eq!(z.write(7 * 64, 1, ok), Err(INSUFFICIENT_ZONE_RESOURCES));
        assert_eq!(
            z.manage(Action::Open, 7 * 64, 0, false, |_, _| Ok(())),
            Err(INSUFFICIENT_ZONE_RESOURCES.into())
        );
        // An explicitly opened zone is written without a new resource.
        z.write(5 * 64, 64, ok).unwrap().unwrap();
        assert_eq!(
            z.snapshot()[5].cond,
            Cond::Full,
            "full releases the resource"
        );
        z.write(7 * 64, 1, ok).unwrap().unwrap();
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn state_survives_reopen_with_open_zones_closed_and_checks_geometry() {
        let (z, p) = zones("persist");
        z.write(2 * 64, 3, || Ok::<(), ()>(())).unwrap().unwrap();
        z.manage(Action::Open, 3 * 64, 0, false, |_, _| Ok(()))
            .unwrap();
        z.manage(Action::Finish, 4 * 64, 0, false, |_, _| Ok(()))
            .unwrap();
        z.persist().unwrap();
        drop(z);
        let z = Zones::open(&p, geo(), false, false).unwrap();
        let s = z.snapshot();
        assert_eq!(
            s[2],
            Zone {
                cond: Cond::Closed,
                wp: 2 * 64 + 3
            }
        );
        assert_eq!(
            s[3],
            Zone {
                cond: Cond::Empty,
                wp: 3 * 64
            }
        );
        assert_eq!(
            s[4],
            Zone {
                cond: Cond::Full,
                wp: 5 * 64
            }
        );
        drop(z);
        let other = Geometry::new(8 * 64 * 512, 512, 64 * 512, 1, 2).unwrap();
        let e = Zones::open(&p, other, false, false).err().unwrap();
        assert!(e.contains("2 conventional"), "{e}");
        let _ = std::fs::remove_file(p);
    }
}
