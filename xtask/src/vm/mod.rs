//! The kernel-truth VM: host tools, Debian's cloud kernel, an initramfs with
//! busybox and our binaries, and a QEMU/TCG boot with a hard timeout.
//!
//! `vm-test` and `vm-run` differ only in the payload that /init runs; both use
//! [`Stage`] to build the initramfs and [`boot()`] to run it.
//!
//! One module per step, each re-exported here (so `vm::boot`, `vm::Stage`,
//! ... keep their paths): `host` (host tools), `kernel` (Debian's cloud
//! kernel), `artifacts` (the crate binaries), `initramfs`, `boot` (QEMU), and
//! `commands` (`vm-test`, `vm-run`); options and the workspace are here.

use crate::util::{
    bail, capture, capture_stdout, dpkg_installed, run, sh_quote, which, Context, Phases, Result,
};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod artifacts;
mod boot;
mod commands;
mod host;
mod initramfs;
mod kernel;
#[cfg(test)]
mod tests;

// Each section's items, reachable as `vm::…` (vm_bench.rs, main.rs).
pub use self::artifacts::*;
pub use self::boot::*;
pub use self::commands::*;
pub use self::host::*;
pub use self::initramfs::*;
pub use self::kernel::*;

/// Options shared by `vm-test`, `vm-run` and `test`.
#[derive(Debug, Clone)]
pub struct VmOpts {
    /// Kernel modules to make available in the guest (loaded by the payload,
    /// because module parameters such as `brd rd_size=` only apply on first load).
    pub modules: Vec<String>,
    /// Modules added only if the kernel has them (`ublk_drv`: not in the 6.1
    /// and 5.10 cloud kernels; the tests that need one say not applicable).
    pub optional_modules: Vec<String>,
    /// Host executables copied (with their libraries) into /opt/bin.
    pub host_bins: Vec<String>,
    /// Host executables copied only if they exist (defaults of `vm-test`).
    pub optional_host_bins: Vec<String>,
    /// Extra Debian packages to install on the host if missing.
    pub apt: Vec<String>,
    /// Extra files or directories: (host path, guest path).
    pub files: Vec<(PathBuf, String)>,
    pub mem: String,
    pub smp: u32,
    pub timeout: Duration,
    /// Per test binary, inside the guest (`vm-test` only).
    pub test_timeout: Duration,
    /// Allow `apt-get` to install what is missing.
    pub install: bool,
    /// Re-resolve the kernel package even if one is cached.
    pub refresh_kernel: bool,
    /// Keep debug info in our binaries (bigger initramfs, better backtraces).
    pub keep_debug: bool,
    /// Appended to the kernel command line.
    pub cmdline: String,
    /// Multi-threaded TCG (one host thread per vCPU) instead of one host
    /// thread taking turns between the vCPUs.
    pub mttcg: bool,
    /// `vm-test`: boot a fresh VM once more for the test binaries that never
    /// finished because the guest itself died (kernel panic, soft lockup,
    /// VM timeout). A binary that finished with a failure is never retried.
    pub retries: u32,
    /// Kernel series to boot: `5.10`, `6.1` or `6.12` (see [`KERNELS`]).
    pub kernel: String,
}

impl Default for VmOpts {
    fn default() -> Self {
        VmOpts {
            modules: Vec::new(),
            optional_modules: Vec::new(),
            host_bins: Vec::new(),
            optional_host_bins: Vec::new(),
            apt: Vec::new(),
            files: Vec::new(),
            mem: "512M".into(),
            smp: 2,
            // One kernel's suite takes 7 to 9.5 min under TCG (6.12 the
            // longest, 554 s at its slowest): 15 min leaves half again as
            // headroom. Only a hung or dying guest ever waits this long.
            timeout: Duration::from_secs(15 * 60),
            // The longest binary, vm_throttle (three daemons × three modes
            // of dd + sync under dirty throttling), took 207 to 239 s on
            // 6.1: 240 s killed it once. 8 min is twice its slowest run.
            test_timeout: Duration::from_secs(8 * 60),
            install: true,
            refresh_kernel: false,
            keep_debug: false,
            cmdline: String::new(),
            mttcg: false,
            retries: 1,
            kernel: DEFAULT_KERNEL.to_owned(),
        }
    }
}

/// Where the workspace and its target directory are.
pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
    pub cargo: String,
}

impl Workspace {
    pub fn locate() -> Result<Workspace> {
        // xtask/ lives directly under the workspace root.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("xtask manifest dir has no parent")?
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let meta = capture_stdout(
            Command::new(&cargo)
                .args(["metadata", "--format-version", "1", "--no-deps"])
                .current_dir(&root),
        )?;
        let meta: Json = serde_json::from_str(&meta).ctx(|| "cannot parse `cargo metadata`")?;
        let target = meta["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        Ok(Workspace {
            root,
            target,
            cargo,
        })
    }

    pub(super) fn vm_dir(&self) -> PathBuf {
        self.target.join("vm")
    }

    pub(super) fn cargo(&self) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(&self.root);
        c
    }
}
