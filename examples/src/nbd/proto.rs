//! The NBD wire format, without any I/O: constants, the parsers of option
//! payloads and request headers, the encoders of replies, and the errno →
//! NBD error mapping. Field by field from
//! <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.
//! Everything here is driven from bytes (examples/tests/nbd_server.rs, the fuzz
//! targets in fuzz/), so nothing here may panic or allocate more than the
//! input it was given.

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
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) | 7;
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
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;

// Transmission.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Structured replies.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

// base:allocation.
pub const META_BASE_ALLOCATION: &[u8] = b"base:allocation";
/// The context ID this server gives `base:allocation` (any nonzero value
/// would do; the client treats it as opaque).
pub const META_ID_BASE_ALLOCATION: u32 = 1;
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

// Errors on the wire (the only values the protocol allows).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Largest READ or WRITE payload served (the NBD "maximum block size"
/// advertised in NBD_INFO_BLOCK_SIZE). A WRITE announcing more than this
/// cannot be resynchronised with and closes the connection.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option payload read during the handshake.
pub const MAX_OPTION: u32 = 64 << 10;
/// Longest string the protocol allows (names, queries, error messages).
pub const MAX_STRING: usize = 4096;
/// Most extents in one NBD_REPLY_TYPE_BLOCK_STATUS chunk (the spec's
/// ceiling is 2^20; a client asks again where a reply stopped).
pub const MAX_EXTENTS: usize = 1024;

/// The NBD error value for a backing-store errno, as the protocol asks
/// ("Error values"; EDQUOT and EFBIG are NBD_ENOSPC; anything without an
/// NBD equivalent, or no errno at all, is NBD_EIO).
pub fn nbd_error(errno: Option<i32>) -> u32 {
    match errno {
        Some(libc::EPERM | libc::EROFS | libc::EACCES) => EPERM,
        Some(libc::EIO) => EIO,
        Some(libc::ENOMEM) => ENOMEM,
        Some(libc::EINVAL) => EINVAL,
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => ENOSPC,
        Some(libc::EOVERFLOW) => EOVERFLOW,
        // On Linux ENOTSUP and EOPNOTSUPP are one value; both named for
        // the platforms where they are not.
        #[allow(unreachable_patterns)]
        Some(libc::ENOTSUP | libc::EOPNOTSUPP) => ENOTSUP,
        Some(libc::ESHUTDOWN) => ESHUTDOWN,
        _ => EIO,
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// An option header: the 16 bytes after the client flags (and after each
/// option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    pub magic: u64,
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    pub fn parse(b: &[u8; 16]) -> OptionHeader {
        OptionHeader {
            magic: u64::from_be_bytes(b[0..8].try_into().unwrap()),
            option: u32::from_be_bytes(b[8..12].try_into().unwrap()),
            len: u32::from_be_bytes(b[12..16].try_into().unwrap()),
        }
    }
}

/// The payload of NBD_OPT_INFO and NBD_OPT_GO.
#[derive(Debug, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    pub name: &'a [u8],
    /// The NBD_INFO_* items asked for (duplicates kept: they are ignored).
    pub infos: Vec<u16>,
}

/// Parses an NBD_OPT_INFO/GO payload; `Err` is the NBD_REP_ERR_INVALID
/// message.
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest<'_>, &'static str> {
    let name_len = be32(data, 0).ok_or("short NBD_OPT_INFO/GO payload")? as usize;
    // 32-bit length, name, 16-bit count: the name is at most len - 6.
    if data.len() < 6 || name_len > data.len() - 6 {
        return Err("export name longer than the option");
    }
    if name_len > MAX_STRING {
        return Err("export name longer than 4096 bytes");
    }
    let name = &data[4..4 + name_len];
    let n = be16(data, 4 + name_len).ok_or("short NBD_OPT_INFO/GO payload")? as usize;
    let reqs = &data[6 + name_len..];
    if reqs.len() != 2 * n {
        return Err("information request count does not match the option length");
    }
    let infos = reqs
        .chunks_exact(2)
        .map(|r| u16::from_be_bytes([r[0], r[1]]))
        .collect();
    Ok(InfoRequest { name, infos })
}

/// The payload of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    pub name: &'a [u8],
    pub queries: Vec<&'a [u8]>,
}

