//! Commands: `vm-test`, `vm-run` and the pieces they share.

use super::*;

/// Everything before the boot: tools, kernel, binaries, initramfs.
pub(super) fn prepare(
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
/// for examples/tests/vm_zoned.rs.
pub(super) const FETCHED_BINS: &[(&str, &str, &str, &str)] =
    &[("dmzadm", "trixie", "dm-zoned-tools", "usr/sbin/dmzadm")];

/// Whether `bin` comes from [`FETCHED_BINS`] (no host package installs it).
pub(super) fn is_fetched(bin: &str) -> bool {
    FETCHED_BINS.iter().any(|f| f.0 == bin)
}

/// A [`FETCHED_BINS`] binary, downloaded and unpacked on first use; `None`
/// (with the reason printed) when it is not one or cannot be had.
pub(super) fn fetched_host_bin(ws: &Workspace, bin: &str) -> Option<PathBuf> {
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

pub(super) fn pack_and_boot(
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
pub(super) fn test_payload(bins: &[&str], opts: &VmOpts, test_args: &[String]) -> String {
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
pub(super) fn guest_death(o: &BootOutcome, opts: &VmOpts) -> Option<String> {
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

pub(super) fn run_vm_tests(
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
