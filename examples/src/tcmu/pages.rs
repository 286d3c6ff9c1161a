//! The data-in responses: standard INQUIRY and the VPD pages, MODE SENSE,
//! READ CAPACITY, REPORT SUPPORTED OPERATION CODES, REPORT LUNS and
//! REQUEST SENSE. Each is built fresh, every byte set, with its length
//! fields computed from the data it returns; the caller sends at most the
//! allocation length of it.

use super::scsi::{commands, CmdInfo, PageControl, Sense};

pub const VENDOR: &[u8; 8] = b"RSCOPE  ";
pub const PRODUCT: &[u8; 16] = b"TCMU-FILE       ";
pub const REVISION: &[u8; 4] = b"0002";

/// VPD 0xb0 limits for WRITE SAME and UNMAP, in logical blocks.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 1 << 20;
pub const MAX_UNMAP_BLOCKS: u64 = 1 << 20;
pub const MAX_UNMAP_DESCRIPTORS: usize = 64;

/// The logical unit as the initiator sees it.
#[derive(Clone, Debug)]
pub struct Unit {
    pub blocks: u64,
    pub block_size: u32,
    /// Unit serial number (VPD 0x80), ASCII.
    pub serial: String,
    /// NAA-5 identifier (VPD 0x83).
    pub naa: u64,
    /// Write protected (`--read-only`): WP and SWP set, writes refused.
    pub read_only: bool,
    /// MAXIMUM TRANSFER LENGTH in logical blocks (VPD 0xb0).
    pub max_transfer: u32,
    /// Recommended command timeout in seconds (the backstore's
    /// cmd_time_out), for the command timeouts descriptors; 0: none.
    pub timeout_secs: u32,
    /// `Some(n)`: a ZBC host-managed zoned disk (`--zbc`) with at most `n`
    /// open sequential write required zones: peripheral device type 14h,
    /// VPD 0xb6, no thin provisioning (no VPD 0xb2, LBPME 0, no UNMAP).
    pub max_open_zones: Option<u32>,
}

fn vpd(page: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![0x00, page];
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

/// Standard INQUIRY data (SPC-5): 96 bytes, ADDITIONAL LENGTH 91.
pub fn standard_inquiry(u: &Unit) -> Vec<u8> {
    let mut r = vec![0u8; 96];
    // Connected; not removable. PERIPHERAL DEVICE TYPE 00h direct access
    // block device, or 14h host managed zoned block device (ZBC-2).
    if u.max_open_zones.is_some() {
        r[0] = 0x14;
    }
    r[2] = 0x07; // VERSION: SPC-5
    r[3] = 0x02; // RESPONSE DATA FORMAT 2
    r[4] = (r.len() - 5) as u8;
    r[7] = 0x02; // CMDQUE
    r[8..16].copy_from_slice(VENDOR);
    r[16..32].copy_from_slice(PRODUCT);
    r[32..36].copy_from_slice(REVISION);
    // Version descriptors: SAM-6, SPC-5, SBC-4 (no version claimed).
    for (i, v) in [0x00c0u16, 0x05c0, 0x0600].into_iter().enumerate() {
        r[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    r
}

/// The VPD pages this disk has, in ascending order (page 0x00 lists them).
pub const VPD_PAGES: &[u8] = &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];
/// Those of the zoned disk: Zoned Block Device Characteristics instead of
/// Logical Block Provisioning.
pub const ZONED_VPD_PAGES: &[u8] = &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb6];

pub fn vpd_pages(u: &Unit) -> &'static [u8] {
    if u.max_open_zones.is_some() {
        ZONED_VPD_PAGES
    } else {
        VPD_PAGES
    }
}