/// Parses a meta-context option payload; `Err` is the NBD_REP_ERR_INVALID
/// message. Every length is checked against what is left of the option
/// before use, so the query list never outgrows the payload.
pub fn parse_meta_request(data: &[u8]) -> Result<MetaRequest<'_>, &'static str> {
    let name_len = be32(data, 0).ok_or("short meta context payload")? as usize;
    let name = data
        .get(4..)
        .and_then(|r| r.get(..name_len))
        .ok_or("export name longer than the option")?;
    if name_len > MAX_STRING {
        return Err("export name longer than 4096 bytes");
    }
    let mut at = 4 + name_len;
    let n = be32(data, at).ok_or("short meta context payload")?;
    at += 4;
    // Each query takes at least its 4-byte length: a count the payload
    // cannot hold is invalid before anything is allocated for it.
    if u64::from(n) * 4 > (data.len() - at) as u64 {
        return Err("query count larger than the option holds");
    }
    let mut queries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = be32(data, at).ok_or("query longer than the option")? as usize;
        at += 4;
        let q = data
            .get(at..)
            .and_then(|r| r.get(..len))
            .ok_or("query longer than the option")?;
        if len > MAX_STRING {
            return Err("query longer than 4096 bytes");
        }
        at += len;
        queries.push(q);
    }
    if at != data.len() {
        return Err("trailing bytes after the queries");
    }
    Ok(MetaRequest { name, queries })
}

/// Which of this server's contexts (only `base:allocation`) a query
/// selects. `list` is NBD_OPT_LIST_META_CONTEXT, where `base:` is the
/// namespace's wildcard; NBD_OPT_SET_META_CONTEXT ignores it. Unknown
/// namespaces and leaf names select nothing (the spec: ignore, no error).
pub fn query_selects_base_allocation(query: &[u8], list: bool) -> bool {
    query == META_BASE_ALLOCATION || (list && query == b"base:")
}

/// A request header (28 bytes), not yet validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub magic: u32,
    pub flags: u16,
    pub cmd: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

pub const REQUEST_LEN: usize = 28;

impl Request {
    pub fn parse(h: &[u8; REQUEST_LEN]) -> Request {
        Request {
            magic: u32::from_be_bytes(h[0..4].try_into().unwrap()),
            flags: u16::from_be_bytes(h[4..6].try_into().unwrap()),
            cmd: u16::from_be_bytes(h[6..8].try_into().unwrap()),
            cookie: u64::from_be_bytes(h[8..16].try_into().unwrap()),
            offset: u64::from_be_bytes(h[16..24].try_into().unwrap()),
            len: u32::from_be_bytes(h[24..28].try_into().unwrap()),
        }
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.cmd == CMD_WRITE {
            self.len
        } else {
            0
        }
    }

    /// Whether `offset..offset + len` lies inside an export of `size` bytes.
    pub fn in_range(&self, size: u64) -> bool {
        self.offset
            .checked_add(u64::from(self.len))
            .is_some_and(|end| end <= size)
    }
}

/// What was negotiated on a connection and matters to transmission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub structured: bool,
    /// `base:allocation` was selected by the last NBD_OPT_SET_META_CONTEXT.
    pub base_allocation: bool,
}

/// The command flags valid for `cmd` (NBD_CMD_FLAG_FUA is valid on every
/// command once NBD_FLAG_SEND_FUA is advertised, which it always is).
pub fn allowed_flags(cmd: u16, neg: Negotiated) -> u16 {
    CMD_FLAG_FUA
        | match cmd {
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE, // no FAST_ZERO: not advertised
            CMD_READ if neg.structured => CMD_FLAG_DF,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => 0,
        }
}

