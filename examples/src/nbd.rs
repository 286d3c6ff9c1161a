//! The NBD protocol side of the example server: fixed-newstyle handshake,
//! option haggling (structured replies, `base:allocation`), and
//! transmission with simple or structured replies, per
//! <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.
//! The wire format itself (parsers, encoders, the errno mapping) is in
//! `proto.rs`, without any I/O.
//!
//! Every connection is served by one thread that holds an `IoFlusher` for
//! its whole life, and every access to the backing store goes through
//! `NoFsFile` (or, for `NBD_CMD_CACHE`'s `posix_fadvise`, a `NoFsScope`):
//! the thread that may be asked to write back the file system sitting on
//! this export can never recurse into that file system's reclaim.
//!
//! Requests are handled in order on the connection's thread. Replies are
//! buffered and flushed when no further request is already waiting in the
//! receive buffer, so a pipelining client (queue depth > 1) gets its replies
//! in batches with few syscalls, and a QD1 client gets each reply at once.
//!
//! Connections are bounded: a client must finish the handshake within
//! [`Limits::handshake_timeout`], at most [`Limits::max_handshakes`]
//! connections negotiate at once and [`Limits::max_connections`] are open
//! in all (each refusal is one log line); a connection that stalls in the
//! middle of a message for [`Limits::io_timeout`] is dropped (nothing it
//! sent in part was acknowledged). Established connections idle between
//! requests are kept (TCP keepalive finds dead peers) unless
//! [`Limits::idle_timeout`] is set.

pub mod proto;

pub use proto::*;
use reclaim_scope::{NoFsFile, NoFsIoError};
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How connection workers get their allocation context.
pub use crate::daemon::Guarding;
use crate::daemon::{FileIo, IoError};

/// Bounds on what clients can hold (issue 13; qemu-nbd's CVE-2024-7409 is
/// this class: clients that never finish negotiating pinned the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From accept to the end of option haggling (NBD_OPT_GO acknowledged,
    /// NBD_OPT_EXPORT_NAME answered, or NBD_OPT_ABORT).
    pub handshake_timeout: Duration,
    /// Connections accepted and still negotiating; more are refused.
    pub max_handshakes: usize,
    /// Connections open in all; more are refused.
    pub max_connections: usize,
    /// A message (request, payload, option) or a reply that stalls this
    /// long in the middle ends the connection.
    pub io_timeout: Duration,
    /// An established connection with no request for this long is closed;
    /// `None`: kept (NBD clients are idle for hours legitimately).
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 128,
            max_connections: 512,
            io_timeout: Duration::from_secs(60),
            idle_timeout: None,
        }
    }
}

impl Limits {
    /// How long a socket read or write blocks before the deadlines and the
    /// shutdown flag are looked at again.
    fn tick(&self) -> Duration {
        (self.handshake_timeout / 5).clamp(Duration::from_millis(10), Duration::from_millis(500))
    }
}

