//! The NBD protocol side of the example server: fixed-newstyle handshake,
//! option haggling and simple-reply transmission, per
//! <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.
//!
//! Every connection is served by one thread that holds an `IoFlusher` for
//! its whole life, and every access to the backing file goes through
//! `NoFsFile`: the thread that may be asked to write back the file system
//! sitting on this export can never recurse into that file system's reclaim.
//!
//! Requests are handled in order on the connection's thread. Replies are
//! buffered and flushed when no further request is already waiting in the
//! receive buffer, so a pipelining client (queue depth > 1) gets its replies
//! in batches with few syscalls, and a QD1 client gets each reply at once.

#![allow(dead_code)] // shared with tests/nbd_server.rs, which use a subset

use reclaim_scope::{IoFlusher, NoFsFile};
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// Handshake.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) | 9;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Transmission.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

// Errors on the wire.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;

/// Largest READ or WRITE payload served (the NBD "maximum block size"
/// advertised in NBD_INFO_BLOCK_SIZE). A WRITE announcing more than this
/// cannot be resynchronised with and closes the connection.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option payload read during the handshake.
pub const MAX_OPTION: u32 = 64 << 10;

/// How connection workers get their allocation context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarding {
    /// Each connection thread holds an `IoFlusher`; best effort (a refusal
    /// was reported at start-up).
    IoFlusher,
    /// Each connection thread must be an I/O flusher; refuse to serve
    /// otherwise.
    Strict,
    /// No guard at all: the unprotected baseline for comparison.
    None,
}

/// The export: one backing file.
pub struct Export {
    pub name: String,
    pub file: NoFsFile,
    pub size: u64,
    pub read_only: bool,
    pub guarding: Guarding,
    pub log: bool,
    /// Reads, writes and flushes bypass `NoFsFile`: plain `pread`/`pwrite`/
    /// `fdatasync`, as the daemon of the 2019 deadlock did. Only for the
    /// unprotected baseline (`--unprotected`, tests/vm_nbd_seed.rs); with
    /// `Guarding::None` alone every file I/O is still NOIO-scoped by
    /// `NoFsFile`. Trims and zeroing always use `NoFsFile` (std has no
    /// `fallocate`).
    pub plain_io: bool,
    /// Durability requests served (NBD_CMD_FLUSH and FUA), for tests and logs.
    pub syncs: AtomicU64,
    next_conn: AtomicU64,
}

impl Export {
    pub fn new(
        name: String,
        file: NoFsFile,
        size: u64,
        read_only: bool,
        guarding: Guarding,
    ) -> Self {
        Export {
            name,
            file,
            size,
            read_only,
            guarding,
            log: true,
            plain_io: false,
            syncs: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
        }
    }

