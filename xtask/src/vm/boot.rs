//! Boot: QEMU/TCG with a hard timeout, the console log.

use super::*;

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
