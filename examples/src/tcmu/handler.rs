//! The command loop: entries from the ring, validated, executed on the
//! disk, completed in order.

use super::disk::{DataBuf, Disk, Scratch};
use super::ring::{Ring, MAILBOX_LEN};
use super::scsi::{cdb_len, Fail, Sense, GOOD};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

const TCMU_OP_PAD: u32 = 0;
const TCMU_OP_CMD: u32 = 1;
const TCMU_OP_MASK: u32 = 0x7;
const TCMU_UFLAG_UNKNOWN_OP: u8 = 0x1;
/// rsp.read_len is the data-in length sent (the rest is residual).
const TCMU_UFLAG_READ_LEN: u8 = 0x2;
/// struct tcmu_cmd_entry (packed): hdr { len_op u32 @0, cmd_id u16 @4,
/// kflags u8 @6, uflags u8 @7 }, req { iov_cnt u32 @8, iov_bidi_cnt u32 @12,
/// iov_dif_cnt u32 @16, cdb_off u64 @24, pad @32, pad @40, iov[] @48 }, rsp
/// { scsi_status u8 @8, pad @9..12, read_len u32 @12, sense_buffer[96] @16 }. Only the outer
/// struct is packed: the union's members keep their natural alignment, so
/// cdb_off sits at 24, not 20.
const HDR_LEN: usize = 8;
const REQ_IOV: usize = 48;
const IOVEC_LEN: usize = 16;
const RSP_STATUS: usize = 8;
const RSP_READ_LEN: usize = 12;
const RSP_SENSE: usize = 16;
const SENSE_BUFFERSIZE: usize = 96;

/// The validated data buffers of one command: (offset, len) in the mapping.
struct Iovs<'a> {
    ring: &'a Ring,
    list: Vec<(usize, usize)>,
    total: usize,
}

impl DataBuf for Iovs<'_> {
    fn len(&self) -> usize {
        self.total
    }
    fn fill(&mut self, mut src: &[u8]) -> usize {
        let mut done = 0;
        let zeros = [0u8; 4096];
        for &(off, len) in &self.list {
            let n = len.min(src.len());
            if !self.ring.write(off, &src[..n]) {
                break;
            }
            src = &src[n..];
            done += n;
            // No stale bytes of an earlier command after the response.
            let mut z = n;
            while z < len {
                let k = (len - z).min(zeros.len());
                self.ring.write(off + z, &zeros[..k]);
                z += k;
            }
        }
        done
    }
    fn gather(&self, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for &(off, len) in &self.list {
            if done == dst.len() {
                break;
            }
            let n = len.min(dst.len() - done);
            if !self.ring.read(off, &mut dst[done..done + n]) {
                break;
            }
            done += n;
        }
        done
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}

/// Serve commands until `stop` is set.
pub fn serve(ring: &Ring, disk: &Disk, stop: &AtomicBool) -> io::Result<()> {
    let mb = ring.mailbox();
    let cmdr_off = mb.cmdr_off as usize;
    let cmdr_size = mb.cmdr_size as usize;
    eprintln!(
        "tcmu-file: ring: mailbox version {} flags {:#x}, command ring {cmdr_size} bytes at {cmdr_off:#x}, {} byte mapping",
        mb.version,
        mb.flags,
        ring.len()
    );
    if cmdr_off < MAILBOX_LEN || cmdr_size == 0 || !ring.contains(cmdr_off, cmdr_size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad mailbox {mb:?} for a {} byte mapping", ring.len()),
        ));
    }
    let data_start = cmdr_off + cmdr_size;
    let mut scratch = Scratch::default();
    let mut entry = Vec::new();
    loop {
        let mut completed = false;
        loop {
            let head = ring.cmd_head() as usize;
            let tail = ring.cmd_tail() as usize;
            if head == tail {
                break;
            }
            completed = true;
            if head >= cmdr_size || tail >= cmdr_size || tail % 8 != 0 {
                eprintln!("tcmu-file: ring indexes out of range (head {head}, tail {tail}, size {cmdr_size}); skipping to head");
                ring.set_cmd_tail((head % cmdr_size) as u32 & !7);
                break;
            }
            let mut hdr = [0u8; HDR_LEN];
            let len_op = if tail + HDR_LEN <= cmdr_size && ring.read(cmdr_off + tail, &mut hdr) {
                u32_at(&hdr, 0)
            } else {
                0
            };
            let len = (len_op & !TCMU_OP_MASK) as usize;
            if len < HDR_LEN || tail + len > cmdr_size {
                eprintln!(
                    "tcmu-file: malformed ring entry at {tail} (len {len}); skipping to head {head}"
                );
                ring.set_cmd_tail(head as u32);
                break;
            }
            let at = cmdr_off + tail;
            match len_op & TCMU_OP_MASK {
                TCMU_OP_PAD => {}
                TCMU_OP_CMD => {
                    entry.resize(len, 0);
                    ring.read(at, &mut entry);
                    let result = command(
                        ring,
                        disk,
                        &entry,
                        cmdr_off,
                        cmdr_size,
                        data_start,
                        &mut scratch,
                    );
                    let mut rsp = [0u8; RSP_SENSE + SENSE_BUFFERSIZE - RSP_STATUS];
                    match result {
                        Ok(read_len) => {
                            rsp[0] = GOOD;
                            if let Some(n) = read_len {
                                let r = RSP_READ_LEN - RSP_STATUS;
                                rsp[r..r + 4].copy_from_slice(&(n as u32).to_ne_bytes());
                                ring.write(at + 7, &[hdr[7] | TCMU_UFLAG_READ_LEN]);
                            }
                        }
                        Err(fail) => {
                            rsp[0] = fail.status();
                            if let Fail::Check(s) = fail {
                                let f = s.fixed();
                                rsp[RSP_SENSE - RSP_STATUS..RSP_SENSE - RSP_STATUS + f.len()]
                                    .copy_from_slice(&f);
                            }
                        }
                    }
                    // The response overlays the request; an entry shorter
                    // than a response gets the status only.
                    let n = rsp.len().min(len - RSP_STATUS);
                    ring.write(at + RSP_STATUS, &rsp[..n]);
                }
                _ => {
                    // Unknown entry type: tell the kernel, complete it.
                    ring.write(at + 7, &[hdr[7] | TCMU_UFLAG_UNKNOWN_OP]);
                }
            }
            ring.set_cmd_tail(((tail + len) % cmdr_size) as u32);
        }
        if completed {
            ring.kick()?;
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        ring.wait(200)?;
    }
}

