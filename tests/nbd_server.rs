//! The example NBD server (`examples/nbd_server`) driven by real clients —
//! `qemu-io`, `qemu-img` (package qemu-utils) — and by a raw-socket client
//! that breaks the protocol on purpose. Needs no capability: the server runs
//! in this process, with best-effort guards.

#[path = "../examples/nbd_server/server.rs"]
mod server;

use server::*;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const SIZE: u64 = 64 << 20;

struct Served {
    dir: PathBuf,
    sock: PathBuf,
    tcp: String,
    export: Arc<Export>,
    backing: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Served {
    fn unix_uri(&self) -> String {
        format!("nbd+unix:///disk?socket={}", self.sock.display())
    }
    fn tcp_uri(&self) -> String {
        format!("nbd://{}/disk", self.tcp)
    }
    /// Reads the backing file directly, bypassing the server.
    fn backing_at(&self, offset: u64, len: usize) -> Vec<u8> {
        let f = std::fs::File::open(&self.backing).unwrap();
        let mut v = vec![0; len];
        f.read_exact_at(&mut v, offset).unwrap();
        v
    }
}

/// Starts the example server in this process on a fresh backing file,
/// listening on a unix socket and on an ephemeral loopback TCP port.
fn serve() -> Served {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "reclaim-scope-nbd-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let backing = dir.join("disk.img");
    let (file, size) = open_backing(&backing, SIZE, false).unwrap();
    assert_eq!(size, SIZE);
    let mut export = Export::new("disk".into(), file, size, false, Guarding::IoFlusher);
    export.log = std::env::var_os("NBD_TEST_LOG").is_some();
    let export = Arc::new(export);
    let sock = dir.join("nbd.sock");
    let ul = UnixListener::bind(&sock).unwrap();
    let tl = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = tl.local_addr().unwrap().to_string();
    let (e1, e2) = (export.clone(), export.clone());
    std::thread::spawn(move || run_unix(ul, e1));
    std::thread::spawn(move || run_tcp(tl, e2));
    Served {
        dir,
        sock,
        tcp,
        export,
        backing,
    }
}

fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} not found: install Debian's qemu-utils (`cargo xtask test` does) — these \
         tests drive the example server with a real NBD client"
    );
    Command::new(name)
}

/// Runs qemu-io with the given commands; panics with its output on failure
/// or when any command reports a pattern mismatch.
fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let mut c = tool("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-io failed: {text}");
    for bad in ["Pattern verification failed", "failed:", "error"] {
        assert!(!text.contains(bad), "qemu-io reported {bad:?}:\n{text}");
    }
    text
}

/// A seeded xorshift, so failures are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn patterns_round_trip(s: &Served, uri: &str, seed: u64) {
    let mut rng = Rng(seed);
    // Non-overlapping slots so every pattern can be verified afterwards.
    let slot = 256 << 10;
    let mut writes = Vec::new();
    for i in 0..48u64 {
        let len = 512 * (1 + rng.next() % 256); // 512 B .. 128 KiB
        let offset = i * slot + 512 * (rng.next() % 128);
        let pat = 1 + (rng.next() % 254) as u8;
        writes.push((offset, len, pat));
    }
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("write -P {p:#x} {o} {l}"))
        .collect();
    let out = qemu_io(uri, &cmds);
    assert_eq!(out.matches("wrote ").count(), writes.len(), "{out}");
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("read -P {p:#x} {o} {l}"))
        .collect();
    let out = qemu_io(uri, &cmds);
    assert_eq!(out.matches("read ").count(), writes.len(), "{out}");
    // And the bytes really are in the backing file, where they belong.
    for (o, l, p) in &writes {
        let got = s.backing_at(*o, *l as usize);
        assert!(
            got.iter().all(|b| b == p),
            "backing file differs at {o}+{l}"
        );
        if *o >= 512 {
            // The byte before each write is not touched by it.
            assert_ne!(s.backing_at(*o - 1, 1)[0], *p, "write spilled before {o}");
        }
    }
}

