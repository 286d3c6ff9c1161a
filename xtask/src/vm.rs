//! The kernel-truth VM: host tools, Debian's cloud kernel, an initramfs with
//! busybox and our binaries, and a QEMU/TCG boot with a hard timeout.
//!
//! `vm-test` and `vm-run` differ only in the payload that /init runs; both use
//! [`Stage`] to build the initramfs and [`boot`] to run it.

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
            // The suite takes 3.5 min: almost 3x headroom for a loaded
            // host, and with one retry the VM step stays well inside CI's
            // 90 min even when both boots die.
            timeout: Duration::from_secs(10 * 60),
            test_timeout: Duration::from_secs(4 * 60),
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

    fn vm_dir(&self) -> PathBuf {
        self.target.join("vm")
    }

    fn cargo(&self) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(&self.root);
        c
    }
}

// ---------------------------------------------------------------------------
// Host tools
// ---------------------------------------------------------------------------

/// Debian package that provides a host binary we may be asked to copy.
fn package_of(bin: &str) -> Option<&'static str> {
    Some(match bin {
        "qemu-nbd" | "qemu-img" | "qemu-io" => "qemu-utils",
        "nbd-client" => "nbd-client",
        "mkfs.xfs" | "xfs_io" | "xfs_repair" | "xfs_db" => "xfsprogs",
        "mkfs.ext4" | "mkfs.ext2" | "mke2fs" | "e2fsck" | "tune2fs" | "debugfs" => "e2fsprogs",
        "nbdkit" => "nbdkit",
        "fio" => "fio",
        "targetcli" => "targetcli-fb",
        "strace" => "strace",
        "blkdiscard" | "blkzone" | "blockdev" | "prlimit" => "util-linux",
        "losetup" => "mount",
        "dmsetup" => "dmsetup",
        "nbdinfo" | "nbdcopy" | "nbdsh" => "libnbd-bin",
        b if b.starts_with("sg_") => "sg3-utils",
        _ => return None,
    })
}

/// `apt-get` that waits for a concurrent apt/dpkg (another build on the same
/// machine) instead of failing at once on the lock.
fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.args(["-o", "DPkg::Lock::Timeout=300"]);
    c
}

/// Install what the VM step needs, and only what is missing.
pub fn ensure_host_tools(opts: &VmOpts) -> Result<()> {
    let mut missing: Vec<String> = Vec::new();
    let mut need = |ok: bool, pkg: &str| {
        if !ok && !missing.iter().any(|m| m == pkg) {
            missing.push(pkg.to_owned());
        }
    };
    need(which("qemu-system-x86_64").is_some(), "qemu-system-x86");
    // The initramfs needs a *static* busybox; a dynamic one from package
    // `busybox` would need its libraries too.
    need(dpkg_installed("busybox-static"), "busybox-static");
    need(which("cpio").is_some(), "cpio");
    need(which("depmod").is_some(), "kmod");
    // examples/ublk_file (its own package): libublk-rs-sys runs bindgen.
    need(has_libclang(), "libclang-dev");
    for b in &opts.host_bins {
        if which(b).is_none() && !is_fetched(b) {
            match package_of(b) {
                Some(p) => need(false, p),
                None => bail!(
                    "host binary `{b}` not found on PATH and its package is unknown: \
                     install it or pass `--apt PACKAGE`"
                ),
            }
        }
    }
    for p in &opts.apt {
        need(dpkg_installed(p), p);
    }
    if missing.is_empty() {
        println!("xtask: host tools present (qemu-system-x86_64, busybox-static, cpio, kmod)");
        return Ok(());
    }
    if !opts.install {
        bail!(
            "missing host packages {missing:?} and --no-install was given; run \
             `apt-get install --no-install-recommends {}`",
            missing.join(" ")
        );
    }
    if which("apt-get").is_none() {
        bail!("missing host packages {missing:?} and apt-get is not available");
    }
    println!(
        "xtask: installing missing host packages: {}",
        missing.join(" ")
    );
    // A failed update (offline mirror) is not fatal: the lists may be recent enough.
    if let Err(e) = run(apt_get().arg("update")) {
        println!("xtask: warning: {e}; trying to install anyway");
    }
    let base = ["install", "-y", "--no-install-recommends"];
    if missing.iter().any(|p| p == "qemu-system-x86") {
        // The image ships qemu-utils 10.x (backports) while the distribution's
        // qemu-system-x86 is 7.2 and needs a matching qemu-utils: a plain install
        // fails with "held broken packages". Pinning qemu-utils to bookworm
        // installs a consistent pair and keeps qemu-img/qemu-io/qemu-nbd.
        let mut pinned = apt_get();
        pinned.args(base).arg("--allow-downgrades").args(&missing);
        pinned.arg("qemu-utils/bookworm");
        match run(&mut pinned) {
            Ok(()) => return verify_installed(opts),
            Err(e) => println!("xtask: pinned install failed ({e}); trying a plain install"),
        }
    }
    let mut plain = apt_get();
    plain.args(base).args(&missing);
    run(&mut plain).map_err(|e| {
        format!("required host packages {missing:?} are missing and apt-get failed: {e}")
    })?;
    verify_installed(opts)
}

/// Whether the dynamic loader knows a libclang (what bindgen's clang-sys loads).
fn has_libclang() -> bool {
    capture_stdout(Command::new("ldconfig").arg("-p")).is_ok_and(|out| {
        out.lines().any(|l| {
            let name = l.trim_start();
            name.starts_with("libclang.so") || {
                name.strip_prefix("libclang-")
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            }
        })
    })
}

fn verify_installed(opts: &VmOpts) -> Result<()> {
    if which("qemu-system-x86_64").is_none() {
        bail!("qemu-system-x86_64 not found after installing qemu-system-x86");
    }
    for b in &opts.host_bins {
        if which(b).is_none() && !is_fetched(b) {
            bail!("host binary `{b}` still not found after installing its package");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Kernel
// ---------------------------------------------------------------------------

/// An extracted Debian kernel: vmlinuz plus `root/lib/modules/<kver>`.
pub struct Kernel {
    pub kver: String,
    pub vmlinuz: PathBuf,
    pub root: PathBuf,
}

impl Kernel {
    fn moddir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.kver)
    }

    /// Whether the kernel has module `name`, loadable or built in.
    fn has_module(&self, name: &str) -> bool {
        let n = name.replace('-', "_");
        ["modules.dep", "modules.builtin"].iter().any(|f| {
            fs::read_to_string(self.moddir().join(f)).is_ok_and(|t| {
                t.lines()
                    .any(|l| module_name(l.split(':').next().unwrap_or("")) == n)
            })
        })
    }

    fn from_dir(dir: &Path) -> Option<Kernel> {
        if !dir.join(".complete").is_file() {
            return None;
        }
        let kver = dir.file_name()?.to_str()?.to_owned();
        Some(Kernel {
            vmlinuz: dir.join("boot").join(format!("vmlinuz-{kver}")),
            root: dir.to_path_buf(),
            kver,
        })
    }
}

const KERNEL_META: &str = "linux-image-cloud-amd64";

/// The kernels `--kernel` picks from: Debian's cloud kernel of one release.
/// (series, Debian suite). The first is the default.
pub const KERNELS: &[(&str, &str)] = &[
    ("6.1", "bookworm"),
    ("5.10", "bullseye"),
    ("6.12", "trixie"),
];

/// The default kernel series (what CI's `vm-test` boots).
pub const DEFAULT_KERNEL: &str = "6.1";

/// The Debian suite of a kernel series (`"6.12"` → `"trixie"`).
pub fn suite_of(series: &str) -> Result<&'static str> {
    KERNELS
        .iter()
        .find(|(s, _)| *s == series)
        .map(|(_, suite)| *suite)
        .ok_or_else(|| {
            let known: Vec<&str> = KERNELS.iter().map(|(s, _)| *s).collect();
            format!(
                "unknown kernel `{series}`: pick one of {} or all",
                known.join(", ")
            )
            .into()
        })
}

