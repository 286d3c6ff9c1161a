//! `reclaim-scope watch`: what the kernel does to a live daemon's threads,
//! from tracefs, read-only.
//!
//! The pure part — a trace line into an event, events into per-thread
//! counts, the counts into a table or JSON — is driven by the unit tests
//! below from recorded trace lines. The tracefs part uses an instance of
//! its own (`<tracefs>/instances/reclaim-scope-watch-<our pid>`), never the
//! global buffer, with `set_event_pid` plus `options/event-fork` so that
//! threads the daemon creates while watched are followed by the kernel
//! from their first event; the instance is removed on every way out that
//! can run code (end of the duration, all pids gone, SIGINT, SIGTERM,
//! SIGHUP, an error).

mod parse;
mod tally;
#[cfg(test)]
pub(crate) mod tests;
mod tracefs;

pub use parse::*;
pub use tally::*;
pub use tracefs::*;

use super::{emit, EXIT_FAILURE, EXIT_NO_TRACEFS, EXIT_OK, EXIT_WATCH_FAILED, EXIT_WATCH_LOST};
use std::io;

/// Runs `reclaim-scope watch`: returns the exit status.
pub(super) fn watch_cmd(
    pids: Vec<i32>,
    duration: Option<u64>,
    json: bool,
    buffer_kb: Option<u64>,
) -> u8 {
    use std::io::IsTerminal as _;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            say!("reclaim-scope: cannot handle signal {sig}: {e}");
            return EXIT_WATCH_FAILED;
        }
    }
    let opts = Options {
        pids,
        duration: duration.map(std::time::Duration::from_secs),
        progress: !json && io::stderr().is_terminal(),
        buffer_kb,
    };
    let outcome = match watch(&opts, &stop) {
        Ok(o) => o,
        Err(Failure::Tracefs(m)) => {
            say!("reclaim-scope: {m}");
            return EXIT_NO_TRACEFS;
        }
        Err(Failure::Pid(m) | Failure::Other(m)) => {
            say!("reclaim-scope: {m}");
            return EXIT_WATCH_FAILED;
        }
    };
    for p in &outcome.notes.exited_pids {
        say!("reclaim-scope: pid {p} exited while watched");
    }
    if outcome.tally.lost > 0 {
        say!(
            "reclaim-scope: {} trace events were lost: the counts are a lower bound",
            outcome.tally.lost
        );
    }
    let out = if json {
        tally::json(&outcome.tally, &outcome.notes)
    } else {
        table(&outcome.tally, &outcome.notes)
    };
    // Status 1 means "unsafe seen" here: a write error is a failure of its own.
    if emit(&out).is_err() {
        return EXIT_WATCH_FAILED;
    }
    if outcome.tally.unsafe_seen() {
        EXIT_FAILURE
    } else if outcome.tally.lost > 0 {
        say!(
            "reclaim-scope: nothing unsafe seen, but with {} events lost that proves nothing \
             (status {EXIT_WATCH_LOST}); rerun with a larger --buffer-kb",
            outcome.tally.lost
        );
        EXIT_WATCH_LOST
    } else {
        EXIT_OK
    }
}