    pub fn transmission_flags(&self) -> u16 {
        let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_CAN_MULTI_CONN;
        if self.read_only {
            f |= TFLAG_READ_ONLY;
        } else {
            f |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
        }
        f
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.plain_io {
            self.file.get_ref().read_exact_at(buf, offset)
        } else {
            self.file.read_exact_at_nofs(buf, offset).map_err(io::Error::from)
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.plain_io {
            self.file.get_ref().write_all_at(buf, offset)
        } else {
            self.file.write_all_at_nofs(buf, offset).map_err(io::Error::from)
        }
    }

    fn knows(&self, name: &[u8]) -> bool {
        // The empty name selects the default (only) export.
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// Why a connection ended.
#[derive(Debug)]
pub enum End {
    /// NBD_CMD_DISC, NBD_OPT_ABORT, or the client closed between messages.
    Clean,
    /// The client broke the protocol; the connection was closed.
    Protocol(String),
    /// The socket failed or the client vanished mid-message.
    Io(io::Error),
    /// `Guarding::Strict` and the thread could not become an I/O flusher.
    Unprotected(reclaim_scope::Error),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Clean => f.write_str("closed by the client"),
            End::Protocol(why) => write!(f, "protocol error, connection closed: {why}"),
            End::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("client vanished in the middle of a message")
            }
            End::Io(e) => write!(f, "I/O error on the socket: {e}"),
            End::Unprotected(e) => write!(f, "refusing to serve unprotected (--strict): {e}"),
        }
    }
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

fn protocol<T>(why: impl Into<String>) -> Result<T, End> {
    Err(End::Protocol(why.into()))
}

/// Serves one connection on the calling thread until it ends; logs how.
pub fn serve<S>(export: &Arc<Export>, reader: S, writer: S, peer: &str)
where
    S: Read + Write,
{
    let id = export.next_conn.fetch_add(1, Ordering::Relaxed);
    let end = serve_inner(export, reader, writer);
    if export.log {
        eprintln!("nbd-server: conn {id} ({peer}): {end}");
    }
}

fn serve_inner<S: Read + Write>(export: &Export, reader: S, writer: S) -> End {
    // The whole connection runs as an I/O flusher: the NoFsFile calls below
    // then add no syscall of their own.
    let _flusher = match export.guarding {
        Guarding::None => None,
        Guarding::IoFlusher => Some(IoFlusher::enter()),
        Guarding::Strict => match IoFlusher::try_enter() {
            Ok(g) => Some(g),
            Err(e) => return End::Unprotected(e),
        },
    };
    let mut r = BufReader::with_capacity(256 << 10, reader);
    let mut w = BufWriter::with_capacity(256 << 10, writer);
    let result = handshake(export, &mut r, &mut w).and_then(|go| {
        if go {
            transmission(export, &mut r, &mut w)
        } else {
            Ok(())
        }
    });
    let _ = w.flush();
    match result {
        Ok(()) => End::Clean,
        Err(e) => e,
    }
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Reads and drops `len` bytes (a payload the server will not use).
fn discard(r: &mut impl Read, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(len), &mut io::sink())?;
    if copied < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn option_reply(w: &mut (impl Write + ?Sized), opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut h = [0u8; 20];
    h[..8].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
    h[8..12].copy_from_slice(&opt.to_be_bytes());
    h[12..16].copy_from_slice(&kind.to_be_bytes());
    h[16..20].copy_from_slice(&(data.len() as u32).to_be_bytes());
    w.write_all(&h)?;
    w.write_all(data)
}

fn option_error(w: &mut impl Write, opt: u32, kind: u32, msg: &str) -> io::Result<()> {
    option_reply(w, opt, kind, msg.as_bytes())
}

/// The fixed-newstyle handshake. `Ok(true)`: enter transmission.
/// `Ok(false)`: the client aborted.
fn handshake<R: Read, W: Write>(export: &Export, r: &mut R, w: &mut W) -> Result<bool, End> {
    w.write_all(&NBDMAGIC.to_be_bytes())?;
    w.write_all(&IHAVEOPT.to_be_bytes())?;
    w.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    w.flush()?;
    let client_flags = read_u32(r)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return protocol(format!("unknown client flags {client_flags:#x}"));
    }
    if client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return protocol("client does not speak fixed newstyle");
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    loop {
        let magic = read_u64(r)?;
        if magic != IHAVEOPT {
            return protocol(format!("bad option magic {magic:#018x}"));
        }
        let opt = read_u32(r)?;
        let len = read_u32(r)?;
        if len > MAX_OPTION {
            // Too large to be a real option of ours: reading it could be
            // a denial of service, so drop the connection.
            option_error(w, opt, REP_ERR_TOO_BIG, "option too large")?;
            w.flush()?;
            return protocol(format!("option {opt} of {len} bytes"));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        match opt {
            OPT_EXPORT_NAME => {
                if !export.knows(&data) {
                    return protocol(format!(
                        "NBD_OPT_EXPORT_NAME for unknown export {:?}",
                        String::from_utf8_lossy(&data)
                    ));
                }
                w.write_all(&export.size.to_be_bytes())?;
                w.write_all(&export.transmission_flags().to_be_bytes())?;
                if !no_zeroes {
                    w.write_all(&[0u8; 124])?;
                }
                w.flush()?;
                return Ok(true);
            }
            OPT_ABORT => {
                option_reply(w, opt, REP_ACK, &[])?;
                w.flush()?;
                return Ok(false);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_error(w, opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                } else {
                    let mut d = Vec::with_capacity(4 + export.name.len());
                    d.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
                    d.extend_from_slice(export.name.as_bytes());
                    option_reply(w, opt, REP_SERVER, &d)?;
                    option_reply(w, opt, REP_ACK, &[])?;
                }
            }
            OPT_INFO | OPT_GO => {
                if info_or_go(export, w, opt, &data)? && opt == OPT_GO {
                    w.flush()?;
                    return Ok(true);
                }
            }
            OPT_STARTTLS => option_error(w, opt, REP_ERR_UNSUP, "TLS is not supported")?,
            OPT_STRUCTURED_REPLY => {
                option_error(w, opt, REP_ERR_UNSUP, "only simple replies are supported")?
            }
            _ => option_error(w, opt, REP_ERR_UNSUP, "unknown option")?,
        }
        w.flush()?;
    }
}

/// Answers NBD_OPT_INFO / NBD_OPT_GO; `Ok(true)` when the export was
/// described and acknowledged.
fn info_or_go(export: &Export, w: &mut impl Write, opt: u32, data: &[u8]) -> io::Result<bool> {
    let invalid = |w: &mut dyn Write, why: &str| -> io::Result<bool> {
        option_reply(w, opt, REP_ERR_INVALID, why.as_bytes())?;
        Ok(false)
    };
    if data.len() < 6 {
        return invalid(w, "short NBD_OPT_INFO/GO payload");
    }
    let name_len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
    let Some(rest) = data.get(4..).filter(|r| r.len() >= name_len + 2) else {
        return invalid(w, "export name longer than the option");
    };
    let name = &rest[..name_len];
    let n = u16::from_be_bytes(rest[name_len..name_len + 2].try_into().unwrap()) as usize;
    let reqs = &rest[name_len + 2..];
    if reqs.len() != 2 * n {
        return invalid(
            w,
            "information request count does not match the option length",
        );
    }
    if !export.knows(name) {
        option_reply(w, opt, REP_ERR_UNKNOWN, b"no such export")?;
        return Ok(false);
    }
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&export.size.to_be_bytes());
    info.extend_from_slice(&export.transmission_flags().to_be_bytes());
    option_reply(w, opt, REP_INFO, &info)?;
    // Block sizes are always sent: they tell the client the largest
    // payload served.
    let mut bs = Vec::with_capacity(14);
    bs.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    bs.extend_from_slice(&1u32.to_be_bytes());
    bs.extend_from_slice(&4096u32.to_be_bytes());
    bs.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    option_reply(w, opt, REP_INFO, &bs)?;
    for req in reqs.chunks_exact(2) {
        match u16::from_be_bytes([req[0], req[1]]) {
            INFO_NAME => {
                let mut d = INFO_NAME.to_be_bytes().to_vec();
                d.extend_from_slice(export.name.as_bytes());
                option_reply(w, opt, REP_INFO, &d)?;
            }
            INFO_DESCRIPTION => {
                let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
                d.extend_from_slice(b"reclaim-scope example NBD server (NoFsFile, IoFlusher)");
                option_reply(w, opt, REP_INFO, &d)?;
            }
            _ => {} // EXPORT and BLOCK_SIZE were sent; unknown ones are ignored
        }
    }
    option_reply(w, opt, REP_ACK, &[])?;
    Ok(true)
}

fn reply(w: &mut impl Write, cookie: u64, error: u32) -> io::Result<()> {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..].copy_from_slice(&cookie.to_be_bytes());
    w.write_all(&h)
}