#[test]
fn qemu_io_patterns_over_unix_socket() {
    let s = serve();
    patterns_round_trip(&s, &s.unix_uri(), 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn qemu_io_patterns_over_tcp() {
    let s = serve();
    patterns_round_trip(&s, &s.tcp_uri(), 0xdead_beef_cafe_f00d);
}

#[test]
fn qemu_img_convert_and_compare_round_trip() {
    let s = serve();
    let src = s.dir.join("src.img");
    // 16 MiB of mixed content: random data, zeros, a repeated pattern.
    let mut rng = Rng(42);
    let mut data = vec![0u8; 16 << 20];
    for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
        match i % 3 {
            0 => chunk.iter_mut().for_each(|b| *b = rng.next() as u8),
            1 => {}
            _ => chunk.fill(0x5a),
        }
    }
    std::fs::write(&src, &data).unwrap();
    let uri = s.unix_uri();
    let st = tool("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&uri)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img convert failed");
    // compare reads the NBD export back through the server.
    let out = tool("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(&uri)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // qemu-img compare: exit 0 = identical (the export is larger, and the
    // rest of it is zeros, which compare accepts in its default mode).
    assert!(out.status.success(), "images differ: {text}");
    assert_eq!(s.backing_at(0, data.len()), data);
}

#[test]
fn fua_and_flush_reach_the_backing_file() {
    let s = serve();
    let before = s.export.syncs.load(Ordering::Relaxed);
    qemu_io(
        &s.unix_uri(),
        &[
            "write -f -P 0x11 0 64k".into(), // -f: FUA
            "flush".into(),
            "write -P 0x22 64k 64k".into(),
            "read -P 0x11 0 64k".into(),
        ],
    );
    let syncs = s.export.syncs.load(Ordering::Relaxed) - before;
    // One for the FUA write, one for the explicit flush; qemu-io may flush
    // once more when it closes the image.
    assert!(syncs >= 2, "expected FUA + flush to sync, saw {syncs}");
    assert_eq!(s.backing_at(0, 65536), vec![0x11; 65536]);
}

#[test]
fn write_zeroes_and_trim_read_back_as_zeroes() {
    let s = serve();
    qemu_io(
        &s.unix_uri(),
        &[
            "write -P 0x77 0 1M".into(),
            "write -z 0 256k".into(),       // WRITE_ZEROES (may punch)
            "write -z -u 256k 256k".into(), // -u: may unmap
            "discard 512k 256k".into(),     // TRIM
            "read -P 0 0 768k".into(),
            "read -P 0x77 768k 256k".into(), // untouched
        ],
    );
    assert_eq!(s.backing_at(768 << 10, 256 << 10), vec![0x77; 256 << 10]);
}

#[test]
fn several_clients_at_once() {
    let s = serve();
    let uri = s.unix_uri();
    let hs: Vec<_> = (0..4u64)
        .map(|i| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                let off = i << 20;
                let p = 0x30 + i;
                qemu_io(
                    &uri,
                    &[
                        format!("write -P {p} {off} 1M"),
                        format!("read -P {p} {off} 1M"),
                    ],
                );
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

// ---- A raw client that breaks the protocol on purpose ----

fn connect(sock: &Path) -> UnixStream {
    let c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    c
}

fn read_n(c: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    c.read_exact(&mut v).unwrap();
    v
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().unwrap())
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().unwrap())
}

/// Reads the server's greeting and sends the client flags.
fn greet(c: &mut UnixStream) {
    let g = read_n(c, 18);
    assert_eq!(be64(&g[..8]), NBDMAGIC);
    assert_eq!(be64(&g[8..16]), IHAVEOPT);
    let hflags = u16::from_be_bytes([g[16], g[17]]);
    assert_eq!(hflags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    c.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
}

fn send_option(c: &mut UnixStream, opt: u32, data: &[u8]) {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    c.write_all(&m).unwrap();
}

/// Reads one option reply: (option, type, data).
fn option_reply(c: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    let h = read_n(c, 20);
    assert_eq!(be64(&h[..8]), REPLY_MAGIC);
    let len = be32(&h[16..20]) as usize;
    (be32(&h[8..12]), be32(&h[12..16]), read_n(c, len))
}

fn go_data(name: &[u8], infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name);
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// Handshake through NBD_OPT_GO; returns (size, transmission flags).
fn go(c: &mut UnixStream) -> (u64, u16) {
    greet(c);
    send_option(c, OPT_GO, &go_data(b"disk", &[INFO_NAME]));
    let (mut size, mut flags, mut named) = (0, 0, false);
    loop {
        let (opt, kind, data) = option_reply(c);
        assert_eq!(opt, OPT_GO);
        match kind {
            REP_INFO => match u16::from_be_bytes([data[0], data[1]]) {
                INFO_EXPORT => {
                    size = be64(&data[2..10]);
                    flags = u16::from_be_bytes([data[10], data[11]]);
                }
                INFO_NAME => named = &data[2..] == b"disk",
                _ => {}
            },
            REP_ACK => break,
            other => panic!("unexpected reply {other:#x}"),
        }
    }
    assert!(named, "NBD_INFO_NAME was requested and not sent");
    (size, flags)
}

fn request(c: &mut UnixStream, flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) {
    let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&cmd.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    c.write_all(&r).unwrap();
}

/// Reads a simple reply: (error, cookie).
fn simple_reply(c: &mut UnixStream) -> (u32, u64) {
    let h = read_n(c, 16);
    assert_eq!(be32(&h[..4]), SIMPLE_REPLY_MAGIC);
    (be32(&h[4..8]), be64(&h[8..16]))
}

/// After the server hung up on us, the next read sees end of file.
fn assert_hung_up(c: &mut UnixStream) {
    let mut b = [0u8; 64];
    loop {
        match c.read(&mut b) {
            Ok(0) => return,
            Ok(_) => continue, // pending replies
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("server did not hang up: {e}"),
        }
    }
}

/// The server still serves a well-behaved client correctly.
fn still_serves(s: &Served, seed: u8) {
    qemu_io(
        &s.unix_uri(),
        &[
            format!("write -P {seed} 8M 64k"),
            format!("read -P {seed} 8M 64k"),
        ],
    );
}

#[test]
fn option_haggling_answers_every_option() {
    let s = serve();
    let mut c = connect(&s.sock);
    greet(&mut c);
    send_option(&mut c, OPT_LIST, &[]);
    let (_, kind, data) = option_reply(&mut c);
    assert_eq!(kind, REP_SERVER);
    assert_eq!(&data[4..], b"disk");
    assert_eq!(option_reply(&mut c).1, REP_ACK);
    send_option(&mut c, OPT_LIST, b"junk");
    assert_eq!(option_reply(&mut c).1, REP_ERR_INVALID);
    send_option(&mut c, 4242, b"whatever");
    let (opt, kind, _) = option_reply(&mut c);
    assert_eq!((opt, kind), (4242, REP_ERR_UNSUP));
    send_option(&mut c, OPT_STRUCTURED_REPLY, b"x");
    assert_eq!(option_reply(&mut c).1, REP_ERR_INVALID);
    send_option(&mut c, OPT_STARTTLS, &[]);
    assert_eq!(option_reply(&mut c).1, REP_ERR_UNSUP);
    send_option(&mut c, OPT_INFO, &go_data(b"nope", &[]));
    assert_eq!(option_reply(&mut c).1, REP_ERR_UNKNOWN);
    // A count of info requests that does not match the length.
    let mut bad = go_data(b"disk", &[INFO_NAME]);
    bad.pop();
    send_option(&mut c, OPT_INFO, &bad);
    assert_eq!(option_reply(&mut c).1, REP_ERR_INVALID);
    send_option(&mut c, OPT_INFO, &go_data(b"", &[INFO_BLOCK_SIZE]));
    let mut saw_export = false;
    let mut saw_bs = false;
    loop {
        let (_, kind, data) = option_reply(&mut c);
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_INFO);
        match u16::from_be_bytes([data[0], data[1]]) {
            INFO_EXPORT => {
                saw_export = true;
                assert_eq!(be64(&data[2..10]), SIZE);
                let f = u16::from_be_bytes([data[10], data[11]]);
                for want in [
                    TFLAG_HAS_FLAGS,
                    TFLAG_SEND_FLUSH,
                    TFLAG_SEND_FUA,
                    TFLAG_SEND_TRIM,
                    TFLAG_SEND_WRITE_ZEROES,
                ] {
                    assert_ne!(f & want, 0, "flag {want:#x} not advertised");
                }
                assert_eq!(f & TFLAG_READ_ONLY, 0);
            }
            INFO_BLOCK_SIZE => {
                saw_bs = true;
                assert_eq!(be32(&data[10..14]), MAX_PAYLOAD);
            }
            _ => {}
        }
    }
    assert!(saw_export && saw_bs);
    send_option(&mut c, OPT_ABORT, &[]);
    assert_eq!(option_reply(&mut c).1, REP_ACK);
    assert_hung_up(&mut c);
    still_serves(&s, 1);
}

#[test]
fn export_name_option_enters_transmission() {
    let s = serve();
    let mut c = connect(&s.sock);
    greet(&mut c);
    send_option(&mut c, OPT_EXPORT_NAME, b"disk");
    let size = be64(&read_n(&mut c, 8));
    let flags = u16::from_be_bytes(read_n(&mut c, 2).try_into().unwrap());
    assert_eq!(size, SIZE);
    assert_ne!(flags & TFLAG_SEND_FLUSH, 0);
    // NO_ZEROES was negotiated: transmission starts right away.
    request(&mut c, 0, CMD_FLUSH, 7, 0, 0);
    assert_eq!(simple_reply(&mut c), (0, 7));
    request(&mut c, 0, CMD_DISC, 8, 0, 0);
    assert_hung_up(&mut c);
    // An unknown export name ends the connection.
    let mut c = connect(&s.sock);
    greet(&mut c);
    send_option(&mut c, OPT_EXPORT_NAME, b"other");
    assert_hung_up(&mut c);
    still_serves(&s, 2);
}

#[test]
fn bad_requests_get_errors_and_nothing_outside_the_range_is_written() {
    let s = serve();
    let tail_before = s.backing_at(SIZE - 8192, 8192);
    let mut c = connect(&s.sock);
    let (size, _) = go(&mut c);
    assert_eq!(size, SIZE);
    // Read past the end: EINVAL, no payload.
    request(&mut c, 0, CMD_READ, 1, SIZE - 4096, 8192);
    assert_eq!(simple_reply(&mut c), (EINVAL, 1));
    // Offset whose end overflows u64: EINVAL.
    request(&mut c, 0, CMD_READ, 2, u64::MAX - 10, 4096);
    assert_eq!(simple_reply(&mut c), (EINVAL, 2));
    // Oversized read: refused, connection kept.
    request(&mut c, 0, CMD_READ, 3, 0, MAX_PAYLOAD + 1);
    assert_eq!(simple_reply(&mut c), (EOVERFLOW, 3));
    // Write straddling the end: ENOSPC, payload consumed, nothing written.
    request(&mut c, 0, CMD_WRITE, 4, SIZE - 4096, 8192);
    c.write_all(&vec![0xee; 8192]).unwrap();
    assert_eq!(simple_reply(&mut c), (ENOSPC, 4));
    // Trim past the end is EINVAL, write-zeroes ENOSPC ("Error values").
    request(&mut c, 0, CMD_TRIM, 5, SIZE, 4096);
    assert_eq!(simple_reply(&mut c), (EINVAL, 5));
    request(&mut c, 0, CMD_WRITE_ZEROES, 6, SIZE - 1, 2);
    assert_eq!(simple_reply(&mut c), (ENOSPC, 6));
    // Unknown command: EINVAL.
    request(&mut c, 0, 99, 7, 0, 0);
    assert_eq!(simple_reply(&mut c), (EINVAL, 7));
    // The connection is still in sync: a valid write and read.
    request(&mut c, CMD_FLAG_FUA, CMD_WRITE, 8, 4096, 512);
    c.write_all(&[0xab; 512]).unwrap();
    assert_eq!(simple_reply(&mut c), (0, 8));
    request(&mut c, 0, CMD_READ, 9, 4096, 512);
    assert_eq!(simple_reply(&mut c), (0, 9));
    assert_eq!(read_n(&mut c, 512), vec![0xab; 512]);
    // Pipelined requests are all answered, cookies intact.
    for i in 0..32u64 {
        request(&mut c, 0, CMD_READ, 100 + i, i * 512, 512);
    }
    for i in 0..32u64 {
        let (err, cookie) = simple_reply(&mut c);
        assert_eq!((err, cookie), (0, 100 + i));
        read_n(&mut c, 512);
    }
    request(&mut c, 0, CMD_DISC, 10, 0, 0);
    assert_hung_up(&mut c);
    assert_eq!(s.backing_at(SIZE - 8192, 8192), tail_before);
    assert_eq!(s.backing_at(4096, 512), vec![0xab; 512]);
}

#[test]
fn malformed_and_truncated_traffic_closes_only_that_connection() {
    let s = serve();
    // Bad request magic.
    let mut c = connect(&s.sock);
    go(&mut c);
    c.write_all(&[0xff; 28]).unwrap();
    assert_hung_up(&mut c);
    // Oversized write header: the payload cannot be skipped safely.
    let mut c = connect(&s.sock);
    go(&mut c);
    request(&mut c, 0, CMD_WRITE, 1, 0, u32::MAX);
    assert_hung_up(&mut c);
    // Bad option magic.
    let mut c = connect(&s.sock);
    greet(&mut c);
    c.write_all(&[0u8; 16]).unwrap();
    assert_hung_up(&mut c);
    // Unknown client flags.
    let mut c = connect(&s.sock);
    read_n(&mut c, 18);
    c.write_all(&0x8000_0000u32.to_be_bytes()).unwrap();
    assert_hung_up(&mut c);
    // An option that claims to be huge.
    let mut c = connect(&s.sock);
    greet(&mut c);
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    c.write_all(&m).unwrap();
    assert_eq!(option_reply(&mut c).1, REP_ERR_TOO_BIG);
    assert_hung_up(&mut c);
    // Truncated: half a request header, then the client vanishes.
    let mut c = connect(&s.sock);
    go(&mut c);
    c.write_all(&REQUEST_MAGIC.to_be_bytes()).unwrap();
    drop(c);
    // Truncated: a write whose payload never fully arrives.
    let mut c = connect(&s.sock);
    go(&mut c);
    request(&mut c, 0, CMD_WRITE, 2, 1 << 20, 65536);
    c.write_all(&[0x99; 1000]).unwrap();
    drop(c);
    // Vanishes in the middle of the handshake.
    let mut c = connect(&s.sock);
    read_n(&mut c, 10);
    drop(c);
    // None of it was written, and the server still serves everyone.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(s.backing_at(1 << 20, 65536), vec![0; 65536]);
    still_serves(&s, 3);
}

#[test]
fn read_only_export_refuses_writes() {
    let dir = std::env::temp_dir().join(format!("reclaim-scope-nbd-ro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ro.img");
    std::fs::write(&path, vec![0x42; 1 << 20]).unwrap();
    let (file, size) = open_backing(&path, 0, true).unwrap();
    let mut export = Export::new("disk".into(), file, size, true, Guarding::IoFlusher);
    export.log = false;
    let export = Arc::new(export);
    let sock = dir.join("ro.sock");
    let l = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || run_unix(l, export));
    let mut c = connect(&sock);
    let (_, flags) = go(&mut c);
    assert_ne!(flags & TFLAG_READ_ONLY, 0);
    assert_eq!(flags & (TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES), 0);
    request(&mut c, 0, CMD_WRITE, 1, 0, 4096);
    c.write_all(&[0; 4096]).unwrap();
    assert_eq!(simple_reply(&mut c), (EPERM, 1));
    request(&mut c, 0, CMD_TRIM, 2, 0, 4096);
    assert_eq!(simple_reply(&mut c), (EPERM, 2));
    request(&mut c, 0, CMD_READ, 3, 0, 16);
    assert_eq!(simple_reply(&mut c), (0, 3));
    assert_eq!(read_n(&mut c, 16), vec![0x42; 16]);
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x42; 1 << 20]);
    let _ = std::fs::remove_dir_all(&dir);
}