/// The export: one backing file or block device, and the server's state.
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
    /// `NoFsFile`. Trims, zeroing and block status always use `NoFsFile`
    /// (std has no `fallocate` or `SEEK_DATA`).
    pub plain_io: bool,
    pub limits: Limits,
    /// Durability requests served (NBD_CMD_FLUSH and FUA), for tests and logs.
    pub syncs: AtomicU64,
    /// Connections open / still negotiating.
    pub active: AtomicUsize,
    pub negotiating: AtomicUsize,
    /// Connections refused by a limit.
    pub refused: AtomicU64,
    shutdown: AtomicBool,
    is_block: bool,
    /// Hole punching answered EOPNOTSUPP once: zero ranges directly.
    no_punch: AtomicBool,
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
        let is_block = file.is_block_device();
        Export {
            name,
            file,
            size,
            read_only,
            guarding,
            log: true,
            plain_io: false,
            limits: Limits::default(),
            syncs: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            negotiating: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            is_block,
            no_punch: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
        }
    }

    /// The transmission flags: only what is implemented. NBD_FLAG_SEND_DF
    /// only once structured replies are negotiated (the spec forbids it
    /// otherwise); every read is one data chunk, so DF costs nothing.
    pub fn transmission_flags(&self, neg: Negotiated) -> u16 {
        let mut f = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_CAN_MULTI_CONN
            | TFLAG_SEND_CACHE;
        if self.read_only {
            f |= TFLAG_READ_ONLY;
        } else {
            f |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
        }
        if neg.structured {
            f |= TFLAG_SEND_DF;
        }
        f
    }

    /// Starts a clean shutdown: no new connections, options answered
    /// NBD_REP_ERR_SHUTDOWN, the request in progress on each connection
    /// completed, later ones answered NBD_ESHUTDOWN, idle connections
    /// closed.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    fn io(&self) -> FileIo<'_> {
        FileIo {
            file: &self.file,
            plain: self.plain_io,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoFail> {
        Ok(self.io().read_exact_at(buf, offset)?)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), IoFail> {
        Ok(self.io().write_all_at(buf, offset)?)
    }

    fn sync(&self) -> Result<(), IoFail> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(self.io().sync_data()?)
    }

    /// NBD_CMD_TRIM: advisory. A hole in a file, a discard on a device
    /// (rounded inwards to 4 KiB, a multiple of any logical block size);
    /// where neither is supported nothing is done, which the spec allows.
    fn trim(&self, offset: u64, len: u64) -> Result<(), IoFail> {
        let r = if self.is_block {
            let start = offset.next_multiple_of(4096);
            let end = (offset + len) / 4096 * 4096;
            if end <= start {
                return Ok(());
            }
            self.file.discard_nofs(start, end - start)
        } else {
            self.file.punch_hole_nofs(offset, len)
        };
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            r => Ok(r?),
        }
    }

    /// NBD_CMD_WRITE_ZEROES: reads back as zeros whatever the store. A
    /// hole is punched in a file unless NBD_CMD_FLAG_NO_HOLE asks for the
    /// range to stay allocated; `zero_range_nofs` does the rest (and block
    /// devices), falling back to writing zeros.
    fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), IoFail> {
        if !no_hole && !self.is_block && !self.no_punch.load(Ordering::Relaxed) {
            match self.file.punch_hole_nofs(offset, len) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.no_punch.store(true, Ordering::Relaxed);
                }
                r => return Ok(r?),
            }
        }
        Ok(self.file.zero_range_nofs(offset, len)?)
    }

    /// NBD_CMD_CACHE: readahead (`posix_fadvise(WILLNEED)`) inside a
    /// NOFS scope; the reply does not wait for the data.
    fn cache(&self, offset: u64, len: u64) -> Result<(), IoFail> {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        let r = reclaim_scope::NoFsScope::run(|| {
            posix_fadvise(
                self.file.get_ref(),
                offset as libc::off_t,
                len as libc::off_t,
                PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            )
        });
        r.map_err(|e| IoFail {
            errno: Some(e as i32),
            msg: format!("posix_fadvise(WILLNEED) of {len} bytes at {offset}: {e}"),
        })
    }

    /// The `base:allocation` extents of `offset..offset + len` (inside the
    /// export), from `SEEK_DATA`/`SEEK_HOLE` inside the scope: holes read
    /// as zeros (`NBD_STATE_HOLE | NBD_STATE_ZERO`), data is 0. A block
    /// device is all data. At most [`MAX_EXTENTS`], one with `one`
    /// (NBD_CMD_FLAG_REQ_ONE); never beyond the request.
    fn extents(
        &self,
        offset: u64,
        len: u32,
        one: bool,
        out: &mut Vec<Extent>,
    ) -> Result<(), IoFail> {
        out.clear();
        let end = offset + u64::from(len);
        if self.is_block {
            out.push(Extent { len, flags: 0 });
            return Ok(());
        }
        let mut pos = offset;
        while pos < end && out.len() < MAX_EXTENTS {
            let data = self.file.seek_data_nofs(pos)?.unwrap_or(end).min(end);
            let (next, flags) = if data > pos {
                (data, STATE_HOLE | STATE_ZERO)
            } else {
                let hole = self.file.seek_hole_nofs(pos)?.unwrap_or(end).min(end);
                // A hole punched between the two seeks: call the rest data
                // (always safe) rather than loop.
                (if hole > pos { hole } else { end }, 0)
            };
            let n = (next - pos) as u32;
            match out.last_mut() {
                Some(last) if last.flags == flags => last.len += n,
                _ => out.push(Extent { len: n, flags }),
            }
            pos = next;
            if one {
                break;
            }
        }
        Ok(())
    }

    fn knows(&self, name: &[u8]) -> bool {
        // The empty name selects the default (only) export.
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// A failed backing-store access: the errno (what the client is told,
/// through [`nbd_error`]) and the full context (what the log and the
/// structured error chunk say).
#[derive(Debug)]
pub struct IoFail {
    pub errno: Option<i32>,
    pub msg: String,
}

impl From<NoFsIoError> for IoFail {
    fn from(e: NoFsIoError) -> Self {
        IoFail {
            errno: e.raw_os_error(),
            msg: e.to_string(),
        }
    }
}

impl From<IoError> for IoFail {
    fn from(e: IoError) -> Self {
        match e {
            IoError::Plain(e) => e.into(),
            IoError::NoFs(e) => e.into(),
        }
    }
}

impl From<io::Error> for IoFail {
    fn from(e: io::Error) -> Self {
        IoFail {
            errno: e.raw_os_error(),
            msg: e.to_string(),
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
pub enum End {
    /// NBD_CMD_DISC, NBD_OPT_ABORT, or the client closed between messages.
    Clean,
    /// The server is shutting down and the connection had nothing in flight.
    Shutdown,
    /// The client broke the protocol; the connection was closed.
    Protocol(String),
    /// A limit ended it (handshake deadline, stall, idle timeout).
    Dropped(String),
    /// The socket failed or the client vanished mid-message.
    Io(io::Error),
    /// `Guarding::Strict` and the thread could not become an I/O flusher.
    Unprotected(reclaim_scope::Error),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Clean => f.write_str("closed by the client"),
            End::Shutdown => f.write_str("closed: the server is shutting down"),
            End::Protocol(why) => write!(f, "protocol error, connection closed: {why}"),
            End::Dropped(why) => write!(f, "dropped: {why}"),
            End::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("client vanished in the middle of a message")
            }
            End::Io(e) => write!(f, "I/O error on the socket: {e}"),
            End::Unprotected(e) => write!(f, "refusing to serve unprotected (--strict): {e}"),
        }
    }
}

/// The socket layer's decision to end a connection, carried through
/// `io::Error` so that the protocol code needs no knowledge of it.
#[derive(Debug)]
enum Hangup {
    Shutdown,
    Limit(String),
}

impl fmt::Display for Hangup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hangup::Shutdown => f.write_str("server shutting down"),
            Hangup::Limit(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Hangup {}

fn hangup(h: Hangup) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, h)
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        match e.get_ref().and_then(|i| i.downcast_ref::<Hangup>()) {
            Some(Hangup::Shutdown) => End::Shutdown,
            Some(Hangup::Limit(why)) => End::Dropped(why.clone()),
            None => End::Io(e),
        }
    }
}