/// Whether a kernel release (`6.1.0-56-cloud-amd64`) belongs to a series
/// (`6.1`; not `6.12`).
fn kver_in_series(kver: &str, series: &str) -> bool {
    kver.strip_prefix(series)
        .is_some_and(|rest| rest.starts_with(['.', '-', '+']))
}

/// Fetch Debian's cloud kernel of `opts.kernel` once; later runs reuse
/// `target/vm/kernel/<kver>` without touching the network.
pub fn ensure_kernel(ws: &Workspace, opts: &VmOpts) -> Result<Kernel> {
    let series = opts.kernel.as_str();
    let suite = suite_of(series)?;
    let kdir = ws.vm_dir().join("kernel");
    fs::create_dir_all(&kdir).ctx(|| format!("cannot create {}", kdir.display()))?;
    if !opts.refresh_kernel {
        let mut cached: Vec<Kernel> = fs::read_dir(&kdir)
            .ctx(|| format!("cannot list {}", kdir.display()))?
            .filter_map(|e| Kernel::from_dir(&e.ok()?.path()))
            .filter(|k| kver_in_series(&k.kver, series))
            .collect();
        cached.sort_by(|a, b| a.kver.cmp(&b.kver));
        if let Some(k) = cached.pop() {
            println!(
                "xtask: kernel {} (cached in {}; --refresh-kernel to re-resolve)",
                k.kver,
                k.root.display()
            );
            return Ok(k);
        }
    }

    let apt = PrivateApt::new(ws, suite)?;
    let debs = kdir.join(format!("debs-{suite}"));
    fs::create_dir_all(&debs).ctx(|| format!("cannot create {}", debs.display()))?;
    let meta = apt.download(&debs, KERNEL_META)?;
    let depends = capture_stdout(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&meta)
            .arg("Depends"),
    )?;
    // "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
    let pkg = depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && *d != KERNEL_META)
        .ok_or_else(|| format!("{KERNEL_META} has no linux-image dependency: {depends:?}"))?
        .to_owned();
    let kver = pkg.trim_start_matches("linux-image-").to_owned();
    if !kver_in_series(&kver, series) {
        bail!("{suite}'s {KERNEL_META} is {kver}, not a {series} kernel");
    }
    let dir = kdir.join(&kver);
    if let Some(k) = Kernel::from_dir(&dir) {
        println!("xtask: kernel {kver} already cached");
        return Ok(k);
    }
    println!("xtask: fetching kernel package {pkg} ({suite})");
    let deb = apt.download(&debs, &pkg)?;
    let tmp = kdir.join(format!("{kver}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).ctx(|| format!("cannot create {}", tmp.display()))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    prepare_modules(&tmp, &kver)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)
        .ctx(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    fs::write(dir.join(".complete"), &pkg).ctx(|| "cannot mark kernel cache complete")?;
    let k = Kernel::from_dir(&dir).ok_or("kernel cache vanished")?;
    if !k.vmlinuz.is_file() {
        bail!("{pkg} has no {}", k.vmlinuz.display());
    }
    Ok(k)
}

/// The Debian mirrors this machine's own apt uses: (archive, security).
/// Read from its sources (deb822 `.sources` and one-line `.list` files),
/// never written. `RECLAIM_VM_DEBIAN_MIRROR` / `RECLAIM_VM_SECURITY_MIRROR`
/// override them.
fn host_mirrors() -> Result<(String, String)> {
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        v.sort();
        files.extend(v);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            entries.extend(parse_deb822_sources(&text));
        } else if name.ends_with(".list") {
            entries.extend(parse_one_line_sources(&text));
        }
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let security = env("RECLAIM_VM_SECURITY_MIRROR").or_else(|| {
        entries
            .iter()
            .find(|(_, s)| s.iter().any(|s| s.ends_with("-security")))
            .map(|(u, _)| u.clone())
    });
    let archive = env("RECLAIM_VM_DEBIAN_MIRROR").or_else(|| {
        entries
            .iter()
            .find(|(u, s)| {
                u.trim_end_matches('/').ends_with("/debian") && s.iter().any(|s| !s.contains('-'))
            })
            .map(|(u, _)| u.clone())
    });
    match (archive, security) {
        (Some(a), Some(s)) => Ok((
            a.trim_end_matches('/').into(),
            s.trim_end_matches('/').into(),
        )),
        _ => bail!(
            "cannot find this machine's Debian archive and security mirrors in /etc/apt; \
             set RECLAIM_VM_DEBIAN_MIRROR and RECLAIM_VM_SECURITY_MIRROR"
        ),
    }
}

/// (URI, suites) of every `Types: deb` stanza of a deb822 sources file.
fn parse_deb822_sources(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |key: &str| -> Option<String> {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(key)
                    .then(|| v.trim().to_owned())
            })
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let enabled = field("Enabled").is_none_or(|e| e != "no");
        if let (true, true, Some(uris), Some(suites)) =
            (is_deb, enabled, field("URIs"), field("Suites"))
        {
            let suites: Vec<String> = suites.split_whitespace().map(str::to_owned).collect();
            for u in uris.split_whitespace() {
                out.push((u.to_owned(), suites.clone()));
            }
        }
    }
    out
}

/// (URI, suites) of every `deb` line of a one-line-style sources.list.
fn parse_one_line_sources(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().peekable();
            if w.next()? != "deb" {
                return None;
            }
            if w.peek()?.starts_with('[') {
                while !w.next()?.ends_with(']') {}
            }
            Some((w.next()?.to_owned(), vec![w.next()?.to_owned()]))
        })
        .collect()
}

