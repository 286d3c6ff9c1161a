//! The example NBD server (`examples/nbd_server`) driven by real clients —
//! `qemu-io`, `qemu-img` (package qemu-utils) — and by a raw-socket client
//! that breaks the protocol on purpose. Needs no capability: the server runs
//! in this process, with best-effort guards.

use reclaim_scope_examples::daemon::{self, BackingOpts};
use reclaim_scope_examples::nbd as server;
use reclaim_scope_examples::testkit::require_root;
use reclaim_scope_examples::testkit::rng::Rng;
use server::*;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The daemon's backing store at `path`, a new file getting `size` bytes.
fn open_backing(
    path: &Path,
    size: u64,
    read_only: bool,
) -> std::io::Result<(reclaim_scope::NoFsFile, u64)> {
    let opts = BackingOpts {
        size: None,
        default_size: size,
        read_only,
    };
    daemon::open_backing(path, opts, |_| Ok(())).map(|b| (b.file, b.size))
}

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

fn fresh_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "reclaim-scope-nbd-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tests of this file run one at a time: run in parallel, two of ten
/// runs failed (a server's socket refusing or gone right after it said it
/// was serving; a tmpfs "busy" at remount), serially none of many. They
/// fork servers, mount file systems and attach loop devices, whose
/// interference through inherited descriptors is not worth the 3 s that
/// parallelism saves. (Root cause not found yet.)
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a test's directory when the test ends (also on a panic).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the example server in this process on a fresh backing file,
/// listening on a unix socket and on an ephemeral loopback TCP port.
fn serve() -> Served {
    let dir = fresh_dir("test");
    let backing = dir.join("disk.img");
    let s = serve_backing(dir, backing, SIZE, false);
    assert_eq!(s.export.size, SIZE);
    s
}

/// Starts the example server in this process on `backing` (a file, created
/// with `size` bytes if missing, or a block device).
fn serve_backing(dir: PathBuf, backing: PathBuf, size: u64, read_only: bool) -> Served {
    let (file, size) = open_backing(&backing, size, read_only).unwrap();
    let mut export = Export::new("disk".into(), file, size, read_only, Guarding::IoFlusher);
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
    let package = match name {
        "nbdinfo" | "nbdcopy" => "libnbd-bin",
        "losetup" | "blockdev" | "prlimit" => "util-linux",
        "mount" | "umount" => "mount",
        _ => "qemu-utils",
    };
    assert!(
        found,
        "{name} not found: install Debian's {package} (`cargo xtask test` does) — these \
         tests drive the example server with real NBD clients and tools"
    );
    Command::new(name)
}