/// Validate one command entry and execute it: the data-in length sent, if
/// the command has data-in.
fn command(
    ring: &Ring,
    disk: &Disk,
    entry: &[u8],
    cmdr_off: usize,
    cmdr_size: usize,
    data_start: usize,
    scratch: &mut Scratch,
) -> Result<Option<usize>, Fail> {
    let bad = |why: String| {
        eprintln!("tcmu-file: malformed command entry: {why}");
        Fail::Check(Sense::TARGET_FAILURE)
    };
    if entry.len() < REQ_IOV {
        return Err(bad(format!("{} bytes", entry.len())));
    }
    let iov_cnt = u32_at(entry, 8) as usize;
    let extra = u32_at(entry, 12) as usize + u32_at(entry, 16) as usize;
    let iov_end = iov_cnt
        .checked_add(extra)
        .and_then(|n| n.checked_mul(IOVEC_LEN))
        .and_then(|n| n.checked_add(REQ_IOV));
    if iov_end.is_none_or(|e| e > entry.len()) {
        return Err(bad(format!(
            "{iov_cnt}+{extra} iovecs in {} bytes",
            entry.len()
        )));
    }
    let cdb_off = u64_at(entry, 24);
    let mut cdb = [0u8; 16];
    let cdb_ok = usize::try_from(cdb_off)
        .ok()
        .filter(|&o| o >= cmdr_off && o < cmdr_off + cmdr_size);
    let Some(cdb_at) = cdb_ok else {
        return Err(bad(format!(
            "cdb_off {cdb_off:#x} outside the command ring"
        )));
    };
    if !ring.read(cdb_at, &mut cdb[..1]) {
        return Err(bad("cdb unreadable".into()));
    }
    let n = cdb_len(cdb[0]).ok_or(Sense::INVALID_OPCODE)?;
    if cdb_at + n > cmdr_off + cmdr_size || !ring.read(cdb_at, &mut cdb[..n]) {
        return Err(bad(format!(
            "cdb at {cdb_at:#x} runs past the command ring"
        )));
    }
    let mut list = Vec::with_capacity(iov_cnt);
    let mut total = 0usize;
    for i in 0..iov_cnt {
        let o = REQ_IOV + i * IOVEC_LEN;
        let (base, len) = (u64_at(entry, o), u64_at(entry, o + 8));
        let ok = usize::try_from(base)
            .ok()
            .zip(usize::try_from(len).ok())
            .filter(|&(b, l)| b >= data_start && ring.contains(b, l));
        let Some((b, l)) = ok else {
            return Err(bad(format!(
                "iovec {i} ({base:#x}, {len}) outside the data area"
            )));
        };
        total = total.saturating_add(l);
        list.push((b, l));
    }
    if total > ring.len() {
        return Err(bad(format!(
            "{total} data bytes in a {} byte mapping",
            ring.len()
        )));
    }
    let mut iovs = Iovs { ring, list, total };
    disk.execute(&cdb[..n], &mut iovs, scratch)
}
