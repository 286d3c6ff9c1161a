//! `cargo xtask vm-bench`: the scope and `NoFsFile` benches inside the VM,
//! where PID 1 has `CAP_SYS_RESOURCE` and the outermost scope's real
//! `prctl` pair can be measured.
//!
//! Two kinds of figures, both from one boot:
//! - **paired ratios** printed by the benches themselves (`benches/scope.rs`,
//!   `benches/fs.rs`): alternating blocks of the measured path and its
//!   baseline, median of the per-round ratios — the only timing figure that
//!   survives TCG's noise;
//! - **user-space instruction counts** from callgrind (valgrind copied from
//!   the host: the launcher plus the callgrind tool): for each path,
//!   `benches/scope.rs`'s callgrind mode runs `HI` and `LO` iterations of a
//!   `callgrind_loop_*` function with collection toggled on inside it only;
//!   `(Ir(HI) − Ir(LO)) / (HI − LO)` is the count per iteration, start-up
//!   and first-entry work cancelled. The guest prints each run's `totals:`
//!   and the `HI` profile; the host keeps the profiles in
//!   `target/vm-bench/` and prints `callgrind_annotate`'s top functions for
//!   the outermost scope.

use crate::util::{bail, capture_stdout, sh_quote, which, Context, Phases, Result};
use crate::vm::{self, Stage, VmOpts, Workspace};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Iterations of the long and the short callgrind run of each path.
const HI: u64 = 20_000;
const LO: u64 = 10_000;

/// The callgrind paths of `benches/scope.rs`, with the names printed.
const PATHS: &[(&str, &str)] = &[
    ("empty", "empty loop"),
    ("raw_pair", "raw prctl pair"),
    ("outermost", "outermost scope"),
    ("nested", "nested scope"),
    ("flagged", "already-flagged scope"),
];

/// What valgrind needs besides its launcher (`/usr/bin/valgrind`):
/// the tool, the core preload and the default suppressions.
const VALGRIND_LIB: &str = "/usr/libexec/valgrind";
const VALGRIND_FILES: &[&str] = &[
    "callgrind-amd64-linux",
    "vgpreload_core-amd64-linux.so",
    "default.supp",
];

pub fn main(ws: &Workspace, mut opts: VmOpts, bench_args: &[String]) -> Result<()> {
    let mut phases = Phases::default();
    if !opts.apt.iter().any(|p| p == "valgrind") {
        opts.apt.push("valgrind".into());
    }
    phases.time("install", || vm::ensure_host_tools(&opts))?;
    let k = phases.time("kernel", || vm::ensure_kernel(ws, &opts))?;
    let benches = phases.time("build", || build_benches(ws))?;
    let work = vm::work_dir(ws, "bench");
    let r = run(ws, &k, &opts, &benches, bench_args, &work, &mut phases);
    let _ = fs::remove_dir_all(&work);
    phases.report();
    r
}

/// `cargo bench --no-run` of the scope and fs benches (release, with the
/// unstable hooks they need); returns (bench name, executable).
fn build_benches(ws: &Workspace) -> Result<Vec<(String, PathBuf)>> {
    let mut c = Command::new(&ws.cargo);
    c.current_dir(&ws.root).args([
        "bench",
        "--no-run",
        "-p",
        "reclaim-scope",
        "--features",
        "unstable-bench",
        "--bench",
        "scope",
        "--bench",
        "fs",
        "--message-format=json",
    ]);
    let mut v: Vec<(String, PathBuf)> = vm::cargo_executables(&mut c)?
        .into_iter()
        .filter(|(kind, _, _)| kind == "bench")
        .map(|(_, name, exe)| (name, exe))
        .collect();
    v.sort();
    v.dedup();
    for want in ["scope", "fs"] {
        if !v.iter().any(|(n, _)| n == want) {
            bail!("cargo built no `{want}` bench");
        }
    }
    Ok(v)
}

