//! The TCMU rig shared by the VM tests that serve a disk with
//! examples/tcmu_file (`vm_tcmu`, `vm_throttle`): modules and configfs, the
//! daemon started and waited for until its /dev/sdX appears, and a teardown
//! that stops it with SIGTERM (it removes its own configfs objects) and
//! cleans up by hand only if that fails.

use super::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CONFIGFS: &str = "/sys/kernel/config";
pub const TARGET: &str = "/sys/kernel/config/target";
/// The daemon's command-ring thread.
pub const HANDLER: &str = "tcmu-handler";

/// Modules, configfs and the memory controller for the daemons' cgroups.
pub fn setup() {
    load_brd();
    for m in ["target_core_user", "tcm_loop", "sd_mod", "xfs", "loop"] {
        must(30, "modprobe", &[m]);
    }
    if !Path::new(TARGET).is_dir() {
        must(10, "mount", &["-t", "configfs", "none", CONFIGFS]);
    }
    assert!(
        Path::new(TARGET).is_dir(),
        "{TARGET} missing after modprobe + mount"
    );
    let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
}

/// Our configfs objects still present: backstores under core/user_0 and
/// tcm_loop targets.
pub fn configfs_leftovers() -> Vec<String> {
    let mut v = Vec::new();
    for d in ["core/user_0", "loopback"] {
        let p = Path::new(TARGET).join(d);
        for e in fs::read_dir(&p).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("naa.") || (d == "core/user_0" && e.path().is_dir()) {
                v.push(format!("{d}/{n}"));
            }
        }
    }
    v
}

/// Best effort, only after the daemon failed to tear down itself.
pub fn force_configfs_cleanup() {
    let lb = Path::new(TARGET).join("loopback");
    for e in fs::read_dir(&lb).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with("naa.") {
            continue;
        }
        let tpg = e.path().join("tpgt_1");
        let lun = tpg.join("lun/lun_0");
        for l in fs::read_dir(&lun).into_iter().flatten().flatten() {
            if l.path().is_symlink() {
                let _ = fs::remove_file(l.path());
            }
        }
        let _ = fs::remove_dir(&lun);
        let _ = fs::remove_dir(&tpg);
        let _ = fs::remove_dir(e.path());
    }
    let hba = Path::new(TARGET).join("core/user_0");
    for e in fs::read_dir(&hba).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            let _ = fs::remove_dir(e.path());
        }
    }
    let _ = fs::remove_dir(&hba);
}

/// The daemon and its cgroup, torn down on drop (also on panic).
pub struct Rig {
    daemon: Option<Child>,
    cgroup: Option<String>,
    log: String,
    /// Where the test mounts the disk: unmounted first on drop.
    upper: String,
}

impl Rig {
    /// Start `tcmu_file` (in `cgroup` if given) and wait for its disk;
    /// the rig unmounts `upper` before it stops the daemon.
    pub fn start(
        upper: &str,
        backing: &str,
        cgroup: Option<String>,
        flags: &[&str],
        log: &str,
    ) -> (Rig, String) {
        let join = cgroup
            .as_ref()
            .map(|c| format!("echo $$ > {c}/cgroup.procs && "))
            .unwrap_or_default();
        let cmd = format!("{join}exec tcmu_file --file {backing} {}", flags.join(" "));
        let child = Command::new("sh")
            .args(["-c", &cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .expect("start tcmu_file");
        let mut rig = Rig {
            daemon: Some(child),
            cgroup,
            log: log.to_owned(),
            upper: upper.to_owned(),
        };
        let mut dev = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = rig.log();
            if let Some(i) = text.find(" as /dev/") {
                dev = text[i + 4..].lines().next().unwrap_or("").trim().to_owned();
            }
            let exited = rig
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten();
            if !dev.is_empty() {
                break;
            }
            assert!(
                exited.is_none() && !text.contains("no /dev/sd") && Instant::now() < deadline,
                "tcmu_file without a disk ({exited:?}): {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (rig, dev)
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon").id()
    }

    /// SIGKILL: the daemon dies without tearing anything down.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait for a clean exit; the daemon's log.
    pub fn stop(&mut self) -> Result<String, String> {
        let Some(mut child) = self.daemon.take() else {
            return Ok(self.log());
        };
        let _ = run_for(5, "kill", &["-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let st = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => break None,
            }
        };
        let log = self.log();
        match st {
            Some(st) if st.success() => Ok(log),
            Some(st) => {
                force_configfs_cleanup();
                Err(format!("tcmu_file exited with {st}: {log}"))
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                force_configfs_cleanup();
                Err(format!(
                    "tcmu_file did not stop within 60 s of SIGTERM: {log}"
                ))
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if is_mounted(&self.upper) {
            let _ = run_for(30, "umount", &[&self.upper]);
        }
        if self.daemon.is_some() {
            let _ = self.stop();
        }
        if is_mounted(&self.upper) {
            let _ = run_for(10, "umount", &["-l", &self.upper]);
        }
        if let Some(cg) = &self.cgroup {
            for _ in 0..50 {
                if fs::remove_dir(cg).is_ok() || !Path::new(cg).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
