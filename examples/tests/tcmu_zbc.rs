//! Host checks of examples/tcmu_file's ZBC host-managed mode (`--zbc`): a
//! TCMU ring laid out in a plain file (as tcmu_ring.rs does), served
//! by the example's handler over a zoned disk of 8 zones of 64 blocks (2
//! conventional, 2 open at most) and its zone-state file; and the daemon's
//! start-up refusals of a zone-state file that does not fit, run as the
//! example binary.
//!
//! Every refusal is checked for its sense and for what it left alone: the
//! backing file's bytes and every zone's condition and write pointer.
//! No root needed: plain files in the temporary directory.

use reclaim_scope::NoFsFile;
use reclaim_scope_examples::tcmu::{disk, handler, pages, ring, zbc};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use zbc::{Cond, Zone};

const CMDR_OFF: usize = 128;
const CMDR_SIZE: usize = 16384;
const DATA: usize = CMDR_OFF + CMDR_SIZE;
const MAP: usize = 512 << 10;
const BS: usize = 512;
const ZB: u64 = 64; // blocks per zone
const ZONES: u64 = 8;
const CONV: u32 = 2;
const MAX_OPEN: u32 = 2;
const BYTES: u64 = ZONES * ZB * BS as u64;

fn geo() -> zbc::Geometry {
    zbc::Geometry::new(BYTES, BS as u32, ZB * BS as u64, CONV, MAX_OPEN).unwrap()
}

/// One command's completion.
#[derive(Debug)]
struct Reply {
    status: u8,
    sense: [u8; 18],
    data: Vec<u8>,
    read_len: Option<usize>,
}

impl Reply {
    fn good(&self) -> &Self {
        assert_eq!(self.status, 0, "GOOD expected, sense {:02x?}", self.sense);
        self
    }
    /// (key, ASC, ASCQ) of a CHECK CONDITION.
    fn check(&self) -> (u8, u8, u8) {
        assert_eq!(self.status, 2, "CHECK CONDITION expected");
        assert_eq!(self.sense[0] & 0x7f, 0x70, "fixed-format sense");
        (self.sense[2], self.sense[12], self.sense[13])
    }
    /// The sense-key-specific field pointer: (C/D, byte, bit).
    fn pointer(&self) -> (bool, u16, Option<u8>) {
        let s = &self.sense[15..18];
        assert!(s[0] & 0x80 != 0, "SKSV");
        let bit = (s[0] & 0x08 != 0).then_some(s[0] & 7);
        (s[0] & 0x40 != 0, u16::from_be_bytes([s[1], s[2]]), bit)
    }
}

struct Rig {
    dir: PathBuf,
    backing: PathBuf,
    state: PathBuf,
    disk: Option<disk::Disk>,
    map: Vec<u8>,
}