/// The guest's payload: both benches (criterion, then their paired
/// ratios), then the callgrind runs.
fn payload(bench_args: &[String]) -> String {
    let extra: Vec<String> = bench_args.iter().map(|a| sh_quote(a)).collect();
    let extra = extra.join(" ");
    let mut p = String::from("st=0\nexport VALGRIND_LIB=/usr/libexec/valgrind\n");
    for b in ["scope", "fs"] {
        p.push_str(&format!(
            "echo \"@@BENCH-BEGIN {b}\"\n/opt/bench/{b} --bench {extra} 2>&1 || st=1\n\
             echo \"@@BENCH-END {b}\"\n"
        ));
    }
    for (path, _) in PATHS {
        for n in [HI, LO] {
            let out = format!("/tmp/cg.{path}.{n}");
            p.push_str(&format!(
                "SCOPE_BENCH_CALLGRIND={path} SCOPE_BENCH_ITERS={n} valgrind --tool=callgrind \
                 --toggle-collect='*callgrind_loop*' --callgrind-out-file={out} \
                 /opt/bench/scope --bench >/tmp/cg.log 2>&1 || {{ st=1; cat /tmp/cg.log; }}\n\
                 echo \"@@CG {path} {n} $(sed -n 's/^totals: *//p' {out} 2>/dev/null)\"\n"
            ));
        }
        p.push_str(&format!(
            "echo \"@@CGFILE-BEGIN {path}\"\ncat /tmp/cg.{path}.{HI}\necho \"@@CGFILE-END {path}\"\n"
        ));
    }
    p.push_str("overall=$st\n");
    p
}

fn run(
    ws: &Workspace,
    k: &vm::Kernel,
    opts: &VmOpts,
    benches: &[(String, PathBuf)],
    bench_args: &[String],
    work: &Path,
    phases: &mut Phases,
) -> Result<()> {
    let mut stage = Stage::new(work.join("stage"))?;
    stage.add_busybox()?;
    for (name, exe) in benches {
        // Symbols stay: callgrind names the functions by them.
        stage.add_exe(exe, &format!("/opt/bench/{name}"), false)?;
    }
    // Debian's /usr/bin/valgrind is a shell wrapper around valgrind.bin (the
    // launcher, dynamically linked): the guest gets the launcher under the
    // plain name, with its libraries.
    let valgrind = which("valgrind").ok_or("valgrind not found after installing it")?;
    let launcher = valgrind.with_file_name("valgrind.bin");
    let launcher = if launcher.is_file() {
        launcher
    } else {
        valgrind
    };
    stage.add_exe(&launcher, "/usr/bin/valgrind", false)?;
    for f in VALGRIND_FILES {
        let src = Path::new(VALGRIND_LIB).join(f);
        if !src.is_file() {
            bail!("{} missing (package valgrind)", src.display());
        }
        stage.add_path(&src, &format!("{VALGRIND_LIB}/{f}"))?;
    }
    let nonce = vm::nonce();
    stage.write_init(&payload(bench_args), &nonce)?;
    let ir = work.join("initramfs.cpio.gz");
    let size = phases.time("initramfs", || stage.pack(&ir))?;
    println!("xtask: initramfs {:.1} MiB", size as f64 / 1048576.0);
    let log = ws.target.join("vm").join("console-bench.log");
    let t = std::time::Instant::now();
    let o = vm::boot(k, &ir, opts, &nonce, &log);
    phases.add("boot+run", t.elapsed());
    let o = o?;
    let Some(status) = o.status else {
        vm::print_console(&o, &log);
        bail!("the VM ended without the end marker (timeout or guest crash)");
    };
    let out_dir = ws.target.join("vm-bench");
    fs::create_dir_all(&out_dir).ctx(|| format!("cannot create {}", out_dir.display()))?;
    let summary = summarize(&o.console, &out_dir)?;
    println!("xtask: ===== vm-bench ({}) =====", k.kver);
    for l in &summary {
        println!("{l}");
    }
    if status != 0 {
        bail!(
            "a bench or callgrind run failed in the guest (status {status}); console in {}",
            log.display()
        );
    }
    Ok(())
}

