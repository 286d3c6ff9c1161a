//! Assertions on the calling thread's flag and on traced allocations' gfp
//! masks.

use super::*;

/// The `PR_SET_IO_FLUSHER`/`PR_GET_IO_FLUSHER` calls among traced
/// `sys_enter_prctl` events, as `(option, arg2)`.
pub fn io_flusher_prctls(events: &[TraceEvent]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(TraceEvent::prctl_args)
        .filter(|(o, _)| *o == PR_SET_IO_FLUSHER as u64 || *o == PR_GET_IO_FLUSHER as u64)
        .collect()
}

/// Whether `/proc` shows the calling thread with both I/O-flusher bits.
pub fn thread_is_flagged() -> bool {
    thread_flags() & IO_FLUSHER_BITS == IO_FLUSHER_BITS
}

/// `/proc` shows the calling thread with NOIO|LOCAL_THROTTLE.
#[track_caller]
pub fn assert_thread_flagged(what: &str) {
    let f = thread_flags();
    assert_eq!(
        f & IO_FLUSHER_BITS,
        IO_FLUSHER_BITS,
        "{what}: expected NOIO|LOCAL_THROTTLE, /proc says {}",
        describe_flags(f)
    );
}

/// `/proc` shows the calling thread with neither I/O-flusher bit.
#[track_caller]
pub fn assert_thread_clear(what: &str) {
    let f = thread_flags();
    assert_eq!(
        f & IO_FLUSHER_BITS,
        0,
        "{what}: expected a clear thread, /proc says {}",
        describe_flags(f)
    );
}

/// At least `min` page allocations, every one without `__GFP_FS` and
/// `__GFP_IO`.
#[track_caller]
pub fn assert_all_noio(what: &str, ev: &[TraceEvent], min: usize) {
    assert!(
        ev.len() >= min,
        "{what}: expected at least {min} page allocations, saw {}",
        summarize_gfp(ev)
    );
    if !page_alloc_trace_is_scoped() {
        not_applicable(&format!("{what}: {UNSCOPED_PAGE_ALLOC_TRACE}"));
        return;
    }
    let bad: Vec<&str> = ev
        .iter()
        .filter(|e| !e.gfp_class().is_noio())
        .map(|e| e.line.as_str())
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: allocations with __GFP_FS or __GFP_IO: {bad:#?}"
    );
}

/// Why `kmem:mm_page_alloc` cannot prove a scope before 5.12.
pub const UNSCOPED_PAGE_ALLOC_TRACE: &str =
    "kmem:mm_page_alloc shows the caller's gfp mask, not the task's NOIO/NOFS scope, on this \
     kernel (before 5.12 the scope is applied only on the allocator's slow path, where reclaim \
     happens: measured on 5.10, GFP_HIGHUSER_MOVABLE|__GFP_WRITE inside IoFlusher)";

/// Whether `kmem:mm_page_alloc`'s `gfp_flags` include the task's
/// `memalloc_noio`/`nofs` scope. Since 5.12 ("mm: apply per-task gfp
/// constraints in fast path") `__alloc_pages` applies `current_gfp_context`
/// before the fast path; 5.10 applies it only before the slow path (direct
/// reclaim, whose tracepoints do show it), so a fast-path allocation is
/// traced with the caller's mask.
pub fn page_alloc_trace_is_scoped() -> bool {
    kernel_version() >= (5, 12)
}

/// At least `min` page allocations with both `__GFP_FS` and `__GFP_IO`:
/// what the crate protects against.
#[track_caller]
pub fn assert_fs_io(what: &str, ev: &[TraceEvent], min: usize) {
    let n = ev
        .iter()
        .filter(|e| {
            let c = e.gfp_class();
            c.fs && c.io
        })
        .count();
    assert!(
        n >= min,
        "{what}: expected {min} page allocations with __GFP_FS|__GFP_IO, saw {}",
        summarize_gfp(ev)
    );
}
