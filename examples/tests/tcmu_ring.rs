//! Host checks of examples/tcmu_file's ring handling and SCSI emulation: a
//! TCMU ring laid out in a plain file (mapped like /dev/uioN), with good and
//! malformed entries, served by the example's handler over a backing file
//! or a loop device. The example's own unit tests (CDB decoding, response
//! builders, the errno table) are the library's (`cargo test --lib`).
//!
//! The errno and block-device tests need root (tmpfs mounts, loop devices;
//! the project's test machines are root) and fail, not skip, without it.

use reclaim_scope::NoFsFile;
use reclaim_scope_examples::tcmu::{disk, handler, pages, ring};
use reclaim_scope_examples::testkit::{require_root, run};
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
                max_open_zones: None,
            },
            plain_io: false,
            counters: Default::default(),
            zones: None,
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

/// Big-endian CDB helpers.
fn cdb10(op: u8, b1: u8, lba: u32, n: u16) -> Vec<u8> {
    let mut c = vec![op, b1, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}
fn cdb16(op: u8, b1: u8, lba: u64, n: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}
fn cdb12(op: u8, b1: u8, lba: u32, n: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = op;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&n.to_be_bytes());
    c
}

#[test]
fn data_in_is_exactly_the_allocation_length_fresh_and_zero_padded() {
    let mut rig = Rig::new("data-in");
    rig.dirty();
    const BUF: usize = 4096;
    let mut cmds = Vec::new();
    // (what, cdb, buffer length, bytes the response has)
    let cases: Vec<(&str, Vec<u8>, usize, usize)> = vec![
        ("standard inquiry", vec![0x12, 0, 0, 0x01, 0x00, 0], 256, 96),
        (
            "inquiry, allocation 20",
            vec![0x12, 0, 0, 0, 20, 0],
            255,
            20,
        ),
        ("vpd 00", vec![0x12, 1, 0x00, 0, 255, 0], 255, 4 + 6),
        ("vpd 80", vec![0x12, 1, 0x80, 0, 255, 0], 255, 4 + 16),
        ("vpd 83", vec![0x12, 1, 0x83, 0, 255, 0], 255, 4 + 12 + 28),
        ("vpd b0", vec![0x12, 1, 0xb0, 0, 255, 0], 255, 64),
        ("vpd b1", vec![0x12, 1, 0xb1, 0, 255, 0], 255, 64),
        ("vpd b2", vec![0x12, 1, 0xb2, 0, 255, 0], 255, 8),
        ("mode sense(6) all", vec![0x1a, 0, 0x3f, 0, 255, 0], 255, 44),
        (
            "mode sense(10) caching, dbd",
            vec![0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0],
            255,
            28,
        ),
        (
            "read capacity(10)",
            vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            64,
            8,
        ),
        (
            "read capacity(16), allocation 12",
            cdb16(0x9e, 0x10, 0, 12),
            64,
            12,
        ),
        ("request sense", vec![0x03, 0, 0, 0, 252, 0], 252, 18),
        (
            "request sense, descriptor",
            vec![0x03, 1, 0, 0, 252, 0],
            252,
            8,
        ),
        ("report luns", cdb12(0xa0, 0, 0, 4096), 4096, 16),
        (
            "report supported opcodes, one",
            {
                let mut c = vec![0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 0, 0xff, 0, 0];
                c[6..10].copy_from_slice(&255u32.to_be_bytes());
                c
            },
            255,
            14,
        ),
    ];
    for (i, (what, cdb, len, _)) in cases.iter().enumerate() {
        let at = rig.cmd(cdb, i * BUF, *len);
        cmds.push((at, what));
    }
    let (map, _) = rig.serve();
    for (i, ((at, what), (_, _, len, want))) in cmds.iter().zip(&cases).enumerate() {
        assert_eq!(status(&map, *at), 0, "{what}: GOOD");
        assert_eq!(read_len(&map, *at), Some(*want), "{what}: read_len");
        let buf = &map[DATA + i * BUF..DATA + i * BUF + len];
        assert!(
            buf[*want..].iter().all(|&b| b == 0),
            "{what}: stale bytes after the response"
        );
        let total = match buf[0] {
            // INQUIRY, VPD: their own length fields.
            _ if what.starts_with("standard") => buf[4] as usize + 5,
            _ if what.starts_with("vpd") => u16::from_be_bytes([buf[2], buf[3]]) as usize + 4,
            _ if what.starts_with("mode sense(6)") => buf[0] as usize + 1,
            _ if what.starts_with("mode sense(10)") => {
                u16::from_be_bytes([buf[0], buf[1]]) as usize + 2
            }
            _ => *want,
        };
        assert_eq!(total, *want, "{what}: length field");
    }
    let inq = &map[DATA..DATA + 96];
    assert_eq!(&inq[8..16], pages::VENDOR);
    assert!(inq[36..58].iter().chain(&inq[64..]).all(|&b| b == 0));
    let b1 = &map[DATA + 6 * BUF..DATA + 6 * BUF + 64];
    assert_eq!(
        (b1[1], b1[3], b1[8] & 3),
        (0xb1, 0x3c, 3),
        "VPD b1: FUAB, VBULS"
    );
    let ms = &map[DATA + 8 * BUF..DATA + 8 * BUF + 44];
    assert_eq!((ms[12], ms[32]), (0x08, 0x0a), "caching and control pages");
}