fn protocol<T>(why: impl Into<String>) -> Result<T, End> {
    Err(End::Protocol(why.into()))
}

/// The read side of a connection, as the protocol code sees it: bytes, and
/// two hints for the socket layer. Slices (tests, fuzzing) ignore them.
pub trait Wire: Read {
    /// The protocol is (`true`) or is no longer (`false`) waiting for the
    /// first byte of a request: an idle connection may be closed here.
    fn at_boundary(&mut self, _boundary: bool) {}
    /// Option haggling is over; the handshake deadline no longer applies.
    fn established(&mut self) {}
}

impl Wire for &[u8] {}
impl<T: AsRef<[u8]>> Wire for io::Cursor<T> {}
impl<W: Wire> Wire for BufReader<W> {
    fn at_boundary(&mut self, b: bool) {
        self.get_mut().at_boundary(b)
    }
    fn established(&mut self) {
        self.get_mut().established()
    }
}

/// Serves one connection on the calling thread until it ends; logs how.
pub fn serve<R: Wire, W: Write>(export: &Export, reader: R, writer: W, peer: &str) -> End {
    let id = export.next_conn.fetch_add(1, Ordering::Relaxed);
    let end = serve_inner(export, reader, writer);
    if export.log {
        eprintln!("nbd-server: conn {id} ({peer}): {end}");
    }
    end
}

