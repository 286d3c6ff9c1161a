//! Initramfs: busybox, our binaries, their libraries, the modules, /init.

use super::*;

/// A directory tree that becomes the initramfs. Merged-/usr layout like the
/// host, so library paths printed by `ldd` are valid in the guest as-is.
pub struct Stage {
    root: PathBuf,
    done: BTreeSet<PathBuf>,
}

impl Stage {
    pub fn new(dir: PathBuf) -> Result<Stage> {
        if dir.exists() {
            fs::remove_dir_all(&dir).ctx(|| format!("cannot clear {}", dir.display()))?;
        }
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib64",
            "opt/bin",
            "opt/tests",
            "proc",
            "sys",
            "dev",
            "tmp",
            "mnt",
            "root",
            "run",
            "var/lock",
            "etc",
        ] {
            fs::create_dir_all(dir.join(d)).ctx(|| format!("cannot create {d} in stage"))?;
        }
        for (link, to) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            symlink(to, dir.join(link)).ctx(|| format!("cannot link /{link}"))?;
        }
        fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
            .ctx(|| "etc/passwd")?;
        fs::write(dir.join("etc/group"), "root:x:0:\n").ctx(|| "etc/group")?;
        Ok(Stage {
            root: dir,
            done: BTreeSet::new(),
        })
    }

    /// Host path inside the stage for an absolute guest path.
    fn at(&self, guest: &str) -> PathBuf {
        self.root.join(guest.trim_start_matches('/'))
    }

    fn write(&mut self, guest: &str, data: &[u8], mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.at(guest);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).ctx(|| format!("cannot create {}", d.display()))?;
        }
        fs::write(&p, data).ctx(|| format!("cannot write {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).ctx(|| "chmod")?;
        Ok(())
    }

    pub fn add_busybox(&mut self) -> Result<()> {
        let bb = which("busybox").ok_or("busybox not found (package busybox-static)")?;
        let out = capture(Command::new("ldd").arg(&bb));
        if out.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains("not a dynamic")) {
            println!(
                "xtask: warning: {} is dynamically linked; copying its libraries",
                bb.display()
            );
        }
        self.add_exe(&bb, "/usr/bin/busybox", false)?;
        let list = capture_stdout(Command::new(&bb).arg("--list-full"))?;
        for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            // bin/x, sbin/x, usr/bin/x, usr/sbin/x → merged /usr.
            let rel = applet.strip_prefix("usr/").unwrap_or(applet);
            let dst = self.at(&format!("/usr/{rel}"));
            if !dst.exists() {
                let target = if rel.starts_with("bin/") {
                    "busybox"
                } else {
                    "../bin/busybox"
                };
                symlink(target, &dst).ctx(|| format!("cannot link applet {applet}"))?;
            }
        }
        Ok(())
    }

    /// Copy an executable and the shared libraries `ldd` names for it.
    pub fn add_exe(&mut self, src: &Path, guest: &str, strip_debug: bool) -> Result<()> {
        let dst = self.at(guest);
        if let Some(d) = dst.parent() {
            fs::create_dir_all(d).ctx(|| format!("cannot create {}", d.display()))?;
        }
        let stripped = strip_debug
            && which("strip").is_some()
            && Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&dst)
                .arg(src)
                .status()
                .is_ok_and(|s| s.success());
        if !stripped {
            fs::copy(src, &dst).ctx(|| format!("cannot copy {}", src.display()))?;
        }
        self.add_libs(src)
    }

    fn add_libs(&mut self, exe: &Path) -> Result<()> {
        let out = Command::new("ldd")
            .arg(exe)
            .stdin(Stdio::null())
            .output()
            .ctx(|| "cannot run ldd")?;
        // ldd exits non-zero for static executables ("not a dynamic executable").
        for lib in parse_ldd(&String::from_utf8_lossy(&out.stdout)) {
            if self.done.insert(lib.clone()) {
                let dst = self.at(&lib.to_string_lossy());
                if let Some(d) = dst.parent() {
                    fs::create_dir_all(d).ctx(|| format!("cannot create {}", d.display()))?;
                }
                // fs::copy follows symlinks: the guest gets the real file under
                // the name the dynamic loader asks for.
                fs::copy(&lib, &dst).ctx(|| format!("cannot copy library {}", lib.display()))?;
            }
        }
        Ok(())
    }

    pub fn add_path(&mut self, src: &Path, guest: &str) -> Result<()> {
        if src.is_dir() {
            for e in fs::read_dir(src).ctx(|| format!("cannot list {}", src.display()))? {
                let e = e.ctx(|| "readdir")?;
                let name = e.file_name().to_string_lossy().into_owned();
                self.add_path(
                    &e.path(),
                    &format!("{}/{name}", guest.trim_end_matches('/')),
                )?;
            }
            Ok(())
        } else {
            use std::os::unix::fs::PermissionsExt;
            let data = fs::read(src).ctx(|| format!("cannot read {}", src.display()))?;
            let mode = fs::metadata(src)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o644);
            self.write(guest, &data, mode)
        }
    }

    /// Copy the requested modules and everything they depend on; write a
    /// modules.dep that lists exactly those.
    pub fn add_modules(&mut self, k: &Kernel, wanted: &[String]) -> Result<()> {
        let moddir = k.moddir();
        let dep =
            fs::read_to_string(moddir.join("modules.dep")).ctx(|| "cannot read modules.dep")?;
        let deps = parse_modules_dep(&dep);
        let builtin: BTreeSet<String> = fs::read_to_string(moddir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        let mut closure: BTreeSet<String> = BTreeSet::new();
        let mut stack: Vec<String> = Vec::new();
        for w in wanted {
            let n = w.replace('-', "_");
            if let Some((path, _)) = deps.get(&n) {
                stack.push(path.clone());
            } else if builtin.contains(&n) {
                println!("xtask: module {w} is built into {}; nothing to add", k.kver);
            } else {
                bail!(
                    "kernel {} has no module `{w}` (see {})",
                    k.kver,
                    moddir.join("modules.dep").display()
                );
            }
        }
        let by_path: BTreeMap<&str, &Vec<String>> =
            deps.values().map(|(p, d)| (p.as_str(), d)).collect();
        while let Some(p) = stack.pop() {
            if closure.insert(p.clone()) {
                stack.extend(
                    by_path
                        .get(p.as_str())
                        .into_iter()
                        .flat_map(|d| d.iter().cloned()),
                );
            }
        }
        if closure.is_empty() {
            return Ok(());
        }
        let gdir = format!("/usr/lib/modules/{}", k.kver);
        let mut dep_out = String::new();
        for p in &closure {
            let data = fs::read(moddir.join(p)).ctx(|| format!("cannot read module {p}"))?;
            self.write(&format!("{gdir}/{p}"), &data, 0o644)?;
            let d = by_path
                .get(p.as_str())
                .map(|d| d.join(" "))
                .unwrap_or_default();
            dep_out.push_str(&format!("{p}: {d}\n").replace(": \n", ":\n"));
        }
        self.write(&format!("{gdir}/modules.dep"), dep_out.as_bytes(), 0o644)?;
        for f in ["modules.builtin", "modules.alias", "modules.order"] {
            if let Ok(data) = fs::read(moddir.join(f)) {
                self.write(&format!("{gdir}/{f}"), &data, 0o644)?;
            }
        }
        self.add_kmod_indexes(&gdir, &k.kver);
        let names: Vec<String> = closure.iter().map(|p| module_name(p)).collect();
        println!("xtask: modules in initramfs: {}", names.join(" "));
        Ok(())
    }

    /// The binary indexes (modules.dep.bin, modules.alias.bin, ...) of the
    /// staged modules, built by the host's depmod: libkmod reads only those
    /// (dmzadm looks dm-zoned up through it), busybox modprobe the text
    /// files, which are kept as written. Best effort: without them only
    /// libkmod users fail.
    fn add_kmod_indexes(&mut self, gdir: &str, kver: &str) {
        let dir = self.at(gdir);
        let before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_file())
            .filter_map(|e| fs::read(e.path()).ok().map(|d| (e.path(), d)))
            .collect();
        let r = run(Command::new("depmod")
            .arg("-b")
            .arg(self.at("/usr"))
            .arg(kver));
        for (p, d) in before {
            let _ = fs::write(p, d);
        }
        if let Err(e) = r {
            println!("xtask: warning: depmod for the kmod indexes: {e}");
        }
    }

    /// Write /init: mount the kernel file systems the tests rely on, run the
    /// payload, print the end marker, power off.
    pub fn write_init(&mut self, payload: &str, nonce: &str) -> Result<()> {
        let init = format!(
            r#"#!/bin/sh
# Generated by `cargo xtask` (xtask/src/vm/initramfs.rs). PID 1 of the kernel-truth VM.
export PATH=/opt/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb RUST_BACKTRACE=1 RECLAIM_SCOPE_VM=1
m() {{ mount -t "$1" "$1" "$2" || echo "@@VM-WARN cannot mount $1 on $2"; }}
m proc /proc
m sysfs /sys
m devtmpfs /dev
m tracefs /sys/kernel/tracing
m cgroup2 /sys/fs/cgroup
m tmpfs /tmp
mkdir -p /dev/pts /dev/shm /var/lock /run
m devpts /dev/pts
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
echo "@@VM-INIT kernel=$(uname -r) cpus=$(nproc) mem_kb=$(sed -n 's/MemTotal: *//p' /proc/meminfo)"
cd /tmp
overall=0
{payload}
sync
echo "@@VM-DONE nonce={nonce} status=$overall"
poweroff -f
"#
        );
        self.write("/init", init.as_bytes(), 0o755)
    }

    /// Pack the stage as a gzip-compressed newc cpio archive.
    pub fn pack(&self, out: &Path) -> Result<u64> {
        // Sorted names and root ownership: the archive only depends on content.
        let script = format!(
            "set -e; cd {}; find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1 -n > {}",
            sh_quote(&self.root.to_string_lossy()),
            sh_quote(&out.to_string_lossy())
        );
        capture(Command::new("sh").arg("-c").arg(&script))?;
        Ok(fs::metadata(out).map(|m| m.len()).unwrap_or(0))
    }
}

/// Absolute library paths from `ldd` output (including the dynamic loader).
pub(super) fn parse_ldd(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect()
}

/// modules.dep → name → (path, dependency paths).
pub(super) fn parse_modules_dep(dep: &str) -> BTreeMap<String, (String, Vec<String>)> {
    dep.lines()
        .filter_map(|l| {
            let (p, d) = l.split_once(':')?;
            let p = p.trim().to_owned();
            let d = d.split_whitespace().map(str::to_owned).collect();
            Some((module_name(&p), (p, d)))
        })
        .collect()
}

/// "kernel/drivers/block/nbd.ko(.xz)" → "nbd"; dashes normalised like modprobe does.
pub(super) fn module_name(path: &str) -> String {
    let base = path.trim().rsplit('/').next().unwrap_or("");
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}
