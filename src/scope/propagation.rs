//! Hooks for propagation (`crate::context`, `crate::thread`): the thread's
//! state as the crate tracks it.

use super::*;

/// What the guards alive on the calling thread ask for: `Some(on)` while
/// at least one guard lives, `None` when none does.
#[inline]
pub(crate) fn desired() -> Option<bool> {
    STATE
        .try_with(|st| {
            let w = st.get();
            (w.depth() > 0).then_some(w.0 & DESIRED != 0)
        })
        .ok()
        .flatten()
}

/// The calling thread's kernel flag (probed once per thread).
pub(crate) fn kernel_flag() -> bool {
    STATE
        .try_with(|st| {
            if st.get().kernel() & KNOWN == 0 {
                probe(st);
            }
            st.get().0 & KERNEL_ON != 0
        })
        .unwrap_or(false)
}

/// Records the flag a new thread inherited from its creator, whose flag
/// the crate knew at `clone()`: saves the new thread's `/proc` probe.
pub(crate) fn inherited(on: bool) {
    let _ = STATE.try_with(|st| {
        if st.get().kernel() & KNOWN == 0 {
            st.set(st.get().with_kernel(on));
        }
    });
}
