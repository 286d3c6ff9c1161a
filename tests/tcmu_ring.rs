//! Host checks of examples/tcmu_file's ring handling and SCSI emulation: a
//! TCMU ring laid out in a plain file (mapped like /dev/uioN), with good and
//! malformed entries, served by the example's handler over a backing file
//! or a loop device. The example's own unit tests (CDB decoding, response
//! builders, the errno table) run in this binary too.
//!
//! The errno and block-device tests need root (tmpfs mounts, loop devices;
//! the project's test machines are root) and fail, not skip, without it.

#![allow(dead_code)] // the example's modules, partly used here

#[path = "../examples/tcmu_file/disk.rs"]
mod disk;
#[path = "../examples/tcmu_file/handler.rs"]
mod handler;
#[path = "../examples/tcmu_file/pages.rs"]
mod pages;
#[path = "../examples/tcmu_file/ring.rs"]
mod ring;
#[path = "../examples/tcmu_file/scsi.rs"]
mod scsi;

use reclaim_scope::NoFsFile;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

const CMDR_OFF: usize = 128;
const CMDR_SIZE: usize = 16384;
const DATA: usize = CMDR_OFF + CMDR_SIZE;
const MAP: usize = 512 << 10;
const BLOCKS: u64 = 2048;

struct Rig {
    dir: PathBuf,
    map: Vec<u8>,
    /// Next free byte of the command ring (relative to CMDR_OFF).
    head: usize,
    /// Opcodes the last `serve` refused with ILLEGAL REQUEST.
    refused: Vec<u8>,
    /// The backing store (default: a sparse file in `dir`).
    backing: PathBuf,
    blocks: u64,
    read_only: bool,
    /// The disk's I/O error count after the last `serve`.
    io_errors: u64,
}

