//! A whole NBD session from bytes: the client's side of the handshake and
//! of transmission is the fuzzer's input, the server's replies go to a
//! sink, the export is a 1 MiB file. No input may panic, hang, or make the
//! server hold more memory than its buffers, one option (64 KiB) and one
//! payload (at most the export's size) at once.

#![no_main]

use cap::Cap;
use libfuzzer_sys::fuzz_target;
use reclaim_scope_examples::daemon;
use reclaim_scope_examples::nbd as server;
use server::{Export, Guarding, MAX_OPTION};
use std::alloc::System;
use std::sync::OnceLock;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

const EXPORT_SIZE: u64 = 1 << 20;
/// The receive and send buffers (256 KiB each), one option, one payload,
/// and 64 KiB for replies, extents and messages.
const LIMIT: usize = 2 * (256 << 10) + MAX_OPTION as usize + EXPORT_SIZE as usize + (64 << 10);

fn export() -> &'static Export {
    static EXPORT: OnceLock<Export> = OnceLock::new();
    EXPORT.get_or_init(|| {
        // No capability here, and no need to say so per input.
        let _ = reclaim_scope::set_degradation_hook(|_| {});
        let path = std::env::temp_dir().join(format!("nbd-fuzz-{}.img", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let opts = daemon::BackingOpts {
            size: None,
            default_size: EXPORT_SIZE,
            read_only: false,
        };
        let b = daemon::open_backing(&path, opts, |_| Ok(())).unwrap();
        let (file, size) = (b.file, b.size);
        let _ = std::fs::remove_file(&path); // the open file stays
        let mut e = Export::new("disk".into(), file, size, false, Guarding::None);
        e.log = false;
        e
    })
}

fuzz_target!(|data: &[u8]| {
    let export = export();
    ALLOC.set_limit(ALLOC.allocated() + LIMIT).unwrap();
    let _ = server::serve(export, data, std::io::sink(), "fuzz");
    ALLOC.set_limit(usize::MAX).unwrap();
});
