//! Kernel: Debian's cloud kernel for a series, downloaded once, its modules.

use super::*;

/// An extracted Debian kernel: vmlinuz plus `root/lib/modules/<kver>`.
pub struct Kernel {
    pub kver: String,
    pub vmlinuz: PathBuf,
    pub root: PathBuf,
}

impl Kernel {
    pub(super) fn moddir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.kver)
    }

    /// Whether the kernel has module `name`, loadable or built in.
    pub(super) fn has_module(&self, name: &str) -> bool {
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

pub(super) const KERNEL_META: &str = "linux-image-cloud-amd64";

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
pub(super) fn kver_in_series(kver: &str, series: &str) -> bool {
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
pub(super) fn host_mirrors() -> Result<(String, String)> {
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
pub(super) fn parse_deb822_sources(text: &str) -> Vec<(String, Vec<String>)> {
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
pub(super) fn parse_one_line_sources(text: &str) -> Vec<(String, Vec<String>)> {
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
pub(super) struct PrivateApt {
    dir: PathBuf,
}

pub(super) const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

impl PrivateApt {
    pub(super) fn new(ws: &Workspace, suite: &str) -> Result<PrivateApt> {
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
    pub(super) fn download(&self, dir: &Path, pkg: &str) -> Result<PathBuf> {
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
pub(super) fn parse_madison(out: &str) -> Vec<String> {
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
pub(super) fn prepare_modules(root: &Path, kver: &str) -> Result<()> {
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

pub(super) fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
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