/// The NBD error a request earns before it touches the backing store, per
/// the spec's "Error values" and each command's section; `None`: serve it.
/// (Oversized WRITE headers, which cannot be skipped, are the caller's.)
pub fn precheck(req: &Request, neg: Negotiated, size: u64, read_only: bool) -> Option<u32> {
    let known = matches!(
        req.cmd,
        CMD_READ
            | CMD_WRITE
            | CMD_FLUSH
            | CMD_TRIM
            | CMD_CACHE
            | CMD_WRITE_ZEROES
            | CMD_BLOCK_STATUS
    );
    if !known || req.flags & !allowed_flags(req.cmd, neg) != 0 {
        return Some(EINVAL);
    }
    let writes = matches!(req.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && read_only {
        return Some(EPERM);
    }
    match req.cmd {
        CMD_FLUSH => None,
        CMD_READ if req.len > MAX_PAYLOAD => Some(EOVERFLOW),
        CMD_BLOCK_STATUS if !neg.base_allocation => Some(EINVAL),
        CMD_BLOCK_STATUS if req.len == 0 => Some(EINVAL),
        // Beyond the end: writes are ENOSPC, reads, trims, caches and
        // block status EINVAL.
        _ if !req.in_range(size) => Some(match req.cmd {
            CMD_WRITE | CMD_WRITE_ZEROES => ENOSPC,
            _ => EINVAL,
        }),
        _ => None,
    }
}

/// An option reply header (20 bytes) for `len` bytes of data.
pub fn option_reply_header(opt: u32, kind: u32, len: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[..8].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
    h[8..12].copy_from_slice(&opt.to_be_bytes());
    h[12..16].copy_from_slice(&kind.to_be_bytes());
    h[16..20].copy_from_slice(&len.to_be_bytes());
    h
}

/// A simple reply (16 bytes).
pub fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..].copy_from_slice(&cookie.to_be_bytes());
    h
}

/// A structured reply chunk header (20 bytes) for `len` bytes of payload.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..20].copy_from_slice(&len.to_be_bytes());
    h
}

/// A final NBD_REPLY_TYPE_ERROR chunk: header and payload (error, message
/// length, message cut to the protocol's 4096 bytes on a UTF-8 boundary).
pub fn error_chunk(cookie: u64, error: u32, msg: &str) -> Vec<u8> {
    let mut end = msg.len().min(MAX_STRING);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &msg.as_bytes()[..end];
    let mut v = Vec::with_capacity(20 + 6 + msg.len());
    v.extend_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    ));
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

/// One `base:allocation` extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u32,
    pub flags: u32,
}

