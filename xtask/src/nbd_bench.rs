//! `cargo xtask nbd-bench`: the example NBD server against the reference
//! servers on the same backing file, in the same run (issue 7).
//!
//! Servers: `examples/nbd_server` (release build), `nbdkit -f -U SOCK file
//! FILE` and `qemu-nbd -k SOCK -f raw -t FILE`, each on a unix socket.
//! Client: `qemu-img bench` (4 KiB requests, `-t none`, `-d 1` and `-d 16`,
//! read and `-w` write). Every cell is measured `--rounds` times, rounds
//! interleaved across servers (in an order rotating per round and cell) so
//! a load spike on this shared machine hits all servers alike; the table
//! shows the median IOPS and the ratios.
//! Servers are killed and sockets removed when the command ends, also on
//! error. No assertion: the numbers are for the README and the lead.

use crate::util::{bail, capture, run, which, Context, Result};
use crate::vm::{Workspace, EXAMPLES_PACKAGE};
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    count: u64,
    rounds: usize,
    size_mib: u64,
    dir: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        count: 100_000,
        rounds: 3,
        size_mib: 1024,
        dir: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let mut val = || -> Result<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value").into())
        };
        let num = |v: String| -> Result<u64> {
            v.parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{flag}: `{v}` is not a positive number").into())
        };
        match flag {
            "--count" => o.count = num(val()?)?,
            "--rounds" => o.rounds = num(val()?)? as usize,
            "--size" => o.size_mib = num(val()?)?,
            "--dir" => o.dir = Some(PathBuf::from(val()?)),
            _ => bail!("nbd-bench: unknown option `{a}`; try `cargo xtask help`"),
        }
    }
    Ok(o)
}

/// One server under test; killed (and its socket removed) on drop.
struct Server {
    name: &'static str,
    export: &'static str,
    sock: PathBuf,
    child: Child,
}

impl Server {
    fn start(
        name: &'static str,
        export: &'static str,
        sock: PathBuf,
        log: &Path,
        cmd: &mut Command,
    ) -> Result<Server> {
        let _ = fs::remove_file(&sock);
        let log = fs::File::create(log).ctx(|| format!("cannot create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().ctx(|| "dup log")?)
            .stderr(log)
            .spawn()
            .ctx(|| format!("cannot start {name}"))?;
        let s = Server {
            name,
            export,
            sock,
            child,
        };
        s.wait_ready()?;
        Ok(s)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.sock.exists() && UnixStream::connect(&self.sock).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} did not listen on {} within 20 s",
            self.name,
            self.sock.display()
        )
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///{}?socket={}", self.export, self.sock.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.sock);
    }
}

/// Install `pkg` with apt-get if `bin` is missing.
fn ensure(bin: &str, pkg: &str) -> Result<()> {
    if which(bin).is_some() {
        return Ok(());
    }
    println!("nbd-bench: {bin} missing; installing package {pkg}");
    let apt = || {
        let mut c = Command::new("apt-get");
        c.args(["-o", "DPkg::Lock::Timeout=300"]);
        c
    };
    let mut install = apt();
    install.args(["install", "-y", "--no-install-recommends", pkg]);
    if run(&mut install).is_err() {
        let _ = run(apt().arg("update"));
        run(&mut install).map_err(|e| format!("cannot install {pkg}: {e}"))?;
    }
    if which(bin).is_none() {
        bail!("{bin} still missing after installing {pkg}");
    }
    Ok(())
}

/// A backing file of `size_mib` MiB of non-zero data (reads hit real pages,
/// not holes), reused when it already has the right size.
fn backing_file(path: &Path, size_mib: u64) -> Result<()> {
    if fs::metadata(path).is_ok_and(|m| m.len() == size_mib << 20) {
        return Ok(());
    }
    println!(
        "nbd-bench: writing {size_mib} MiB backing file {}",
        path.display()
    );
    let mut f = fs::File::create(path).ctx(|| format!("cannot create {}", path.display()))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for mib in 0..size_mib {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&(x ^ mib).to_le_bytes());
        }
        f.write_all(&chunk).ctx(|| "write backing file")?;
    }
    f.sync_all().ctx(|| "fsync backing file")?;
    Ok(())
}

#[derive(Clone, Copy)]
struct Cell {
    write: bool,
    depth: u32,
}

impl Cell {
    fn label(self) -> String {
        format!(
            "{} QD{}",
            if self.write { "write" } else { "read" },
            self.depth
        )
    }
}

