//! Shared support for the kernel-truth tests (`tests/vm_*.rs`).
//!
//! These helpers read the kernel's own view — `/proc/thread-self/stat` flags
//! and tracefs gfp masks — never the crate's bookkeeping. Integration tests
//! include it with `mod common;`. Plain safe Rust: std only.
//!
//! The string parsers (stat flags, trace lines, gfp classification) are
//! unit-tested on the host by every `cargo test` (in `tests/vm_harness.rs`); the rest needs the VM
//! (`cargo xtask vm-test`), where PID 1 has CAP_SYS_RESOURCE and tracefs is
//! mounted.
//!
//! `raw_set_io_flusher`/`raw_get_io_flusher` are the tests' only `unsafe`:
//! the harness must be able to flip the flag without the crate, to prove
//! itself and to change the flag behind the crate's back.

// Each test file uses a different subset.
#![allow(dead_code)]

pub mod scratch;
pub mod seed;
pub mod tcmu;

mod blockfs;
mod flags;
mod gfp;
mod kernel;
mod process;
#[allow(unsafe_code)]
mod raw;
mod tracefs;

// Each test file uses a different subset.
#[allow(unused_imports)]
pub use blockfs::*;
#[allow(unused_imports)]
pub use flags::*;
#[allow(unused_imports)]
pub use gfp::*;
#[allow(unused_imports)]
pub use kernel::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use tracefs::*;
