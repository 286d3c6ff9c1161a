//! SCSI protocol pieces without I/O: status and sense data (SPC-5),
//! the command set with its CDB usage data (what REPORT SUPPORTED OPERATION
//! CODES reports, and what every CDB is checked against), CDB decoding, and
//! the errno → sense mapping of the backing store.
//!
//! Every CDB goes through [`parse`]: the opcode (and service action) must be
//! in [`COMMANDS`], every bit outside the command's usage data must be zero
//! (a reserved bit, an unsupported field such as RDPROTECT on a disk without
//! protection information, or NACA in the CONTROL byte), and the fields
//! whose values are restricted are checked; each refusal is ILLEGAL
//! REQUEST with a sense-key-specific field pointer to the offending byte
//! and bit.

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;
pub const BUSY: u8 = 0x08;

pub const NO_SENSE: u8 = 0x00;
pub const MEDIUM_ERROR: u8 = 0x03;
pub const HARDWARE_ERROR: u8 = 0x04;
pub const ILLEGAL_REQUEST: u8 = 0x05;
pub const DATA_PROTECT: u8 = 0x07;
pub const MISCOMPARE: u8 = 0x0e;

/// Sense key, additional sense code and qualifier, and the optional
/// INFORMATION and sense-key-specific fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION (the failing LBA, or a miscompare's byte offset).
    pub info: Option<u64>,
    /// Sense-key-specific bytes 15..18 of fixed format (SKSV set).
    pub sks: Option<[u8; 3]>,
}