/// Maps a backing-file error to the NBD error the client sees.
fn wire_error(e: &io::Error) -> u32 {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => ENOSPC,
        Some(libc::ENOMEM) => ENOMEM,
        Some(libc::EPERM) | Some(libc::EROFS) | Some(libc::EACCES) => EPERM,
        Some(libc::EOPNOTSUPP) => ENOTSUP,
        Some(libc::EINVAL) => EINVAL,
        _ => EIO,
    }
}

/// Serves requests until NBD_CMD_DISC or the client goes away.
fn transmission<R: Read, W: Write>(
    export: &Export,
    r: &mut BufReader<R>,
    w: &mut BufWriter<W>,
) -> Result<(), End> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Flush replies only when no further request is waiting already:
        // replies to a pipelined batch leave in one write.
        if r.buffer().is_empty() {
            w.flush()?;
        }
        let mut h = [0u8; 28];
        match r.read(&mut h[..1])? {
            0 => return Ok(()), // closed between requests: a (rude) clean end
            _ => r.read_exact(&mut h[1..])?,
        }
        let magic = u32::from_be_bytes(h[0..4].try_into().unwrap());
        let flags = u16::from_be_bytes(h[4..6].try_into().unwrap());
        let cmd = u16::from_be_bytes(h[6..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let offset = u64::from_be_bytes(h[16..24].try_into().unwrap());
        let len = u32::from_be_bytes(h[24..28].try_into().unwrap());
        if magic != REQUEST_MAGIC {
            // Without the magic nothing after it can be trusted (not even
            // where the next request starts): the spec says to hang up.
            return protocol(format!("bad request magic {magic:#010x}"));
        }
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= export.size);
        match cmd {
            CMD_READ => {
                if len > MAX_PAYLOAD {
                    reply(w, cookie, EOVERFLOW)?;
                } else if !in_range {
                    reply(w, cookie, EINVAL)?;
                } else {
                    buf.resize(len as usize, 0);
                    match export.read_at(&mut buf, offset) {
                        Ok(()) => {
                            reply(w, cookie, 0)?;
                            w.write_all(&buf)?;
                        }
                        Err(e) => {
                            log_io(export, "read", offset, len, &e);
                            reply(w, cookie, wire_error(&e))?;
                        }
                    }
                }
            }
            CMD_WRITE => {
                if len > MAX_PAYLOAD {
                    // The payload follows the header; one this large cannot
                    // be skipped safely.
                    return protocol(format!("NBD_CMD_WRITE of {len} bytes (max {MAX_PAYLOAD})"));
                }
                if export.read_only || !in_range {
                    discard(r, u64::from(len))?;
                    reply(w, cookie, if export.read_only { EPERM } else { ENOSPC })?;
                    continue;
                }
                buf.resize(len as usize, 0);
                r.read_exact(&mut buf)?;
                let res = export
                    .write_at(&buf, offset)
                    .and_then(|()| fua(export, flags));
                ack(export, w, cookie, res, "write", offset, len)?;
            }
            CMD_FLUSH => {
                let res = sync(export);
                ack(export, w, cookie, res, "flush", offset, len)?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                if export.read_only {
                    reply(w, cookie, EPERM)?;
                    continue;
                }
                if !in_range {
                    reply(w, cookie, ENOSPC)?;
                    continue;
                }
                let (what, res) = if cmd == CMD_TRIM {
                    ("trim", export.file.punch_hole_nofs(offset, u64::from(len)))
                } else if flags & CMD_FLAG_NO_HOLE != 0 {
                    (
                        "write-zeroes",
                        export.file.zero_range_nofs(offset, u64::from(len)),
                    )
                } else {
                    // Zeroes may be a hole: punching is cheapest and frees space.
                    (
                        "write-zeroes",
                        export.file.punch_hole_nofs(offset, u64::from(len)),
                    )
                };
                let res = res
                    .map_err(io::Error::from)
                    .and_then(|()| fua(export, flags));
                ack(export, w, cookie, res, what, offset, len)?;
            }
            CMD_DISC => return Ok(()),
            _ => {
                // Unknown commands carry no payload we could know of.
                if export.log {
                    eprintln!("nbd-server: unsupported command {cmd}, answered EINVAL");
                }
                reply(w, cookie, EINVAL)?;
            }
        }
    }
}

