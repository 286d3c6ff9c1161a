//! `reclaim-scope watch` on bad input, run as a user would run it: a clear
//! message and a documented exit status, never a panic. What it counts on
//! a live daemon is proven in the VM (`tests/vm_throttle.rs`); its parser
//! and summary are unit-tested on recorded trace lines
//! (`src/bin/reclaim-scope/watch/`).
#![cfg(feature = "cli")]

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_reclaim-scope");
/// No pid is this large (`pid_max` is at most 2^22).
const NO_SUCH_PID: &str = "2000000000";

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .expect("run reclaim-scope")
}

fn stderr(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!e.contains("panicked"), "reclaim-scope panicked: {e}");
    e
}

#[test]
fn a_pid_that_does_not_exist_is_named_and_exits_4() {
    let o = run(Command::new(BIN).args(["watch", NO_SUCH_PID, "--duration", "1"]));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{e}");
    assert!(
        e.contains(&format!("pid {NO_SUCH_PID} does not exist")),
        "{e}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["watch"][..],
        &["watch", "0"],
        &["watch", "-5"],
        &["watch", "1", "--duration", "0"],
        &["watch", "1", "--duration", "x"],
        &["watch", "1", "--buffer-kb", "0"],
        &["watch", "1", "--buffer-kb", "1048577"],
    ] {
        let o = run(Command::new(BIN).args(args));
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
    }
}

/// Where tracefs is missing (this host: no tracefs mounted) the message
/// names the mount command; where it is mounted but not ours to use (an
/// unprivileged user) it says to run as root; as root with tracefs it
/// watches and ends when the pid exits.
#[test]
fn tracefs_missing_or_not_permitted_is_status_3_with_the_fix() {
    let mut child = Command::new("sleep").arg("2").spawn().expect("start sleep");
    let pid = child.id().to_string();
    let mounted = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("tracefs"));
    let o = run(Command::new(BIN).args(["watch", &pid, "--duration", "5", "--json"]));
    let e = stderr(&o);
    if !mounted {
        assert_eq!(o.status.code(), Some(3), "{e}");
        assert!(
            e.contains("mount -t tracefs nodev /sys/kernel/tracing"),
            "{e}"
        );
    } else if Path::new("/sys/kernel/tracing/instances").exists() && o.status.code() == Some(0) {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON summary");
        assert_eq!(v["unsafe"], false, "{v}");
    } else {
        assert_eq!(o.status.code(), Some(3), "{e}");
        assert!(e.contains("as root"), "{e}");
    }
    let _ = child.wait();

    // Unprivileged (nobody): never a panic, status 3 either way. A fresh
    // clone may live under a directory nobody cannot traverse (mktemp -d is
    // 0700), so run a copy of the binary from a world-readable directory.
    let dir = std::env::temp_dir().join(format!("rs-cli-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("reclaim-scope");
    std::fs::copy(BIN, &bin).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run(Command::new(&bin)
        .args(["watch", &std::process::id().to_string(), "--duration", "1"])
        .uid(65534)
        .gid(65534));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{e}");
    assert!(
        e.contains("as root") || e.contains("mount -t tracefs"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
