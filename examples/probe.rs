//! Prints what the kernel says about `PR_SET_IO_FLUSHER` here, and this
//! thread's real flags (read from `/proc`) before, inside and after a scope.
//!
//! ```sh
//! cargo run --example probe
//! ```
//!
//! Exit status 0. With `--require` it is 1 when scopes do not take effect
//! (the reason is printed), so a script can use it as a preflight check;
//! 2 for an unknown argument (a mistyped `--require` must not pass).

use reclaim_scope::{
    proc::{threads_of, ThreadFlags},
    support, IoFlusher, NoFsScope,
};
use std::process::ExitCode;

/// Prints what the kernel says about PR_SET_IO_FLUSHER here, and this
/// thread's real flags before, inside and after a scope.
#[derive(clap::Parser)]
#[command(name = "probe")]
struct Args {
    /// Exit with status 1 unless scopes take effect here (a preflight check).
    #[arg(long)]
    require: bool,
}

fn flags() -> String {
    match ThreadFlags::current() {
        Ok(f) => format!("{f} (flags word {:#010x})", f.bits()),
        Err(e) => format!("unreadable: {e}"),
    }
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let support = support();
    println!("kernel:          {kernel}");
    println!("support():       {support}");
    println!("before a scope:  {}", flags());
    let effective = {
        let scope = NoFsScope::enter();
        println!(
            "inside NoFsScope (effective: {}): {}",
            scope.is_effective(),
            flags()
        );
        {
            let _nested = IoFlusher::enter();
            println!("nested IoFlusher: {}", flags());
        }
        scope.is_effective()
    };
    println!("after the scope: {}", flags());
    if let Ok(threads) = threads_of(std::process::id() as i32) {
        for t in threads {
            println!("thread {} {:?}: {}", t.tid, t.name, t.flags);
        }
    }
    if effective {
        println!("result: scopes take effect here");
        return ExitCode::SUCCESS;
    }
    if let Some(e) = support.error() {
        println!("result: scopes are no-ops here: {e}");
    }
    if args.require {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