/// One `qemu-img bench` run; returns IOPS.
fn bench(server: &Server, cell: Cell, count: u64) -> Result<f64> {
    let mut c = Command::new("qemu-img");
    c.args(["bench", "-f", "raw", "-t", "none", "-s", "4096"])
        .arg("-c")
        .arg(count.to_string())
        .arg("-d")
        .arg(cell.depth.to_string());
    if cell.write {
        c.arg("-w");
    }
    c.arg(server.uri());
    let out = capture(&mut c)?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "Run completed in 4.123 seconds."
    let secs: f64 = text
        .split("Run completed in ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .filter(|&s: &f64| s > 0.0)
        .ok_or_else(|| format!("cannot parse qemu-img bench output: {text:?}"))?;
    Ok(count as f64 / secs)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn kiops(v: f64) -> String {
    format!("{:.1}k", v / 1000.0)
}

pub fn main(ws: &Workspace, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    ensure("qemu-img", "qemu-utils")?;
    ensure("qemu-nbd", "qemu-utils")?;
    ensure("nbdkit", "nbdkit")?;
    run(Command::new(&ws.cargo).current_dir(&ws.root).args([
        "build",
        "--release",
        "--package",
        EXAMPLES_PACKAGE,
        "--example",
        "nbd_server",
    ]))?;
    let ours_bin = ws.target.join("release/examples/nbd_server");
    if !ours_bin.is_file() {
        bail!("{} was not built", ours_bin.display());
    }
    let dir = o.dir.clone().unwrap_or_else(|| ws.target.join("nbd-bench"));
    fs::create_dir_all(&dir).ctx(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join("disk.img");
    backing_file(&file, o.size_mib)?;
    let pid = std::process::id();
    let sock = |n: &str| dir.join(format!("{n}-{pid}.sock"));
    let log = |n: &str| dir.join(format!("{n}.log"));

    // Declared in table order; all three listen for the whole run and are
    // killed by Drop on every exit path.
    let servers = [
        Server::start(
            "reclaim-scope nbd_server",
            "disk",
            sock("ours"),
            &log("ours"),
            Command::new(&ours_bin)
                .arg("--file")
                .arg(&file)
                .args(["--listen", "none", "-q", "--unix"])
                .arg(sock("ours")),
        )?,
        Server::start(
            "nbdkit file",
            "",
            sock("nbdkit"),
            &log("nbdkit"),
            Command::new("nbdkit")
                .args(["-f", "-U"])
                .arg(sock("nbdkit"))
                .arg("file")
                .arg(&file),
        )?,
        Server::start(
            "qemu-nbd",
            "",
            sock("qemu-nbd"),
            &log("qemu-nbd"),
            Command::new("qemu-nbd")
                .args(["-f", "raw", "-t", "-k"])
                .arg(sock("qemu-nbd"))
                .arg(&file),
        )?,
    ];
    let warn = fs::read_to_string(log("ours")).unwrap_or_default();
    if let Some(w) = warn.lines().find(|l| l.contains("warning")) {
        println!("nbd-bench: (expected without CAP_SYS_RESOURCE) {w}");
    }

    let cells = [
        Cell {
            write: false,
            depth: 1,
        },
        Cell {
            write: false,
            depth: 16,
        },
        Cell {
            write: true,
            depth: 1,
        },
        Cell {
            write: true,
            depth: 16,
        },
    ];
    println!(
        "nbd-bench: qemu-img bench, 4 KiB, {} requests per cell, {} interleaved round(s), \
         {} MiB backing file {}",
        o.count,
        o.rounds,
        o.size_mib,
        file.display()
    );
    let t0 = Instant::now();
    // results[cell][server] = IOPS per round
    let mut results = vec![vec![Vec::new(); servers.len()]; cells.len()];
    for round in 1..=o.rounds {
        for (ci, &cell) in cells.iter().enumerate() {
            // The order rotates per round and cell: whoever runs first in
            // a cell (cold caches, a CPU still ramping up) is not always
            // the same server.
            let n = servers.len();
            for k in 0..n {
                let si = (k + round + ci) % n;
                let s = &servers[si];
                let iops = bench(s, cell, o.count)?;
                println!(
                    "nbd-bench: round {round} {:<9} {:<26} {:>9.0} IOPS",
                    cell.label(),
                    s.name,
                    iops
                );
                results[ci][si].push(iops);
            }
        }
    }
    let elapsed = t0.elapsed();
    drop(servers);

    println!();
    println!(
        "| 4 KiB, qemu-img bench -t none | reclaim-scope nbd_server | nbdkit file | qemu-nbd | ours / nbdkit | ours / qemu-nbd |"
    );
    println!("|---|---|---|---|---|---|");
    for (ci, cell) in cells.iter().enumerate() {
        let m: Vec<f64> = results[ci].iter_mut().map(|v| median(v)).collect();
        println!(
            "| {} | {} | {} | {} | {:.2}× | {:.2}× |",
            cell.label(),
            kiops(m[0]),
            kiops(m[1]),
            kiops(m[2]),
            m[0] / m[1],
            m[0] / m[2]
        );
    }
    println!(
        "\nnbd-bench: median IOPS of {} round(s), {} requests each; {:.0} s of benchmarking",
        o.rounds,
        o.count,
        elapsed.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_median() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let o = parse(&s(&["--count", "5000", "--rounds=1"])).unwrap();
        assert_eq!((o.count, o.rounds, o.size_mib), (5000, 1, 1024));
        assert!(parse(&s(&["--count", "0"])).is_err());
        assert!(parse(&s(&["--bogus"])).is_err());
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