fn sync(export: &Export) -> io::Result<()> {
    export.syncs.fetch_add(1, Ordering::Relaxed);
    if export.plain_io {
        export.file.get_ref().sync_data()
    } else {
        export.file.sync_data_nofs().map_err(io::Error::from)
    }
}

fn fua(export: &Export, flags: u16) -> io::Result<()> {
    if flags & CMD_FLAG_FUA != 0 {
        sync(export)
    } else {
        Ok(())
    }
}

fn ack(
    export: &Export,
    w: &mut impl Write,
    cookie: u64,
    res: io::Result<()>,
    what: &str,
    offset: u64,
    len: u32,
) -> io::Result<()> {
    match res {
        Ok(()) => reply(w, cookie, 0),
        Err(e) => {
            log_io(export, what, offset, len, &e);
            reply(w, cookie, wire_error(&e))
        }
    }
}

fn log_io(export: &Export, what: &str, offset: u64, len: u32, e: &io::Error) {
    if export.log {
        eprintln!("nbd-server: {what} of {len} bytes at {offset} failed: {e}");
    }
}

/// Accepts TCP connections forever, one thread each.
pub fn run_tcp(listener: TcpListener, export: Arc<Export>) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("nbd-server: accept on TCP failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "tcp".into(), |a| a.to_string());
        let export = export.clone();
        spawn_conn(move || match stream.try_clone() {
            Ok(reader) => serve(&export, reader, stream, &peer),
            Err(e) => eprintln!("nbd-server: {peer}: cannot clone socket: {e}"),
        });
    }
}

/// Accepts unix-socket connections forever, one thread each.
pub fn run_unix(listener: UnixListener, export: Arc<Export>) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("nbd-server: accept on the unix socket failed: {e}");
                continue;
            }
        };
        let export = export.clone();
        spawn_conn(move || match stream.try_clone() {
            Ok(reader) => serve(&export, reader, stream, "unix"),
            Err(e) => eprintln!("nbd-server: unix: cannot clone socket: {e}"),
        });
    }
}

fn spawn_conn(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name("nbd-conn".into()).spawn(f) {
        eprintln!("nbd-server: cannot start a connection thread: {e}");
    }
}

/// Opens (or creates, sparse, with `size` bytes) the backing file.
/// An existing non-empty file keeps its size.
pub fn open_backing(
    path: &std::path::Path,
    size: u64,
    read_only: bool,
) -> io::Result<(NoFsFile, u64)> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(!read_only).create(!read_only);
    let file = NoFsFile::open(path, &opts)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut len = file.get_ref().metadata()?.len();
    if len == 0 && !read_only {
        file.set_len_nofs(size)?;
        len = size;
    }
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: the backing file is empty", path.display()),
        ));
    }
    Ok((file, len))
}
