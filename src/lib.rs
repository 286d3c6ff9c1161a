//! Scoped `PR_SET_IO_FLUSHER` for Linux user-space storage daemons.
//!
//! # The problem
//!
//! A user-space storage daemon — an NBD, ublk, FUSE, TCMU or iSCSI server —
//! serves a device on which a file system is stacked. When the daemon
//! allocates memory, most often page cache for its own `pwrite()` into a
//! backing file, the kernel may enter direct reclaim; reclaim may write back
//! the upper file system, whose I/O goes to the device the daemon serves.
//! The daemon waits on itself and the machine deadlocks. In 2019 this was
//! shown on linux-ext4 with tcmu-runner writing into an ext4 backing file
//! under XFS; Linux 5.6 answered with `prctl(PR_SET_IO_FLUSHER)`, a
//! per-thread flag that makes every allocation of the thread `GFP_NOIO`
//! (so also `GFP_NOFS`) and exempts it from dirty throttling on its own
//! device. It is easy to misuse, and real projects shipped it broken for
//! years because nothing checked its effect.
//!
//! This crate makes that lever scoped, nested, cheap, honest about failure,
//! and observable:
//!
//! ```
//! use reclaim_scope::NoFsScope;
//!
//! let scope = NoFsScope::enter(); // an I/O flusher, if the kernel agreed...
//! let page_cache_hungry = vec![0u8; 1 << 16];
//! if scope.is_effective() {
//!     // ...and it did: that allocation could not recurse into FS/IO reclaim
//! } else {
//!     // no CAP_SYS_RESOURCE (or Linux < 5.6): nothing changed, and the
//!     // refusal was reported once; `NoFsScope::try_enter` fails instead
//! }
//! drop(scope); // the thread is back as it was
//! # drop(page_cache_hungry);
//! ```
//!
//! - [`NoFsScope`] guards a code region; [`IoFlusher`] marks a worker's role
//!   for a whole loop; [`AllowFsReclaim`] clears the flag for a region of a
//!   flagged thread. All nest, restore exactly what they changed, and make a
//!   syscall only when they change the state.
//! - [`try_enter`](NoFsScope::try_enter) fails with an [`Error`] that names
//!   the fix; [`enter`](NoFsScope::enter) never fails, its guard says
//!   whether it [is effective](NoFsScope::is_effective), and the first
//!   failure is reported once per process ([`degradation`]).
//! - [`support`] asks the kernel without side effects; [`ThreadFlags`](proc::ThreadFlags) and
//!   [`threads_of`](proc::threads_of) read the kernel's real state of any thread from `/proc`.
//! - [`NoFsFile`] runs the daemon's own file I/O — the `pwrite()` of the
//!   deadlock — inside the scope: `pread_nofs`, `write_all_at_nofs`,
//!   vectored calls with typed [`RwFlags`], sync and `fallocate` forms.
//! - The context travels explicitly: [`thread::spawn`] and
//!   [`thread::Builder`] start threads in the spawner's context, an
//!   [`AllocContext`] carries it to pools you did not spawn,
//!   [`future::NoFsFutureExt`] enters it on every poll, and the `tokio`
//!   feature gives every runtime thread a policy. [`Audit::current`](audit::Audit::current) finds the
//!   threads whose kernel flag disagrees with the guards.
//!
//! # The two bits
//!
//! `PR_SET_IO_FLUSHER` sets two bits of the thread's `task_struct::flags`,
//! and a daemon needs both:
//!
//! - `PF_MEMALLOC_NOIO` (0x0008_0000): every allocation of the thread is
//!   `GFP_NOIO`, so reclaim it enters never writes back file systems or
//!   issues block I/O — which could be I/O to the device the daemon serves
//!   (the 2019 reclaim deadlock).
//! - `PF_LOCAL_THROTTLE` (0x0010_0000, Linux 5.8): `balance_dirty_pages()`
//!   measures the thread against the dirty pages of the device it writes
//!   to, not the system's. Without it a daemon that writes into a backing
//!   file is paused, up to 200 ms a call and again and again, for dirty
//!   pages of the device it serves, which only it can clean: a throughput
//!   collapse, or a hang. In the VM suite (`tests/vm_throttle.rs`, Debian
//!   6.1, six runs) the example NBD server without the flag spends 32–54 s
//!   of a 60 s run asleep in `balance_dirty_pages` (280–600 pauses), and
//!   its client's `dd` + `sync` takes 51 s or more; with [`IoFlusher`] it
//!   is never throttled and the same workload takes 9–20 s.
//!
//! [`NoFsScope`] and [`NoFsFile`] set both bits for the duration of a
//! call: the `pwrite` that dirties page cache is covered, including its
//! throttling. Between calls only a whole-thread guard ([`IoFlusher`], or
//! `reclaim-scope exec`) covers the thread. [`ThreadFlags`](proc::ThreadFlags) reads both
//! bits of any thread; `reclaim-scope watch` shows, live, whether a
//! daemon's threads enter FS/IO-capable reclaim or dirty-throttle pauses.
//!
//! # The capability
//!
//! Both `PR_SET_IO_FLUSHER` and `PR_GET_IO_FLUSHER` need `CAP_SYS_RESOURCE`
//! in the **initial** user namespace: a root process in a container without
//! `--cap-add SYS_RESOURCE`, or a systemd service without
//! `AmbientCapabilities=CAP_SYS_RESOURCE`, gets `EPERM`. Kernels before 5.6
//! answer `EINVAL`; `PF_LOCAL_THROTTLE` exists from 5.8. Reading the flags
//! from `/proc` needs nothing.
//!
//! # Inheritance
//!
//! The one place this crate explains how the flag travels; the rest of the
//! documentation links here. In short: **`clone()` inherits it, `execve()`
//! keeps it**, and nothing else moves it between threads.
//!
//! - The flag belongs to **one thread**. Setting it in `main()` does not
//!   protect worker threads that already exist; a thread pool or an async
//!   runtime created before runs unprotected.
//! - `clone()` **inherits** it: a thread (or process) spawned while a scope
//!   is active is flagged for its whole life, even after the scope ends.
//!   Spawn helpers inside [`AllowFsReclaim`], and audit with
//!   [`threads_of`](proc::threads_of).
//! - `execve()` **keeps** it: a launcher can flag an unmodified daemon (the
//!   `reclaim-scope exec` idea), and a flagged daemon's hook scripts run
//!   flagged too.
//! - io_uring's kernel threads copy the flags of the thread that creates
//!   them, when it creates them, and keep them: io-wq workers
//!   (`iou-wrk-<tid>`) come from the submitting thread, and the last idle
//!   one never exits; the SQPOLL thread (`iou-sqp-<tid>`) comes from the
//!   thread that calls `io_uring_setup()`. Make a submitting thread an
//!   [`IoFlusher`] before its first submission and keep it one while it
//!   submits (see the README's io_uring section; checked in the VM).
//! - A guard that is not effective protects nothing: check it, use the
//!   strict form, or watch [`degradation`].

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]

pub mod audit;
mod context;
mod error;
mod fs;
pub mod future;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod launch;
pub mod proc;
mod report;
mod scope;
pub mod thread;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;
// The only module allowed `unsafe`: every block carries a `// SAFETY:` comment.
#[allow(unsafe_code)]
mod sys;

pub use context::{AllocContext, AllocContextGuard};
pub use error::{Error, ErrorKind};
pub use fs::{NoFsFile, NoFsIoError, NoFsPolicy, RwFlags};
pub use report::{degradation, set_degradation_hook, HookAlreadySet};
#[cfg(feature = "unstable-bench")]
#[doc(hidden)]
pub use scope::__bench;
pub use scope::{
    refresh_thread_state, set_thread_io_flusher, support, thread_io_flusher, AllowFsReclaim,
    IoFlusher, NoFsScope, Support,
};

// The README's Rust examples are compiled (and the runnable one run) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