impl Rig {
    fn new(tag: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!("tcmu-ring-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut map = vec![0u8; MAP];
        map[0..2].copy_from_slice(&2u16.to_ne_bytes());
        map[4..8].copy_from_slice(&(CMDR_OFF as u32).to_ne_bytes());
        map[8..12].copy_from_slice(&(CMDR_SIZE as u32).to_ne_bytes());
        Rig {
            backing: dir.join("disk"),
            dir,
            map,
            head: 0,
            refused: Vec::new(),
            blocks: BLOCKS,
            read_only: false,
            io_errors: 0,
        }
    }

    /// Fill the data area with garbage (stale bytes a response must not
    /// leak).
    fn dirty(&mut self) {
        for (i, b) in self.map[DATA..].iter_mut().enumerate() {
            *b = 0xa5 ^ (i as u8);
        }
    }

    /// A command with one data buffer of `len` bytes at `DATA + at`.
    fn cmd(&mut self, cdb: &[u8], at: usize, len: usize) -> usize {
        self.push_cmd(cdb, &[((DATA + at) as u64, len as u64)])
    }

    /// Append a raw entry; its offset in the ring.
    fn push_raw(&mut self, entry: &[u8]) -> usize {
        let at = self.head;
        self.map[CMDR_OFF + at..CMDR_OFF + at + entry.len()].copy_from_slice(entry);
        self.head += entry.len();
        at
    }

    /// A command entry: `iovs` are (offset, len) in the mapping; the CDB
    /// follows the iovecs inside the entry.
    fn push_cmd(&mut self, cdb: &[u8], iovs: &[(u64, u64)]) -> usize {
        let cdb_rel = 48 + iovs.len() * 16;
        let len = (cdb_rel + cdb.len()).max(112).next_multiple_of(8);
        let mut e = vec![0u8; len];
        e[0..4].copy_from_slice(&(len as u32 | 1).to_ne_bytes());
        e[8..12].copy_from_slice(&(iovs.len() as u32).to_ne_bytes());
        let cdb_off = (CMDR_OFF + self.head + cdb_rel) as u64;
        e[24..32].copy_from_slice(&cdb_off.to_ne_bytes());
        for (i, (b, l)) in iovs.iter().enumerate() {
            e[48 + i * 16..56 + i * 16].copy_from_slice(&b.to_ne_bytes());
            e[56 + i * 16..64 + i * 16].copy_from_slice(&l.to_ne_bytes());
        }
        e[cdb_rel..cdb_rel + cdb.len()].copy_from_slice(cdb);
        self.push_raw(&e)
    }

    /// Publish head, serve until the ring is empty; the mapping afterwards
    /// and the backing file.
    fn serve(&mut self) -> (Vec<u8>, Vec<u8>) {
        self.map[12..16].copy_from_slice(&(self.head as u32).to_ne_bytes());
        let ring_path = self.dir.join("ring");
        fs::write(&ring_path, &self.map).unwrap();
        let backing = self.backing.clone();
        if !backing.exists() {
            fs::File::create(&backing)
                .unwrap()
                .set_len(self.blocks * 512)
                .unwrap();
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .open(&backing)
            .unwrap();
        let disk = disk::Disk {
            file: NoFsFile::new(file),
            unit: pages::Unit {
                blocks: self.blocks,
                block_size: 512,
                serial: "0123456789abcdef".into(),
                naa: 0x5001_4050_0000_0001,
                read_only: self.read_only,
                max_transfer: 1024,
                timeout_secs: 30,
            },
            plain_io: false,
            counters: Default::default(),
        };
        {
            let r = ring::Ring::open(&ring_path, MAP).unwrap();
            // stop already set: one pass over the ring, one kick, return.
            handler::serve(&r, &disk, &AtomicBool::new(true)).unwrap();
        }
        self.refused = disk.counters.refused_opcodes();
        self.io_errors = disk
            .counters
            .io_errors
            .load(std::sync::atomic::Ordering::Relaxed);
        let after = fs::read(&ring_path).unwrap();
        self.map[..].copy_from_slice(&after[..MAP]);
        let disk = if self.backing.starts_with("/dev") {
            Vec::new()
        } else {
            fs::read(&backing).unwrap()
        };
        (after, disk)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn status(map: &[u8], at: usize) -> u8 {
    map[CMDR_OFF + at + 8]
}
fn sense(map: &[u8], at: usize) -> (u8, u8) {
    let s = &map[CMDR_OFF + at + 16..];
    assert_eq!(s[0], 0x70, "fixed-format sense");
    (s[2], s[12])
}
/// The 18 bytes of fixed-format sense of the entry at `at`.
fn sense18(map: &[u8], at: usize) -> [u8; 18] {
    map[CMDR_OFF + at + 16..CMDR_OFF + at + 34]
        .try_into()
        .unwrap()
}
/// (key, ASC, ASCQ) of a CHECK CONDITION.
fn check(map: &[u8], at: usize) -> (u8, u8, u8) {
    assert_eq!(status(map, at), 2, "CHECK CONDITION expected");
    let s = sense18(map, at);
    assert_eq!(s[0] & 0x7f, 0x70, "fixed-format sense");
    (s[2], s[12], s[13])
}
/// rsp.read_len, if the entry carries TCMU_UFLAG_READ_LEN.
fn read_len(map: &[u8], at: usize) -> Option<usize> {
    let e = CMDR_OFF + at;
    (map[e + 7] & 2 != 0)
        .then(|| u32::from_ne_bytes(map[e + 12..e + 16].try_into().unwrap()) as usize)
}
fn tail(map: &[u8]) -> usize {
    u32::from_ne_bytes(map[64..68].try_into().unwrap()) as usize
}

#[test]
fn good_commands_roundtrip_and_bad_ones_get_check_condition() {
    let mut rig = Rig::new("mixed");
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    let w_buf = DATA as u64;
    rig.map[DATA..DATA + 1024].copy_from_slice(&pattern);
    // A PAD entry first: skipped.
    let mut pad = vec![0u8; 64];
    pad[0..4].copy_from_slice(&64u32.to_ne_bytes());
    rig.push_raw(&pad);
    // WRITE(10) LBA 5, 2 blocks, from two iovecs.
    let write = rig.push_cmd(
        &[0x2a, 0, 0, 0, 0, 5, 0, 0, 2, 0],
        &[(w_buf, 300), (w_buf + 300, 724)],
    );
    // READ(16) of the same blocks into another buffer.
    let r_buf = DATA + 8192;
    let read = rig.push_cmd(
        &[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0],
        &[(r_buf as u64, 1024)],
    );
    let inquiry = rig.push_cmd(&[0x12, 0, 0, 0, 36, 0], &[(DATA as u64 + 16384, 36)]);
    let vpd83 = rig.push_cmd(&[0x12, 1, 0x83, 0, 64, 0], &[(DATA as u64 + 20480, 64)]);
    let cap16 = rig.push_cmd(
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[(DATA as u64 + 24576, 32)],
    );
    // Unknown opcode (FORMAT UNIT).
    let unknown = rig.push_cmd(&[0x04, 0, 0, 0, 0, 0], &[]);
    // READ(10) past the end.
    let oob = rig.push_cmd(
        &[0x28, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0],
        &[(DATA as u64, 1024)],
    );
    // WRITE(10) whose iovec points into the command ring: refused, nothing
    // written.
    let evil = rig.push_cmd(
        &[0x2a, 0, 0, 0, 0, 9, 0, 0, 1, 0],
        &[(CMDR_OFF as u64, 512)],
    );
    // WRITE(10) whose iovec runs past the mapping.
    let past = rig.push_cmd(
        &[0x2a, 0, 0, 0, 0, 10, 0, 0, 1, 0],
        &[((MAP - 256) as u64, 512)],
    );
    // An iovec count far beyond the entry.
    let many = rig.push_cmd(&[0x00, 0, 0, 0, 0, 0], &[]);
    let m = CMDR_OFF + many + 8;
    rig.map[m..m + 4].copy_from_slice(&0x1000_0000u32.to_ne_bytes());
    // Data length not matching the CDB.
    let short = rig.push_cmd(&[0x28, 0, 0, 0, 0, 0, 0, 0, 4, 0], &[(DATA as u64, 512)]);

    let (map, disk) = rig.serve();
    assert_eq!(tail(&map), rig.head, "every entry completed");
    assert_eq!(status(&map, write), 0);
    assert_eq!(&disk[5 * 512..7 * 512], &pattern[..]);
    assert_eq!(status(&map, read), 0);
    assert_eq!(&map[r_buf..r_buf + 1024], &pattern[..]);
    assert_eq!(status(&map, inquiry), 0);
    assert_eq!(&map[DATA + 16384 + 8..DATA + 16384 + 16], pages::VENDOR);
    assert_eq!(status(&map, vpd83), 0);
    assert_eq!(&map[DATA + 20480..DATA + 20482], &[0x00, 0x83]);
    assert_eq!(status(&map, cap16), 0);
    assert_eq!(
        &map[DATA + 24576..DATA + 24588],
        &[0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0]
    );
    for (what, at, key, asc) in [
        ("unknown opcode", unknown, 0x05, 0x20),
        ("LBA out of range", oob, 0x05, 0x21),
        ("iovec in the command ring", evil, 0x04, 0x44),
        ("iovec past the mapping", past, 0x04, 0x44),
        ("iovec count beyond the entry", many, 0x04, 0x44),
        ("data length not the CDB's", short, 0x05, 0x24),
    ] {
        assert_eq!(status(&map, at), 2, "{what}: CHECK CONDITION");
        assert_eq!(sense(&map, at), (key, asc), "{what}: sense key, ASC");
    }
    assert!(
        disk[9 * 512..11 * 512].iter().all(|&b| b == 0),
        "a refused write reached the backing file"
    );
    // ILLEGAL REQUEST answers are remembered per opcode (FORMAT UNIT, READ(10)
    // past the end and with a short buffer); malformed entries are not.
    assert_eq!(rig.refused, vec![0x04, 0x28]);
}

#[test]
fn zero_length_entry_is_skipped_to_head_without_touching_anything() {
    let mut rig = Rig::new("zero");
    rig.push_raw(&[0u8; 8]); // len 0, op PAD
    let write = rig.push_cmd(&[0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[(DATA as u64, 512)]);
    rig.map[DATA..DATA + 512].fill(0xee);
    let (map, disk) = rig.serve();
    assert_eq!(tail(&map), rig.head, "skipped to head");
    let iov_cnt = &map[CMDR_OFF + write + 8..CMDR_OFF + write + 12];
    assert_eq!(
        iov_cnt,
        1u32.to_ne_bytes(),
        "not executed: request left as it was"
    );
    assert!(disk.iter().all(|&b| b == 0), "nothing written");

    // An entry claiming more than the rest of the ring.
    let mut rig = Rig::new("long");
    let mut e = vec![0u8; 64];
    e[0..4].copy_from_slice(&((CMDR_SIZE as u32 * 2) | 1).to_ne_bytes());
    rig.push_raw(&e);
    let (map, _) = rig.serve();
    assert_eq!(tail(&map), rig.head, "skipped to head");
}

#[test]
fn write_same_and_unmap_zero_punch_and_repeat_within_the_range() {
    let mut rig = Rig::new("provisioning");
    const B: usize = 512;
    let p: Vec<u8> = (0..8 * B).map(|i| (i * 13 + 1) as u8).collect();
    let q: Vec<u8> = (0..B).map(|i| (i * 3 + 7) as u8 | 1).collect();
    let (p_at, q_at, z_at, u_at, bad_at) =
        (DATA, DATA + 8192, DATA + 12288, DATA + 16384, DATA + 20480);
    rig.map[p_at..p_at + 8 * B].copy_from_slice(&p);
    rig.map[q_at..q_at + B].copy_from_slice(&q);
    // z_at: one zero block (the map starts zeroed).
    let desc = |lba: u64, n: u32| {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&lba.to_be_bytes());
        d[8..12].copy_from_slice(&n.to_be_bytes());
        d
    };
    let list = |descs: &[[u8; 16]]| {
        let mut l = vec![0u8; 8];
        l[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
        l[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
        for d in descs {
            l.extend_from_slice(d);
        }
        l
    };
    let good = list(&[desc(24, 2)]);
    rig.map[u_at..u_at + good.len()].copy_from_slice(&good);
    // The first descriptor is fine, the second runs past the end: nothing
    // may be unmapped.
    let bad = list(&[desc(26, 1), desc(BLOCKS, 1)]);
    rig.map[bad_at..bad_at + bad.len()].copy_from_slice(&bad);

    // WRITE(10) LBA 20, 8 blocks of P.
    let w = rig.push_cmd(
        &[0x2a, 0, 0, 0, 0, 20, 0, 0, 8, 0],
        &[(p_at as u64, 8 * B as u64)],
    );
    // WRITE SAME(16) LBA 40, 8 blocks of Q.
    let ws16 = rig.push_cmd(
        &[0x93, 0, 0, 0, 0, 0, 0, 0, 0, 40, 0, 0, 0, 8, 0, 0],
        &[(q_at as u64, B as u64)],
    );
    // WRITE SAME(10) with UNMAP, a zero block, LBA 20, 4 blocks.
    let ws10 = rig.push_cmd(
        &[0x41, 0x08, 0, 0, 0, 20, 0, 0, 4, 0],
        &[(z_at as u64, B as u64)],
    );
    // UNMAP LBA 24, 2 blocks.
    let un = rig.push_cmd(
        &[0x42, 0, 0, 0, 0, 0, 0, 0, good.len() as u8, 0],
        &[(u_at as u64, good.len() as u64)],
    );
    let un_bad = rig.push_cmd(
        &[0x42, 0, 0, 0, 0, 0, 0, 0, bad.len() as u8, 0],
        &[(bad_at as u64, bad.len() as u64)],
    );
    // WRITE SAME of 0 blocks (WSNZ) and past the end.
    let ws_zero = rig.push_cmd(
        &[0x41, 0, 0, 0, 0, 60, 0, 0, 0, 0],
        &[(q_at as u64, B as u64)],
    );
    let ws_oob = rig.push_cmd(
        &[0x93, 0, 0, 0, 0, 0, 0, 0x07, 0xfe, 0, 0, 0, 4, 0, 0, 0],
        &[(q_at as u64, B as u64)],
    );
    // VPD 0xb2 and READ CAPACITY(16): thin provisioning advertised.
    let vpd_b2 = rig.push_cmd(&[0x12, 1, 0xb2, 0, 8, 0], &[(DATA as u64 + 24576, 8)]);
    let rc16 = rig.push_cmd(
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[(DATA as u64 + 28672, 32)],
    );

    let (map, disk) = rig.serve();
    assert_eq!(tail(&map), rig.head, "every entry completed");
    for (what, at) in [
        ("write", w),
        ("write same 16", ws16),
        ("write same 10 unmap", ws10),
        ("unmap", un),
        ("vpd b2", vpd_b2),
        ("rc16", rc16),
    ] {
        assert_eq!(status(&map, at), 0, "{what}: GOOD");
    }
    for (what, at, asc) in [
        ("unmap past the end", un_bad, 0x21),
        ("write same of 0 blocks", ws_zero, 0x24),
        ("write same past the end", ws_oob, 0x21),
    ] {
        assert_eq!(status(&map, at), 2, "{what}: CHECK CONDITION");
        assert_eq!(sense(&map, at), (0x05, asc), "{what}");
    }
    let blk = |lba: usize| &disk[lba * B..(lba + 1) * B];
    for lba in 20..26 {
        assert!(blk(lba).iter().all(|&b| b == 0), "LBA {lba} zeroed");
    }
    for lba in 26..28 {
        assert_eq!(
            blk(lba),
            &p[(lba - 20) * B..(lba - 19) * B],
            "LBA {lba} kept"
        );
    }
    for lba in 40..48 {
        assert_eq!(blk(lba), &q[..], "LBA {lba} is the repeated block");
    }
    assert!(
        blk(39).iter().chain(blk(48)).all(|&b| b == 0),
        "nothing outside the range"
    );
    assert!(
        blk(60).iter().all(|&b| b == 0),
        "a refused WRITE SAME wrote nothing"
    );
    let b2 = &map[DATA + 24576..DATA + 24584];
    assert_eq!(
        (b2[1], b2[5] & 0xe0, b2[6] & 0x07),
        (0xb2, 0xe0, 0x02),
        "LBPU|LBPWS|LBPWS10, thin"
    );
    assert_eq!(map[DATA + 28672 + 14] & 0xc0, 0xc0, "RC16: LBPME|LBPRZ");
}
