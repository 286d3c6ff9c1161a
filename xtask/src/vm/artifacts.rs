//! Crate binaries: the executables cargo builds for the guest.

use super::*;

/// Executables built by cargo, by target name.
#[derive(Default)]
pub struct Artifacts {
    /// Integration-test targets named `vm_*` (the kernel-truth suites).
    pub vm_tests: Vec<(String, PathBuf)>,
    /// Examples and package binaries, put on the guest's PATH.
    pub bins: Vec<(String, PathBuf)>,
}

pub(super) const PACKAGE: &str = "reclaim-scope";
/// The example daemons and their tests (examples/Cargo.toml).
pub const EXAMPLES_PACKAGE: &str = "reclaim-scope-examples";
pub(super) const UBLK_PACKAGE: &str = "ublk_file";

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