/// The final NBD_REPLY_TYPE_BLOCK_STATUS chunk for `extents` (at least
/// one, each nonzero).
pub fn block_status_chunk(cookie: u64, context: u32, extents: &[Extent]) -> Vec<u8> {
    let len = 4 + 8 * extents.len();
    let mut v = Vec::with_capacity(20 + len);
    v.extend_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        len as u32,
    ));
    v.extend_from_slice(&context.to_be_bytes());
    for e in extents {
        v.extend_from_slice(&e.len.to_be_bytes());
        v.extend_from_slice(&e.flags.to_be_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_errno_maps_as_the_protocol_says() {
        let table = [
            (libc::EPERM, EPERM),
            (libc::EROFS, EPERM),
            (libc::EACCES, EPERM),
            (libc::EIO, EIO),
            (libc::ENOMEM, ENOMEM),
            (libc::EINVAL, EINVAL),
            (libc::ENOSPC, ENOSPC),
            (libc::EDQUOT, ENOSPC),
            (libc::EFBIG, ENOSPC),
            (libc::EOVERFLOW, EOVERFLOW),
            (libc::ENOTSUP, ENOTSUP),
            (libc::EOPNOTSUPP, ENOTSUP),
            (libc::ESHUTDOWN, ESHUTDOWN),
            (libc::EBADF, EIO),
            (libc::ENXIO, EIO),
            (libc::EAGAIN, EIO),
        ];
        for (errno, nbd) in table {
            assert_eq!(nbd_error(Some(errno)), nbd, "errno {errno}");
        }
        assert_eq!(nbd_error(None), EIO);
        // The NBD values are Linux's errno values, by the spec's design.
        assert_eq!(
            [EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN],
            [
                libc::EPERM,
                libc::EIO,
                libc::ENOMEM,
                libc::EINVAL,
                libc::ENOSPC,
                libc::EOVERFLOW,
                libc::ENOTSUP,
                libc::ESHUTDOWN
            ]
            .map(|e| e as u32)
        );
    }

    #[test]
    fn meta_requests_parse_and_bad_lengths_are_invalid() {
        let mut d = 4u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"disk");
        d.extend_from_slice(&2u32.to_be_bytes());
        for q in [&b"base:allocation"[..], b"qemu:dirty-bitmap:x"] {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q);
        }
        let m = parse_meta_request(&d).unwrap();
        assert_eq!(m.name, b"disk");
        assert_eq!(
            m.queries,
            vec![&b"base:allocation"[..], b"qemu:dirty-bitmap:x"]
        );
        assert!(parse_meta_request(&d[..d.len() - 1]).is_err());
        let mut extra = d.clone();
        extra.push(0);
        assert!(parse_meta_request(&extra).is_err());
        // A huge count with no queries behind it allocates nothing.
        let mut huge = 0u32.to_be_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_request(&huge).is_err());
        assert!(query_selects_base_allocation(b"base:allocation", false));
        assert!(!query_selects_base_allocation(b"base:", false));
        assert!(query_selects_base_allocation(b"base:", true));
        assert!(!query_selects_base_allocation(b"base:other", true));
    }

    #[test]
    fn info_requests_parse() {
        let mut d = 4u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"disk");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let r = parse_info_request(&d).unwrap();
        assert_eq!((r.name, r.infos), (&b"disk"[..], vec![INFO_BLOCK_SIZE]));
        assert!(parse_info_request(&d[..d.len() - 1]).is_err());
        assert!(parse_info_request(&[0xff; 6]).is_err());
        assert!(parse_info_request(&[]).is_err());
    }

    #[test]
    fn prechecks_follow_the_error_values_section() {
        let neg = Negotiated::default();
        let r = |cmd, flags, offset, len| Request {
            magic: REQUEST_MAGIC,
            flags,
            cmd,
            cookie: 1,
            offset,
            len,
        };
        let size = 1 << 20;
        assert_eq!(precheck(&r(CMD_READ, 0, 0, 512), neg, size, false), None);
        assert_eq!(
            precheck(&r(CMD_READ, 0, size, 1), neg, size, false),
            Some(EINVAL)
        );
        assert_eq!(
            precheck(&r(CMD_TRIM, 0, size, 1), neg, size, false),
            Some(EINVAL)
        );
        assert_eq!(
            precheck(&r(CMD_CACHE, 0, size, 1), neg, size, false),
            Some(EINVAL)
        );
        assert_eq!(
            precheck(&r(CMD_WRITE, 0, size, 1), neg, size, false),
            Some(ENOSPC)
        );
        assert_eq!(
            precheck(&r(CMD_WRITE_ZEROES, 0, size, 1), neg, size, false),
            Some(ENOSPC)
        );
        assert_eq!(
            precheck(&r(CMD_WRITE, 0, 0, 1), neg, size, true),
            Some(EPERM)
        );
        assert_eq!(
            precheck(&r(CMD_TRIM, 0, 0, 1), neg, size, true),
            Some(EPERM)
        );
        assert_eq!(precheck(&r(CMD_CACHE, 0, 0, 1), neg, size, true), None);
        assert_eq!(
            precheck(&r(CMD_READ, 0, 0, MAX_PAYLOAD + 1), neg, u64::MAX, false),
            Some(EOVERFLOW)
        );
        // Flags not documented for the command, unknown commands.
        assert_eq!(
            precheck(&r(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 1), neg, size, false),
            Some(EINVAL)
        );
        assert_eq!(
            precheck(
                &r(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 1),
                neg,
                size,
                false
            ),
            Some(EINVAL)
        );
        assert_eq!(
            precheck(&r(CMD_READ, CMD_FLAG_DF, 0, 1), neg, size, false),
            Some(EINVAL)
        );
        assert_eq!(
            precheck(&r(CMD_FLUSH, CMD_FLAG_FUA, 0, 0), neg, size, false),
            None
        );
        assert_eq!(precheck(&r(99, 0, 0, 0), neg, size, false), Some(EINVAL));
        // Block status needs a selected context.
        assert_eq!(
            precheck(&r(CMD_BLOCK_STATUS, 0, 0, 1), neg, size, false),
            Some(EINVAL)
        );
        let neg = Negotiated {
            structured: true,
            base_allocation: true,
        };
        assert_eq!(
            precheck(
                &r(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 1),
                neg,
                size,
                false
            ),
            None
        );
        assert_eq!(
            precheck(&r(CMD_READ, CMD_FLAG_DF, 0, 1), neg, size, false),
            None
        );
    }

    #[test]
    fn error_chunks_cut_messages_to_the_protocol_limit() {
        let long = "é".repeat(3000); // 6000 bytes
        let c = error_chunk(9, EIO, &long);
        let len = u32::from_be_bytes(c[16..20].try_into().unwrap()) as usize;
        assert_eq!(c.len(), 20 + len);
        let msg_len = u16::from_be_bytes(c[24..26].try_into().unwrap()) as usize;
        assert!(msg_len <= MAX_STRING);
        assert_eq!(len, 6 + msg_len);
        assert!(std::str::from_utf8(&c[26..]).is_ok());
    }
}