/// An apt configuration of its own for one Debian suite, under
/// `target/vm/apt-<suite>/`: its own sources.list, lists, cache and state,
/// used only to download the kernel. The machine's /etc/apt is never
/// changed; signatures are checked against the machine's Debian archive
/// keyring (`signed-by`).
struct PrivateApt {
    dir: PathBuf,
}

const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

impl PrivateApt {
    fn new(ws: &Workspace, suite: &str) -> Result<PrivateApt> {
        let dir = ws.vm_dir().join(format!("apt-{suite}"));
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "state",
            "parts",
            "prefs",
        ] {
            fs::create_dir_all(dir.join(d))
                .ctx(|| format!("cannot create {}", dir.join(d).display()))?;
        }
        if !Path::new(DEBIAN_KEYRING).is_file() {
            bail!("{DEBIAN_KEYRING} is missing: install debian-archive-keyring");
        }
        let (archive, security) = host_mirrors()?;
        let list = format!(
            "deb [signed-by={DEBIAN_KEYRING}] {archive} {suite} main\n\
             deb [signed-by={DEBIAN_KEYRING}] {security} {suite}-security main\n"
        );
        let path = dir.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(list.as_str()) {
            fs::write(&path, &list).ctx(|| format!("cannot write {}", path.display()))?;
        }
        let status = dir.join("state/status");
        if !status.exists() {
            fs::write(&status, "").ctx(|| "cannot create the private dpkg status")?;
        }
        Ok(PrivateApt { dir })
    }

    fn apt_get(&self) -> Command {
        self.with_config(apt_get())
    }

    fn with_config(&self, mut c: Command) -> Command {
        let d = |s: &str| self.dir.join(s).to_string_lossy().into_owned();
        for (k, v) in [
            ("Dir::Etc::SourceList", d("sources.list")),
            ("Dir::Etc::SourceParts", d("parts")),
            ("Dir::Etc::Preferences", d("prefs/none")),
            ("Dir::Etc::PreferencesParts", d("prefs")),
            ("Dir::State", d("state")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::State::status", d("state/status")),
            ("Dir::Cache", d("cache")),
            ("APT::Architecture", "amd64".to_owned()),
            ("APT::Architectures", "amd64".to_owned()),
            // Downloading as root into a root-owned dir: skip the _apt sandbox warning.
            ("APT::Sandbox::User", "root".to_owned()),
        ] {
            c.arg("-o").arg(format!("{k}={v}"));
        }
        c
    }

    /// `apt-get download PKG` into `dir`; runs `apt-get update` on this
    /// configuration first if its lists are empty, and once more if the
    /// package is not found (lists outdated).
    fn download(&self, dir: &Path, pkg: &str) -> Result<PathBuf> {
        let find = || -> Option<PathBuf> {
            let prefix = format!("{pkg}_");
            let mut v: Vec<PathBuf> = fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                })
                .collect();
            v.sort();
            v.pop()
        };
        // Old downloads of the meta package must not decide the version.
        if let Some(old) = find() {
            let _ = fs::remove_file(old);
        }
        let update = || {
            println!("xtask: apt-get update ({})", self.dir.display());
            run(self.apt_get().arg("update"))
        };
        let empty = fs::read_dir(self.dir.join("lists"))
            .map(|rd| {
                rd.flatten()
                    .all(|e| e.file_name() == "partial" || e.file_name() == "lock")
            })
            .unwrap_or(true);
        if empty {
            update()?;
        }
        let dl = |spec: &str| run(self.apt_get().args(["download", spec]).current_dir(dir));
        if dl(pkg).is_err() {
            println!("xtask: apt-get download {pkg} failed; running apt-get update and retrying");
            update()?;
            if let Err(e) = dl(pkg) {
                // The indexes can name a version whose .deb the mirror no
                // longer (or not yet) serves (measured: bullseye-security's
                // newest linux-image-cloud-amd64, 404): try the older
                // versions the indexes list, newest first, and say so.
                let older: Vec<String> = self.versions(pkg)?.into_iter().skip(1).collect();
                let mut got = false;
                for v in &older {
                    println!("xtask: {pkg}'s newest version is not downloadable ({e}); trying {v}");
                    if dl(&format!("{pkg}={v}")).is_ok() {
                        got = true;
                        break;
                    }
                }
                if !got {
                    bail!("cannot download kernel package {pkg} (versions tried: the newest and {older:?}): {e}");
                }
            }
        }
        find().ok_or_else(|| format!("apt-get download {pkg} produced no .deb").into())
    }

    /// The versions of `pkg` the private indexes list, newest first.
    fn versions(&self, pkg: &str) -> Result<Vec<String>> {
        let out = capture_stdout(
            self.with_config(Command::new("apt-cache"))
                .args(["madison", pkg]),
        )?;
        Ok(parse_madison(&out))
    }
}

/// `apt-cache madison` lines ("pkg | 5.10.262-1 | http://… Packages") →
/// versions in the order given (apt's: newest first), without repeats.
fn parse_madison(out: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for l in out.lines() {
        if let Some(ver) = l.split('|').nth(1).map(str::trim) {
            if !ver.is_empty() && !v.iter().any(|x| x == ver) {
                v.push(ver.to_owned());
            }
        }
    }
    v
}