/// Runs a command, panics with its output unless it succeeds; stdout.
fn run(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs qemu-io and returns (exit success, stdout + stderr) without
/// judging either.
fn qemu_io_raw(uri: &str, cmds: &[String]) -> (bool, String) {
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
    (out.status.success(), text)
}

/// Runs qemu-io with the given commands; panics with its output on failure
/// or when any command reports a pattern mismatch.
fn qemu_io(uri: &str, cmds: &[String]) -> String {
    qemu_io_with(&[], uri, cmds)
}

/// [`qemu_io`] with extra qemu-io options (`-r`: open read-only).
fn qemu_io_with(opts: &[&str], uri: &str, cmds: &[String]) -> String {
    let mut c = tool("qemu-io");
    c.args(["-f", "raw"]).args(opts);
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

fn patterns_round_trip(s: &Served, uri: &str, seed: u64) {
    let mut rng = Rng::new(seed);
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
    let _serial = serial();
    let s = serve();
    patterns_round_trip(&s, &s.unix_uri(), 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn qemu_io_patterns_over_tcp() {
    let _serial = serial();
    let s = serve();
    patterns_round_trip(&s, &s.tcp_uri(), 0xdead_beef_cafe_f00d);
}

#[test]
fn qemu_img_convert_and_compare_round_trip() {
    let _serial = serial();
    let s = serve();
    let src = s.dir.join("src.img");
    // 16 MiB of mixed content: random data, zeros, a repeated pattern.
    let mut rng = Rng::new(42);
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
    let _serial = serial();
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
    let _serial = serial();
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
    let _serial = serial();
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
    // The evidence if it fails (seen once in a fresh-clone CI run: ENOENT
    // right after the server said it was serving): what exists of the path.
    let c = UnixStream::connect(sock).unwrap_or_else(|e| {
        let dir = sock.parent().unwrap();
        panic!(
            "connect {}: {e}; socket exists: {}, its directory exists: {}, holds {:?}",
            sock.display(),
            sock.exists(),
            dir.exists(),
            std::fs::read_dir(dir).map(|d| d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect::<Vec<_>>())
        )
    });
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
    let _serial = serial();
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
    let _serial = serial();
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
    let _serial = serial();
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
    let _serial = serial();
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
    let _serial = serial();
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

// ---- Structured replies, metadata contexts, block status, cache ----

/// Sends one option and collects its replies up to the final one:
/// (non-final replies as (type, data), final type).
fn option_replies(c: &mut UnixStream, opt: u32, data: &[u8]) -> (Vec<(u32, Vec<u8>)>, u32) {
    send_option(c, opt, data);
    let mut v = Vec::new();
    loop {
        let (o, kind, d) = option_reply(c);
        assert_eq!(o, opt);
        if kind == REP_ACK || kind & (1 << 31) != 0 {
            return (v, kind);
        }
        v.push((kind, d));
    }
}

fn meta_data(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name);
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q);
    }
    d
}

/// Handshake with structured replies and, if `meta`, base:allocation
/// selected; returns the transmission flags.
fn go_structured(c: &mut UnixStream, meta: bool) -> u16 {
    greet(c);
    assert_eq!(
        option_replies(c, OPT_STRUCTURED_REPLY, &[]),
        (vec![], REP_ACK)
    );
    if meta {
        let (ctx, last) = option_replies(
            c,
            OPT_SET_META_CONTEXT,
            &meta_data(b"disk", &[b"base:allocation"]),
        );
        assert_eq!(last, REP_ACK);
        assert_eq!(ctx.len(), 1);
        assert_eq!(ctx[0].0, REP_META_CONTEXT);
        assert_eq!(be32(&ctx[0].1[..4]), META_ID_BASE_ALLOCATION);
        assert_eq!(&ctx[0].1[4..], b"base:allocation");
    }
    let (infos, last) = option_replies(c, OPT_GO, &go_data(b"disk", &[]));
    assert_eq!(last, REP_ACK);
    let export = infos
        .iter()
        .find(|(k, d)| *k == REP_INFO && u16::from_be_bytes([d[0], d[1]]) == INFO_EXPORT)
        .expect("NBD_INFO_EXPORT");
    u16::from_be_bytes([export.1[10], export.1[11]])
}

/// Reads one structured reply chunk: (flags, type, cookie, payload).
fn chunk(c: &mut UnixStream) -> (u16, u16, u64, Vec<u8>) {
    let h = read_n(c, 20);
    assert_eq!(
        be32(&h[..4]),
        STRUCTURED_REPLY_MAGIC,
        "not a structured reply"
    );
    let flags = u16::from_be_bytes([h[4], h[5]]);
    let kind = u16::from_be_bytes([h[6], h[7]]);
    let len = be32(&h[16..20]) as usize;
    (flags, kind, be64(&h[8..16]), read_n(c, len))
}

/// An error chunk's (error, message).
fn error_of(payload: &[u8]) -> (u32, String) {
    let n = u16::from_be_bytes([payload[4], payload[5]]) as usize;
    assert_eq!(payload.len(), 6 + n, "NBD_REPLY_TYPE_ERROR length");
    (
        be32(&payload[..4]),
        String::from_utf8(payload[6..].to_vec()).unwrap(),
    )
}

#[test]
fn meta_context_options_follow_the_spec() {
    let _serial = serial();
    let s = serve();
    let mut c = connect(&s.sock);
    greet(&mut c);
    // Before NBD_OPT_STRUCTURED_REPLY: invalid.
    let q: &[&[u8]] = &[b"base:allocation"];
    assert_eq!(
        option_replies(&mut c, OPT_SET_META_CONTEXT, &meta_data(b"disk", q)).1,
        REP_ERR_INVALID
    );
    assert_eq!(option_replies(&mut c, OPT_STRUCTURED_REPLY, &[]).1, REP_ACK);
    // LIST with no query: every context, ID 0.
    let (ctx, last) = option_replies(&mut c, OPT_LIST_META_CONTEXT, &meta_data(b"", &[]));
    assert_eq!(last, REP_ACK);
    assert_eq!(
        ctx,
        vec![(
            REP_META_CONTEXT,
            [&[0u8; 4][..], b"base:allocation"].concat()
        )]
    );
    // "base:" is the namespace's wildcard for LIST, and selects nothing for SET.
    let (ctx, _) = option_replies(
        &mut c,
        OPT_LIST_META_CONTEXT,
        &meta_data(b"disk", &[b"base:"]),
    );
    assert_eq!(ctx.len(), 1);
    let (ctx, last) = option_replies(
        &mut c,
        OPT_SET_META_CONTEXT,
        &meta_data(b"disk", &[b"base:"]),
    );
    assert_eq!((ctx.len(), last), (0, REP_ACK));
    // Unknown namespaces and leaves are ignored, not errors.
    let (ctx, last) = option_replies(
        &mut c,
        OPT_SET_META_CONTEXT,
        &meta_data(b"disk", &[b"qemu:dirty-bitmap:x", b"base:nonesuch"]),
    );
    assert_eq!((ctx.len(), last), (0, REP_ACK));
    // Unknown export; a query running past the option.
    assert_eq!(
        option_replies(&mut c, OPT_SET_META_CONTEXT, &meta_data(b"other", q)).1,
        REP_ERR_UNKNOWN
    );
    let mut bad = meta_data(b"disk", q);
    bad.pop();
    assert_eq!(
        option_replies(&mut c, OPT_SET_META_CONTEXT, &bad).1,
        REP_ERR_INVALID
    );
    // The failed SET cleared the selection: block status is refused.
    let (_, last) = option_replies(&mut c, OPT_GO, &go_data(b"disk", &[]));
    assert_eq!(last, REP_ACK);
    request(&mut c, 0, CMD_BLOCK_STATUS, 1, 0, 4096);
    let (flags, kind, cookie, p) = chunk(&mut c);
    assert_eq!(
        (flags, kind, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 1)
    );
    let (err, msg) = error_of(&p);
    assert_eq!(err, EINVAL);
    assert!(msg.contains("no metadata context selected"), "{msg}");
}

#[test]
fn structured_replies_for_reads_errors_block_status_and_cache() {
    let _serial = serial();
    let s = serve();
    qemu_io(&s.unix_uri(), &["write -P 0x6d 1M 64k".into()]);
    let mut c = connect(&s.sock);
    let flags = go_structured(&mut c, true);
    for want in [TFLAG_SEND_DF, TFLAG_SEND_CACHE] {
        assert_ne!(flags & want, 0, "flag {want:#x} not advertised");
    }
    // A read: one data chunk, final, with the offset.
    request(&mut c, CMD_FLAG_DF, CMD_READ, 1, 1 << 20, 4096);
    let (flags, kind, cookie, p) = chunk(&mut c);
    assert_eq!(
        (flags, kind, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 1)
    );
    assert_eq!(be64(&p[..8]), 1 << 20);
    assert_eq!(&p[8..], &[0x6d; 4096][..]);
    // A read of 0 bytes: a NONE chunk, not a simple reply.
    request(&mut c, 0, CMD_READ, 2, 0, 0);
    assert_eq!(chunk(&mut c), (REPLY_FLAG_DONE, REPLY_TYPE_NONE, 2, vec![]));
    // Errors are error chunks with a message, also for a read.
    request(&mut c, 0, CMD_READ, 3, SIZE, 512);
    let (flags, kind, cookie, p) = chunk(&mut c);
    assert_eq!(
        (flags, kind, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 3)
    );
    let (err, msg) = error_of(&p);
    assert_eq!(err, EINVAL);
    assert_eq!(msg, "request beyond the end of the export");
    // An undocumented flag: EINVAL.
    request(&mut c, CMD_FLAG_REQ_ONE, CMD_READ, 4, 0, 512);
    assert_eq!(error_of(&chunk(&mut c).3).0, EINVAL);
    // Block status: hole, data, hole around the 64 KiB written.
    request(&mut c, 0, CMD_BLOCK_STATUS, 5, 0, 2 << 20);
    let (flags, kind, cookie, p) = chunk(&mut c);
    assert_eq!(
        (flags, kind, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 5)
    );
    assert_eq!(be32(&p[..4]), META_ID_BASE_ALLOCATION);
    let ext: Vec<(u32, u32)> = p[4..]
        .chunks_exact(8)
        .map(|e| (be32(&e[..4]), be32(&e[4..])))
        .collect();
    let (hole, zero) = (STATE_HOLE | STATE_ZERO, 0);
    assert_eq!(
        ext,
        vec![
            (1 << 20, hole),
            (64 << 10, zero),
            ((1 << 20) - (64 << 10), hole)
        ]
    );
    // REQ_ONE: exactly one extent, not beyond the request.
    request(
        &mut c,
        CMD_FLAG_REQ_ONE,
        CMD_BLOCK_STATUS,
        6,
        (1 << 20) + 4096,
        8192,
    );
    let p = chunk(&mut c).3;
    assert_eq!(p.len(), 4 + 8);
    assert_eq!((be32(&p[4..8]), be32(&p[8..12])), (8192, zero));
    // Beyond the end: EINVAL.
    request(&mut c, 0, CMD_BLOCK_STATUS, 7, SIZE - 512, 1024);
    assert_eq!(error_of(&chunk(&mut c).3).0, EINVAL);
    // Cache: a simple reply (no payload) is allowed, and is what we send.
    request(&mut c, 0, CMD_CACHE, 8, 0, 1 << 20);
    assert_eq!(simple_reply(&mut c), (0, 8));
    request(&mut c, 0, CMD_CACHE, 9, SIZE, 1);
    assert_eq!(error_of(&chunk(&mut c).3).0, EINVAL);
    // Writes still get simple replies on success.
    request(&mut c, CMD_FLAG_FUA, CMD_WRITE, 10, 0, 512);
    c.write_all(&[7; 512]).unwrap();
    assert_eq!(simple_reply(&mut c), (0, 10));
    request(&mut c, 0, CMD_DISC, 11, 0, 0);
    assert_hung_up(&mut c);
}

/// `nbdinfo --map` extents: (offset, length, type).
fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, u32)> {
    let out = run(tool("nbdinfo").args(["--map", uri]));
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn nbdinfo_map_and_qemu_img_map_see_holes_and_data() {
    let _serial = serial();
    let s = serve();
    let (m, mib) = (8u64 << 20, 1u64 << 20);
    qemu_io(&s.unix_uri(), &[format!("write -P 0x5c {m} 1M")]);
    let map = nbdinfo_map(&s.unix_uri());
    assert_eq!(
        map,
        vec![(0, m, 3), (m, mib, 0), (m + mib, SIZE - m - mib, 3)],
        "{map:?}"
    );
    // qemu-img map over NBD agrees: data only in the written MiB.
    let out = run(tool("qemu-img").args(["map", "--output=json", "-f", "raw", &s.unix_uri()]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut data = Vec::new();
    for e in v.as_array().unwrap() {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        if e["data"].as_bool().unwrap() {
            data.push((start, len));
        } else {
            assert!(e["zero"].as_bool().unwrap(), "a hole that is not zero: {e}");
        }
    }
    assert_eq!(data, vec![(m, mib)], "{out}");
    // A sparse copy: nbdcopy skips the holes, and the copy is right.
    let dst = s.dir.join("copy.img");
    std::fs::File::create(&dst).unwrap().set_len(SIZE).unwrap();
    run(tool("nbdcopy").args([&s.unix_uri(), dst.to_str().unwrap()]));
    let got = std::fs::read(&dst).unwrap();
    assert_eq!(got.len() as u64, SIZE);
    assert!(got[..m as usize].iter().all(|&b| b == 0));
    assert!(got[m as usize..(m + mib) as usize]
        .iter()
        .all(|&b| b == 0x5c));
    assert!(got[(m + mib) as usize..].iter().all(|&b| b == 0));
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&dst).unwrap().blocks() * 512;
    assert!(
        allocated <= 2 * mib,
        "copy allocated {allocated} bytes: holes were written"
    );
    // A trimmed range becomes a hole again.
    qemu_io(&s.unix_uri(), &[format!("discard {m} 1M")]);
    assert_eq!(nbdinfo_map(&s.unix_uri()), vec![(0, SIZE, 3)]);
}

// ---- Backing-store errors, block devices: root (tmpfs mounts, loop devices) ----

/// A tmpfs mounted for a test, lazily unmounted and removed on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(tag: &str, opts: &str) -> Mount {
        let dir = fresh_dir(tag);
        run(tool("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&dir));
        Mount(dir)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Loop {
    fn over(file: &Path) -> Loop {
        let dev = run(tool("losetup").args(["--find", "--show"]).arg(file));
        Loop(dev.trim().to_string())
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn full_file_system_answers_enospc() {
    let _serial = serial();
    require_root();
    let mnt = Mount::tmpfs("enospc", "size=8M");
    let s = serve_backing(
        fresh_dir("enospc-sock"),
        mnt.0.join("disk.img"),
        16 << 20,
        false,
    );
    let (_, out) = qemu_io_raw(
        &s.unix_uri(),
        &[
            "write -P 0x11 0 6M".into(),
            "write -P 0x22 6M 4M".into(), // past 8 MiB of data
            "read -P 0x11 0 6M".into(),
        ],
    );
    assert!(
        out.contains("wrote 6291456/6291456 bytes at offset 0"),
        "{out}"
    );
    assert!(
        out.contains("write failed: No space left on device"),
        "{out}"
    );
    assert!(
        out.contains("read 6291456/6291456 bytes at offset 0"),
        "{out}"
    );
    // On the wire: NBD_ENOSPC in a simple reply ...
    let mut c = connect(&s.sock);
    go(&mut c);
    request(&mut c, 0, CMD_WRITE, 1, 12 << 20, 1 << 20);
    c.write_all(&vec![0x33; 1 << 20]).unwrap();
    assert_eq!(simple_reply(&mut c), (ENOSPC, 1));
    // ... and in a structured error chunk, with the syscall's context.
    let mut c = connect(&s.sock);
    go_structured(&mut c, false);
    request(&mut c, CMD_FLAG_FUA, CMD_WRITE, 2, 13 << 20, 1 << 20);
    c.write_all(&vec![0x44; 1 << 20]).unwrap();
    let (flags, kind, cookie, p) = chunk(&mut c);
    assert_eq!(
        (flags, kind, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 2)
    );
    let (err, msg) = error_of(&p);
    assert_eq!(err, ENOSPC);
    assert!(msg.contains("No space left on device"), "{msg}");
    // Zeroing needs no space when it may punch; NO_HOLE zeroing does.
    qemu_io(
        &s.unix_uri(),
        &["write -z 0 1M".into(), "read -P 0 0 1M".into()],
    );
}

#[test]
fn read_only_device_answers_eperm() {
    let _serial = serial();
    require_root();
    let dir = fresh_dir("eperm");
    let _cleanup = Cleanup(dir.clone());
    let img = dir.join("lower.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let lo = Loop::over(&img);
    let s = serve_backing(dir, lo.path(), 0, false);
    assert_eq!(s.export.size, 8 << 20);
    qemu_io(&s.unix_uri(), &["write -P 0x21 0 64k".into()]);
    // The device turns read-only under the server: the kernel answers EPERM.
    run(tool("blockdev").args(["--setro", &lo.0]));
    let (_, out) = qemu_io_raw(&s.unix_uri(), &["write -P 0x22 64k 64k".into()]);
    assert!(
        out.contains("write failed: Operation not permitted"),
        "{out}"
    );
    let mut c = connect(&s.sock);
    go(&mut c);
    request(&mut c, 0, CMD_WRITE, 1, 0, 4096);
    c.write_all(&[0x23; 4096]).unwrap();
    assert_eq!(simple_reply(&mut c), (EPERM, 1));
    request(&mut c, 0, CMD_READ, 2, 0, 4096);
    assert_eq!(simple_reply(&mut c), (0, 2));
    assert_eq!(read_n(&mut c, 4096), vec![0x21; 4096]);
    run(tool("blockdev").args(["--setrw", &lo.0]));
}

#[test]
fn read_only_mount_is_served_read_only() {
    let _serial = serial();
    require_root();
    let mnt = Mount::tmpfs("rofs", "size=4M");
    let path = mnt.0.join("ro.img");
    std::fs::write(&path, vec![0x42; 1 << 20]).unwrap();
    run(tool("mount").args(["-o", "remount,ro"]).arg(&mnt.0));
    // Read-write: the open fails with the errno and the path.
    let e = open_backing(&path, 0, false).expect_err("EROFS");
    assert_eq!(e.kind(), std::io::ErrorKind::ReadOnlyFilesystem, "{e}");
    assert!(e.to_string().contains("ro.img"), "{e}");
    let s = serve_backing(fresh_dir("rofs-sock"), path.clone(), 0, true);
    // qemu-io honours NBD_FLAG_READ_ONLY: it will not open for writing ...
    let (ok, out) = qemu_io_raw(&s.unix_uri(), &["write -P 1 0 4k".into()]);
    assert!(!ok && out.contains("Permission denied"), "{out}");
    // ... and a client that writes anyway gets NBD_EPERM.
    let mut c = connect(&s.sock);
    let (_, flags) = go(&mut c);
    assert_ne!(flags & TFLAG_READ_ONLY, 0);
    request(&mut c, 0, CMD_WRITE, 1, 0, 512);
    c.write_all(&[1; 512]).unwrap();
    assert_eq!(simple_reply(&mut c), (EPERM, 1));
    request(&mut c, 0, CMD_WRITE_ZEROES, 2, 0, 512);
    assert_eq!(simple_reply(&mut c), (EPERM, 2));
    qemu_io_with(&["-r"], &s.unix_uri(), &["read -P 0x42 0 1M".into()]);
}

#[test]
fn block_device_is_a_backing_store() {
    let _serial = serial();
    require_root();
    let dir = fresh_dir("blk");
    let _cleanup = Cleanup(dir.clone());
    let img = dir.join("lower.img");
    let size: u64 = 32 << 20;
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let lo = Loop::over(&img);
    // --size is ignored for a device: it is never truncated.
    let s = serve_backing(fresh_dir("blk-sock"), lo.path(), 1 << 20, false);
    let info = run(tool("nbdinfo").args(["--json", &s.unix_uri()]));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        v["exports"][0]["export-size"].as_u64(),
        Some(size),
        "{info}"
    );
    qemu_io(
        &s.unix_uri(),
        &[
            "write -P 0xa5 1M 1M".into(),
            "write -P 0x77 2M 1M".into(),
            "write -z 2M 256k".into(), // may unmap
            "write -z -u 2304k 256k".into(),
            "discard 4M 64k".into(), // advisory on a loop device
            "read -P 0 2M 512k".into(),
            "read -P 0x77 2560k 512k".into(),
            "flush".into(),
        ],
    );
    // On the device itself ...
    let dev = std::fs::File::open(lo.path()).unwrap();
    let mut b = vec![0u8; 1 << 20];
    dev.read_exact_at(&mut b, 1 << 20).unwrap();
    assert!(b.iter().all(|&x| x == 0xa5), "device differs at 1M");
    dev.read_exact_at(&mut b, 2 << 20).unwrap();
    assert!(
        b[..512 << 10].iter().all(|&x| x == 0),
        "zeroed range on the device"
    );
    assert!(b[512 << 10..].iter().all(|&x| x == 0x77));
    // ... and in the file under the loop device (the flush reached it).
    let lower = std::fs::File::open(&img).unwrap();
    lower.read_exact_at(&mut b, 1 << 20).unwrap();
    assert!(b.iter().all(|&x| x == 0xa5), "loop's file differs at 1M");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
    // Block status: a device is all data.
    assert_eq!(nbdinfo_map(&s.unix_uri()), vec![(0, size, 0)]);
    // The same device, read-only.
    let ro = serve_backing(fresh_dir("blk-ro"), lo.path(), 0, true);
    let mut c = connect(&ro.sock);
    let (sz, flags) = go(&mut c);
    assert_eq!(sz, size);
    assert_ne!(flags & TFLAG_READ_ONLY, 0);
    qemu_io_with(&["-r"], &ro.unix_uri(), &["read -P 0xa5 1M 1M".into()]);
}

// ---- The server as its own process: limits, kill -9, SIGTERM ----

/// The example binary, built by cargo for this test run (same profile,
/// features and target directory, so nothing is rebuilt needlessly).
fn example_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut c = Command::new(cargo);
        c.args([
            "build",
            "--quiet",
            "--example",
            "nbd_server",
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.ends_with("release") {
            c.arg("--release");
        }
        run(&mut c);
        profile_dir.join("examples/nbd_server")
    })
    .clone()
}

/// `nbd_server` running as a child process on a unix socket; its stderr is
/// collected line by line. Killed on drop.
struct ChildServer {
    child: std::process::Child,
    sock: PathBuf,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChildServer {
    fn start(dir: &Path, backing: &Path, extra: &[&str]) -> ChildServer {
        let bin = example_bin();
        Self::start_with(bin.to_str().unwrap(), &[], dir, backing, extra)
    }

    /// The server run as `prog pre... nbd_server-args` (a wrapper such as
    /// prlimit whose last argument is the server binary).
    fn start_with(
        prog: &str,
        pre: &[&str],
        dir: &Path,
        backing: &Path,
        extra: &[&str],
    ) -> ChildServer {
        use std::io::BufRead;
        let sock = dir.join(format!("child-{}.sock", std::process::id()));
        let mut child = Command::new(prog)
            .args(pre)
            .arg("--file")
            .arg(backing)
            .arg("--unix")
            .arg(&sock)
            .args(["--listen", "none"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (l, err) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let s = ChildServer { child, sock, log };
        s.wait_log("serving", 1);
        s
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///disk?socket={}", self.sock.display())
    }

    fn count(&self, pat: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }

    fn text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (up to 60 s) until `n` log lines contain `pat`.
    fn wait_log(&self, pat: &str, n: usize) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.count(pat) < n {
            assert!(
                std::time::Instant::now() < until,
                "no {n} lines {pat:?} in the server's log:\n{}",
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Threads of the server process.
    fn tasks(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .unwrap()
            .count()
    }

    /// Waits (up to 30 s) until the server has `n` threads.
    fn wait_tasks(&self, n: usize) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.tasks() != n {
            assert!(
                std::time::Instant::now() < until,
                "the server has {} threads, not {n}:\n{}",
                self.tasks(),
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: &str) {
        run(Command::new("kill").args([sig, &self.child.id().to_string()]));
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects and reads the greeting: the server has a thread on it now.
fn connect_greeted(sock: &Path) -> UnixStream {
    let mut c = connect(sock);
    let g = read_n(&mut c, 18);
    assert_eq!(be64(&g[..8]), NBDMAGIC);
    c
}

/// The server closes `c` (EOF or reset) before the socket's read timeout.
fn assert_closed_by_server(c: &mut UnixStream) {
    let mut b = [0u8; 64];
    loop {
        match c.read(&mut b) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

#[test]
fn idle_handshakes_are_dropped_at_the_deadline() {
    let _serial = serial();
    let dir = fresh_dir("idle");
    let _cleanup = Cleanup(dir.clone());
    let srv = ChildServer::start(
        &dir,
        &dir.join("disk.img"),
        &[
            "--size",
            "16M",
            "--handshake-timeout",
            "2",
            "--max-handshakes",
            "200",
        ],
    );
    let baseline = srv.tasks();
    let t0 = std::time::Instant::now();
    let mut idle: Vec<UnixStream> = (0..100).map(|_| connect_greeted(&srv.sock)).collect();
    // Each holds a thread now ...
    assert!(srv.tasks() >= baseline + 100, "{} threads", srv.tasks());
    // One more trickles a byte of an endless option every 100 ms: reads
    // never time out, the deadline drops it all the same.
    let mut slow = connect_greeted(&srv.sock);
    slow.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
    let mut w = slow.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&OPT_GO.to_be_bytes());
        m.extend_from_slice(&MAX_OPTION.to_be_bytes());
        m.resize(MAX_OPTION as usize + 16, 0);
        for b in m {
            if w.write_all(&[b]).is_err() {
                return; // dropped
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("a trickling client finished an option of 64 KiB");
    });
    // ... and a real client is served meanwhile.
    qemu_io(
        &srv.uri(),
        &["write -P 0x3c 0 1M".into(), "read -P 0x3c 0 1M".into()],
    );
    for c in &mut idle {
        // 2 s deadline; the test's read timeout (20 s) fails a server that
        // keeps them.
        assert_closed_by_server(c);
    }
    assert_closed_by_server(&mut slow);
    eprintln!("101 idle handshakes dropped after {:?}", t0.elapsed());
    trickle.join().unwrap();
    srv.wait_tasks(baseline);
    assert_eq!(
        srv.count("handshake not finished within 2s"),
        101,
        "{}",
        srv.text()
    );
}

#[test]
fn limits_refuse_with_a_log_line_and_established_clients_are_served() {
    let _serial = serial();
    let dir = fresh_dir("limits");
    let _cleanup = Cleanup(dir.clone());
    let srv = ChildServer::start(
        &dir,
        &dir.join("disk.img"),
        &[
            "--size",
            "16M",
            "--handshake-timeout",
            "3",
            "--max-handshakes",
            "10",
            "--max-connections",
            "12",
        ],
    );
    let mut est = connect(&srv.sock);
    go(&mut est);
    let mut idle: Vec<UnixStream> = (0..10).map(|_| connect_greeted(&srv.sock)).collect();
    // Negotiation is full: the next 5 are refused at once, without greeting.
    for _ in 0..5 {
        let mut c = connect(&srv.sock);
        let mut b = [0u8; 1];
        assert_eq!(
            c.read(&mut b).unwrap_or(0),
            0,
            "refused connection was greeted"
        );
    }
    srv.wait_log("10 connections still negotiating (--max-handshakes 10)", 5);
    // The established client is served whatever the limits do.
    request(&mut est, 0, CMD_WRITE, 1, 4096, 4096);
    est.write_all(&[0x5a; 4096]).unwrap();
    assert_eq!(simple_reply(&mut est), (0, 1));
    request(&mut est, 0, CMD_READ, 2, 4096, 4096);
    assert_eq!(simple_reply(&mut est), (0, 2));
    assert_eq!(read_n(&mut est, 4096), vec![0x5a; 4096]);
    for c in &mut idle {
        assert_closed_by_server(c);
    }
    // Slots free again: 11 established + est = 12 open, the 13th refused.
    let mut more: Vec<UnixStream> = (0..11)
        .map(|_| {
            let mut c = connect(&srv.sock);
            go(&mut c);
            c
        })
        .collect();
    let mut c = connect(&srv.sock);
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).unwrap_or(0), 0);
    srv.wait_log("12 connections open (--max-connections 12)", 1);
    for c in &mut more {
        request(c, 0, CMD_DISC, 0, 0, 0);
    }
    drop(more);
    // Once they are gone a real client gets in.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while qemu_io_raw(&srv.uri(), &["read -P 0x5a 4k 4k".into()])
        .1
        .contains("can't open")
    {
        assert!(std::time::Instant::now() < until, "{}", srv.text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    qemu_io(&srv.uri(), &["read -P 0x5a 4k 4k".into()]);
}

#[test]
fn acknowledged_durable_writes_survive_kill_9() {
    let _serial = serial();
    let dir = fresh_dir("kill9");
    let _cleanup = Cleanup(dir.clone());
    let backing = dir.join("disk.img");
    let srv = ChildServer::start(&dir, &backing, &["--size", "64M"]);
    // 4000 writes of 16 KiB; every 7th with FUA, a flush after every 10th.
    #[derive(Clone, Copy)]
    enum Cmd {
        Write { offset: u64, pat: u8, fua: bool },
        Flush,
    }
    let mut cmds = Vec::new();
    for i in 0..4000u64 {
        let pat = 1 + (i % 251) as u8;
        cmds.push(Cmd::Write {
            offset: i * 16384,
            pat,
            fua: i % 7 == 3,
        });
        if i % 10 == 9 {
            cmds.push(Cmd::Flush);
        }
    }
    let mut qio = tool("qemu-io");
    qio.args(["-f", "raw"]);
    for c in &cmds {
        match *c {
            Cmd::Write { offset, pat, fua } => {
                let f = if fua { "-f " } else { "" };
                qio.args(["-c", &format!("write {f}-P {pat} {offset} 16k")])
            }
            Cmd::Flush => qio.args(["-c", "flush"]),
        };
    }
    let qio = qio
        .arg(srv.uri())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server once write 300 has reached the file.
    let file = std::fs::File::open(&backing).unwrap();
    let mut b = [0u8; 16384];
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        file.read_exact_at(&mut b, 300 * 16384).unwrap();
        if b.iter().all(|&x| x == 1 + (300 % 251) as u8) {
            break;
        }
        assert!(std::time::Instant::now() < until, "write 300 never arrived");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(srv); // SIGKILL
    let out = qio.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let acked: std::collections::HashSet<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("wrote 16384/16384 bytes at offset "))
        .map(|o| o.trim().parse().unwrap())
        .collect();
    assert!(
        acked.len() >= 300,
        "only {} writes acknowledged",
        acked.len()
    );
    assert!(
        acked.len() < 4000,
        "every write was acknowledged: the kill was not mid-stream"
    );
    // Durable: FUA writes acknowledged, and acknowledged writes before a
    // flush that completed (a later command was acknowledged after it).
    let mut durable = Vec::new();
    let mut pending = Vec::new();
    let mut flush_pending = Vec::new();
    for c in &cmds {
        match *c {
            Cmd::Write { offset, pat, fua } => {
                if !acked.contains(&offset) {
                    continue;
                }
                // This acknowledgement proves every earlier flush finished.
                durable.append(&mut flush_pending);
                if fua {
                    durable.push((offset, pat));
                } else {
                    pending.push((offset, pat));
                }
            }
            Cmd::Flush => flush_pending.append(&mut pending),
        }
    }
    assert!(durable.len() >= 250, "{} durable writes", durable.len());
    // Restarted on the same backing file, every durable write reads back.
    let srv = ChildServer::start(&dir, &backing, &[]);
    let reads: Vec<String> = durable
        .iter()
        .map(|(o, p)| format!("read -P {p} {o} 16k"))
        .collect();
    for batch in reads.chunks(500) {
        let out = qemu_io(&srv.uri(), batch);
        assert_eq!(out.matches("read 16384/16384").count(), batch.len());
    }
    eprintln!(
        "kill -9 after {} acknowledged writes; {} durable ones read back",
        acked.len(),
        durable.len()
    );
}

#[test]
fn file_size_limit_answers_enospc() {
    let _serial = serial();
    // EFBIG from RLIMIT_FSIZE (util-linux's prlimit on the server): the
    // write fails, the server lives on (SIGXFSZ caught) and says ENOSPC.
    let dir = fresh_dir("efbig");
    let _cleanup = Cleanup(dir.clone());
    let backing = dir.join("disk.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let bin = example_bin();
    let _ = tool("prlimit"); // says which package when it is missing
    let srv = ChildServer::start_with(
        "prlimit",
        &["--fsize=8388608", bin.to_str().unwrap()],
        &dir,
        &backing,
        &[],
    );
    let (_, out) = qemu_io_raw(
        &srv.uri(),
        &[
            "write -P 0x31 0 1M".into(),
            "write -P 0x32 10M 1M".into(), // beyond 8 MiB
            "read -P 0x31 0 1M".into(),
        ],
    );
    assert!(
        out.contains("wrote 1048576/1048576 bytes at offset 0"),
        "{out}"
    );
    assert!(
        out.contains("write failed: No space left on device"),
        "{out}"
    );
    assert!(
        out.contains("read 1048576/1048576 bytes at offset 0"),
        "{out}"
    );
    srv.wait_log("File too large", 1);
}

#[test]
fn sigterm_drains_the_request_in_flight() {
    let _serial = serial();
    let dir = fresh_dir("drain");
    let _cleanup = Cleanup(dir.clone());
    let backing = dir.join("disk.img");
    let srv = ChildServer::start(&dir, &backing, &["--size", "16M"]);
    let mut busy = connect(&srv.sock);
    go(&mut busy);
    let mut idle = connect(&srv.sock);
    go(&mut idle);
    // Half a write is on its way when the signal comes.
    request(&mut busy, 0, CMD_WRITE, 1, 1 << 20, 1 << 20);
    busy.write_all(&vec![0x6b; 512 << 10]).unwrap();
    srv.signal("-TERM");
    srv.wait_log("shutting down, draining 2 connections", 1);
    // The idle connection is closed; the busy one finishes its request.
    assert_closed_by_server(&mut idle);
    busy.write_all(&vec![0x6b; 512 << 10]).unwrap();
    assert_eq!(simple_reply(&mut busy), (0, 1));
    // What comes after is answered NBD_ESHUTDOWN; the client disconnects.
    request(&mut busy, 0, CMD_READ, 2, 0, 4096);
    assert_eq!(simple_reply(&mut busy), (ESHUTDOWN, 2));
    request(&mut busy, 0, CMD_DISC, 3, 0, 0);
    assert_hung_up(&mut busy);
    let mut srv = srv;
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "exit {status}:\n{}", srv.text());
    srv.wait_log("drained, backing store synced", 1);
    assert!(
        !srv.sock.exists(),
        "the unix socket {} outlived a clean exit",
        srv.sock.display()
    );
    let f = std::fs::File::open(&backing).unwrap();
    let mut b = vec![0u8; 1 << 20];
    f.read_exact_at(&mut b, 1 << 20).unwrap();
    assert!(b.iter().all(|&x| x == 0x6b));
}

/// `--size` sizes a new backing file only: an existing one keeps its size,
/// and a `--size` that differs from it is a start-up error (exit 2) naming
/// both sizes, never a disk of another size than asked for.
#[test]
fn a_size_that_disagrees_with_the_existing_backing_file_is_refused() {
    let _serial = serial();
    let dir = fresh_dir("size");
    let _cleanup = Cleanup(dir.clone());
    let backing = dir.join("disk.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(16 << 20))
        .unwrap();
    let sock = dir.join("size.sock");
    let o = Command::new(example_bin())
        .arg("--file")
        .arg(&backing)
        .args(["--size", "32M", "--listen", "none", "--unix"])
        .arg(&sock)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--size 33554432 bytes") && err.contains("already 16777216 bytes"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&backing).unwrap().len(), 16 << 20);
    // The same size, or none, serves the file as it is.
    for extra in [&["--size", "16M"][..], &[]] {
        let srv = ChildServer::start(&dir, &backing, extra);
        let mut c = connect(&srv.sock);
        assert_eq!(go(&mut c).0, 16 << 20, "{extra:?}");
    }
}

/// A mistyped device name is refused, never created as a file in devtmpfs;
/// a character device is refused with what it is; a missing directory names
/// the path once.
#[test]
fn backing_store_paths_that_are_not_files_or_disks_are_refused() {
    let _serial = serial();
    let dev = PathBuf::from(format!("/dev/rs-no-such-disk-{}", std::process::id()));
    let e = open_backing(&dev, 1 << 20, false).expect_err("a missing /dev path");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains("no such device"), "{e}");
    assert!(!dev.exists(), "{} was created", dev.display());

    let e = open_backing(Path::new("/dev/null"), 1 << 20, false).expect_err("a char device");
    assert!(
        e.to_string()
            .contains("not a regular file or a block device"),
        "{e}"
    );

    // --read-only never creates the file it is to serve, and says so.
    let absent = std::env::temp_dir().join(format!("rs-ro-absent-{}.img", std::process::id()));
    let e = open_backing(&absent, 1 << 20, true).expect_err("a missing read-only file");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains("--read-only never creates"), "{e}");
    assert!(!absent.exists(), "{} was created", absent.display());

    let missing = PathBuf::from(format!("/nonexistent-{}/disk.img", std::process::id()));
    let e = open_backing(&missing, 1 << 20, false).expect_err("a missing directory");
    let msg = e.to_string();
    assert_eq!(msg.matches(missing.to_str().unwrap()).count(), 1, "{msg}");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{msg}");
}