/// A VPD page; INVALID FIELD IN CDB (byte 2) for one we do not have.
pub fn vpd_page(u: &Unit, page: u8) -> Result<Vec<u8>, Sense> {
    if !vpd_pages(u).contains(&page) {
        return Err(Sense::invalid_cdb_byte(2));
    }
    let body: Vec<u8> = match page {
        0x00 => vpd_pages(u).to_vec(),
        0x80 => u.serial.as_bytes().to_vec(),
        0x83 => {
            // NAA (binary), then T10 vendor ID (ASCII), both of the LU.
            let mut d = vec![0x01, 0x03, 0x00, 0x08];
            d.extend_from_slice(&u.naa.to_be_bytes());
            let t10: Vec<u8> = VENDOR.iter().chain(u.serial.as_bytes()).copied().collect();
            d.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
            d.extend_from_slice(&t10);
            d
        }
        0xb0 => {
            // Block Limits (SBC-4), page length 0x3c; offsets below
            // are the page's minus 4.
            let mut d = vec![0u8; 0x3c];
            d[0] = 0x01; // WSNZ: a WRITE SAME of 0 blocks is refused
            d[4..8].copy_from_slice(&u.max_transfer.to_be_bytes());
            d[8..12].copy_from_slice(&u.max_transfer.to_be_bytes());
            if u.max_open_zones.is_none() {
                d[16..20].copy_from_slice(&(MAX_UNMAP_BLOCKS as u32).to_be_bytes());
                d[20..24].copy_from_slice(&(MAX_UNMAP_DESCRIPTORS as u32).to_be_bytes());
            }
            d[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
            d
        }
        0xb1 => {
            // Block Device Characteristics (SBC-4), page length 0x3c:
            // rotation rate and form factor not reported; ZONED 00b (not
            // host aware nor device managed: a host-managed disk says so
            // by its device type); FUAB (a FUA write is durable as after
            // SYNCHRONIZE CACHE) and VBULS (VERIFY compares unmapped
            // blocks: they read as zeros).
            let mut d = vec![0u8; 0x3c];
            d[4] = 0x02 | 0x01;
            d
        }
        // Logical Block Provisioning (SBC-4): LBPU, LBPWS, LBPWS10,
        // LBPRZ 001b; ANC_SUP 0, DP 0; provisioning type thin.
        0xb2 => vec![0x00, 0x80 | 0x40 | 0x20 | (0x1 << 2), 0x02, 0x00],
        0xb6 => {
            // Zoned Block Device Characteristics (ZBC-2), page length
            // 0x3c: URSWRZ (reads past a write pointer return zeros); the
            // OPTIMAL NUMBER OF OPEN / NON-SEQUENTIALLY WRITTEN SEQUENTIAL
            // WRITE PREFERRED ZONES not reported (FFFFFFFFh: there are
            // none); MAXIMUM NUMBER OF OPEN SEQUENTIAL WRITE REQUIRED
            // ZONES. Offsets are the page's minus 4 (as Linux's scsi_debug
            // fills it).
            let mut d = vec![0u8; 0x3c];
            d[0] = 0x01;
            d[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
            d[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
            d[12..16].copy_from_slice(&u.max_open_zones.unwrap_or(0).to_be_bytes());
            d
        }
        _ => unreachable!("VPD page {page:#x} listed but not built"),
    };
    let mut r = vpd(page, &body);
    // PERIPHERAL DEVICE TYPE, as in the standard INQUIRY data.
    r[0] = standard_inquiry(u)[0];
    Ok(r)
}

/// READ CAPACITY(10) parameter data (SBC-4).
pub fn read_capacity10(u: &Unit) -> Vec<u8> {
    let mut r = vec![0u8; 8];
    let last = (u.blocks - 1).min(0xffff_ffff) as u32;
    r[..4].copy_from_slice(&last.to_be_bytes());
    r[4..].copy_from_slice(&u.block_size.to_be_bytes());
    r
}

/// READ CAPACITY(16) parameter data (SBC-4): RC BASIS 01b (the last
/// LBA of the medium, zoned or not: ZBC-2 00b would be the end of the
/// leading non-sequential zones), no protection, LBPME (UNMAP deallocates)
/// and LBPRZ (deallocated blocks read as zeros), as VPD 0xb2 says, except
/// on the zoned disk (no thin provisioning).
pub fn read_capacity16(u: &Unit) -> Vec<u8> {
    let mut r = vec![0u8; 32];
    r[..8].copy_from_slice(&(u.blocks - 1).to_be_bytes());
    r[8..12].copy_from_slice(&u.block_size.to_be_bytes());
    r[12] = 0x01 << 4;
    if u.max_open_zones.is_none() {
        r[14] = 0x80 | 0x40;
    }
    r
}

/// Provisioning status of an extent (GET LBA STATUS descriptor).
pub const MAPPED: u8 = 0;
pub const DEALLOCATED: u8 = 1;

/// GET LBA STATUS parameter data (SBC-4): header, then one 16-byte
/// descriptor per extent (LBA, number of blocks, provisioning status).
pub fn lba_status(extents: &[(u64, u32, u8)]) -> Vec<u8> {
    let mut r = vec![0u8; 8];
    for &(lba, n, status) in extents {
        r.extend_from_slice(&lba.to_be_bytes());
        r.extend_from_slice(&n.to_be_bytes());
        r.extend_from_slice(&[status & 0x0f, 0, 0, 0]);
    }
    let n = (r.len() - 4) as u32;
    r[..4].copy_from_slice(&n.to_be_bytes());
    r
}

/// MODE SENSE(6/10) arguments after CDB decoding.
#[derive(Clone, Copy, Debug)]
pub struct ModeArgs {
    pub ten: bool,
    pub dbd: bool,
    pub llbaa: bool,
    pub pc: PageControl,
    pub page: u8,
    pub subpage: u8,
}

/// Caching (0x08) and Control (0x0a) mode pages; no subpages.
fn mode_page(u: &Unit, page: u8, pc: PageControl) -> Vec<u8> {
    let changeable = pc == PageControl::Changeable;
    match page {
        0x08 => {
            // SBC-4: WCE (the page cache is a write-back cache: Linux
            // sends SYNCHRONIZE CACHE, which becomes fdatasync). Nothing is
            // changeable (no MODE SELECT).
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            if !changeable {
                p[2] = 0x04;
            }
            p
        }
        0x0a => {
            // SPC-5: one task set, fixed-format sense (D_SENSE 0),
            // GLTSD (no log parameters saved), restricted reordering, SWP
            // when write protected.
            let mut p = vec![0u8; 12];
            p[0] = 0x0a;
            p[1] = 0x0a;
            if !changeable {
                p[2] = 0x02;
                if u.read_only {
                    p[4] = 0x08;
                }
            }
            p
        }
        _ => unreachable!("mode page {page:#x}"),
    }
}

/// MODE SENSE(6) or (10) parameter data (SPC-5): header,
/// a block descriptor unless DBD (long with LLBAA), the pages asked for.
/// Page 0x3f is every page; subpage 0xff every subpage (each page here has
/// subpage 0 only).
pub fn mode_sense(u: &Unit, a: &ModeArgs) -> Result<Vec<u8>, Sense> {
    let pages: &[u8] = match (a.page, a.subpage) {
        (0x3f, 0x00 | 0xff) => &[0x08, 0x0a],
        (0x08, 0x00 | 0xff) => &[0x08],
        (0x0a, 0x00 | 0xff) => &[0x0a],
        (0x3f | 0x08 | 0x0a, _) => return Err(Sense::invalid_cdb_byte(3)),
        _ => return Err(Sense::invalid_cdb(2, 5)),
    };
    let mut bd = Vec::new();
    if !a.dbd {
        if a.llbaa {
            bd.extend_from_slice(&u.blocks.to_be_bytes());
            bd.extend_from_slice(&[0, 0, 0, 0]);
            bd.extend_from_slice(&u.block_size.to_be_bytes());
        } else {
            bd.extend_from_slice(&(u.blocks.min(0xffff_ffff) as u32).to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&u.block_size.to_be_bytes()[1..]);
        }
    }
    // Device-specific parameter (SBC-4): WP, DPOFUA.
    let dsp = if u.read_only { 0x80 } else { 0 } | 0x10;
    let mut r = if a.ten {
        vec![
            0,
            0,
            0,
            dsp,
            u8::from(a.llbaa && !a.dbd),
            0,
            0,
            bd.len() as u8,
        ]
    } else {
        vec![0, 0, dsp, bd.len() as u8]
    };
    r.extend_from_slice(&bd);
    for &p in pages {
        r.extend_from_slice(&mode_page(u, p, a.pc));
    }
    if a.ten {
        let n = (r.len() - 2) as u16;
        r[..2].copy_from_slice(&n.to_be_bytes());
    } else {
        r[0] = (r.len() - 1) as u8;
    }
    Ok(r)
}

/// Command timeouts descriptor (SPC-5): nominal not given,
/// recommended the backstore's cmd_time_out.
fn timeouts(u: &Unit) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a;
    t[8..12].copy_from_slice(&u.timeout_secs.to_be_bytes());
    t
}

/// REPORT SUPPORTED OPERATION CODES parameter data (SPC-5).
/// Options 0: all_commands; 1: one opcode without service actions; 2: one
/// opcode and service action; 3: either (the service action ignored for an
/// opcode that has none). RCTD adds the command timeouts descriptors.
pub fn report_opcodes(
    u: &Unit,
    rctd: bool,
    options: u8,
    op: u8,
    sa: u16,
) -> Result<Vec<u8>, Sense> {
    let zoned = u.max_open_zones.is_some();
    if options == 0 {
        let mut r = vec![0u8; 4];
        for c in commands(zoned) {
            r.push(c.op);
            r.push(0);
            r.extend_from_slice(&u16::from(c.sa.unwrap_or(0)).to_be_bytes());
            r.push(0);
            r.push(u8::from(rctd) << 1 | u8::from(c.sa.is_some()));
            r.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
            if rctd {
                r.extend_from_slice(&timeouts(u));
            }
        }
        let n = (r.len() - 4) as u32;
        r[..4].copy_from_slice(&n.to_be_bytes());
        return Ok(r);
    }
    let with_sa = super::scsi::has_service_actions(op, zoned);
    let found: Option<&CmdInfo> = match options {
        1 if with_sa => return Err(Sense::invalid_cdb_byte(3)),
        2 if !with_sa && commands(zoned).any(|c| c.op == op) => {
            return Err(Sense::invalid_cdb_byte(3))
        }
        _ => commands(zoned)
            .find(|c| c.op == op && (c.sa.is_none() || c.sa.map(u16::from) == Some(sa))),
    };
    let Some(c) = found else {
        // SUPPORT 001b: not supported.
        return Ok(vec![0, 0x01, 0, 0]);
    };
    let mut r = vec![0, u8::from(rctd) << 7 | 0x03];
    r.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
    r.extend_from_slice(c.usage);
    if rctd {
        r.extend_from_slice(&timeouts(u));
    }
    Ok(r)
}

/// REPORT LUNS parameter data (SPC-5): this target has LUN 0 only
/// (tcm_loop answers REPORT LUNS itself; this is for completeness).
pub fn report_luns(select: u8) -> Result<Vec<u8>, Sense> {
    match select {
        0x00 | 0x02 => Ok(vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        // Well known and administrative logical units: none.
        0x01 | 0x10 | 0x11 | 0x12 => Ok(vec![0u8; 8]),
        _ => Err(Sense::invalid_cdb_byte(2)),
    }
}

/// REQUEST SENSE parameter data (SPC-5): nothing pending (the kernel
/// keeps unit attentions), NO SENSE, in the format asked for.
pub fn request_sense(desc: bool) -> Vec<u8> {
    let none = Sense::new(super::scsi::NO_SENSE, 0, 0);
    if desc {
        none.descriptor()
    } else {
        none.fixed().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcmu::scsi::{parse, Command, COMMANDS};

    fn unit() -> Unit {
        Unit {
            blocks: 2048,
            block_size: 512,
            serial: "0123456789abcdef".into(),
            naa: 0x5001_4050_0000_0001,
            read_only: false,
            max_transfer: 1024,
            timeout_secs: 30,
            max_open_zones: None,
        }
    }

    #[test]
    fn inquiry_lengths_agree_with_the_data() {
        let s = standard_inquiry(&unit());
        assert_eq!(s[4] as usize + 5, s.len());
        assert_eq!((s[0], s[2], s[3] & 0x0f), (0, 0x07, 2));
        assert_eq!(&s[58..64], &[0x00, 0xc0, 0x05, 0xc0, 0x06, 0x00]);
        assert!(s[64..].iter().all(|&b| b == 0));
        let u = unit();
        for &p in VPD_PAGES {
            let v = vpd_page(&u, p).unwrap();
            assert_eq!(v[1], p);
            assert_eq!(
                u16::from_be_bytes([v[2], v[3]]) as usize + 4,
                v.len(),
                "{p:#x}"
            );
        }
        assert_eq!(&vpd_page(&u, 0).unwrap()[4..], VPD_PAGES);
        for p in [0xb0, 0xb1] {
            assert_eq!(
                vpd_page(&u, p).unwrap().len(),
                64,
                "{p:#x}: page length 0x3c"
            );
        }
        // 0x83: the designators' lengths add up to the page's.
        let d = vpd_page(&u, 0x83).unwrap();
        let mut at = 4;
        while at < d.len() {
            at += 4 + d[at + 3] as usize;
        }
        assert_eq!(at, d.len());
        assert_eq!(vpd_page(&u, 0x86), Err(Sense::invalid_cdb_byte(2)));
    }

    fn mode(u: &Unit, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        match parse(cdb, false)? {
            Command::ModeSense {
                ten,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                ..
            } => mode_sense(
                u,
                &ModeArgs {
                    ten,
                    dbd,
                    llbaa,
                    pc,
                    page,
                    subpage,
                },
            ),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn mode_sense_pages_subpages_dbd_and_page_control() {
        let mut u = unit();
        let all6 = mode(&u, &[0x1a, 0, 0x3f, 0, 255, 0]).unwrap();
        assert_eq!(all6[0] as usize + 1, all6.len());
        assert_eq!(
            (all6[2], all6[3]),
            (0x10, 8),
            "DPOFUA, one block descriptor"
        );
        assert_eq!(&all6[4..12], &[0, 0, 0x08, 0, 0, 0, 0x02, 0]);
        assert_eq!(
            (all6[12], all6[13], all6[14]),
            (0x08, 0x12, 0x04),
            "caching, WCE"
        );
        assert_eq!(
            (all6[32], all6[33], all6[34]),
            (0x0a, 0x0a, 0x02),
            "control"
        );
        assert_eq!(all6.len(), 4 + 8 + 20 + 12);
        let all_sub = mode(&u, &[0x1a, 0x08, 0x3f, 0xff, 255, 0]).unwrap();
        assert_eq!(&all_sub[4..], &all6[12..], "DBD drops the descriptor");
        let long = mode(&u, &[0x5a, 0x10, 0x0a, 0, 0, 0, 0, 1, 0, 0]).unwrap();
        assert_eq!(
            u16::from_be_bytes([long[0], long[1]]) as usize + 2,
            long.len()
        );
        assert_eq!((long[4], long[7]), (1, 16), "LONGLBA, 16-byte descriptor");
        assert_eq!(&long[8..16], &2048u64.to_be_bytes());
        assert_eq!(long[24], 0x0a);
        let changeable = mode(&u, &[0x1a, 0x08, 0x48, 0, 255, 0]).unwrap();
        assert!(
            changeable[6..].iter().all(|&b| b == 0),
            "nothing changeable"
        );
        assert_eq!(
            mode(&u, &[0x1a, 0x08, 0x88, 0, 255, 0]).unwrap(),
            mode(&u, &[0x1a, 0x08, 0x08, 0, 255, 0]).unwrap(),
            "default = current"
        );
        assert_eq!(
            mode(&u, &[0x1a, 0, 0x1c, 0, 255, 0]),
            Err(Sense::invalid_cdb(2, 5))
        );
        assert_eq!(
            mode(&u, &[0x1a, 0, 0x0a, 1, 255, 0]),
            Err(Sense::invalid_cdb_byte(3))
        );
        let saved = mode(&u, &[0x1a, 0, 0xc8, 0, 255, 0]).unwrap_err();
        assert_eq!((saved.key, saved.asc, saved.ascq), (0x05, 0x39, 0));
        u.read_only = true;
        let ro = mode(&u, &[0x1a, 0x08, 0x0a, 0, 255, 0]).unwrap();
        assert_eq!((ro[2] & 0x80, ro[8] & 0x08), (0x80, 0x08), "WP and SWP");
    }

    #[test]
    fn report_opcodes_all_and_one() {
        let u = unit();
        let all = report_opcodes(&u, false, 0, 0, 0).unwrap();
        assert_eq!(
            u32::from_be_bytes(all[..4].try_into().unwrap()) as usize,
            all.len() - 4
        );
        assert_eq!(all.len(), 4 + 8 * commands(false).count());
        let rc16 = &all[4..]
            .chunks(8)
            .find(|d| d[0] == 0x9e)
            .expect("READ CAPACITY(16) listed");
        assert_eq!(&rc16[..8], &[0x9e, 0, 0, 0x10, 0, 0x01, 0, 16]);
        let with_t = report_opcodes(&u, true, 0, 0, 0).unwrap();
        assert_eq!(with_t.len(), 4 + 20 * commands(false).count());
        assert_eq!(
            &with_t[4 + 8..4 + 20],
            &[0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30]
        );
        let read16 = report_opcodes(&u, false, 1, 0x88, 0).unwrap();
        assert_eq!(&read16[..4], &[0, 0x03, 0, 16]);
        assert_eq!(
            &read16[4..],
            COMMANDS.iter().find(|c| c.op == 0x88).unwrap().usage
        );
        assert_eq!(
            report_opcodes(&u, false, 1, 0x9e, 0x10),
            Err(Sense::invalid_cdb_byte(3))
        );
        assert_eq!(
            report_opcodes(&u, false, 2, 0x88, 0),
            Err(Sense::invalid_cdb_byte(3))
        );
        let rc = report_opcodes(&u, true, 2, 0x9e, 0x10).unwrap();
        assert_eq!(&rc[..4], &[0, 0x83, 0, 16]);
        assert_eq!(rc.len(), 4 + 16 + 12);
        assert_eq!(
            report_opcodes(&u, false, 2, 0x9e, 0x11).unwrap(),
            vec![0, 1, 0, 0]
        );
        assert_eq!(report_opcodes(&u, false, 3, 0x88, 7).unwrap()[1], 0x03);
        assert_eq!(
            report_opcodes(&u, false, 1, 0x04, 0).unwrap(),
            vec![0, 1, 0, 0]
        );
    }

    #[test]
    fn zoned_disk_pages_capacity_and_opcodes() {
        let u = Unit {
            max_open_zones: Some(7),
            ..unit()
        };
        assert_eq!(standard_inquiry(&u)[0], 0x14, "host managed zoned");
        assert_eq!(&vpd_page(&u, 0).unwrap()[4..], ZONED_VPD_PAGES);
        assert_eq!(vpd_page(&u, 0xb2), Err(Sense::invalid_cdb_byte(2)));
        assert_eq!(vpd_page(&unit(), 0xb6), Err(Sense::invalid_cdb_byte(2)));
        for &p in ZONED_VPD_PAGES {
            assert_eq!(vpd_page(&u, p).unwrap()[0], 0x14, "{p:#x}: device type");
        }
        let b6 = vpd_page(&u, 0xb6).unwrap();
        assert_eq!(b6.len(), 64);
        assert_eq!(&b6[..5], &[0x14, 0xb6, 0, 0x3c, 0x01], "URSWRZ");
        assert_eq!(&b6[8..16], &[0xff; 8], "optimal SWP counts not reported");
        assert_eq!(&b6[16..20], &7u32.to_be_bytes(), "max open SWR zones");
        let b1 = vpd_page(&u, 0xb1).unwrap();
        assert_eq!(b1[8] & 0x30, 0, "ZONED 00b");
        let b0 = vpd_page(&u, 0xb0).unwrap();
        assert!(b0[20..28].iter().all(|&b| b == 0), "no UNMAP limits");
        let r = read_capacity16(&u);
        assert_eq!((r[12], r[14]), (0x10, 0), "RC BASIS 01b, LBPME 0");
        let all = report_opcodes(&u, false, 0, 0, 0).unwrap();
        let ops: Vec<(u8, u16)> = all[4..]
            .chunks(8)
            .map(|d| (d[0], u16::from_be_bytes([d[2], d[3]])))
            .collect();
        for want in [(0x94, 1), (0x94, 2), (0x94, 3), (0x94, 4), (0x95, 0)] {
            assert!(ops.contains(&want), "{want:x?}");
        }
        assert!(!ops
            .iter()
            .any(|&(op, sa)| op == 0x42 || (op, sa) == (0x9e, 0x12)));
        assert_eq!(
            report_opcodes(&u, false, 1, 0x42, 0).unwrap(),
            vec![0, 1, 0, 0]
        );
        let rz = report_opcodes(&u, false, 2, 0x95, 0).unwrap();
        assert_eq!(&rz[..4], &[0, 0x03, 0, 16]);
        assert_eq!(rz[4 + 14], 0xbf, "PARTIAL and REPORTING OPTIONS");
        assert_eq!(
            report_opcodes(&unit(), false, 2, 0x95, 0).unwrap(),
            vec![0, 1, 0, 0],
            "not on the conventional disk"
        );
    }

    #[test]
    fn capacity_luns_and_request_sense() {
        let u = unit();
        assert_eq!(read_capacity10(&u), vec![0, 0, 0x07, 0xff, 0, 0, 2, 0]);
        let r = read_capacity16(&u);
        assert_eq!(
            &r[..16],
            &[0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0, 0x10, 0, 0xc0, 0]
        );
        assert!(r[16..].iter().all(|&b| b == 0));
        let big = Unit {
            blocks: 1 << 33,
            ..unit()
        };
        assert_eq!(&read_capacity10(&big)[..4], &[0xff; 4]);
        assert_eq!(report_luns(0).unwrap().len(), 16);
        assert_eq!(report_luns(1).unwrap(), vec![0u8; 8]);
        assert_eq!(report_luns(3), Err(Sense::invalid_cdb_byte(2)));
        assert_eq!(request_sense(false)[..3], [0x70, 0, 0]);
        assert_eq!(request_sense(false).len(), 18);
        assert_eq!(request_sense(true), vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
        let st = lba_status(&[(0, 8, MAPPED), (8, 100, DEALLOCATED)]);
        assert_eq!(st.len(), 8 + 32);
        assert_eq!(&st[..4], &(36u32).to_be_bytes(), "PARAMETER DATA LENGTH");
        assert_eq!(
            &st[24..40],
            &[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 100, 1, 0, 0, 0]
        );
    }
}