#[test]
fn reserved_and_protection_fields_are_refused_with_field_pointers() {
    let mut rig = Rig::new("fields");
    let cases: Vec<(&str, Vec<u8>, usize, [u8; 3])> = vec![
        (
            "READ(10) RDPROTECT",
            cdb10(0x28, 0x20, 0, 1),
            512,
            [0xcf, 0, 1],
        ),
        (
            "WRITE(16) WRPROTECT",
            cdb16(0x8a, 0x40, 0, 1),
            512,
            [0xcf, 0, 1],
        ),
        (
            "WRITE(12) WRPROTECT",
            cdb12(0xaa, 0xe0, 0, 1),
            512,
            [0xcf, 0, 1],
        ),
        (
            "WRITE SAME(10) WRPROTECT",
            cdb10(0x41, 0x20, 0, 1),
            512,
            [0xcf, 0, 1],
        ),
        (
            "VERIFY(16) VRPROTECT",
            cdb16(0x8f, 0x20, 0, 1),
            0,
            [0xcf, 0, 1],
        ),
        (
            "WRITE SAME(16) ANCHOR",
            cdb16(0x93, 0x10, 0, 1),
            512,
            [0xcc, 0, 1],
        ),
        ("READ(10) RARC", cdb10(0x28, 0x04, 0, 1), 512, [0xca, 0, 1]),
        (
            "TEST UNIT READY NACA",
            vec![0, 0, 0, 0, 0, 0x04],
            0,
            [0xca, 0, 5],
        ),
        (
            "INQUIRY CMDDT",
            vec![0x12, 0x02, 0, 0, 36, 0],
            36,
            [0xc9, 0, 1],
        ),
        (
            "INQUIRY page without EVPD",
            vec![0x12, 0, 0x80, 0, 36, 0],
            36,
            [0xc0, 0, 2],
        ),
        ("VPD 0x86", vec![0x12, 1, 0x86, 0, 36, 0], 36, [0xc0, 0, 2]),
        (
            "MODE SENSE page 0x1c",
            vec![0x1a, 0, 0x1c, 0, 255, 0],
            255,
            [0xcd, 0, 2],
        ),
        (
            "MODE SENSE subpage 1",
            vec![0x1a, 0, 0x08, 1, 255, 0],
            255,
            [0xc0, 0, 3],
        ),
        ("READ(16) DLD2", cdb16(0x88, 0x01, 0, 1), 512, [0xc8, 0, 1]),
        (
            "READ(10) over the maximum transfer",
            cdb10(0x28, 0, 0, 1025),
            512,
            [0xc0, 0, 7],
        ),
        (
            "WRITE SAME of 0 blocks",
            cdb10(0x41, 0, 0, 0),
            512,
            [0xc0, 0, 7],
        ),
        (
            "READ CAPACITY(16) bad SA",
            cdb16(0x9e, 0x11, 0, 32),
            32,
            [0xcc, 0, 1],
        ),
        (
            "RSOC reporting options 4",
            vec![0xa3, 0x0c, 0x04, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            256,
            [0xca, 0, 2],
        ),
    ];
    let ats: Vec<usize> = cases
        .iter()
        .map(|(_, cdb, len, _)| rig.cmd(cdb, 0, (*len).max(1)))
        .collect();
    let saved = rig.cmd(&[0x5a, 0, 0xc8, 0, 0, 0, 0, 0, 255, 0], 0, 255);
    let unknown_sa = rig.cmd(&[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 0, 256);
    let (map, disk) = rig.serve();
    for ((what, _, _, sks), at) in cases.iter().zip(&ats) {
        assert_eq!(
            check(&map, *at),
            (0x05, 0x24, 0),
            "{what}: INVALID FIELD IN CDB"
        );
        assert_eq!(&sense18(&map, *at)[15..18], sks, "{what}: field pointer");
        assert_eq!(read_len(&map, *at), None, "{what}: no data-in");
    }
    assert_eq!(check(&map, saved), (0x05, 0x39, 0), "saved values");
    assert_eq!(&sense18(&map, saved)[15..18], &[0xcf, 0, 2]);
    assert_eq!(
        check(&map, unknown_sa),
        (0x05, 0x24, 0),
        "REPORT TARGET PORT GROUPS"
    );
    assert!(disk.iter().all(|&b| b == 0), "a refused command wrote");
}

#[test]
fn verify_write_and_verify_read_write_12_prefetch_and_sync_fields() {
    let mut rig = Rig::new("verify");
    const B: usize = 512;
    let p: Vec<u8> = (0..4 * B).map(|i| (i * 31 + 5) as u8).collect();
    rig.map[DATA..DATA + 4 * B].copy_from_slice(&p);
    let mut q = p.clone();
    q[3 * B + 17] ^= 0xff;
    rig.map[DATA + 8192..DATA + 8192 + 4 * B].copy_from_slice(&q);
    let mut one = vec![0u8; B];
    one[..4].copy_from_slice(b"ONE!");
    rig.map[DATA + 16384..DATA + 16384 + B].copy_from_slice(&one);
    let w12 = rig.cmd(&cdb12(0xaa, 0x08, 100, 4), 0, 4 * B); // FUA
    let r12 = rig.cmd(&cdb12(0xa8, 0, 100, 4), 32768, 4 * B);
    let v_same = rig.cmd(&cdb10(0x2f, 0x02, 100, 4), 0, 4 * B);
    let v_diff = rig.cmd(&cdb16(0x8f, 0x02, 100, 4), 8192, 4 * B);
    let v_medium = rig.cmd(&cdb10(0x2f, 0, 0, 2048), 0, 1);
    let v_oob = rig.cmd(&cdb10(0x2f, 0, 2047, 2), 0, 1);
    let wv = rig.cmd(&cdb16(0x8e, 0x02, 200, 1), 16384, B);
    let ws = rig.cmd(&cdb16(0x93, 0, 300, 3), 16384, B);
    let v_one = rig.cmd(&cdb10(0x2f, 0x06, 300, 3), 16384, B);
    let v_one_bad = rig.cmd(&cdb10(0x2f, 0x06, 299, 3), 16384, B);
    let ndob = rig.cmd(&cdb16(0x93, 0x01, 301, 1), 0, 0);
    let pf = rig.cmd(&cdb10(0x34, 0x02, 0, 0), 0, 0);
    let pf16_oob = rig.cmd(&cdb16(0x90, 0, 2040, 9), 0, 0);
    let sync = rig.cmd(&cdb16(0x91, 0x02, 10, 0), 0, 0);
    let sync_oob = rig.cmd(&cdb10(0x35, 0, 2048, 0), 0, 0);
    let r6 = rig.cmd(&[0x08, 0, 0, 100, 2, 0], 40960, 2 * B);
    let (map, disk) = rig.serve();
    for (what, at) in [
        ("WRITE(12) FUA", w12),
        ("READ(12)", r12),
        ("VERIFY(10) BYTCHK 01b, equal", v_same),
        ("VERIFY(10) BYTCHK 00b", v_medium),
        ("WRITE AND VERIFY(16)", wv),
        ("WRITE SAME(16)", ws),
        ("VERIFY BYTCHK 11b", v_one),
        ("WRITE SAME(16) NDOB", ndob),
        ("PRE-FETCH(10) to the end", pf),
        ("SYNCHRONIZE CACHE(16)", sync),
        ("READ(6)", r6),
    ] {
        assert_eq!(status(&map, at), 0, "{what}: GOOD");
    }
    assert_eq!(&disk[100 * B..104 * B], &p[..]);
    assert_eq!(&map[DATA + 32768..DATA + 32768 + 4 * B], &p[..]);
    assert_eq!(&map[DATA + 40960..DATA + 40960 + 2 * B], &p[..2 * B]);
    assert_eq!(read_len(&map, r12), Some(4 * B));
    let mc = sense18(&map, v_diff);
    assert_eq!(check(&map, v_diff), (0x0e, 0x1d, 0), "MISCOMPARE");
    assert_eq!(mc[0] & 0x80, 0x80, "INFORMATION valid");
    assert_eq!(
        u32::from_be_bytes(mc[3..7].try_into().unwrap()) as usize,
        3 * B + 17,
        "offset of the first differing byte"
    );
    assert_eq!(check(&map, v_one_bad).0, 0x0e, "LBA 299 is not the block");
    assert_eq!(check(&map, v_oob), (0x05, 0x21, 0));
    assert_eq!(check(&map, pf16_oob), (0x05, 0x21, 0));
    assert_eq!(check(&map, sync_oob), (0x05, 0x21, 0));
    assert_eq!(&disk[200 * B..201 * B], &one[..]);
    for lba in 300..303 {
        let want = if lba == 301 {
            vec![0u8; B]
        } else {
            one.clone()
        };
        assert_eq!(&disk[lba * B..(lba + 1) * B], &want[..], "LBA {lba}");
    }
}

#[test]
fn unmap_parameter_list_is_validated_before_anything_is_unmapped() {
    let mut rig = Rig::new("unmap-list");
    const B: usize = 512;
    let p = vec![0x5au8; 16 * B];
    rig.map[DATA..DATA + p.len()].copy_from_slice(&p);
    let w = rig.cmd(&cdb10(0x2a, 0, 0, 16), 0, 16 * B);
    let list = |descs: &[(u64, u32)], tweak: &dyn Fn(&mut Vec<u8>)| {
        let mut l = vec![0u8; 8];
        l[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
        l[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
        for &(lba, n) in descs {
            l.extend_from_slice(&lba.to_be_bytes());
            l.extend_from_slice(&n.to_be_bytes());
            l.extend_from_slice(&[0; 4]);
        }
        tweak(&mut l);
        l
    };
    let none = |_: &mut Vec<u8>| {};
    type Case = (&'static str, Vec<u8>, (u8, u8), Option<[u8; 3]>);
    let cases: Vec<Case> = vec![
        (
            "reserved header byte",
            list(&[(0, 1)], &|l| l[5] = 1),
            (0x26, 0),
            Some([0x80, 0, 4]),
        ),
        (
            "descriptor over the maximum",
            list(&[(0, 1), (1, 1 << 21)], &none),
            (0x26, 0),
            Some([0x80, 0, 32]),
        ),
        (
            "reserved descriptor bytes",
            list(&[(0, 1)], &|l| l[21] = 1),
            (0x26, 0),
            Some([0x80, 0, 20]),
        ),
        (
            "past the end",
            list(&[(0, 1), (2047, 2)], &none),
            (0x21, 0),
            None,
        ),
        (
            "65 descriptors",
            list(&vec![(0, 1); 65], &none),
            (0x26, 0),
            Some([0x80, 0, 2]),
        ),
        ("list of 4 bytes", vec![0, 6, 0, 0], (0x1a, 0), None),
    ];
    let mut ats = Vec::new();
    for (i, (_, l, _, _)) in cases.iter().enumerate() {
        let at = 16384 + i * 2048;
        rig.map[DATA + at..DATA + at + l.len()].copy_from_slice(l);
        let cdb = cdb10(0x42, 0, 0, l.len() as u16);
        let mut cdb = cdb;
        cdb[2..6].fill(0);
        ats.push(rig.cmd(&cdb, at, l.len()));
    }
    // A truncated last descriptor is ignored; a 0-length list does nothing.
    let partial = list(&[(4, 2), (6, 2)], &|l| l.truncate(8 + 16 + 10));
    let pat = 16384 + 20 * 2048;
    rig.map[DATA + pat..DATA + pat + partial.len()].copy_from_slice(&partial);
    let mut c = cdb10(0x42, 0, 0, partial.len() as u16);
    c[2..6].fill(0);
    let ok = rig.cmd(&c, pat, partial.len());
    let empty = rig.cmd(&[0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, 0);
    let (map, disk) = rig.serve();
    assert_eq!(status(&map, w), 0);
    for ((what, _, (asc, ascq), sks), at) in cases.iter().zip(&ats) {
        assert_eq!(check(&map, *at), (0x05, *asc, *ascq), "{what}");
        if let Some(sks) = sks {
            assert_eq!(
                &sense18(&map, *at)[15..18],
                sks,
                "{what}: parameter pointer"
            );
        }
    }
    assert_eq!((status(&map, ok), status(&map, empty)), (0, 0));
    let blk = |lba: usize| &disk[lba * B..(lba + 1) * B];
    for lba in 0..16 {
        let zero = (4..6).contains(&lba);
        assert_eq!(blk(lba).iter().all(|&b| b == 0), zero, "LBA {lba}");
    }
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);
impl Tmpfs {
    fn new(dir: &Path, size: &str) -> Tmpfs {
        let m = dir.join("tmpfs");
        fs::create_dir_all(&m).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "none",
                m.to_str().unwrap(),
            ],
        );
        Tmpfs(m)
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A loop device over a file, detached on drop.
struct Loop(String);
impl Loop {
    fn new(file: &Path) -> Loop {
        Loop(run("losetup", &["-f", "--show", file.to_str().unwrap()]))
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn enospc_of_the_backing_store_is_data_protect_space_allocation_failed() {
    require_root();
    let mut rig = Rig::new("enospc");
    let t = Tmpfs::new(&rig.dir, "256k");
    rig.backing = t.0.join("disk");
    let chunk = 64 << 10;
    for (i, b) in rig.map[DATA..DATA + chunk].iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    // 8 × 64 KiB into a 256 KiB tmpfs: the later writes find no space.
    let writes: Vec<usize> = (0..8)
        .map(|i| rig.cmd(&cdb10(0x2a, 0, i * 128, 128), 0, chunk))
        .collect();
    let read = rig.cmd(&cdb10(0x28, 0, 0, 128), 65536, chunk);
    let (map, _) = rig.serve();
    assert_eq!(status(&map, writes[0]), 0, "the first write fits");
    let last = *writes.last().unwrap();
    assert_eq!(
        check(&map, last),
        (0x07, 0x27, 0x07),
        "DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT"
    );
    assert!(rig.io_errors >= 1);
    assert_eq!(status(&map, read), 0, "reads still work");
    assert_eq!(
        &map[DATA + 65536..DATA + 65536 + chunk],
        &map[DATA..DATA + chunk]
    );
}

#[test]
fn a_loop_device_is_served_at_its_size_and_a_read_only_one_write_protected() {
    require_root();
    let mut rig = Rig::new("loop");
    let img = rig.dir.join("img");
    fs::File::create(&img).unwrap().set_len(4 << 20).unwrap();
    let lo = Loop::new(&img);
    let dev = fs::File::open(&lo.0).unwrap();
    let size = NoFsFile::new(dev).size_nofs().unwrap();
    assert_eq!(size, 4 << 20, "size_nofs of {}", lo.0);
    rig.backing = PathBuf::from(&lo.0);
    rig.blocks = size / 512;
    const B: usize = 512;
    let p: Vec<u8> = (0..8 * B).map(|i| (i * 7 + 1) as u8 | 0x80).collect();
    rig.map[DATA..DATA + p.len()].copy_from_slice(&p);
    let w = rig.cmd(&cdb16(0x8a, 0x08, 8000, 8), 0, 8 * B);
    let rc = rig.cmd(&cdb16(0x9e, 0x10, 0, 32), 16384, 32);
    let ws = rig.cmd(&cdb10(0x41, 0x08, 100, 8), 20480, B); // zeros, UNMAP
    let (map, _) = rig.serve();
    assert_eq!(
        (status(&map, w), status(&map, rc), status(&map, ws)),
        (0, 0, 0)
    );
    assert_eq!(
        &map[DATA + 16384..DATA + 16384 + 8],
        &(rig.blocks - 1).to_be_bytes()
    );
    // The data is on the device itself.
    let mut got = vec![0u8; 8 * B];
    use std::os::unix::fs::FileExt;
    fs::File::open(&lo.0)
        .unwrap()
        .read_exact_at(&mut got, 8000 * 512)
        .unwrap();
    assert_eq!(got, p);

    // The same device read-only: reads work, every write is refused.
    rig.read_only = true;
    let r = rig.cmd(&cdb10(0x28, 0, 8000, 8), 32768, 8 * B);
    let ms = rig.cmd(&[0x1a, 0x08, 0x0a, 0, 255, 0], 40960, 255);
    let refused = [
        rig.cmd(&cdb10(0x2a, 0, 0, 1), 0, B),
        rig.cmd(&cdb16(0x93, 0x09, 0, 1), 0, 0),
        rig.cmd(&cdb10(0x2e, 0, 0, 1), 0, B),
        rig.cmd(&[0x0a, 0, 0, 0, 1, 0], 0, B),
    ];
    let (map, _) = rig.serve();
    assert_eq!(status(&map, r), 0);
    assert_eq!(&map[DATA + 32768..DATA + 32768 + 8 * B], &p[..]);
    assert_eq!(status(&map, ms), 0);
    let m = &map[DATA + 40960..DATA + 40960 + 16];
    assert_eq!((m[2] & 0x80, m[8] & 0x08), (0x80, 0x08), "WP and SWP");
    for at in refused {
        assert_eq!(
            check(&map, at),
            (0x07, 0x27, 0),
            "DATA PROTECT, WRITE PROTECTED"
        );
    }
    let mut first = vec![0u8; B];
    fs::File::open(&lo.0)
        .unwrap()
        .read_exact_at(&mut first, 0)
        .unwrap();
    assert!(
        first.iter().all(|&b| b == 0),
        "a refused write reached the device"
    );
}

#[test]
fn eperm_of_a_device_made_read_only_underneath_is_write_protected() {
    require_root();
    let mut rig = Rig::new("eperm");
    let img = rig.dir.join("img");
    fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
    let lo = Loop::new(&img);
    rig.backing = PathBuf::from(&lo.0);
    rig.blocks = 2048;
    const B: usize = 512;
    rig.map[DATA..DATA + B].fill(0x33);
    let w = rig.cmd(&cdb10(0x2a, 0, 1, 1), 0, B);
    // The rig opens the device read-write in `serve`; setro then applies to
    // the open file: blkdev_write_iter answers EPERM.
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lo.0)
        .unwrap();
    run("blockdev", &["--setro", &lo.0]);
    let disk = disk::Disk {
        file: NoFsFile::new(dev),
        unit: pages::Unit {
            blocks: 2048,
            block_size: 512,
            serial: "0123456789abcdef".into(),
            naa: 1,
            read_only: false,
            max_transfer: 1024,
            timeout_secs: 30,
            max_open_zones: None,
        },
        plain_io: false,
        counters: Default::default(),
        zones: None,
    };
    rig.map[12..16].copy_from_slice(&(rig.head as u32).to_ne_bytes());
    let ring_path = rig.dir.join("ring");
    fs::write(&ring_path, &rig.map).unwrap();
    {
        let r = ring::Ring::open(&ring_path, MAP).unwrap();
        handler::serve(&r, &disk, &AtomicBool::new(true)).unwrap();
    }
    let _ = Command::new("blockdev").args(["--setrw", &lo.0]).status();
    let map = fs::read(&ring_path).unwrap();
    assert_eq!(
        check(&map, w),
        (0x07, 0x27, 0),
        "DATA PROTECT, WRITE PROTECTED"
    );
}

#[test]
fn get_lba_status_reports_mapped_data_and_deallocated_holes() {
    require_root();
    let mut rig = Rig::new("lba-status");
    // tmpfs tracks holes page by page.
    let t = Tmpfs::new(&rig.dir, "4m");
    rig.backing = t.0.join("disk");
    rig.map[DATA..DATA + 4096].fill(0x11);
    let w = rig.cmd(&cdb10(0x2a, 0, 16, 8), 0, 4096);
    let u = rig.cmd(&cdb16(0x93, 0x08, 16, 2), 8192, 512); // zeros, UNMAP: LBA 16, 17
    let st = rig.cmd(&cdb16(0x9e, 0x12, 0, 8 + 16 * 8), 16384, 8 + 16 * 8);
    let one = rig.cmd(&cdb16(0x9e, 0x12, 20, 24), 20480, 24);
    let oob = rig.cmd(&cdb16(0x9e, 0x12, BLOCKS, 24), 20480, 24);
    let (map, _) = rig.serve();
    assert_eq!((status(&map, w), status(&map, u)), (0, 0));
    assert_eq!(status(&map, st), 0, "GET LBA STATUS");
    let r = &map[DATA + 16384..DATA + 16384 + read_len(&map, st).unwrap()];
    let descs: Vec<(u64, u32, u8)> = r[8..]
        .chunks(16)
        .map(|d| {
            (
                u64::from_be_bytes(d[..8].try_into().unwrap()),
                u32::from_be_bytes(d[8..12].try_into().unwrap()),
                d[12],
            )
        })
        .collect();
    assert_eq!(
        u32::from_be_bytes(r[..4].try_into().unwrap()) as usize,
        r.len() - 4
    );
    // 0..16 a hole, 16..24 the written page (its first two blocks zeroed but
    // still in a page with data), 24..end a hole.
    assert_eq!(
        descs,
        vec![(0, 16, 1), (16, 8, 0), (24, BLOCKS as u32 - 24, 1)]
    );
    assert_eq!(
        read_len(&map, one),
        Some(24),
        "one descriptor fits 24 bytes"
    );
    assert_eq!(
        &map[DATA + 20480 + 8..DATA + 20480 + 16],
        &20u64.to_be_bytes()
    );
    assert_eq!(map[DATA + 20480 + 20], 0, "LBA 20: mapped");
    assert_eq!(check(&map, oob), (0x05, 0x21, 0));
}