impl Sense {
    pub const INVALID_OPCODE: Sense = Sense::new(ILLEGAL_REQUEST, 0x20, 0);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(ILLEGAL_REQUEST, 0x21, 0);
    pub const PARAMETER_LIST_LENGTH: Sense = Sense::new(ILLEGAL_REQUEST, 0x1a, 0);
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(ILLEGAL_REQUEST, 0x39, 0);
    pub const READ_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x11, 0);
    pub const WRITE_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x0c, 0);
    pub const WRITE_PROTECTED: Sense = Sense::new(DATA_PROTECT, 0x27, 0);
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(DATA_PROTECT, 0x27, 0x07);
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(MISCOMPARE, 0x1d, 0);
    /// INTERNAL TARGET FAILURE: also a ring entry that was unusable.
    pub const TARGET_FAILURE: Sense = Sense::new(HARDWARE_ERROR, 0x44, 0);

    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            sks: None,
        }
    }

    /// INVALID FIELD IN CDB pointing at `byte`, `bit` (the field's most
    /// significant bit).
    pub fn invalid_cdb(byte: usize, bit: u8) -> Sense {
        Sense::new(ILLEGAL_REQUEST, 0x24, 0).pointer(true, byte, Some(bit))
    }

    /// INVALID FIELD IN CDB pointing at a whole byte (a multi-byte field).
    pub fn invalid_cdb_byte(byte: usize) -> Sense {
        Sense::new(ILLEGAL_REQUEST, 0x24, 0).pointer(true, byte, None)
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` of the list.
    pub fn invalid_param(byte: usize) -> Sense {
        Sense::new(ILLEGAL_REQUEST, 0x26, 0).pointer(false, byte, None)
    }

    /// With a FIELD POINTER sense-key-specific field (SPC-5):
    /// `cdb` is C/D, `bit` the bit pointer (BPV set when given).
    pub fn pointer(mut self, cdb: bool, byte: usize, bit: Option<u8>) -> Sense {
        let mut b = 0x80;
        if cdb {
            b |= 0x40;
        }
        if let Some(bit) = bit {
            b |= 0x08 | (bit & 7);
        }
        let p = (byte.min(0xffff) as u16).to_be_bytes();
        self.sks = Some([b, p[0], p[1]]);
        self
    }

    pub fn with_info(mut self, info: u64) -> Sense {
        self.info = Some(info);
        self
    }

    /// Fixed format, current error (D_SENSE is 0 in the Control mode page).
    /// VALID is set when INFORMATION fits its 4 bytes.
    pub fn fixed(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        if let Some(i) = self.info.and_then(|i| u32::try_from(i).ok()) {
            s[0] |= 0x80;
            s[3..7].copy_from_slice(&i.to_be_bytes());
        }
        s[2] = self.key & 0x0f;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(k) = self.sks {
            s[15..18].copy_from_slice(&k);
        }
        s
    }

    /// Descriptor format (REQUEST SENSE with DESC set): header, then the
    /// information and sense-key-specific descriptors when present.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut s = vec![0x72, self.key & 0x0f, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(i) = self.info {
            s.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
            s.extend_from_slice(&i.to_be_bytes());
        }
        if let Some(k) = self.sks {
            s.extend_from_slice(&[0x02, 0x06, 0x00, k[0], k[1], k[2], 0x00, 0x00]);
        }
        s[7] = (s.len() - 8) as u8;
        s
    }
}

/// How a command that does not complete with GOOD ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// CHECK CONDITION with this sense data.
    Check(Sense),
    /// BUSY status, no sense: the initiator retries later.
    Busy,
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Fail {
        Fail::Check(s)
    }
}

impl Fail {
    pub fn status(&self) -> u8 {
        match self {
            Fail::Check(_) => CHECK_CONDITION,
            Fail::Busy => BUSY,
        }
    }
}

/// What a backing-store I/O was doing, for the sense its errno maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDir {
    /// Reading the medium (READ, VERIFY).
    Read,
    /// Writing it (WRITE, WRITE SAME, UNMAP, SYNCHRONIZE CACHE).
    Write,
}

/// The sense a disk gives for a backing-store errno (`None`: the call
/// failed without one, e.g. a short read at the end of a file that
/// shrank under us). `info` is the LBA of the first failing block, when
/// known.
///
/// | errno | status / sense key | ASC/ASCQ |
/// |---|---|---|
/// | ENOSPC, EDQUOT | DATA PROTECT | 27/07 SPACE ALLOCATION FAILED WRITE PROTECT |
/// | EIO (read) | MEDIUM ERROR | 11/00 UNRECOVERED READ ERROR |
/// | EIO (write, sync) | MEDIUM ERROR | 0C/00 WRITE ERROR |
/// | EROFS, EPERM, EACCES | DATA PROTECT | 27/00 WRITE PROTECTED |
/// | ENOMEM, ENOBUFS, EAGAIN | BUSY status | — (transient: the initiator retries) |
/// | any other, none | HARDWARE ERROR | 44/00 INTERNAL TARGET FAILURE |
pub fn errno_fail(errno: Option<i32>, dir: IoDir, info: Option<u64>) -> Fail {
    let sense = match errno {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Sense::SPACE_ALLOCATION_FAILED,
        Some(libc::EIO) if dir == IoDir::Read => Sense::READ_ERROR,
        Some(libc::EIO) => Sense::WRITE_ERROR,
        Some(libc::EROFS) | Some(libc::EPERM) | Some(libc::EACCES) => Sense::WRITE_PROTECTED,
        Some(libc::ENOMEM) | Some(libc::ENOBUFS) | Some(libc::EAGAIN) => return Fail::Busy,
        _ => Sense::TARGET_FAILURE,
    };
    let sense = match info {
        Some(lba) if sense.key == MEDIUM_ERROR => sense.with_info(lba),
        _ => sense,
    };
    Fail::Check(sense)
}

/// One command of the command set.
pub struct CmdInfo {
    pub op: u8,
    /// Service action (byte 1, bits 4..0) for the opcodes that have them.
    pub sa: Option<u8>,
    pub name: &'static str,
    /// CDB USAGE DATA (SPC-5): byte 0 the opcode, byte 1 the service
    /// action where there is one, else a 1 for every bit the device server
    /// uses. Its length is the CDB's.
    pub usage: &'static [u8],
    /// Which disks have it.
    pub set: Set,
}

/// The disks a command belongs to: both, the conventional disk only
/// (thin provisioning: UNMAP, GET LBA STATUS), or the zoned one only
/// (`--zbc`: ZBC IN, ZBC OUT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    Both,
    Conventional,
    Zoned,
}

const fn c(op: u8, sa: Option<u8>, name: &'static str, usage: &'static [u8]) -> CmdInfo {
    CmdInfo {
        op,
        sa,
        name,
        usage,
        set: Set::Both,
    }
}

const fn only(set: Set, c: CmdInfo) -> CmdInfo {
    CmdInfo { set, ..c }
}

impl CmdInfo {
    /// In the command set of a zoned (`true`) or conventional disk.
    pub fn in_set(&self, zoned: bool) -> bool {
        match self.set {
            Set::Both => true,
            Set::Conventional => !zoned,
            Set::Zoned => zoned,
        }
    }
}

/// The command set of a zoned or conventional disk, in opcode order.
pub fn commands(zoned: bool) -> impl Iterator<Item = &'static CmdInfo> {
    COMMANDS.iter().filter(move |c| c.in_set(zoned))
}

/// The command set, in opcode order (REPORT SUPPORTED OPERATION CODES
/// lists it in this order). Not set anywhere: RDPROTECT/WRPROTECT/
/// VRPROTECT (no protection information), RARC, DLD (no duration limits),
/// ANCHOR (ANC_SUP is 0), the obsolete bits other than FUA_NV, NACA and the
/// vendor bits of CONTROL.
pub const COMMANDS: &[CmdInfo] = &[
    c(0x00, None, "TEST UNIT READY", &[0x00, 0, 0, 0, 0, 0]),
    c(0x03, None, "REQUEST SENSE", &[0x03, 0x01, 0, 0, 0xff, 0]),
    c(0x08, None, "READ(6)", &[0x08, 0x1f, 0xff, 0xff, 0xff, 0]),
    c(0x0a, None, "WRITE(6)", &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0]),
    c(0x12, None, "INQUIRY", &[0x12, 0x01, 0xff, 0xff, 0xff, 0]),
    c(
        0x1a,
        None,
        "MODE SENSE(6)",
        &[0x1a, 0x08, 0xff, 0xff, 0xff, 0],
    ),
    c(
        0x25,
        None,
        "READ CAPACITY(10)",
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ),
    c(0x28, None, "READ(10)", &RW10[0]),
    c(0x2a, None, "WRITE(10)", &RW10[1]),
    c(0x2e, None, "WRITE AND VERIFY(10)", &VRFY10[0]),
    c(0x2f, None, "VERIFY(10)", &VRFY10[1]),
    c(0x34, None, "PRE-FETCH(10)", &IMMED10[0]),
    c(0x35, None, "SYNCHRONIZE CACHE(10)", &IMMED10[1]),
    c(
        0x41,
        None,
        "WRITE SAME(10)",
        &[0x41, 0x08, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0],
    ),
    only(
        Set::Conventional,
        c(
            0x42,
            None,
            "UNMAP",
            &[0x42, 0, 0, 0, 0, 0, 0x3f, 0xff, 0xff, 0],
        ),
    ),
    c(
        0x5a,
        None,
        "MODE SENSE(10)",
        &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0],
    ),
    c(0x88, None, "READ(16)", &RW16[0]),
    c(0x8a, None, "WRITE(16)", &RW16[1]),
    c(0x8e, None, "WRITE AND VERIFY(16)", &RW16[2]),
    c(0x8f, None, "VERIFY(16)", &RW16[3]),
    c(0x90, None, "PRE-FETCH(16)", &RW16[4]),
    c(0x91, None, "SYNCHRONIZE CACHE(16)", &RW16[5]),
    c(0x93, None, "WRITE SAME(16)", &RW16[6]),
    only(Set::Zoned, c(0x94, Some(0x01), "CLOSE ZONE", &ZBC_OUT[0])),
    only(Set::Zoned, c(0x94, Some(0x02), "FINISH ZONE", &ZBC_OUT[1])),
    only(Set::Zoned, c(0x94, Some(0x03), "OPEN ZONE", &ZBC_OUT[2])),
    only(
        Set::Zoned,
        c(0x94, Some(0x04), "RESET WRITE POINTER", &ZBC_OUT[3]),
    ),
    // ZBC-2 REPORT ZONES: ZONE START LBA, ALLOCATION LENGTH, PARTIAL and
    // REPORTING OPTIONS.
    only(
        Set::Zoned,
        c(
            0x95,
            Some(0x00),
            "REPORT ZONES",
            &[
                0x95, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xbf, 0,
            ],
        ),
    ),
    c(
        0x9e,
        Some(0x10),
        "READ CAPACITY(16)",
        &[
            0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    only(
        Set::Conventional,
        c(
            0x9e,
            Some(0x12),
            "GET LBA STATUS",
            &[
                0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0, 0,
            ],
        ),
    ),
    c(
        0xa0,
        None,
        "REPORT LUNS",
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    c(
        0xa3,
        Some(0x0c),
        "REPORT SUPPORTED OPERATION CODES",
        &[
            0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    c(0xa8, None, "READ(12)", &RW12[0]),
    c(0xaa, None, "WRITE(12)", &RW12[1]),
];

/// READ/WRITE(10): DPO, FUA, FUA_NV (obsolete, ignored); LBA; GROUP NUMBER;
/// TRANSFER LENGTH.
const RW10: [[u8; 10]; 2] = [
    [0x28, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0],
    [0x2a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0],
];
/// WRITE AND VERIFY(10), VERIFY(10): DPO, BYTCHK.
const VRFY10: [[u8; 10]; 2] = [
    [0x2e, 0x16, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0],
    [0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0],
];
/// PRE-FETCH(10), SYNCHRONIZE CACHE(10): IMMED.
const IMMED10: [[u8; 10]; 2] = [
    [0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0],
    [0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0],
];
const RW16: [[u8; 16]; 7] = {
    let ops = [0x88, 0x8a, 0x8e, 0x8f, 0x90, 0x91, 0x93];
    // Byte 1: DPO|FUA|FUA_NV; DPO|BYTCHK; IMMED; UNMAP|NDOB.
    let b1 = [0x1a, 0x1a, 0x16, 0x16, 0x02, 0x02, 0x09];
    let mut t = [[0u8; 16]; 7];
    let mut i = 0;
    while i < 7 {
        let mut j = 2;
        while j < 14 {
            t[i][j] = 0xff;
            j += 1;
        }
        t[i][0] = ops[i];
        t[i][1] = b1[i];
        t[i][14] = 0x3f;
        i += 1;
    }
    t
};
/// ZBC OUT (ZBC-2): ZONE ID, ZONE COUNT, ALL.
const ZBC_OUT: [[u8; 16]; 4] = {
    let mut t = [[0u8; 16]; 4];
    let mut i = 0;
    while i < 4 {
        t[i][0] = 0x94;
        t[i][1] = i as u8 + 1;
        let mut j = 2;
        while j < 10 {
            t[i][j] = 0xff;
            j += 1;
        }
        t[i][12] = 0xff;
        t[i][13] = 0xff;
        t[i][14] = 0x01;
        i += 1;
    }
    t
};
const RW12: [[u8; 12]; 2] = [
    [
        0xa8, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0,
    ],
    [
        0xaa, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0,
    ],
];

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

/// Whether `op` has service actions in the command set of a zoned or
/// conventional disk.
pub fn has_service_actions(op: u8, zoned: bool) -> bool {
    commands(zoned).any(|c| c.op == op && c.sa.is_some())
}

/// The command `cdb` names in the command set of a zoned or conventional
/// disk: INVALID COMMAND OPERATION CODE for an opcode outside the set,
/// INVALID FIELD IN CDB for an unsupported service action.
pub fn lookup(cdb: &[u8], zoned: bool) -> Result<&'static CmdInfo, Sense> {
    let op = *cdb.first().ok_or(Sense::INVALID_OPCODE)?;
    let sa = cdb.get(1).map(|b| b & 0x1f);
    let mut known_op = false;
    for c in commands(zoned) {
        if c.op != op {
            continue;
        }
        known_op = true;
        if c.sa.is_none() || c.sa == sa {
            return if cdb.len() >= c.usage.len() {
                Ok(c)
            } else {
                Err(Sense::INVALID_OPCODE)
            };
        }
    }
    if known_op {
        Err(Sense::invalid_cdb(1, 4))
    } else {
        Err(Sense::INVALID_OPCODE)
    }
}

/// The commands whose byte 1 bits 7..5 are RDPROTECT, WRPROTECT or
/// VRPROTECT: one field, so a refusal points at its bit 7.
const PROTECT_OPS: &[u8] = &[
    0x28, 0x2a, 0x2e, 0x2f, 0x41, 0x88, 0x8a, 0x8e, 0x8f, 0x93, 0xa8, 0xaa,
];

/// Every bit set outside the usage data is a reserved or unsupported field:
/// INVALID FIELD IN CDB at its byte and bit (the highest bit set; the
/// PROTECT fields' bit 7: SPC-5 points a multi-bit field's refusal at its
/// left-most bit).
pub fn check_usage(cmd: &CmdInfo, cdb: &[u8]) -> Result<(), Sense> {
    for (i, (&b, &u)) in cdb.iter().zip(cmd.usage).enumerate().skip(1) {
        let allowed = if i == 1 && cmd.sa.is_some() { 0x1f } else { u };
        let bad = b & !allowed;
        if bad != 0 {
            let bit = if i == 1 && bad & 0xe0 != 0 && PROTECT_OPS.contains(&cmd.op) {
                7
            } else {
                7 - bad.leading_zeros() as u8
            };
            return Err(Sense::invalid_cdb(i, bit));
        }
    }
    Ok(())
}

fn be16(b: &[u8]) -> u64 {
    u16::from_be_bytes([b[0], b[1]]) as u64
}
fn be32(b: &[u8]) -> u64 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// A range of logical blocks and where its length field sits in the CDB
/// (for the field pointer of a length refused later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub lba: u64,
    pub blocks: u64,
    pub len_at: usize,
}

/// What VERIFY and WRITE AND VERIFY compare (SBC-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteCheck {
    /// 00b: the medium only (blocks readable).
    None,
    /// 01b: every block against its block of data-out.
    Each,
    /// 11b (VERIFY only): every block against one block of data-out.
    One,
}

/// Mode page control (MODE SENSE byte 2, bits 7..6); saved values are
/// refused in [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        desc: bool,
        alloc: usize,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: usize,
    },
    ModeSense {
        ten: bool,
        dbd: bool,
        llbaa: bool,
        pc: PageControl,
        page: u8,
        subpage: u8,
        alloc: usize,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: usize,
    },
    GetLbaStatus {
        lba: u64,
        alloc: usize,
    },
    Read {
        range: Range,
        fua: bool,
    },
    Write {
        range: Range,
        fua: bool,
    },
    WriteVerify {
        range: Range,
        check: ByteCheck,
    },
    Verify {
        range: Range,
        check: ByteCheck,
    },
    PreFetch {
        range: Range,
    },
    SyncCache {
        range: Range,
    },
    /// ZBC IN, REPORT ZONES (zoned disks).
    ReportZones {
        lba: u64,
        alloc: usize,
        partial: bool,
        option: u8,
    },
    /// ZBC OUT: CLOSE, FINISH, OPEN ZONE, RESET WRITE POINTER (zoned disks).
    ZoneOut {
        action: super::zbc::Action,
        zone_id: u64,
        count: u16,
        all: bool,
    },
    WriteSame {
        range: Range,
        unmap: bool,
        ndob: bool,
    },
    Unmap {
        param_len: usize,
    },
    ReportLuns {
        select: u8,
        alloc: usize,
    },
    ReportOpcodes {
        rctd: bool,
        options: u8,
        op: u8,
        sa: u16,
        alloc: usize,
    },
}

impl Command {
    /// Commands that transfer data to the initiator (their completion
    /// carries the length actually sent).
    pub fn data_in(&self) -> bool {
        !matches!(
            self,
            Command::TestUnitReady
                | Command::Write { .. }
                | Command::WriteVerify { .. }
                | Command::Verify { .. }
                | Command::PreFetch { .. }
                | Command::SyncCache { .. }
                | Command::ZoneOut { .. }
                | Command::WriteSame { .. }
                | Command::Unmap { .. }
        )
    }
}

fn bytchk(cdb: &[u8], verify: bool) -> Result<ByteCheck, Sense> {
    match (cdb[1] >> 1) & 3 {
        0 => Ok(ByteCheck::None),
        1 => Ok(ByteCheck::Each),
        3 if verify => Ok(ByteCheck::One),
        _ => Err(Sense::invalid_cdb(1, 2)),
    }
}

/// Decode a CDB of the command set of a zoned or conventional disk:
/// [`lookup`], [`check_usage`], then the field values.
pub fn parse(cdb: &[u8], zoned: bool) -> Result<Command, Sense> {
    let info = lookup(cdb, zoned)?;
    check_usage(info, cdb)?;
    let r10 = || Range {
        lba: be32(&cdb[2..6]),
        blocks: be16(&cdb[7..9]),
        len_at: 7,
    };
    let r12 = || Range {
        lba: be32(&cdb[2..6]),
        blocks: be32(&cdb[6..10]),
        len_at: 6,
    };
    let r16 = || Range {
        lba: be64(&cdb[2..10]),
        blocks: be32(&cdb[10..14]),
        len_at: 10,
    };
    let fua = cdb[1] & 0x08 != 0;
    Ok(match cdb[0] {
        0x00 => Command::TestUnitReady,
        0x03 => Command::RequestSense {
            desc: cdb[1] & 1 != 0,
            alloc: cdb[4] as usize,
        },
        0x12 => {
            let evpd = cdb[1] & 1 != 0;
            if !evpd && cdb[2] != 0 {
                return Err(Sense::invalid_cdb_byte(2));
            }
            Command::Inquiry {
                evpd,
                page: cdb[2],
                alloc: be16(&cdb[3..5]) as usize,
            }
        }
        0x1a | 0x5a => {
            let ten = cdb[0] == 0x5a;
            let pc = match cdb[2] >> 6 {
                0 => PageControl::Current,
                1 => PageControl::Changeable,
                2 => PageControl::Default,
                _ => return Err(Sense::SAVING_NOT_SUPPORTED.pointer(true, 2, Some(7))),
            };
            Command::ModeSense {
                ten,
                dbd: cdb[1] & 0x08 != 0,
                llbaa: ten && cdb[1] & 0x10 != 0,
                pc,
                page: cdb[2] & 0x3f,
                subpage: cdb[3],
                alloc: if ten {
                    be16(&cdb[7..9]) as usize
                } else {
                    cdb[4] as usize
                },
            }
        }
        0x25 => Command::ReadCapacity10,
        0x94 => {
            use super::zbc::Action;
            Command::ZoneOut {
                action: match cdb[1] & 0x1f {
                    0x01 => Action::Close,
                    0x02 => Action::Finish,
                    0x03 => Action::Open,
                    _ => Action::Reset,
                },
                zone_id: be64(&cdb[2..10]),
                count: be16(&cdb[12..14]) as u16,
                all: cdb[14] & 0x01 != 0,
            }
        }
        0x95 => {
            let option = cdb[14] & 0x3f;
            if !super::zbc::REPORTING_OPTIONS.contains(&option) {
                return Err(Sense::invalid_cdb(14, 5));
            }
            Command::ReportZones {
                lba: be64(&cdb[2..10]),
                alloc: be32(&cdb[10..14]) as usize,
                partial: cdb[14] & 0x80 != 0,
                option,
            }
        }
        0x9e if cdb[1] & 0x1f == 0x12 => Command::GetLbaStatus {
            lba: be64(&cdb[2..10]),
            alloc: be32(&cdb[10..14]) as usize,
        },
        0x9e => Command::ReadCapacity16 {
            alloc: be32(&cdb[10..14]) as usize,
        },
        0x08 | 0x0a => {
            let range = Range {
                lba: (((cdb[1] & 0x1f) as u64) << 16) | be16(&cdb[2..4]),
                // SBC-4: a TRANSFER LENGTH of 0 means 256 blocks.
                blocks: if cdb[4] == 0 { 256 } else { cdb[4] as u64 },
                len_at: 4,
            };
            if cdb[0] == 0x08 {
                Command::Read { range, fua: false }
            } else {
                Command::Write { range, fua: false }
            }
        }
        0x28 => Command::Read { range: r10(), fua },
        0x2a => Command::Write { range: r10(), fua },
        0xa8 => Command::Read { range: r12(), fua },
        0xaa => Command::Write { range: r12(), fua },
        0x88 => Command::Read { range: r16(), fua },
        0x8a => Command::Write { range: r16(), fua },
        0x2e => Command::WriteVerify {
            range: r10(),
            check: bytchk(cdb, false)?,
        },
        0x8e => Command::WriteVerify {
            range: r16(),
            check: bytchk(cdb, false)?,
        },
        0x2f => Command::Verify {
            range: r10(),
            check: bytchk(cdb, true)?,
        },
        0x8f => Command::Verify {
            range: r16(),
            check: bytchk(cdb, true)?,
        },
        0x34 => Command::PreFetch { range: r10() },
        0x90 => Command::PreFetch { range: r16() },
        0x35 => Command::SyncCache { range: r10() },
        0x91 => Command::SyncCache { range: r16() },
        0x41 | 0x93 => {
            let range = if cdb[0] == 0x41 { r10() } else { r16() };
            Command::WriteSame {
                range,
                unmap: cdb[1] & 0x08 != 0,
                ndob: cdb[0] == 0x93 && cdb[1] & 0x01 != 0,
            }
        }
        0x42 => Command::Unmap {
            param_len: be16(&cdb[7..9]) as usize,
        },
        0xa0 => Command::ReportLuns {
            select: cdb[2],
            alloc: be32(&cdb[6..10]) as usize,
        },
        0xa3 => {
            let options = cdb[2] & 0x07;
            if options > 3 {
                return Err(Sense::invalid_cdb(2, 2));
            }
            Command::ReportOpcodes {
                rctd: cdb[2] & 0x80 != 0,
                options,
                op: cdb[3],
                sa: be16(&cdb[4..6]) as u16,
                alloc: be32(&cdb[6..10]) as usize,
            }
        }
        _ => return Err(Sense::INVALID_OPCODE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_data_matches_the_cdb_length_and_names_the_opcode() {
        let mut last = None;
        for c in COMMANDS {
            assert_eq!(cdb_len(c.op), Some(c.usage.len()), "{}", c.name);
            assert_eq!(c.usage[0], c.op, "{}", c.name);
            if let Some(sa) = c.sa {
                assert_eq!(c.usage[1], sa, "{}", c.name);
            }
            assert_eq!(*c.usage.last().unwrap(), 0, "{}: CONTROL (no NACA)", c.name);
            let key = (c.op, c.sa);
            assert!(last < Some(key), "{} out of order", c.name);
            last = Some(key);
        }
    }

    #[test]
    fn every_usage_bit_is_accepted_and_every_other_bit_refused_with_its_pointer() {
        for c in COMMANDS {
            let mut cdb = c.usage.to_vec();
            // The restricted values of accepted fields, set to valid ones.
            match c.op {
                0x12 => cdb[1] = 0x01,
                0x2e | 0x8e => cdb[1] &= !0x04, // BYTCHK 01b
                0xa3 => cdb[2] = 0x83,
                0x1a | 0x5a => cdb[2] = 0xbf, // default values
                _ => {}
            }
            assert!(
                parse(&cdb, c.set == Set::Zoned).is_ok(),
                "{}: {:02x?}",
                c.name,
                cdb
            );
            for byte in 1..c.usage.len() {
                for bit in 0..8u8 {
                    let allowed = if byte == 1 && c.sa.is_some() {
                        0x1f
                    } else {
                        c.usage[byte]
                    };
                    if allowed & (1 << bit) != 0 {
                        continue;
                    }
                    let mut bad = vec![0u8; c.usage.len()];
                    bad[0] = c.op;
                    if let Some(sa) = c.sa {
                        bad[1] = sa;
                    }
                    bad[byte] |= 1 << bit;
                    let want = if byte == 1 && bit >= 5 && PROTECT_OPS.contains(&c.op) {
                        7
                    } else {
                        bit
                    };
                    assert_eq!(
                        parse(&bad, c.set == Set::Zoned),
                        Err(Sense::invalid_cdb(byte, want)),
                        "{} byte {byte} bit {bit}",
                        c.name
                    );
                }
            }
        }
    }

    #[test]
    fn protection_fields_are_refused_on_every_read_write_verify_command() {
        for (op, len) in [
            (0x28u8, 10),
            (0x2a, 10),
            (0xa8, 12),
            (0xaa, 12),
            (0x88, 16),
            (0x8a, 16),
            (0x41, 10),
            (0x93, 16),
            (0x2e, 10),
            (0x8e, 16),
            (0x2f, 10),
            (0x8f, 16),
        ] {
            for prot in 1..8u8 {
                let mut cdb = vec![0u8; len];
                cdb[0] = op;
                cdb[1] = prot << 5;
                let s = parse(&cdb, false).unwrap_err();
                assert_eq!((s.key, s.asc, s.ascq), (0x05, 0x24, 0), "{op:#x}");
                assert_eq!(s.sks, Some([0xc8 | 7, 0, 1]), "{op:#x}: byte 1 bit 7");
            }
        }
    }

    #[test]
    fn field_values() {
        assert_eq!(
            lookup(&[0x04, 0, 0, 0, 0, 0], false).err(),
            Some(Sense::INVALID_OPCODE)
        );
        let mut rc = [0u8; 16];
        rc[0] = 0x9e;
        rc[1] = 0x11;
        assert_eq!(
            parse(&rc, false),
            Err(Sense::invalid_cdb(1, 4)),
            "unknown SA"
        );
        assert_eq!(
            parse(&[0x12, 0, 0x80, 0, 255, 0], false),
            Err(Sense::invalid_cdb_byte(2)),
            "page code without EVPD"
        );
        let saved = parse(&[0x1a, 0, 0xc8, 0, 255, 0], false).unwrap_err();
        assert_eq!((saved.key, saved.asc), (0x05, 0x39));
        let mut wv = [0u8; 10];
        wv[0] = 0x2e;
        wv[1] = 0x06;
        assert_eq!(
            parse(&wv, false),
            Err(Sense::invalid_cdb(1, 2)),
            "BYTCHK 11b"
        );
        wv[0] = 0x2f;
        assert!(matches!(
            parse(&wv, false),
            Ok(Command::Verify {
                check: ByteCheck::One,
                ..
            })
        ));
        wv[1] = 0x04;
        assert_eq!(
            parse(&wv, false),
            Err(Sense::invalid_cdb(1, 2)),
            "BYTCHK 10b"
        );
        let mut rsoc = [0u8; 12];
        rsoc[0] = 0xa3;
        rsoc[1] = 0x0c;
        rsoc[2] = 4;
        assert_eq!(parse(&rsoc, false), Err(Sense::invalid_cdb(2, 2)));
        assert!(matches!(
            parse(&[0x08, 0, 0, 1, 0, 0], false),
            Ok(Command::Read {
                range: Range {
                    lba: 1,
                    blocks: 256,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn zoned_and_conventional_command_sets() {
        let mut unmap = [0u8; 10];
        unmap[0] = 0x42;
        assert!(parse(&unmap, false).is_ok());
        assert_eq!(
            parse(&unmap, true),
            Err(Sense::INVALID_OPCODE),
            "no UNMAP when zoned"
        );
        let mut gls = [0u8; 16];
        gls[0] = 0x9e;
        gls[1] = 0x12;
        assert_eq!(parse(&gls, true), Err(Sense::invalid_cdb(1, 4)));
        let mut rz = [0u8; 16];
        rz[0] = 0x95;
        assert_eq!(parse(&rz, false), Err(Sense::INVALID_OPCODE));
        rz[1] = 0x06;
        assert_eq!(
            parse(&rz, true),
            Err(Sense::invalid_cdb(1, 4)),
            "ZBC IN SA 06h"
        );
        rz[1] = 0;
        rz[2..10].copy_from_slice(&77u64.to_be_bytes());
        rz[10..14].copy_from_slice(&4096u32.to_be_bytes());
        for opt in 0..0x40u8 {
            rz[14] = 0x80 | opt;
            let r = parse(&rz, true);
            if crate::tcmu::zbc::REPORTING_OPTIONS.contains(&opt) {
                assert_eq!(
                    r,
                    Ok(Command::ReportZones {
                        lba: 77,
                        alloc: 4096,
                        partial: true,
                        option: opt
                    })
                );
            } else {
                assert_eq!(r, Err(Sense::invalid_cdb(14, 5)), "option {opt:#x}");
            }
        }
        let mut zo = [0u8; 16];
        zo[0] = 0x94;
        zo[1] = 0x04;
        zo[2..10].copy_from_slice(&128u64.to_be_bytes());
        zo[12..14].copy_from_slice(&3u16.to_be_bytes());
        zo[14] = 1;
        assert_eq!(
            parse(&zo, true),
            Ok(Command::ZoneOut {
                action: crate::tcmu::zbc::Action::Reset,
                zone_id: 128,
                count: 3,
                all: true
            })
        );
        zo[1] = 0x05;
        assert_eq!(
            parse(&zo, true),
            Err(Sense::invalid_cdb(1, 4)),
            "ZBC OUT SA 05h"
        );
        assert_eq!(commands(false).count() + 3, commands(true).count());
    }

    #[test]
    fn sense_formats() {
        let s = Sense::invalid_cdb(7, 0).with_info(0x1234);
        let f = s.fixed();
        assert_eq!(
            f,
            [0xf0, 0, 0x05, 0, 0, 0x12, 0x34, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xc8, 0, 7]
        );
        let d = s.descriptor();
        assert_eq!(&d[..8], &[0x72, 0x05, 0x24, 0, 0, 0, 0, 20]);
        assert_eq!(&d[8..12], &[0x00, 0x0a, 0x80, 0x00]);
        assert_eq!(&d[20..28], &[0x02, 0x06, 0, 0xc8, 0, 7, 0, 0]);
        let p = Sense::invalid_param(24).fixed();
        assert_eq!(&p[15..18], &[0x80, 0, 24], "C/D 0, no bit pointer");
        assert_eq!(
            Sense::WRITE_ERROR.with_info(1 << 40).fixed()[0],
            0x70,
            "INFORMATION too big for fixed format: VALID 0"
        );
    }

    #[test]
    fn errno_table() {
        use IoDir::*;
        let check = |e, d| match errno_fail(Some(e), d, Some(9)) {
            Fail::Check(s) => Some((s.key, s.asc, s.ascq, s.info)),
            Fail::Busy => None,
        };
        assert_eq!(check(libc::ENOSPC, Write), Some((0x07, 0x27, 0x07, None)));
        assert_eq!(check(libc::EDQUOT, Write), Some((0x07, 0x27, 0x07, None)));
        assert_eq!(check(libc::EIO, Read), Some((0x03, 0x11, 0, Some(9))));
        assert_eq!(check(libc::EIO, Write), Some((0x03, 0x0c, 0, Some(9))));
        for e in [libc::EROFS, libc::EPERM, libc::EACCES] {
            assert_eq!(check(e, Write), Some((0x07, 0x27, 0, None)));
        }
        for e in [libc::ENOMEM, libc::ENOBUFS, libc::EAGAIN] {
            assert_eq!(check(e, Write), None);
            assert_eq!(errno_fail(Some(e), Read, None).status(), BUSY);
        }
        for e in [libc::EINVAL, libc::EBADF, libc::EFBIG, libc::ENXIO] {
            assert_eq!(check(e, Read), Some((0x04, 0x44, 0, None)));
        }
        assert_eq!(
            errno_fail(None, Read, None),
            Fail::Check(Sense::TARGET_FAILURE)
        );
    }
}
