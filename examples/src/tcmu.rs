//! The SCSI disk of `examples/tcmu_file`: the target_core_user command ring
//! ([`ring`]), the command loop ([`handler`]), CDB decoding and sense data
//! ([`scsi`]), the data-in pages ([`pages`]), the disk's I/O over its
//! backing store ([`disk`]) and the ZBC zone model ([`zbc`]).

pub mod disk;
pub mod handler;
pub mod pages;
// The one module of the examples allowed `unsafe` (every block has a `// SAFETY:` comment).
#[allow(unsafe_code)]
pub mod ring;
pub mod scsi;
pub mod zbc;