fn serve_inner<R: Wire, W: Write>(export: &Export, reader: R, writer: W) -> End {
    // The whole connection runs as an I/O flusher: the NoFsFile calls below
    // then add no syscall of their own.
    let _flusher = match export.guarding.enter() {
        Ok(g) => g,
        Err(e) => return End::Unprotected(e),
    };
    let mut r = BufReader::with_capacity(256 << 10, reader);
    let mut w = BufWriter::with_capacity(256 << 10, writer);
    let mut neg = Negotiated::default();
    let result = handshake(export, &mut r, &mut w, &mut neg).and_then(|go| {
        if go {
            r.established();
            transmission(export, &mut r, &mut w, neg)
        } else {
            Ok(())
        }
    });
    let flushed = w.flush();
    match (result, flushed) {
        (Ok(()), Ok(())) => End::Clean,
        (Ok(()), Err(e)) => e.into(),
        (Err(e), _) => e,
    }
}

fn option_reply(w: &mut impl Write, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    w.write_all(&option_reply_header(opt, kind, data.len() as u32))?;
    w.write_all(data)
}

/// The fixed-newstyle handshake. `Ok(true)`: enter transmission.
/// `Ok(false)`: the client aborted.
fn handshake<R: Read, W: Write>(
    export: &Export,
    r: &mut R,
    w: &mut W,
    neg: &mut Negotiated,
) -> Result<bool, End> {
    w.write_all(&NBDMAGIC.to_be_bytes())?;
    w.write_all(&IHAVEOPT.to_be_bytes())?;
    w.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    w.flush()?;
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    let client_flags = u32::from_be_bytes(b);
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return protocol(format!("unknown client flags {client_flags:#x}"));
    }
    if client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return protocol("client does not speak fixed newstyle");
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    let mut data = Vec::new();
    loop {
        let mut h = [0u8; 16];
        r.read_exact(&mut h)?;
        let OptionHeader {
            magic,
            option: opt,
            len,
        } = OptionHeader::parse(&h);
        if magic != IHAVEOPT {
            return protocol(format!("bad option magic {magic:#018x}"));
        }
        if len > MAX_OPTION {
            // Too large to be a real option of ours: reading it could be
            // a denial of service, so drop the connection.
            option_reply(w, opt, REP_ERR_TOO_BIG, b"option too large")?;
            w.flush()?;
            return protocol(format!("option {opt} of {len} bytes"));
        }
        r.read_exact(sized(&mut data, len as usize))?;
        if export.shutting_down() && opt != OPT_ABORT {
            option_reply(w, opt, REP_ERR_SHUTDOWN, b"server shutting down")?;
            w.flush()?;
            continue;
        }
        match opt {
            OPT_EXPORT_NAME => {
                if !export.knows(&data) {
                    // No way to return an error: the spec says hang up.
                    return protocol(format!(
                        "NBD_OPT_EXPORT_NAME for unknown export {:?}",
                        String::from_utf8_lossy(&data)
                    ));
                }
                w.write_all(&export.size.to_be_bytes())?;
                w.write_all(&export.transmission_flags(*neg).to_be_bytes())?;
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
                    option_reply(w, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                } else {
                    let mut d = Vec::with_capacity(4 + export.name.len());
                    d.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
                    d.extend_from_slice(export.name.as_bytes());
                    option_reply(w, opt, REP_SERVER, &d)?;
                    option_reply(w, opt, REP_ACK, &[])?;
                }
            }
            OPT_INFO | OPT_GO => {
                if info_or_go(export, w, opt, &data, *neg)? && opt == OPT_GO {
                    w.flush()?;
                    return Ok(true);
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    option_reply(
                        w,
                        opt,
                        REP_ERR_INVALID,
                        b"NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                } else {
                    neg.structured = true;
                    option_reply(w, opt, REP_ACK, &[])?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                meta_context(export, w, opt, &data, neg)?;
            }
            _ => {
                // NBD_OPT_STARTTLS included: this server has no TLS.
                option_reply(w, opt, REP_ERR_UNSUP, b"option not supported")?;
            }
        }
        w.flush()?;
    }
}

/// NBD_OPT_INFO / NBD_OPT_GO. `Ok(true)`: the export was accepted.
fn info_or_go(
    export: &Export,
    w: &mut impl Write,
    opt: u32,
    data: &[u8],
    neg: Negotiated,
) -> io::Result<bool> {
    let req = match parse_info_request(data) {
        Ok(r) => r,
        Err(why) => {
            option_reply(w, opt, REP_ERR_INVALID, why.as_bytes())?;
            return Ok(false);
        }
    };
    if !export.knows(req.name) {
        option_reply(w, opt, REP_ERR_UNKNOWN, b"no such export")?;
        return Ok(false);
    }
    let mut info = [0u8; 12];
    info[..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    info[2..10].copy_from_slice(&export.size.to_be_bytes());
    info[10..].copy_from_slice(&export.transmission_flags(neg).to_be_bytes());
    option_reply(w, opt, REP_INFO, &info)?;
    // Block sizes are always sent: they tell the client the largest
    // payload served.
    let mut bs = [0u8; 14];
    bs[..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    bs[2..6].copy_from_slice(&1u32.to_be_bytes());
    bs[6..10].copy_from_slice(&4096u32.to_be_bytes());
    bs[10..].copy_from_slice(&MAX_PAYLOAD.to_be_bytes());
    option_reply(w, opt, REP_INFO, &bs)?;
    let (mut named, mut described) = (false, false);
    for info in req.infos {
        match info {
            // Each information type at most once, whatever the client asked.
            INFO_NAME if !named => {
                named = true;
                let mut d = INFO_NAME.to_be_bytes().to_vec();
                d.extend_from_slice(export.name.as_bytes());
                option_reply(w, opt, REP_INFO, &d)?;
            }
            INFO_DESCRIPTION if !described => {
                described = true;
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

/// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: the only context
/// is `base:allocation`.
fn meta_context(
    export: &Export,
    w: &mut impl Write,
    opt: u32,
    data: &[u8],
    neg: &mut Negotiated,
) -> io::Result<()> {
    let list = opt == OPT_LIST_META_CONTEXT;
    if !list {
        // "replaces all previously-set metadata contexts (including when
        // this command fails)".
        neg.base_allocation = false;
    }
    if !neg.structured {
        return option_reply(
            w,
            opt,
            REP_ERR_INVALID,
            b"negotiate NBD_OPT_STRUCTURED_REPLY first",
        );
    }
    let req = match parse_meta_request(data) {
        Ok(r) => r,
        Err(why) => return option_reply(w, opt, REP_ERR_INVALID, why.as_bytes()),
    };
    if !export.knows(req.name) {
        return option_reply(w, opt, REP_ERR_UNKNOWN, b"no such export");
    }
    let selected = if list && req.queries.is_empty() {
        true // no query: every context available
    } else {
        req.queries
            .iter()
            .any(|q| query_selects_base_allocation(q, list))
    };
    if selected {
        // Listed contexts carry ID 0 ("reserved"); selected ones theirs.
        let id = if list { 0 } else { META_ID_BASE_ALLOCATION };
        let mut d = id.to_be_bytes().to_vec();
        d.extend_from_slice(META_BASE_ALLOCATION);
        option_reply(w, opt, REP_META_CONTEXT, &d)?;
        if !list {
            neg.base_allocation = true;
        }
    }
    option_reply(w, opt, REP_ACK, &[])
}

/// Replies with `error` in the form negotiated: a final NBD_REPLY_TYPE_ERROR
/// chunk with a message once structured replies are on, else a simple reply.
fn reply_error(
    w: &mut impl Write,
    neg: Negotiated,
    cookie: u64,
    error: u32,
    msg: &str,
) -> io::Result<()> {
    if neg.structured {
        w.write_all(&error_chunk(cookie, error, msg))
    } else {
        w.write_all(&simple_reply(cookie, error))
    }
}

fn precheck_message(req: &Request, neg: Negotiated, size: u64, error: u32) -> &'static str {
    match error {
        EPERM => "the export is read-only",
        EOVERFLOW => "request larger than the maximum payload (32 MiB)",
        ENOSPC => "write beyond the end of the export",
        _ if req.flags & !allowed_flags(req.cmd, neg) != 0 => {
            "unknown command, or a flag not valid for this command"
        }
        _ if req.cmd == CMD_BLOCK_STATUS && !neg.base_allocation => {
            "no metadata context selected (NBD_OPT_SET_META_CONTEXT base:allocation)"
        }
        _ if req.cmd == CMD_BLOCK_STATUS && req.len == 0 => "block status of 0 bytes",
        _ if !req.in_range(size) => "request beyond the end of the export",
        _ => "unknown command",
    }
}

/// Serves requests until NBD_CMD_DISC or the client goes away.
fn transmission<R: Wire, W: Write>(
    export: &Export,
    r: &mut BufReader<R>,
    w: &mut BufWriter<W>,
    neg: Negotiated,
) -> Result<(), End> {
    let mut buf: Vec<u8> = Vec::new();
    let mut extents: Vec<Extent> = Vec::new();
    let mut errors_logged = 0u32;
    loop {
        // Flush replies only when no further request is waiting already:
        // replies to a pipelined batch leave in one write.
        let mut h = [0u8; REQUEST_LEN];
        if r.buffer().is_empty() {
            w.flush()?;
            r.at_boundary(true);
            let n = r.read(&mut h[..1]);
            r.at_boundary(false);
            if n? == 0 {
                return Ok(()); // closed between requests: a (rude) clean end
            }
        } else {
            r.read_exact(&mut h[..1])?;
        }
        r.read_exact(&mut h[1..])?;
        let req = Request::parse(&h);
        if req.magic != REQUEST_MAGIC {
            // Without the magic nothing after it can be trusted (not even
            // where the next request starts): the spec says to hang up.
            return protocol(format!("bad request magic {:#010x}", req.magic));
        }
        if req.cmd == CMD_DISC {
            return Ok(());
        }
        if req.payload_len() > MAX_PAYLOAD {
            // The payload follows the header; one this large cannot be
            // skipped safely.
            return protocol(format!(
                "NBD_CMD_WRITE of {} bytes (max {MAX_PAYLOAD})",
                req.len
            ));
        }
        let refusal = if export.shutting_down() {
            Some((ESHUTDOWN, "server shutting down"))
        } else {
            precheck(&req, neg, export.size, export.read_only)
                .map(|e| (e, precheck_message(&req, neg, export.size, e)))
        };
        if let Some((error, msg)) = refusal {
            discard(r, u64::from(req.payload_len()))?;
            reply_error(w, neg, req.cookie, error, msg)?;
            continue;
        }
        let (offset, len) = (req.offset, u64::from(req.len));
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let res: Result<(), IoFail> = match req.cmd {
            CMD_READ => match export.read_at(sized(&mut buf, req.len as usize), offset) {
                Ok(()) if neg.structured && req.len == 0 => {
                    w.write_all(&chunk_header(
                        REPLY_FLAG_DONE,
                        REPLY_TYPE_NONE,
                        req.cookie,
                        0,
                    ))?;
                    continue;
                }
                Ok(()) if neg.structured => {
                    w.write_all(&chunk_header(
                        REPLY_FLAG_DONE,
                        REPLY_TYPE_OFFSET_DATA,
                        req.cookie,
                        8 + req.len,
                    ))?;
                    w.write_all(&offset.to_be_bytes())?;
                    w.write_all(&buf)?;
                    continue;
                }
                Ok(()) => {
                    w.write_all(&simple_reply(req.cookie, 0))?;
                    w.write_all(&buf)?;
                    continue;
                }
                Err(e) => Err(e),
            },
            CMD_WRITE => {
                r.read_exact(sized(&mut buf, req.len as usize))?;
                export.write_at(&buf, offset)
            }
            CMD_FLUSH => export.sync(),
            CMD_TRIM => export.trim(offset, len),
            CMD_WRITE_ZEROES => export.write_zeroes(offset, len, req.flags & CMD_FLAG_NO_HOLE != 0),
            CMD_CACHE => export.cache(offset, len),
            CMD_BLOCK_STATUS => {
                let one = req.flags & CMD_FLAG_REQ_ONE != 0;
                match export.extents(offset, req.len, one, &mut extents) {
                    Ok(()) => {
                        w.write_all(&block_status_chunk(
                            req.cookie,
                            META_ID_BASE_ALLOCATION,
                            &extents,
                        ))?;
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
            _ => unreachable!("precheck refuses every other command"),
        };
        // FUA: the command's data is durable before the reply.
        let res = res.and_then(|()| {
            if fua && req.cmd != CMD_FLUSH {
                export.sync()
            } else {
                Ok(())
            }
        });
        match res {
            Ok(()) => w.write_all(&simple_reply(req.cookie, 0))?,
            Err(e) => {
                if export.log && errors_logged < 20 {
                    errors_logged += 1;
                    eprintln!(
                        "nbd-server: command {} of {len} bytes at {offset} failed: {}{}",
                        req.cmd,
                        e.msg,
                        if errors_logged == 20 {
                            " (further errors on this connection not logged)"
                        } else {
                            ""
                        }
                    );
                }
                reply_error(w, neg, req.cookie, nbd_error(e.errno), &e.msg)?;
            }
        }
    }
}

/// `buf` as `len` bytes. Grown to exactly `len` when too small, the old
/// allocation freed first: a doubling `Vec` would hold up to twice the
/// largest payload, and old + new at once (found by fuzz/).
fn sized(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.capacity() < len {
        drop(std::mem::take(buf));
        buf.reserve_exact(len);
    }
    buf.resize(len, 0);
    buf
}

/// Reads and drops `len` bytes (a payload the server will not use).
fn discard(r: &mut impl Read, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let copied = io::copy(&mut r.take(len), &mut io::sink())?;
    if copied < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

// ---- Sockets: deadlines, limits, accept loops ----

/// What the accept loops need of a stream socket.
pub trait Sock: Read + Write + Send + Sized + 'static {
    fn try_clone(&self) -> io::Result<Self>;
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()>;
}

impl Sock for std::net::TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        std::net::TcpStream::try_clone(self)
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, d)
    }
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_write_timeout(self, d)
    }
}

impl Sock for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, d)
    }
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, d)
    }
}