/// Make the extracted module tree usable by busybox modprobe: modules under
/// lib/modules, decompressed, with a modules.dep that matches.
fn prepare_modules(root: &Path, kver: &str) -> Result<()> {
    let usr = root.join("usr/lib/modules");
    let lib = root.join("lib/modules");
    if !lib.join(kver).is_dir() && usr.join(kver).is_dir() {
        // Newer Debian kernels ship merged-/usr paths; depmod -b wants lib/modules.
        fs::create_dir_all(&lib).ctx(|| "cannot create lib/modules")?;
        fs::rename(usr.join(kver), lib.join(kver)).ctx(|| "cannot move usr/lib/modules")?;
    }
    let moddir = lib.join(kver);
    if !moddir.is_dir() {
        bail!("kernel package has no modules directory for {kver}");
    }
    let mut compressed: Vec<(PathBuf, &str)> = Vec::new();
    walk(&moddir, &mut |p| {
        let n = p.to_string_lossy();
        for (ext, tool) in [(".ko.xz", "xz"), (".ko.zst", "zstd"), (".ko.gz", "gzip")] {
            if n.ends_with(ext) {
                compressed.push((p.to_path_buf(), tool));
            }
        }
    })?;
    if !compressed.is_empty() {
        println!(
            "xtask: decompressing {} modules (busybox modprobe needs plain .ko)",
            compressed.len()
        );
        let mut by_tool: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
        for (p, t) in compressed {
            by_tool.entry(t).or_default().push(p);
        }
        for (tool, files) in by_tool {
            for chunk in files.chunks(200) {
                let mut c = Command::new(tool);
                c.arg("-d").arg("-f");
                if tool == "zstd" {
                    c.args(["--rm", "-q"]);
                }
                c.args(chunk);
                capture(&mut c)?;
            }
        }
    }
    capture(Command::new("depmod").arg("-b").arg(root).arg(kver))?;
    Ok(())
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    for e in fs::read_dir(dir).ctx(|| format!("cannot list {}", dir.display()))? {
        let p = e.ctx(|| "readdir")?.path();
        if p.is_dir() && !p.is_symlink() {
            walk(&p, f)?;
        } else {
            f(&p);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Crate binaries
// ---------------------------------------------------------------------------

/// Executables built by cargo, by target name.
#[derive(Default)]
pub struct Artifacts {
    /// Integration-test targets named `vm_*` (the kernel-truth suites).
    pub vm_tests: Vec<(String, PathBuf)>,
    /// Examples and package binaries, put on the guest's PATH.
    pub bins: Vec<(String, PathBuf)>,
}

const PACKAGE: &str = "reclaim-scope";
/// The example daemons and their tests (examples/Cargo.toml).
pub const EXAMPLES_PACKAGE: &str = "reclaim-scope-examples";
const UBLK_PACKAGE: &str = "ublk_file";

pub fn build_artifacts(ws: &Workspace, with_tests: bool) -> Result<Artifacts> {
    let mut art = Artifacts::default();
    if with_tests {
        let mut c = ws.cargo();
        c.args([
            "test",
            "--no-run",
            "--all-features",
            "--message-format=json",
            "-p",
            PACKAGE,
            "-p",
            EXAMPLES_PACKAGE,
        ]);
        for (kind, name, exe) in cargo_executables(&mut c)? {
            if kind == "test" && name.starts_with("vm_") {
                art.vm_tests.push((name, exe));
            }
        }
    }
    let mut c = ws.cargo();
    c.args([
        "build",
        "--examples",
        "--bins",
        "--all-features",
        "--message-format=json",
        "-p",
        PACKAGE,
        "-p",
        EXAMPLES_PACKAGE,
    ]);
    for (kind, name, exe) in cargo_executables(&mut c)? {
        if kind == "example" || kind == "bin" {
            art.bins.push((name, exe));
        }
    }
    // examples/ublk_file is a package of its own (libublk needs libclang,
    // which the root package's `cargo test` must not).
    let mut c = ws.cargo();
    c.args([
        "build",
        "--bins",
        "--message-format=json",
        "-p",
        UBLK_PACKAGE,
    ]);
    for (kind, name, exe) in cargo_executables(&mut c)? {
        if kind == "bin" {
            art.bins.push((name, exe));
        }
    }
    art.vm_tests.sort();
    art.vm_tests.dedup();
    art.bins.sort();
    art.bins.dedup();
    Ok(art)
}

/// Run a cargo build with JSON messages; return (kind, target name, executable).
pub fn cargo_executables(cmd: &mut Command) -> Result<Vec<(String, String, PathBuf)>> {
    println!("xtask: $ {}", crate::util::show(cmd));
    // stderr stays on the terminal so compile errors and progress are visible.
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .ctx(|| "cannot start cargo")?;
    let mut v = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Json>(line) else {
            continue;
        };
        if msg["reason"].as_str() == Some("compiler-message") {
            if let Some(r) = msg["message"]["rendered"].as_str() {
                eprint!("{r}");
            }
        }
        if msg["reason"].as_str() != Some("compiler-artifact") {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let target = &msg["target"];
        let name = target["name"].as_str().unwrap_or("").to_owned();
        for k in target["kind"].as_array().into_iter().flatten() {
            if let Some(k) = k.as_str() {
                v.push((k.to_owned(), name.clone(), PathBuf::from(exe)));
            }
        }
    }
    if !out.status.success() {
        bail!("`{}` failed ({})", crate::util::show(cmd), out.status);
    }
    Ok(v)
}

// ---------------------------------------------------------------------------
// Initramfs
// ---------------------------------------------------------------------------

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
# Generated by `cargo xtask` (xtask/src/vm.rs). PID 1 of the kernel-truth VM.
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
fn parse_ldd(out: &str) -> Vec<PathBuf> {
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
fn parse_modules_dep(dep: &str) -> BTreeMap<String, (String, Vec<String>)> {
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
fn module_name(path: &str) -> String {
    let base = path.trim().rsplit('/').next().unwrap_or("");
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

// ---------------------------------------------------------------------------
// Boot
// ---------------------------------------------------------------------------

pub struct BootOutcome {
    /// Payload status from the end marker; `None` if the marker never came.
    pub status: Option<i32>,
    pub console: Vec<String>,
    pub timed_out: bool,
    /// Time from starting QEMU to /init's first line.
    pub boot_time: Option<Duration>,
    /// Time from /init's first line to the end marker.
    pub run_time: Option<Duration>,
}

pub fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", t, std::process::id())
}

/// Boot the VM and stream its console. Lines after /init starts go to stdout
/// as they arrive; kernel noise before that is only kept for failure reports.
pub fn boot(
    k: &Kernel,
    initrd: &Path,
    opts: &VmOpts,
    nonce: &str,
    log: &Path,
) -> Result<BootOutcome> {
    let qemu = which("qemu-system-x86_64").ok_or("qemu-system-x86_64 not found")?;
    // The guest has wedged under multi-threaded TCG: CPU 0 stopped taking
    // interrupts ("rcu_preempt kthread timer wakeup didn't happen ... timer
    // handling issue on cpu=0") while CPU 1 spun in the kernel for minutes
    // (soft lockup), so no timeout inside the guest could fire. Seen twice on
    // QEMU 7.2, in different tests (vm_fuse, then vm_tcmu in CI), once with
    // idle=halt already set. Three defences:
    // - single-threaded TCG by default (`--mttcg` to opt back in): one host
    //   thread takes turns between the vCPUs, so a guest instruction is
    //   atomic with respect to the other vCPU and no cross-thread wakeup
    //   can be lost; the guest still sees two CPUs;
    // - idle=halt: `-cpu max` looks like an AMD CPU with erratum E400, whose
    //   idle routine hands an idle CPU's timer to the broadcast device;
    // - softlockup_panic=1 with loglevel=5: a wedge ends the VM within a
    //   minute, with the stuck CPUs' backtraces on the console (quiet alone
    //   hides them), instead of eating the whole --timeout. watchdog_thresh=30
    //   puts the soft-lockup limit at 60 s (default 20 s), so a guest merely
    //   starved by a busy host is not shot.
    let mut append = "console=ttyS0 quiet loglevel=5 panic=-1 idle=halt \
                      softlockup_panic=1 softlockup_all_cpu_backtrace=1 watchdog_thresh=30"
        .to_owned();
    if !opts.cmdline.is_empty() {
        append.push(' ');
        append.push_str(&opts.cmdline);
    }
    let accel = if opts.mttcg {
        "tcg,thread=multi"
    } else {
        "tcg,thread=single"
    };
    let mut cmd = Command::new(qemu);
    // /dev/kvm exists on these machines but is not usable: TCG only.
    cmd.args(["-accel", accel, "-cpu", "max", "-m", &opts.mem, "-smp"])
        .arg(opts.smp.to_string())
        // No NIC: nothing needs a network, and it skips the iPXE option ROM.
        .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(&append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("xtask: $ {}", crate::util::show(&cmd));
    let start = Instant::now();
    let mut child = cmd.spawn().ctx(|| "cannot start qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(|l| l.ok()) {
                let s = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_owned();
                if tx.send(s).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);

    let mut logf = fs::File::create(log).ctx(|| format!("cannot create {}", log.display()))?;
    let deadline = start + opts.timeout;
    let done_tag = format!("@@VM-DONE nonce={nonce} status=");
    let mut o = BootOutcome {
        status: None,
        console: Vec::new(),
        timed_out: false,
        boot_time: None,
        run_time: None,
    };
    let mut init_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            o.timed_out = true;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                let _ = writeln!(logf, "{line}");
                if let (None, Some(pos)) = (init_at, line.find("@@VM-INIT")) {
                    init_at = Some(Instant::now());
                    o.boot_time = Some(start.elapsed());
                    // The firmware's terminal escapes may precede the marker.
                    println!(
                        "xtask: guest booted in {:.1} s ({})",
                        start.elapsed().as_secs_f64(),
                        line[pos..].trim()
                    );
                } else if let Some(pos) = line.find(&done_tag) {
                    let st = line[pos + done_tag.len()..].trim();
                    o.status = Some(st.parse().unwrap_or(-1));
                    o.run_time = init_at.map(|t| t.elapsed());
                } else if init_at.is_some() {
                    println!("{line}");
                }
                o.console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                o.timed_out = true;
                break;
            }
            // Both pipes closed: QEMU has exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if o.timed_out {
        println!(
            "xtask: VM timed out after {} s; killing QEMU",
            opts.timeout.as_secs()
        );
        let _ = child.kill();
    } else {
        // poweroff -f normally ends QEMU at once; do not wait forever if not.
        let grace = Instant::now() + Duration::from_secs(10);
        while Instant::now() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
    let st = child.wait().ctx(|| "waiting for QEMU")?;
    for r in readers {
        let _ = r.join();
    }
    if o.status.is_none() && !o.timed_out {
        println!("xtask: QEMU exited ({st}) without the end marker");
    }
    Ok(o)
}

pub fn print_console(o: &BootOutcome, log: &Path) {
    println!(
        "xtask: ===== full VM console ({} lines, also in {}) =====",
        o.console.len(),
        log.display()
    );
    for l in &o.console {
        println!("console| {l}");
    }
    println!("xtask: ===== end of VM console =====");
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// Everything before the boot: tools, kernel, binaries, initramfs.
fn prepare(
    ws: &Workspace,
    opts: &VmOpts,
    phases: &mut Phases,
    with_tests: bool,
    name: &str,
) -> Result<(Kernel, Stage, Artifacts)> {
    phases.time("install", || ensure_host_tools(opts))?;
    let k = phases.time("kernel", || ensure_kernel(ws, opts))?;
    let art = phases.time("build", || build_artifacts(ws, with_tests))?;
    let mut stage = Stage::new(work_dir(ws, name).join("stage"))?;
    stage.add_busybox()?;
    for (n, p) in &art.bins {
        stage.add_exe(p, &format!("/opt/bin/{n}"), !opts.keep_debug)?;
    }
    for b in opts.host_bins.iter().chain(&opts.optional_host_bins) {
        match which(b).or_else(|| fetched_host_bin(ws, b)) {
            Some(p) => {
                let n = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                stage.add_exe(&p, &format!("/opt/bin/{n}"), false)?;
            }
            None if opts.host_bins.contains(b) => bail!("host binary `{b}` not found"),
            None => println!("xtask: optional host binary `{b}` not found; skipped"),
        }
    }
    for (src, guest) in &opts.files {
        stage.add_path(src, guest)?;
    }
    let mut modules = opts.modules.clone();
    for m in &opts.optional_modules {
        if k.has_module(m) {
            modules.push(m.clone());
        } else {
            println!(
                "xtask: kernel {} has no module {m} (optional): not added",
                k.kver
            );
        }
    }
    stage.add_modules(&k, &modules)?;
    Ok((k, stage, art))
}

/// Host binaries that bookworm does not package, taken from a later suite's
/// package: (binary, suite, package, path inside the package). The .deb is
/// downloaded through [`PrivateApt`] and unpacked under target/vm/fetched,
/// never installed; its libraries are the host's (checked with ldd when the
/// binary is staged). dmzadm (dm-zoned-tools) formats dm-zoned's metadata
/// for tests/vm_zoned.rs.
const FETCHED_BINS: &[(&str, &str, &str, &str)] =
    &[("dmzadm", "trixie", "dm-zoned-tools", "usr/sbin/dmzadm")];

/// Whether `bin` comes from [`FETCHED_BINS`] (no host package installs it).
fn is_fetched(bin: &str) -> bool {
    FETCHED_BINS.iter().any(|f| f.0 == bin)
}

/// A [`FETCHED_BINS`] binary, downloaded and unpacked on first use; `None`
/// (with the reason printed) when it is not one or cannot be had.
fn fetched_host_bin(ws: &Workspace, bin: &str) -> Option<PathBuf> {
    let &(_, suite, pkg, inner) = FETCHED_BINS.iter().find(|f| f.0 == bin)?;
    let dir = ws.vm_dir().join("fetched").join(pkg);
    let exe = dir.join("root").join(inner);
    if exe.is_file() {
        return Some(exe);
    }
    let got = (|| -> Result<()> {
        fs::create_dir_all(&dir).ctx(|| format!("cannot create {}", dir.display()))?;
        let deb = PrivateApt::new(ws, suite)?.download(&dir, pkg)?;
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root")))
    })();
    match got {
        Ok(()) if exe.is_file() => {
            println!("xtask: {bin} from {suite}'s {pkg}: {}", exe.display());
            Some(exe)
        }
        Ok(()) => {
            println!("xtask: {suite}'s {pkg} has no {inner}");
            None
        }
        Err(e) => {
            println!("xtask: cannot fetch {bin} from {suite}'s {pkg}: {e}");
            None
        }
    }
}

/// A directory private to this run: two `vm-test`s on one machine (a
/// developer and an agent, or two CI jobs sharing a target dir) must not
/// rebuild each other's initramfs. Directories of dead runs are removed.
pub fn work_dir(ws: &Workspace, name: &str) -> PathBuf {
    let base = ws.vm_dir().join("work");
    if let Ok(rd) = fs::read_dir(&base) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let pid = n.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    base.join(format!("{name}-{}", std::process::id()))
}

fn pack_and_boot(
    ws: &Workspace,
    k: &Kernel,
    stage: &Stage,
    opts: &VmOpts,
    nonce: &str,
    name: &str,
    phases: &mut Phases,
) -> Result<(BootOutcome, PathBuf)> {
    let work = work_dir(ws, name);
    let ir = work.join("initramfs.cpio.gz");
    let size = phases.time("initramfs", || stage.pack(&ir))?;
    println!(
        "xtask: initramfs {} ({:.1} MiB)",
        ir.display(),
        size as f64 / 1048576.0
    );
    let run_log = work.join("console.log");
    let t = Instant::now();
    let o = boot(k, &ir, opts, nonce, &run_log);
    phases.add("boot+run", t.elapsed());
    // Keep the newest console log at a stable path; drop the bulky image.
    // The stage stays until the caller is done: a retry repacks it.
    let log = ws.vm_dir().join(format!("console-{name}.log"));
    let _ = fs::copy(&run_log, &log);
    let _ = fs::remove_file(&ir);
    let _ = fs::remove_file(&run_log);
    let o = o?;
    if let Some(b) = o.boot_time {
        println!(
            "xtask: boot {:.1} s, payload {:.1} s",
            b.as_secs_f64(),
            o.run_time.unwrap_or_default().as_secs_f64()
        );
    }
    Ok((o, log))
}

/// Per-binary results parsed from the console.
#[derive(Debug, Default, PartialEq)]
pub struct BinResult {
    pub name: String,
    pub status: Option<i32>,
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    pub failures: Vec<String>,
    /// Tests that reported, through `$RECLAIM_VM_NA_FILE`, that they cannot
    /// apply to this kernel: "test name: reason". libtest counts them as
    /// passed; the harness counts them apart, never as passes.
    pub not_applicable: Vec<String>,
}

pub fn parse_results(console: &[String]) -> Vec<BinResult> {
    let mut v: Vec<BinResult> = Vec::new();
    // Inside libtest's closing "failures:" list of names (4-space indented,
    // up to a blank line): with --nocapture a "test X ... FAILED" line can
    // be split by the test's output, the list cannot.
    let mut in_failures = false;
    for l in console {
        let t = l.trim_end();
        if in_failures {
            let name = t.trim_start();
            if t.starts_with("    ") && !name.is_empty() && !name.contains(char::is_whitespace) {
                if let Some(cur) = v.last_mut() {
                    if !cur.failures.iter().any(|f| f == name) {
                        cur.failures.push(name.to_owned());
                    }
                }
                continue;
            }
            in_failures = false;
        }
        if t == "failures:" {
            in_failures = true;
            continue;
        }
        if let Some(n) = l.split("@@VM-BIN-BEGIN ").nth(1) {
            v.push(BinResult {
                name: n.trim().to_owned(),
                ..Default::default()
            });
            continue;
        }
        let Some(cur) = v.last_mut() else { continue };
        if let Some(na) = l.split("@@VM-NA ").nth(1) {
            cur.not_applicable.push(na.trim().to_owned());
        } else if l.contains("@@VM-BIN-KILLED ") {
            cur.failures.push("(killed: --test-timeout)".to_owned());
        } else if let Some(rest) = l.split("@@VM-BIN-END ").nth(1) {
            cur.status = rest
                .split("status=")
                .nth(1)
                .and_then(|s| s.trim().parse().ok());
        } else if let Some(summary) = l.strip_prefix("test result: ") {
            // "ok. 11 passed; 0 failed; 0 ignored; ..." is authoritative: with
            // --nocapture a test's output can split its "test X ... ok" line.
            let num = |key: &str| -> Option<u32> {
                summary
                    .split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches(|c: char| !c.is_ascii_digit())
                            .strip_suffix(key)
                    })
                    .and_then(|n| n.trim().parse().ok())
            };
            if let (Some(p), Some(f)) = (num("passed"), num("failed")) {
                cur.passed = p;
                cur.failed = f;
                cur.ignored = num("ignored").unwrap_or(cur.ignored);
            }
        } else if let Some(t) = l.strip_prefix("test ") {
            if t.ends_with(" ... ok") {
                cur.passed += 1;
            } else if let Some(name) = t.strip_suffix(" ... FAILED") {
                cur.failed += 1;
                cur.failures.push(name.to_owned());
            } else if t.ends_with(" ... ignored") || t.contains(" ... ignored,") {
                cur.ignored += 1;
            }
        }
    }
    v
}

pub fn vm_test(
    ws: &Workspace,
    opts: &VmOpts,
    test_args: &[String],
    phases: &mut Phases,
) -> Result<()> {
    match vm_test_summary(ws, opts, test_args, phases)?.error {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}

/// Counts of one `vm-test` run on one kernel.
#[derive(Debug, Default)]
pub struct Summary {
    pub passed: u32,
    pub failed: u32,
    pub not_applicable: u32,
    /// Why the run failed, if it did.
    pub error: Option<String>,
}

/// `vm-test` on `opts.kernel`; `Err` only if the VM could not be set up.
pub fn vm_test_summary(
    ws: &Workspace,
    opts: &VmOpts,
    test_args: &[String],
    phases: &mut Phases,
) -> Result<Summary> {
    let (k, mut stage, art) = prepare(ws, opts, phases, true, "test")?;
    let r = run_vm_tests(ws, &k, &mut stage, &art, opts, test_args, phases);
    let _ = fs::remove_dir_all(work_dir(ws, "test"));
    r
}

/// The guest's shell payload that runs `bins` one after the other.
fn test_payload(bins: &[&str], opts: &VmOpts, test_args: &[String]) -> String {
    let extra: Vec<String> = test_args.iter().map(|a| sh_quote(a)).collect();
    let mut payload = String::new();
    for n in bins {
        payload.push_str(&format!(
            // busybox `timeout`: a hung binary is killed (status 137) and the
            // others still run, instead of one hang eating the VM timeout.
            // A test that cannot apply to this kernel appends "name: reason"
            // to $RECLAIM_VM_NA_FILE (tests/common); printed as @@VM-NA.
            "echo \"@@VM-BIN-BEGIN {n}\"\nexport RECLAIM_VM_NA_FILE=/tmp/vm-na-{n}\n\
             timeout -s KILL {t} /opt/tests/{n} --include-ignored --test-threads=1 {}\n\
             st=$?\n[ $st -eq 137 ] && echo \"@@VM-BIN-KILLED {n} after {t} s (--test-timeout)\"\n\
             [ -f /tmp/vm-na-{n} ] && while IFS= read -r l; do echo \"@@VM-NA $l\"; done < /tmp/vm-na-{n}\n\
             echo \"@@VM-BIN-END {n} status=$st\"\n[ $st -eq 0 ] || overall=1\n",
            extra.join(" "),
            t = opts.test_timeout.as_secs()
        ));
    }
    payload
}

/// Why a boot ended without running its whole payload, if it did.
fn guest_death(o: &BootOutcome, opts: &VmOpts) -> Option<String> {
    if o.timed_out {
        return Some(format!(
            "VM timed out after {} s (raise with --timeout)",
            opts.timeout.as_secs()
        ));
    }
    if o.status.is_some() {
        return None;
    }
    let panic = o
        .console
        .iter()
        .find(|l| l.contains("Kernel panic"))
        .map(|l| l.trim().to_owned());
    Some(match panic {
        Some(p) => format!("the guest kernel died: {p}"),
        None => "the VM ended without the end marker (kernel panic or crash?)".to_owned(),
    })
}

fn run_vm_tests(
    ws: &Workspace,
    k: &Kernel,
    stage: &mut Stage,
    art: &Artifacts,
    opts: &VmOpts,
    test_args: &[String],
    phases: &mut Phases,
) -> Result<Summary> {
    if art.vm_tests.is_empty() {
        bail!("no integration tests named tests/vm_*.rs were built: a suite that runs nothing is not a pass");
    }
    for (n, p) in &art.vm_tests {
        stage.add_exe(p, &format!("/opt/tests/{n}"), !opts.keep_debug)?;
    }
    let all: Vec<&str> = art.vm_tests.iter().map(|(n, _)| n.as_str()).collect();
    println!("xtask: VM test binaries: {}", all.join(" "));

    // Results of binaries that ran to their end, from whichever boot.
    let mut results: Vec<BinResult> = Vec::new();
    let mut pending = all.clone();
    let mut deaths: Vec<String> = Vec::new();
    let mut status_failed = false;
    for attempt in 0..=opts.retries {
        let nonce = nonce();
        stage.write_init(&test_payload(&pending, opts, test_args), &nonce)?;
        let (o, log) = pack_and_boot(ws, k, stage, opts, &nonce, "test", phases)?;
        let death = guest_death(&o, opts);
        if death.is_some() || o.status != Some(0) {
            // Full console first, so the summary below stays at the end of the log.
            print_console(&o, &log);
        }
        status_failed |= o.status.is_some_and(|s| s != 0);
        for r in parse_results(&o.console) {
            if r.status.is_some() {
                pending.retain(|n| *n != r.name);
                results.push(r);
            }
        }
        let Some(death) = death else { break };
        println!("xtask: VM boot {} died: {death}", attempt + 1);
        deaths.push(death);
        if pending.is_empty() || attempt == opts.retries {
            break;
        }
        // A guest that dies (soft lockup, panic) is a fault of the emulator
        // or of the guest kernel, not a verdict of a test: run the binaries
        // that never finished once more, in a fresh VM, and say so.
        println!(
            "xtask: RETRY: booting a fresh VM for the {} binaries that never finished: {}",
            pending.len(),
            pending.join(" ")
        );
    }
    results.sort_by_key(|r| all.iter().position(|n| *n == r.name));

    println!("xtask: ===== VM test results (kernel {}) =====", k.kver);
    let (mut passed, mut failed, mut na) = (0, 0, 0);
    for r in &results {
        // One test may report several parts not applicable: count tests.
        let n_na = r
            .not_applicable
            .iter()
            .map(|l| l.split(": ").next().unwrap_or(l))
            .collect::<BTreeSet<_>>()
            .len() as u32;
        println!(
            "xtask:   {:<24} exit {:<5} passed {:>3}  failed {:>3}  n/a {:>2}{}",
            r.name,
            r.status.map_or("none".into(), |s| s.to_string()),
            r.passed.saturating_sub(n_na),
            r.failed,
            n_na,
            if r.failures.is_empty() {
                String::new()
            } else {
                format!("  FAILED: {}", r.failures.join(", "))
            }
        );
        for t in &r.not_applicable {
            println!("xtask:     NOT APPLICABLE on {}: {t}", k.kver);
        }
        passed += r.passed.saturating_sub(n_na);
        failed += r.failed;
        na += n_na;
    }
    for n in &pending {
        println!("xtask:   {n:<24} never finished");
    }
    println!(
        "xtask:   total: {passed} passed, {failed} failed, {na} not applicable, in {} of {} binaries (kernel {})",
        results.len(),
        all.len(),
        k.kver
    );
    for (i, d) in deaths.iter().enumerate() {
        println!("xtask: WARNING: VM boot {} died: {d}", i + 1);
    }
    let bad: Vec<&str> = results
        .iter()
        .filter(|r| r.status != Some(0))
        .map(|r| r.name.as_str())
        .collect();
    let mut sum = Summary {
        passed,
        failed,
        not_applicable: na,
        error: None,
    };
    sum.error = if !pending.is_empty() {
        Some(format!(
            "{} (binaries that never finished: {})",
            deaths.last().map_or("the VM died", |d| d.as_str()),
            pending.join(" ")
        ))
    } else if !bad.is_empty() || status_failed {
        Some(format!("VM test suite failed ({})", bad.join(" ")))
    } else if passed + failed == 0 {
        Some("zero VM tests ran (filtered out or all not applicable?): a suite that runs nothing is not a pass".into())
    } else {
        None
    };
    if sum.error.is_none() {
        println!(
            "xtask: VM tests passed ({passed} tests, {na} not applicable, kernel {}{})",
            k.kver,
            if deaths.is_empty() {
                String::new()
            } else {
                format!(", after {} guest death(s) and a retry", deaths.len())
            }
        );
    }
    Ok(sum)
}

pub fn vm_run(
    ws: &Workspace,
    opts: &VmOpts,
    script: &[String],
    phases: &mut Phases,
) -> Result<i32> {
    if script.is_empty() {
        bail!("vm-run needs a script or command after `--`");
    }
    let (k, mut stage, _art) = prepare(ws, opts, phases, false, "run")?;
    let first = Path::new(&script[0]);
    let payload = if first.is_file() {
        // A host script file: copy it in and run it with its arguments.
        stage.add_path(first, "/opt/run/script")?;
        let args: Vec<String> = script[1..].iter().map(|a| sh_quote(a)).collect();
        format!("sh /opt/run/script {}\noverall=$?\n", args.join(" "))
    } else {
        format!("sh -c {}\noverall=$?\n", sh_quote(&script.join(" ")))
    };
    let nonce = nonce();
    stage.write_init(&payload, &nonce)?;
    let booted = pack_and_boot(ws, &k, &stage, opts, &nonce, "run", phases);
    let _ = fs::remove_dir_all(work_dir(ws, "run"));
    let (o, log) = booted?;
    if let Some(death) = guest_death(&o, opts) {
        print_console(&o, &log);
        bail!("{death}");
    }
    let s = o.status.unwrap_or(-1);
    println!("xtask: guest script exited with status {s}");
    if s != 0 {
        print_console(&o, &log);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_parsing() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn modules_dep_parsing() {
        let d = parse_modules_dep(
            "kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko\nkernel/drivers/block/nbd.ko:\nkernel/x/target-core-user.ko.xz:\n",
        );
        assert_eq!(
            d["xfs"],
            (
                "kernel/fs/xfs/xfs.ko".into(),
                vec!["kernel/lib/libcrc32c.ko".into()]
            )
        );
        assert_eq!(d["nbd"].1, Vec::<String>::new());
        assert!(d.contains_key("target_core_user"));
    }

    #[test]
    fn guest_death_names_the_cause() {
        let opts = VmOpts::default();
        let out = |status, timed_out, lines: &[&str]| BootOutcome {
            status,
            console: lines.iter().map(|s| s.to_string()).collect(),
            timed_out,
            boot_time: None,
            run_time: None,
        };
        assert_eq!(guest_death(&out(Some(0), false, &[]), &opts), None);
        // A failing suite is a verdict, not a death: never retried.
        assert_eq!(guest_death(&out(Some(1), false, &[]), &opts), None);
        let panic = out(
            None,
            false,
            &["[  52.1] Kernel panic - not syncing: softlockup: hung tasks"],
        );
        assert_eq!(
            guest_death(&panic, &opts).as_deref(),
            Some("the guest kernel died: [  52.1] Kernel panic - not syncing: softlockup: hung tasks")
        );
        assert!(guest_death(&out(None, true, &[]), &opts)
            .unwrap()
            .starts_with("VM timed out after 600 s"));
        assert!(guest_death(&out(None, false, &["x"]), &opts)
            .unwrap()
            .contains("without the end marker"));
    }

    #[test]
    fn payload_runs_each_binary_under_a_timeout() {
        let p = test_payload(&["vm_a", "vm_b"], &VmOpts::default(), &["seed".into()]);
        assert!(p.contains(
            "timeout -s KILL 240 /opt/tests/vm_a --include-ignored --test-threads=1 seed\n"
        ));
        assert!(p.contains("@@VM-BIN-END vm_b status=$st"));
        assert_eq!(p.matches("@@VM-BIN-BEGIN").count(), 2);
    }

    #[test]
    fn results_parsing() {
        let lines: Vec<String> = [
            "@@VM-BIN-BEGIN vm_a",
            "running 3 tests",
            "test flags::set ... ok",
            "test flags::clear ... FAILED",
            "test other ... ignored, reason",
            "@@VM-BIN-END vm_a status=101",
            "@@VM-BIN-BEGIN vm_b",
            "test x ... ok",
            "@@VM-BIN-END vm_b status=0",
            "@@VM-BIN-BEGIN vm_c",
            "test noisy ... output of the test",
            "ok",
            "test result: ok. 11 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.67s",
            "@@VM-BIN-END vm_c status=0",
            "@@VM-BIN-BEGIN vm_d",
            "test split ... some output",
            "FAILED",
            "failures:",
            "",
            "---- split stdout ----",
            "    \"a trace line\"",
            "",
            "failures:",
            "    split",
            "",
            "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s",
            "@@VM-BIN-END vm_d status=101",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = parse_results(&lines);
        assert_eq!(r.len(), 4);
        assert_eq!(r[3].failures, vec!["split".to_owned()]);
        assert_eq!(
            (r[0].passed, r[0].failed, r[0].ignored, r[0].status),
            (1, 1, 1, Some(101))
        );
        assert_eq!(r[0].failures, vec!["flags::clear".to_owned()]);
        assert_eq!((r[1].passed, r[1].status), (1, Some(0)));
        assert_eq!((r[2].passed, r[2].failed, r[2].ignored), (11, 0, 2));
    }

    #[test]
    fn not_applicable_is_counted_apart() {
        let lines: Vec<String> = [
            "@@VM-BIN-BEGIN vm_a",
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s",
            "@@VM-NA ublk_queue: CONFIG_BLK_DEV_UBLK is not set",
            "@@VM-BIN-END vm_a status=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = parse_results(&lines);
        assert_eq!(r[0].passed, 3);
        assert_eq!(
            r[0].not_applicable,
            vec!["ublk_queue: CONFIG_BLK_DEV_UBLK is not set".to_owned()]
        );
        let p = test_payload(&["vm_a"], &VmOpts::default(), &[]);
        assert!(p.contains("export RECLAIM_VM_NA_FILE=/tmp/vm-na-vm_a"));
        assert!(p.contains("@@VM-NA $l"));
    }

    #[test]
    fn madison_parsing() {
        let out = "linux-image-cloud-amd64 | 5.10.262-1 | http://m/debian-security bullseye-security/main amd64 Packages\n\
                   linux-image-cloud-amd64 | 5.10.223-1 | http://m/debian bullseye/main amd64 Packages\n\
                   linux-image-cloud-amd64 | 5.10.223-1 | http://n/debian bullseye/main amd64 Packages\n";
        assert_eq!(
            parse_madison(out),
            vec!["5.10.262-1".to_owned(), "5.10.223-1".to_owned()]
        );
    }

    #[test]
    fn kernel_series() {
        assert!(kver_in_series("6.1.0-56-cloud-amd64", "6.1"));
        assert!(!kver_in_series("6.12.118+deb13-cloud-amd64", "6.1"));
        assert!(kver_in_series("6.12.118+deb13-cloud-amd64", "6.12"));
        assert!(kver_in_series("5.10.0-35-cloud-amd64", "5.10"));
        assert_eq!(suite_of("5.10").unwrap(), "bullseye");
        assert_eq!(suite_of("6.12").unwrap(), "trixie");
        assert_eq!(suite_of(DEFAULT_KERNEL).unwrap(), "bookworm");
        assert!(suite_of("4.19").is_err());
    }

    #[test]
    fn host_sources_parsing() {
        let deb822 = "Types: deb\n# comment\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb\nURIs: http://m.example/debian-security\n\
                      Suites: bookworm-security\n\nTypes: deb-src\nURIs: http://x/\nSuites: sid\n";
        assert_eq!(
            parse_deb822_sources(deb822),
            vec![
                (
                    "http://m.example/debian".to_owned(),
                    vec!["bookworm".to_owned(), "bookworm-updates".to_owned()]
                ),
                (
                    "http://m.example/debian-security".to_owned(),
                    vec!["bookworm-security".to_owned()]
                ),
            ]
        );
        let one = "# x\ndeb [signed-by=/k.gpg arch=amd64] http://m/debian bookworm main\ndeb-src http://m/debian bookworm main\n";
        assert_eq!(
            parse_one_line_sources(one),
            vec![("http://m/debian".to_owned(), vec!["bookworm".to_owned()])]
        );
    }
}