/// The summary lines: the benches' paired ratios, the instruction counts,
/// and callgrind_annotate's view of the outermost scope.
fn summarize(console: &[String], out_dir: &Path) -> Result<Vec<String>> {
    let mut lines: Vec<String> = console
        .iter()
        .filter_map(|l| l.find("paired ratio ").map(|i| l[i..].trim().to_owned()))
        .collect();
    if !lines.iter().any(|l| {
        l.starts_with("paired ratio outermost scope / raw prctl pair: ")
            && !l.contains("not measured")
    }) {
        bail!(
            "the scope bench printed no outermost paired ratio (no CAP_SYS_RESOURCE in the guest?)"
        );
    }
    let totals = parse_totals(console);
    let per_iter = |p: &str| -> Result<f64> {
        match (
            totals.get(&(p.to_owned(), HI)),
            totals.get(&(p.to_owned(), LO)),
        ) {
            (Some(hi), Some(lo)) => Ok((*hi as f64 - *lo as f64) / (HI - LO) as f64),
            _ => bail!("no callgrind totals for path `{p}` (valgrind failed in the guest?)"),
        }
    };
    let raw = per_iter("raw_pair")?;
    let outer = per_iter("outermost")?;
    lines.push(format!(
        "instructions per iteration: raw prctl pair {raw:.0}, outermost scope {outer:.0} ({:+.0})",
        outer - raw
    ));
    let empty = per_iter("empty")?;
    let nested = per_iter("nested")?;
    let flagged = per_iter("flagged")?;
    lines.push(format!(
        "instructions per iteration: empty loop {empty:.0}, nested scope {nested:.0} ({:+.0}), \
         already-flagged scope {flagged:.0} ({:+.0})",
        nested - empty,
        flagged - empty
    ));
    lines.push(format!(
        "(callgrind, user space: (Ir of {HI} iterations − Ir of {LO}) / {}; profiles in {})",
        HI - LO,
        out_dir.display()
    ));
    for (path, _) in PATHS {
        let file = out_dir.join(format!("callgrind.out.{path}"));
        let text = extract_file(console, path);
        if text.is_empty() {
            continue;
        }
        fs::write(&file, text).ctx(|| format!("cannot write {}", file.display()))?;
        if *path == "outermost" && which("callgrind_annotate").is_some() {
            let a = capture_stdout(
                Command::new("callgrind_annotate")
                    .args(["--auto=no", "--threshold=99"])
                    .arg(&file),
            )?;
            lines.push(format!(
                "callgrind_annotate {} (exclusive Ir of {HI} iterations):",
                file.display()
            ));
            lines.extend(
                a.lines()
                    .skip_while(|l| !l.contains("file:function"))
                    .skip(2)
                    .take_while(|l| !l.trim().is_empty())
                    .take(20)
                    .map(|l| format!("  {l}")),
            );
        }
    }
    Ok(lines)
}

/// `@@CG <path> <iterations> <Ir>` lines.
fn parse_totals(console: &[String]) -> BTreeMap<(String, u64), u64> {
    let mut m = BTreeMap::new();
    for l in console {
        let Some(rest) = l.split("@@CG ").nth(1) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let [path, n, ir] = f[..] {
            if let (Ok(n), Ok(ir)) = (n.parse(), ir.parse()) {
                m.insert((path.to_owned(), n), ir);
            }
        }
    }
    m
}

/// The lines between `@@CGFILE-BEGIN <path>` and `@@CGFILE-END <path>`.
fn extract_file(console: &[String], path: &str) -> String {
    let begin = format!("@@CGFILE-BEGIN {path}");
    let end = format!("@@CGFILE-END {path}");
    let mut out = String::new();
    let mut inside = false;
    for l in console {
        if l.contains(&begin) {
            inside = true;
        } else if l.contains(&end) {
            inside = false;
        } else if inside {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn totals_and_files_are_parsed() {
        let c = lines(&[
            "@@CG raw_pair 20000 1360000",
            "@@CG raw_pair 10000 680000",
            "@@CG outermost 20000 ",
            "@@CGFILE-BEGIN raw_pair",
            "events: Ir",
            "fn=(1) x",
            "@@CGFILE-END raw_pair",
        ]);
        let t = parse_totals(&c);
        assert_eq!(t[&("raw_pair".to_owned(), 20000)], 1_360_000);
        assert_eq!(t.len(), 2, "an empty total (valgrind failed) is no total");
        assert_eq!(extract_file(&c, "raw_pair"), "events: Ir\nfn=(1) x\n");
        assert_eq!(extract_file(&c, "outermost"), "");
    }

    #[test]
    fn payload_runs_every_path_twice_and_both_benches() {
        let p = payload(&["none".into()]);
        assert!(p.contains("/opt/bench/scope --bench none 2>&1"));
        assert!(p.contains("/opt/bench/fs --bench none 2>&1"));
        for (path, _) in PATHS {
            assert!(p.contains(&format!(
                "SCOPE_BENCH_CALLGRIND={path} SCOPE_BENCH_ITERS={HI} "
            )));
            assert!(p.contains(&format!(
                "SCOPE_BENCH_CALLGRIND={path} SCOPE_BENCH_ITERS={LO} "
            )));
        }
        assert!(p.ends_with("overall=$st\n"));
    }

    #[test]
    fn summary_needs_the_outermost_ratio() {
        let dir = std::env::temp_dir().join(format!("xtask-vm-bench-{}", std::process::id()));
        let c = lines(&["paired ratio outermost scope / raw prctl pair: not measured: no cap"]);
        assert!(summarize(&c, &dir).is_err());
    }
}