/// One admitted connection: counted in [`Export::active`] (and in
/// [`Export::negotiating`] until established) for as long as it lives.
struct Admission {
    export: Arc<Export>,
    deadline: Instant,
    established: AtomicBool,
}

impl Admission {
    /// Counts a new connection in, or says which limit refuses it.
    fn admit(export: &Arc<Export>) -> Result<Admission, String> {
        let l = export.limits;
        if export.shutting_down() {
            return Err("the server is shutting down".into());
        }
        let active = export.active.fetch_add(1, Ordering::SeqCst);
        if active >= l.max_connections {
            export.active.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "{active} connections open (--max-connections {})",
                l.max_connections
            ));
        }
        let negotiating = export.negotiating.fetch_add(1, Ordering::SeqCst);
        if negotiating >= l.max_handshakes {
            export.negotiating.fetch_sub(1, Ordering::SeqCst);
            export.active.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "{negotiating} connections still negotiating (--max-handshakes {})",
                l.max_handshakes
            ));
        }
        Ok(Admission {
            export: export.clone(),
            deadline: Instant::now() + l.handshake_timeout,
            established: AtomicBool::new(false),
        })
    }

    fn establish(&self) {
        if !self.established.swap(true, Ordering::SeqCst) {
            self.export.negotiating.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn is_established(&self) -> bool {
        self.established.load(Ordering::Relaxed)
    }

    fn check_deadline(&self) -> io::Result<()> {
        if Instant::now() >= self.deadline {
            return Err(hangup(Hangup::Limit(format!(
                "handshake not finished within {:?} (--handshake-timeout)",
                self.export.limits.handshake_timeout
            ))));
        }
        Ok(())
    }

    /// A socket read or write timed out (one tick) `stalled` times in a
    /// row: whether to go on waiting.
    fn check(&self, boundary: bool, stalled: u32, reading: bool) -> io::Result<()> {
        let l = &self.export.limits;
        let waited = l.tick() * stalled;
        if !self.is_established() {
            self.check_deadline()?;
            if self.export.shutting_down() {
                return Err(hangup(Hangup::Shutdown));
            }
            return Ok(());
        }
        if reading && boundary {
            if self.export.shutting_down() {
                return Err(hangup(Hangup::Shutdown));
            }
            if let Some(idle) = l.idle_timeout {
                if waited >= idle {
                    return Err(hangup(Hangup::Limit(format!(
                        "idle for {idle:?} (--idle-timeout)"
                    ))));
                }
            }
            return Ok(());
        }
        if waited >= l.io_timeout {
            let what = if reading {
                "client stalled in the middle of a message"
            } else {
                "client does not read its replies"
            };
            return Err(hangup(Hangup::Limit(format!(
                "{what} for {:?} (--io-timeout)",
                l.io_timeout
            ))));
        }
        Ok(())
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.establish();
        self.export.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The read half of an admitted socket: blocking reads in ticks, with the
/// deadlines and the shutdown flag looked at between ticks.
struct SockReader<S> {
    s: S,
    adm: Arc<Admission>,
    boundary: bool,
    stalled: u32,
}

impl<S: Read> Read for SockReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.s.read(buf) {
                Ok(n) => {
                    self.stalled = 0;
                    // A client trickling bytes never lets a read time out:
                    // the handshake deadline is looked at on data too.
                    if !self.adm.is_established() {
                        self.adm.check_deadline()?;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.stalled += 1;
                    self.adm.check(self.boundary, self.stalled, true)?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S: Read> Wire for SockReader<S> {
    fn at_boundary(&mut self, b: bool) {
        self.boundary = b;
        self.stalled = 0;
    }
    fn established(&mut self) {
        self.adm.establish();
    }
}

/// The write half of an admitted socket.
struct SockWriter<S> {
    s: S,
    adm: Arc<Admission>,
    stalled: u32,
}

impl<S: Write> Write for SockWriter<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.s.write(buf) {
                Ok(n) => {
                    self.stalled = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.stalled += 1;
                    self.adm.check(false, self.stalled, false)?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

/// Admits `stream` (or logs why not) and serves it on a new thread.
fn accept_one<S: Sock>(export: &Arc<Export>, stream: S, peer: String) {
    let adm = match Admission::admit(export) {
        Ok(a) => Arc::new(a),
        Err(why) => {
            export.refused.fetch_add(1, Ordering::Relaxed);
            // Always logged, also with --quiet: a refusal is an event.
            eprintln!("nbd-server: refused connection from {peer}: {why}");
            return;
        }
    };
    let tick = export.limits.tick();
    let setup = stream
        .set_read_timeout(Some(tick))
        .and_then(|()| stream.set_write_timeout(Some(tick)))
        .and_then(|()| stream.try_clone());
    let reader = match setup {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nbd-server: {peer}: cannot set up the socket: {e}");
            return;
        }
    };
    let e = export.clone();
    let spawned = std::thread::Builder::new()
        .name("nbd-conn".into())
        .spawn(move || {
            let r = SockReader {
                s: reader,
                adm: adm.clone(),
                boundary: false,
                stalled: 0,
            };
            let w = SockWriter {
                s: stream,
                adm,
                stalled: 0,
            };
            serve(&e, r, w, &peer);
        });
    if let Err(e) = spawned {
        eprintln!("nbd-server: cannot start a connection thread: {e}");
    }
}

/// After a failed accept (EMFILE and the like): log, and do not spin.
fn accept_failed(what: &str, e: io::Error) {
    eprintln!("nbd-server: accept on {what} failed: {e}");
    std::thread::sleep(Duration::from_millis(100));
}

/// Accepts TCP connections forever, one thread each.
pub fn run_tcp(listener: TcpListener, export: Arc<Export>) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                accept_failed("TCP", e);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Dead peers of idle established connections are found by TCP.
        let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::KeepAlive, &true);
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "tcp".into(), |a| a.to_string());
        accept_one(&export, stream, peer);
    }
}

/// Accepts unix-socket connections forever, one thread each.
pub fn run_unix(listener: UnixListener, export: Arc<Export>) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => accept_one(&export, s, "unix".into()),
            Err(e) => accept_failed("the unix socket", e),
        }
    }
}