impl Rig {
    /// A fresh backing file whose every byte is 0x5a (so zeros read past a
    /// write pointer come from the zone rules, not from a sparse file).
    fn new(tag: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!("tcmu-zbc-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let backing = dir.join("disk");
        fs::write(&backing, vec![0x5au8; BYTES as usize]).unwrap();
        let mut map = vec![0u8; MAP];
        map[0..2].copy_from_slice(&2u16.to_ne_bytes());
        map[4..8].copy_from_slice(&(CMDR_OFF as u32).to_ne_bytes());
        map[8..12].copy_from_slice(&(CMDR_SIZE as u32).to_ne_bytes());
        Rig {
            state: dir.join("disk.zones"),
            backing,
            dir,
            disk: None,
            map,
        }
    }

    /// The disk, opened (zone state loaded) on first use after `new` or
    /// `crash`.
    fn disk(&mut self) -> &disk::Disk {
        if self.disk.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.backing)
                .unwrap();
            let zones = zbc::Zones::open(&self.state, geo(), false, false).unwrap();
            self.disk = Some(disk::Disk {
                file: NoFsFile::new(file),
                unit: pages::Unit {
                    blocks: ZONES * ZB,
                    block_size: BS as u32,
                    serial: "0123456789abcdef".into(),
                    naa: 0x5001_4050_0000_0001,
                    read_only: false,
                    max_transfer: 1024,
                    timeout_secs: 30,
                    max_open_zones: Some(MAX_OPEN),
                },
                plain_io: false,
                counters: Default::default(),
                zones: Some(zones),
            });
        }
        self.disk.as_ref().unwrap()
    }

    /// The daemon gone without writing its zone state (SIGKILL, power
    /// loss): the next command loads what the state file holds.
    fn crash(&mut self) {
        self.disk = None;
    }

    fn zones(&mut self) -> Vec<Zone> {
        self.disk().zones.as_ref().unwrap().snapshot()
    }

    fn bytes(&self) -> Vec<u8> {
        fs::read(&self.backing).unwrap()
    }

    /// One command: `out` as its data-out, a data buffer of
    /// `max(out.len(), len)` bytes.
    fn run(&mut self, cdb: &[u8], out: &[u8], len: usize) -> Reply {
        let buf = out.len().max(len);
        self.map[DATA..DATA + buf].fill(0xee);
        self.map[DATA..DATA + out.len()].copy_from_slice(out);
        let iovs: &[(u64, u64)] = &[(DATA as u64, buf as u64)];
        let cdb_rel = 48 + iovs.len() * 16;
        let elen = (cdb_rel + cdb.len()).max(112).next_multiple_of(8);
        let mut e = vec![0u8; elen];
        e[0..4].copy_from_slice(&(elen as u32 | 1).to_ne_bytes());
        e[8..12].copy_from_slice(&(iovs.len() as u32).to_ne_bytes());
        e[24..32].copy_from_slice(&((CMDR_OFF + cdb_rel) as u64).to_ne_bytes());
        e[48..56].copy_from_slice(&iovs[0].0.to_ne_bytes());
        e[56..64].copy_from_slice(&iovs[0].1.to_ne_bytes());
        e[cdb_rel..cdb_rel + cdb.len()].copy_from_slice(cdb);
        self.map[CMDR_OFF..CMDR_OFF + elen].copy_from_slice(&e);
        self.map[12..16].copy_from_slice(&(elen as u32).to_ne_bytes()); // head
        self.map[64..68].copy_from_slice(&0u32.to_ne_bytes()); // tail
        let ring_path = self.dir.join("ring");
        fs::write(&ring_path, &self.map).unwrap();
        {
            self.disk();
            let r = ring::Ring::open(&ring_path, MAP).unwrap();
            handler::serve(&r, self.disk.as_ref().unwrap(), &AtomicBool::new(true)).unwrap();
        }
        let after = fs::read(&ring_path).unwrap();
        self.map.copy_from_slice(&after[..MAP]);
        let m = &self.map;
        let read_len = (m[CMDR_OFF + 7] & 2 != 0).then(|| {
            u32::from_ne_bytes(m[CMDR_OFF + 12..CMDR_OFF + 16].try_into().unwrap()) as usize
        });
        Reply {
            status: m[CMDR_OFF + 8],
            sense: m[CMDR_OFF + 16..CMDR_OFF + 34].try_into().unwrap(),
            data: m[DATA..DATA + buf].to_vec(),
            read_len,
        }
    }

    fn write(&mut self, lba: u64, blocks: u32, fill: u8) -> Reply {
        self.run(
            &cdb16(0x8a, lba, blocks),
            &vec![fill; blocks as usize * BS],
            0,
        )
    }

    fn read(&mut self, lba: u64, blocks: u32) -> Reply {
        self.run(&cdb16(0x88, lba, blocks), &[], blocks as usize * BS)
    }

    fn zone_out(&mut self, sa: u8, zone_id: u64, count: u16, all: bool) -> Reply {
        let mut c = [0u8; 16];
        c[0] = 0x94;
        c[1] = sa;
        c[2..10].copy_from_slice(&zone_id.to_be_bytes());
        c[12..14].copy_from_slice(&count.to_be_bytes());
        c[14] = u8::from(all);
        self.run(&c, &[], 0)
    }

    fn report(&mut self, lba: u64, alloc: u32, partial: bool, option: u8) -> Reply {
        self.run(&rz(lba, alloc, partial, option), &[], alloc as usize)
    }

    /// Expect the CHECK CONDITION `want` from `cdb` and nothing changed:
    /// the backing file's bytes and every zone.
    fn refused(&mut self, cdb: &[u8], out: &[u8], want: (u8, u8, u8), what: &str) -> Reply {
        let (bytes, zones) = (self.bytes(), self.zones());
        // Room for a data-in too (a refused read).
        let r = self.run(cdb, out, 8192);
        assert_eq!(r.check(), want, "{what}");
        assert!(self.bytes() == bytes, "{what}: the backing file changed");
        assert_eq!(self.zones(), zones, "{what}: a zone changed");
        r
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

const CLOSE: u8 = 1;
const FINISH: u8 = 2;
const OPEN: u8 = 3;
const RESET: u8 = 4;
const ILLEGAL_REQUEST: u8 = 5;
const DATA_PROTECT: u8 = 7;
const UNALIGNED_WRITE: (u8, u8, u8) = (ILLEGAL_REQUEST, 0x21, 0x04);
const WRITE_BOUNDARY: (u8, u8, u8) = (ILLEGAL_REQUEST, 0x21, 0x05);
const READ_BOUNDARY: (u8, u8, u8) = (ILLEGAL_REQUEST, 0x21, 0x07);
const INVALID_FIELD: (u8, u8, u8) = (ILLEGAL_REQUEST, 0x24, 0);
const LBA_OUT_OF_RANGE: (u8, u8, u8) = (ILLEGAL_REQUEST, 0x21, 0);
const INSUFFICIENT_RESOURCES: (u8, u8, u8) = (DATA_PROTECT, 0x55, 0x0e);

fn cdb16(op: u8, lba: u64, n: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

fn rz(lba: u64, alloc: u32, partial: bool, option: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x95;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c[14] = option | if partial { 0x80 } else { 0 };
    c
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// A zone descriptor of a report: (type, condition, length, start, wp).
fn desc(d: &[u8]) -> (u8, u8, u64, u64, u64) {
    assert_eq!(
        d[1] & 0x0f,
        0,
        "NON_SEQ and RESET clear, reserved bits clear"
    );
    (
        d[0],
        d[1] >> 4,
        be64(&d[8..]),
        be64(&d[16..]),
        be64(&d[24..]),
    )
}

/// Zones 2..8 in the five conditions: 2 implicitly open (1 block
/// written), 3 explicitly open (empty), 4 closed (3 blocks), 5 full
/// (finished), 6 and 7 empty.
fn five_conditions(rig: &mut Rig) {
    rig.write(2 * ZB, 1, 0x21).good();
    rig.write(4 * ZB, 3, 0x41).good();
    rig.zone_out(CLOSE, 4 * ZB, 0, false).good();
    rig.zone_out(OPEN, 3 * ZB, 0, false).good();
    rig.zone_out(FINISH, 5 * ZB, 0, false).good();
    let z = rig.zones();
    let want = [
        (Cond::NotWp, u64::MAX),
        (Cond::NotWp, u64::MAX),
        (Cond::ImpOpen, 2 * ZB + 1),
        (Cond::ExpOpen, 3 * ZB),
        (Cond::Closed, 4 * ZB + 3),
        (Cond::Full, 6 * ZB),
        (Cond::Empty, 6 * ZB),
        (Cond::Empty, 7 * ZB),
    ];
    for (i, (c, wp)) in want.into_iter().enumerate() {
        assert_eq!(z[i], Zone { cond: c, wp }, "zone {i}");
    }
}

#[test]
fn inquiry_capacity_and_vpd_say_host_managed() {
    let mut rig = Rig::new("inquiry");
    let inq = rig.run(&[0x12, 0, 0, 0, 96, 0], &[], 96);
    assert_eq!(inq.good().data[0], 0x14, "PERIPHERAL DEVICE TYPE 14h");
    let b6 = rig.run(&[0x12, 1, 0xb6, 0, 64, 0], &[], 64);
    assert_eq!(&b6.good().data[..5], &[0x14, 0xb6, 0, 0x3c, 1]);
    assert_eq!(be32(&b6.data[16..]), MAX_OPEN);
    let mut rc16 = cdb16(0x9e, 0, 32);
    rc16[1] = 0x10;
    let rc = rig.run(&rc16, &[], 32);
    assert_eq!(be64(&rc.good().data), ZONES * ZB - 1);
    assert_eq!(
        (rc.data[12], rc.data[14]),
        (0x10, 0),
        "RC BASIS 01b, LBPME 0"
    );
    let mut unmap = vec![0u8; 10];
    unmap[0] = 0x42;
    assert_eq!(
        rig.run(&unmap, &[], 0).check(),
        (ILLEGAL_REQUEST, 0x20, 0),
        "no UNMAP"
    );
}

#[test]
fn report_zones_every_reporting_option_from_a_zone_start_or_inside_a_zone() {
    let mut rig = Rig::new("options");
    five_conditions(&mut rig);
    let cases: &[(u8, &[u64])] = &[
        (0x00, &[0, 1, 2, 3, 4, 5, 6, 7]),
        (0x01, &[6, 7]),
        (0x02, &[2]),
        (0x03, &[3]),
        (0x04, &[4]),
        (0x05, &[5]),
        (0x06, &[]),
        (0x07, &[]),
        (0x10, &[]),
        (0x11, &[]),
        (0x3f, &[0, 1]),
    ];
    let z = rig.zones();
    for &(opt, want) in cases {
        for partial in [false, true] {
            let r = rig.report(0, 64 + 64 * 8, partial, opt);
            r.good();
            assert_eq!(r.read_len, Some(64 + 64 * want.len()), "option {opt:#x}");
            let d = &r.data;
            assert_eq!(
                be32(d) as usize,
                64 * want.len(),
                "option {opt:#x}: ZONE LIST LENGTH"
            );
            let types: Vec<u8> = want
                .iter()
                .map(|&i| if i < CONV as u64 { 1 } else { 2 })
                .collect();
            let same = if want.is_empty() {
                0
            } else if types.iter().all(|&t| t == types[0]) {
                1
            } else {
                3
            };
            assert_eq!(d[4] & 0x0f, same, "option {opt:#x}: SAME");
            assert_eq!(be64(&d[8..]), ZONES * ZB - 1, "MAXIMUM LBA");
            for (k, &i) in want.iter().enumerate() {
                let got = desc(&d[64 + 64 * k..128 + 64 * k]);
                let zone = z[i as usize];
                assert_eq!(
                    got,
                    (types[k], zone.cond as u8, ZB, i * ZB, zone.wp),
                    "option {opt:#x}, zone {i}"
                );
            }
            // Nothing past the descriptors: the rest of the buffer is zeroed.
            assert!(d[64 + 64 * want.len()..].iter().all(|&b| b == 0));
        }
    }
    // From an LBA inside zone 4: the report starts at zone 4's start.
    let r = rig.report(4 * ZB + 17, 4096, false, 0);
    assert_eq!(be32(&r.good().data), 4 * 64);
    assert_eq!(desc(&r.data[64..128]).3, 4 * ZB);
    // The last LBA is in range; one past it is not.
    assert_eq!(
        be32(&rig.report(ZONES * ZB - 1, 4096, false, 0).good().data),
        64
    );
    let out = rig.refused(
        &rz(ZONES * ZB, 4096, false, 0),
        &[],
        LBA_OUT_OF_RANGE,
        "past the end",
    );
    assert_eq!(out.read_len, None);
    // Reporting options outside ZBC-2's list: INVALID FIELD IN CDB at byte 14 bit 5.
    for opt in [0x08u8, 0x09, 0x12, 0x20, 0x3e] {
        let r = rig.refused(&rz(0, 4096, false, opt), &[], INVALID_FIELD, "option");
        assert_eq!(r.pointer(), (true, 14, Some(5)), "option {opt:#x}");
    }
}

#[test]
fn report_zones_tiny_allocation_lengths_and_the_partial_bit() {
    let mut rig = Rig::new("partial");
    five_conditions(&mut rig);
    let full = rig.report(0, 64 + 64 * 8, false, 0).data;
    for alloc in [
        0u32,
        4,
        16,
        63,
        64,
        65,
        127,
        128,
        64 + 2 * 64 + 10,
        64 + 8 * 64,
        8192,
    ] {
        for partial in [false, true] {
            let r = rig.report(0, alloc, partial, 0);
            r.good();
            let fit = (alloc as usize).saturating_sub(64) / 64;
            let listed = if partial { fit.min(8) } else { 8 };
            // All of the report, or as much as ALLOCATION LENGTH takes.
            let sent = (alloc as usize).min(64 + 64 * listed);
            assert_eq!(r.read_len, Some(sent), "alloc {alloc}");
            let mut want = full[..sent].to_vec();
            if sent >= 4 {
                want[..4].copy_from_slice(&(64 * listed as u32).to_be_bytes());
            } else {
                want.copy_from_slice(&(64 * listed as u32).to_be_bytes()[..sent]);
            }
            if partial && listed < 8 && sent > 4 {
                // SAME over the zones listed: 2 conventional → 1, with
                // sequential ones too → 3, none → 0.
                want[4] = match listed {
                    0 => 0,
                    1 | 2 => 1,
                    _ => 3,
                };
            }
            assert_eq!(
                &r.data[..sent],
                &want[..],
                "alloc {alloc}, partial {partial}"
            );
            assert!(
                r.data[sent..].iter().all(|&b| b == 0),
                "the rest of the buffer zeroed"
            );
        }
    }
    // A PARTIAL report from zone 6 with room for one: zone 6 alone, and
    // the next report from zone 7 gets zone 7.
    let r = rig.report(6 * ZB, 128, true, 0);
    assert_eq!((be32(&r.data), desc(&r.data[64..]).3), (64, 6 * ZB));
    let r = rig.report(7 * ZB, 128, true, 0);
    assert_eq!((be32(&r.data), desc(&r.data[64..]).3), (64, 7 * ZB));
}

#[test]
fn write_pointer_rules_refuse_and_change_nothing() {
    let mut rig = Rig::new("wp");
    five_conditions(&mut rig);
    // Not at the write pointer: ahead of it, behind it, in an empty zone.
    for (lba, what) in [
        (2 * ZB + 2, "ahead of the write pointer"),
        (2 * ZB, "behind the write pointer"),
        (6 * ZB + 1, "inside an empty zone"),
        (4 * ZB + 2, "inside a closed zone"),
    ] {
        rig.refused(&cdb16(0x8a, lba, 1), &[0x11; BS], UNALIGNED_WRITE, what);
    }
    // Crossing a sequential zone's end; a conventional zone into a sequential one.
    rig.refused(
        &cdb16(0x8a, 6 * ZB, 65),
        &vec![0x11; 65 * BS],
        WRITE_BOUNDARY,
        "65 blocks",
    );
    rig.write(6 * ZB, 63, 0x61).good();
    rig.refused(
        &cdb16(0x8a, 6 * ZB + 63, 2),
        &[0x11; 2 * BS],
        WRITE_BOUNDARY,
        "across 6|7",
    );
    rig.refused(
        &cdb16(0x8a, 2 * ZB - 1, 2),
        &[0x11; 2 * BS],
        WRITE_BOUNDARY,
        "across 1|2",
    );
    // A full zone: INVALID FIELD IN CDB at the LBA.
    let r = rig.refused(
        &cdb16(0x8a, 5 * ZB, 1),
        &[0x11; BS],
        INVALID_FIELD,
        "a full zone",
    );
    assert_eq!(r.pointer(), (true, 2, None));
    // WRITE SAME and WRITE AND VERIFY follow the same rules.
    let mut ws = cdb16(0x93, 7 * ZB + 5, 1);
    ws[1] = 0;
    rig.refused(&ws, &[0x11; BS], UNALIGNED_WRITE, "write same");
    let wv = cdb16(0x8e, 2 * ZB, 1);
    rig.refused(&wv, &[0x11; BS], UNALIGNED_WRITE, "write and verify");
    // The conventional zones take writes anywhere, in any order.
    rig.write(ZB + 9, 3, 0xc1).good();
    rig.write(3, 1, 0xc0).good();
    rig.write(0, 1, 0xc0).good();
    // At the write pointer: it moves on; the last block makes the zone
    // FULL. With zone 3 explicitly open, each implicit open closes the
    // other implicitly open zone (2 open at most).
    rig.write(2 * ZB + 1, 4, 0x22).good();
    assert_eq!(
        rig.zones()[6],
        Zone {
            cond: Cond::Closed,
            wp: 6 * ZB + 63
        }
    );
    rig.write(6 * ZB + 63, 1, 0x62).good();
    let z = rig.zones();
    assert_eq!(
        z[2],
        Zone {
            cond: Cond::Closed,
            wp: 2 * ZB + 5
        }
    );
    assert_eq!(z[3].cond, Cond::ExpOpen);
    assert_eq!(
        z[6],
        Zone {
            cond: Cond::Full,
            wp: 7 * ZB
        }
    );
    let mut ws = cdb16(0x93, 7 * ZB, 2);
    ws[1] = 0;
    rig.run(&ws, &[0x77; BS], 0).good();
    assert_eq!(
        rig.zones()[7].wp,
        7 * ZB + 2,
        "write same moved the write pointer"
    );
    let b = rig.bytes();
    let at = |lba: u64| &b[lba as usize * BS..(lba as usize + 1) * BS];
    assert!(at(2 * ZB + 4).iter().all(|&x| x == 0x22));
    assert!(at(7 * ZB + 1).iter().all(|&x| x == 0x77));
    assert!(at(ZB + 11).iter().all(|&x| x == 0xc1));
    // Zone-rule refusals are not logged as unsupported opcodes (WRITE SAME
    // and WRITE AND VERIFY were refused with 21h/04h only).
    let refused = rig.disk().counters.refused_opcodes();
    assert!(
        !refused.contains(&0x93) && !refused.contains(&0x8e),
        "{refused:02x?}"
    );
}

#[test]
fn reads_past_the_write_pointer_are_zeros_and_across_zone_types_refused() {
    let mut rig = Rig::new("read");
    rig.write(2 * ZB, 2, 0x21).good();
    // The backing file holds 0x5a everywhere else: past the write pointer
    // the disk says zeros, below it the data.
    let r = rig.read(2 * ZB, 4);
    r.good();
    assert!(r.data[..2 * BS].iter().all(|&b| b == 0x21));
    assert!(
        r.data[2 * BS..4 * BS].iter().all(|&b| b == 0),
        "past the write pointer"
    );
    let r = rig.read(5 * ZB, 2 * ZB as u32);
    assert!(r.good().data.iter().all(|&b| b == 0), "two empty zones");
    // Conventional zones read what the file holds.
    let r = rig.read(ZB, 1);
    assert!(r.good().data.iter().all(|&b| b == 0x5a));
    // Across the conventional → sequential boundary.
    rig.refused(
        &cdb16(0x88, 2 * ZB - 1, 2),
        &[],
        READ_BOUNDARY,
        "read across 1|2",
    );
    rig.refused(
        &cdb16(0x8f, 2 * ZB - 1, 2),
        &[],
        READ_BOUNDARY,
        "verify across 1|2",
    );
    // Across two sequential zones (same type): allowed.
    rig.read(2 * ZB + 63, 2).good();
}

#[test]
fn zone_management_transitions_and_refusals() {
    let mut rig = Rig::new("manage");
    five_conditions(&mut rig);
    // Conventional zones, LBAs that are not a zone start, past the end.
    for sa in [CLOSE, FINISH, OPEN, RESET] {
        let mut c = [0u8; 16];
        c[0] = 0x94;
        c[1] = sa;
        for (id, want, ptr) in [
            (0u64, INVALID_FIELD, Some(2)),
            (ZB, INVALID_FIELD, Some(2)),
            (2 * ZB + 1, INVALID_FIELD, Some(2)),
            (ZONES * ZB, LBA_OUT_OF_RANGE, None),
            (u64::MAX, LBA_OUT_OF_RANGE, None),
        ] {
            c[2..10].copy_from_slice(&id.to_be_bytes());
            let r = rig.refused(&c, &[], want, &format!("sa {sa} zone id {id}"));
            if let Some(b) = ptr {
                assert_eq!(r.pointer(), (true, b, None), "sa {sa} zone id {id}");
            }
        }
        // ZONE COUNT past the last zone.
        c[2..10].copy_from_slice(&(6 * ZB).to_be_bytes());
        c[12..14].copy_from_slice(&3u16.to_be_bytes());
        let r = rig.refused(&c, &[], INVALID_FIELD, "zone count");
        assert_eq!(r.pointer(), (true, 12, None));
    }
    // Explicitly opening a third zone: INSUFFICIENT ZONE RESOURCES; so is
    // OPEN ALL with more closed zones than room.
    rig.zone_out(OPEN, 6 * ZB, 0, false).good(); // closes implicitly open zone 2
    assert_eq!(rig.zones()[2].cond, Cond::Closed);
    let mut c = [0u8; 16];
    c[0] = 0x94;
    c[1] = OPEN;
    c[2..10].copy_from_slice(&(7 * ZB).to_be_bytes());
    rig.refused(&c, &[], INSUFFICIENT_RESOURCES, "a third explicit open");
    // A write needing an implicit open with both resources explicitly held.
    rig.refused(
        &cdb16(0x8a, 7 * ZB, 1),
        &[0; BS],
        INSUFFICIENT_RESOURCES,
        "implicit open",
    );
    rig.zone_out(CLOSE, 0, 0, true).good();
    let z = rig.zones();
    assert_eq!(
        (z[3].cond, z[6].cond, z[2].cond),
        (Cond::Empty, Cond::Empty, Cond::Closed),
        "CLOSE ALL: empty ones become EMPTY, written ones stay CLOSED"
    );
    rig.write(3 * ZB, 1, 0x31).good();
    rig.write(6 * ZB, 1, 0x61).good();
    rig.zone_out(CLOSE, 0, 0, true).good();
    // Closed now: 2, 3, 4, 6; OPEN ALL needs 4 > 2.
    c[14] = 1;
    rig.refused(&c, &[], INSUFFICIENT_RESOURCES, "OPEN ALL");
    // Opening a full zone changes nothing; finishing an empty one fills it.
    rig.zone_out(OPEN, 5 * ZB, 0, false).good();
    assert_eq!(rig.zones()[5].cond, Cond::Full);
    rig.zone_out(FINISH, 7 * ZB, 0, false).good();
    assert_eq!(
        rig.zones()[7],
        Zone {
            cond: Cond::Full,
            wp: 8 * ZB
        }
    );
    // RESET: the zone's written blocks read as zeros, in the file too; the
    // other zones' bytes stay.
    let before = rig.bytes();
    rig.zone_out(RESET, 4 * ZB, 0, false).good();
    let after = rig.bytes();
    let z4 = (4 * ZB) as usize * BS..(5 * ZB) as usize * BS;
    assert!(
        after[z4.start..z4.start + 3 * BS].iter().all(|&b| b == 0),
        "reset zeroes"
    );
    assert_eq!(&after[..z4.start], &before[..z4.start]);
    assert_eq!(&after[z4.start + 3 * BS..], &before[z4.start + 3 * BS..]);
    assert_eq!(
        rig.zones()[4],
        Zone {
            cond: Cond::Empty,
            wp: 4 * ZB
        }
    );
    // RESET with ZONE COUNT 2: zones 2 and 3; FINISH ALL: the closed ones.
    rig.zone_out(RESET, 2 * ZB, 2, false).good();
    let z = rig.zones();
    assert_eq!((z[2].cond, z[3].cond), (Cond::Empty, Cond::Empty));
    rig.zone_out(FINISH, 0, 0, true).good();
    let z = rig.zones();
    let conds: Vec<Cond> = z.iter().map(|z| z.cond).collect();
    assert_eq!(
        conds,
        [
            Cond::NotWp,
            Cond::NotWp,
            Cond::Empty,
            Cond::Empty,
            Cond::Empty,
            Cond::Full,
            Cond::Full,
            Cond::Full
        ],
        "FINISH ALL leaves EMPTY zones alone"
    );
    // RESET ALL: every sequential zone EMPTY (the full ones' blocks zeroed
    // in the file, every one reading as zeros); the conventional data stays.
    let conv = rig.bytes()[..2 * ZB as usize * BS].to_vec();
    rig.zone_out(RESET, 0, 0, true).good();
    assert!(rig.zones()[2..].iter().all(|z| z.cond == Cond::Empty));
    let b = rig.bytes();
    assert_eq!(&b[..conv.len()], &conv[..]);
    let z5 = (5 * ZB) as usize * BS;
    assert!(b[z5..].iter().all(|&x| x == 0), "zones 5..7 zeroed");
    let r = rig.read(2 * ZB, 6 * ZB as u32);
    assert!(
        r.good().data.iter().all(|&x| x == 0),
        "sequential zones read zeros"
    );
}

#[test]
fn zone_state_survives_a_restart_after_sync_and_a_crash_loses_only_what_was_not_synced() {
    let mut rig = Rig::new("persist");
    rig.write(2 * ZB, 5, 0x21).good();
    rig.zone_out(OPEN, 3 * ZB, 0, false).good(); // ZBC OUT writes the state
    rig.write(3 * ZB, 1, 0x31).good();
    rig.run(&cdb16(0x91, 0, 0), &[], 0).good(); // SYNCHRONIZE CACHE(16)
    rig.write(2 * ZB + 5, 1, 0x22).good(); // not synchronized
    rig.crash();
    let z = rig.zones();
    assert_eq!(
        z[2],
        Zone {
            cond: Cond::Closed,
            wp: 2 * ZB + 5
        },
        "open zones close at power on"
    );
    assert_eq!(
        z[3],
        Zone {
            cond: Cond::Closed,
            wp: 3 * ZB + 1
        }
    );
    // The block written after the sync is past the saved write pointer:
    // zeros, and the next write at the write pointer goes there.
    assert!(rig.read(2 * ZB + 5, 1).good().data.iter().all(|&b| b == 0));
    rig.write(2 * ZB + 5, 1, 0x23).good();
    // A FUA write makes the state durable too.
    let mut fua = cdb16(0x8a, 2 * ZB + 6, 1);
    fua[1] = 0x08;
    rig.run(&fua, &[0x24; BS], 0).good();
    rig.crash();
    assert_eq!(rig.zones()[2].wp, 2 * ZB + 7);
    assert!(rig
        .read(2 * ZB + 5, 1)
        .good()
        .data
        .iter()
        .all(|&b| b == 0x23));
}

#[test]
fn a_torn_newest_slot_falls_back_to_the_other_and_both_torn_is_an_error() {
    let mut rig = Rig::new("torn");
    rig.write(2 * ZB, 1, 0x21).good();
    rig.run(&cdb16(0x91, 0, 0), &[], 0).good();
    rig.write(2 * ZB + 1, 1, 0x21).good();
    rig.run(&cdb16(0x91, 0, 0), &[], 0).good();
    rig.crash();
    let slot = zbc::Zones::slot_len(ZONES as u32) as usize;
    let good = fs::read(&rig.state).unwrap();
    assert_eq!(good.len(), 2 * slot);
    // The newest slot (higher generation) has write pointer 2; tear it.
    let gen = |s: &[u8]| u64::from_le_bytes(s[16..24].try_into().unwrap());
    let newest = if gen(&good[..slot]) > gen(&good[slot..]) {
        0
    } else {
        1
    };
    let mut torn = good.clone();
    torn[newest * slot + 64 + 16 * 2 + 8] ^= 0xff;
    fs::write(&rig.state, &torn).unwrap();
    assert_eq!(rig.zones()[2].wp, 2 * ZB + 1, "the older slot");
    rig.crash();
    torn[(1 - newest) * slot + 40] ^= 1;
    fs::write(&rig.state, &torn).unwrap();
    let e = zbc::Zones::open(&rig.state, geo(), false, false)
        .err()
        .unwrap();
    assert!(e.contains("corrupt") && e.contains("CRC"), "{e}");
}

// ---- The daemon's start-up refusals ----

/// The example binary, built by cargo for this test run (same profile and
/// target directory).
fn example_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut c = Command::new(cargo);
        c.args(["build", "--quiet", "--example", "tcmu_file", "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.ends_with("release") {
            c.arg("--release");
        }
        let st = c.status().unwrap();
        assert!(st.success(), "cargo build --example tcmu_file");
        profile_dir.join("examples/tcmu_file")
    })
    .clone()
}

/// Run the daemon on `backing` with `args`; its exit code and stderr.
fn start(backing: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(example_bin())
        .arg("--file")
        .arg(backing)
        .args(["--name", "rs_tcmu_zbc_test", "--zbc"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn start_up_refuses_a_zone_state_that_does_not_fit_or_is_corrupt() {
    let rig = Rig::new("startup");
    let zone = format!("{}", ZB as usize * BS);
    let base = [
        "--zone-size",
        &zone,
        "--conventional-zones",
        "2",
        "--max-open-zones",
        "2",
    ];
    // A state file of this geometry, then the daemon with others.
    zbc::Zones::open(&rig.state, geo(), false, false).unwrap();
    let state = fs::read(&rig.state).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--conventional-zones", "3"], "3 conventional"),
        (&["--max-open-zones", "4"], "4 open at most"),
        (&["--zone-size", "16K"], "zones of 32 blocks"),
    ];
    for (over, want) in cases {
        let mut a: Vec<&str> = base.to_vec();
        for pair in over.chunks(2) {
            let i = a.iter().position(|&x| x == pair[0]).unwrap();
            a[i + 1] = pair[1];
        }
        let (code, err) = start(&rig.backing, &a);
        assert_eq!(code, Some(2), "{over:?}: {err}");
        assert!(
            err.contains("zone state") && err.contains(want),
            "{over:?}: {err}"
        );
        assert_eq!(
            fs::read(&rig.state).unwrap(),
            state,
            "the state file is left alone"
        );
    }
    // The backing file grew by a zone: the state is of another device.
    let bigger = rig.dir.join("bigger");
    fs::write(&bigger, vec![0u8; (BYTES + ZB * BS as u64) as usize]).unwrap();
    let bigger_state = rig.dir.join("bigger.zones");
    fs::copy(&rig.state, &bigger_state).unwrap();
    let (code, err) = start(&bigger, &base);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("device of {BYTES} bytes")), "{err}");
    // Not a whole number of zones.
    let runt = rig.dir.join("runt");
    fs::write(&runt, vec![0u8; BYTES as usize + BS]).unwrap();
    let (code, err) = start(&runt, &base);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a whole number"), "{err}");
    assert!(
        !rig.dir.join("runt.zones").exists(),
        "no state file made for a refused geometry"
    );
    // Both slots corrupt; then a file that is no zone state at all.
    let mut bad = state.clone();
    let slot = zbc::Zones::slot_len(ZONES as u32) as usize;
    bad[64 + 16 * 3] = 0x04; // a condition changed under the CRC
    bad[slot + 12] ^= 0x40;
    fs::write(&rig.state, &bad).unwrap();
    let (code, err) = start(&rig.backing, &base);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("corrupt") && err.contains("CRC"), "{err}");
    fs::write(&rig.state, b"not a zone state\n").unwrap();
    let (code, err) = start(&rig.backing, &base);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("magic"), "{err}");
    // A valid CRC over a record that breaks the rules (an EMPTY zone whose
    // write pointer is not its start).
    let mut rules = state.clone();
    rules[64 + 16 * 4 + 8] = 1;
    rules[60..64].fill(0);
    let len = u32::from_le_bytes(rules[12..16].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&rules[..len]);
    rules[60..64].copy_from_slice(&crc.to_le_bytes());
    fs::write(&rig.state, &rules).unwrap();
    let (code, err) = start(&rig.backing, &base);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("zone 4") && err.contains("Empty"), "{err}");
    // Zone options without --zbc: a usage error.
    let out = Command::new(example_bin())
        .args(["--file", "/nonexistent", "--zone-size", "1M"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--zbc"));
}

/// A start-up that fails leaves nothing behind: the zone geometry a new
/// backing file's size must satisfy is checked before the file is created,
/// a `--size` that differs from an existing file is refused (never silently
/// ignored), and a new file the daemon never got to serve is removed.
#[test]
fn failed_start_ups_create_nothing_and_a_different_size_is_refused() {
    let dir = std::env::temp_dir().join(format!("tcmu-zbc-create-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let new = dir.join("new.img");
    let state = dir.join("new.img.zones");
    for (flags, want) in [
        (
            &["--size", "256M", "--zone-size", "512M"][..],
            "not a whole number",
        ),
        (&["--size", "256M", "--zone-size", "48M"], "a power of two"),
        (
            &[
                "--size",
                "64M",
                "--zone-size",
                "16M",
                "--conventional-zones",
                "4",
            ],
            "--conventional-zones 4",
        ),
        (
            &[
                "--size",
                "64M",
                "--zone-size",
                "16M",
                "--max-open-zones",
                "0",
            ],
            "--max-open-zones",
        ),
    ] {
        let (code, err) = start(&new, flags);
        assert_eq!(code, Some(2), "{flags:?}: {err}");
        assert!(err.contains(want), "{flags:?}: want {want:?} in {err}");
        assert!(
            !new.exists() && !state.exists(),
            "{flags:?} left files: {err}"
        );
    }
    // An existing file keeps its size: another --size is refused, with the fix.
    let old = dir.join("old.img");
    fs::File::create(&old)
        .and_then(|f| f.set_len(256 << 20))
        .unwrap();
    let (code, err) = start(&old, &["--size", "4G", "--zone-size", "64M"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("already 268435456 bytes") && err.contains("truncate -s"),
        "{err}"
    );
    assert_eq!(fs::metadata(&old).unwrap().len(), 256 << 20);
    // Where the kernel's target is missing (as on the project's hosts), the
    // daemon fails after creating a valid new file: it removes it again.
    if !Path::new("/sys/kernel/config/target/core").exists() {
        let (code, err) = start(&new, &["--size", "64M", "--zone-size", "16M"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("created by this run and never served"),
            "{err}"
        );
        assert!(!new.exists() && !state.exists(), "left files: {err}");
        assert!(
            !err.contains(" commands ("),
            "a run summary of nothing: {err}"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}
