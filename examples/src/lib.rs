//! The example daemons of `reclaim-scope` as a library: the modules the
//! daemon binaries (`examples/*/main.rs`), their tests (`examples/tests/`),
//! `examples/ublk_file` and `fuzz/` share. Not published; the API is the
//! examples' own and changes with them.
//!
//! - [`daemon`]: what every daemon does the same way: the `--strict` /
//!   `--no-flusher` / `--unprotected` switches, entering the `IoFlusher`,
//!   the plain-I/O baseline, opening or creating the backing store, the
//!   exit statuses.
//! - [`nbd`]: the NBD server (`examples/nbd_server`), its wire format in
//!   [`nbd::proto`].
//! - [`fuse`]: the FUSE passthrough file system (`examples/fuse_passthrough`).
//! - [`tcmu`]: the SCSI disk behind target_core_user (`examples/tcmu_file`).
//! - [`testkit`]: helpers for the package's tests.

pub mod daemon;
pub mod fuse;
pub mod nbd;
pub mod tcmu;
pub mod testkit;
