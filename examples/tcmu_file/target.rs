//! configfs: the user_0 backstore, its uio device, and the tcm_loop LUN
//! that makes it a local SCSI disk. Everything created (or adopted from an
//! earlier instance of the same name) is removed again in reverse order.
//!
//! An instance killed with SIGKILL leaves its objects behind: the backstore
//! (with its ring, commands in flight), the tcm_loop target and LUN, and
//! the SCSI disk. [`Target::stale`] finds them; the new instance opens the
//! old uio device (the kernel allows one opener, so a live instance is
//! detected by `EBUSY`), resets the ring so the commands in flight complete
//! with BUSY and are retried, and either serves the same disk on (same
//! backing store, size and block size: the /dev/sdX stays) or, for a
//! different configuration, serves the old backstore only while its LUN is
//! removed (the SCSI disk's removal sends a final SYNCHRONIZE CACHE, which
//! would otherwise wait for cmd_time_out) and then replaces everything.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const CONFIGFS: &str = "/sys/kernel/config/target";
/// Largest command, in 512-byte sectors (hw_max_sectors): 512 KiB.
pub const MAX_SECTORS: u32 = 1024;

/// The configuration of a backstore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The backing file or device, as given to dev_config (`file/PATH`).
    pub backing: PathBuf,
    pub dev_size: u64,
    pub block_size: u32,
}

/// A backstore left behind by an earlier instance of the same name.
#[derive(Debug)]
pub struct Stale {
    /// Its uio device (none if it was never enabled).
    pub uio: Option<(PathBuf, usize)>,
    /// Its configuration, as far as configfs tells it.
    pub config: Option<Config>,
}

pub struct Target {
    name: String,
    wwn: u64,
    hba: Option<PathBuf>,
    dev: Option<PathBuf>,
    fabric: Option<PathBuf>,
    naa: Option<PathBuf>,
    tpg: Option<PathBuf>,
    lun: Option<PathBuf>,
    link: Option<PathBuf>,
}

fn mkdir(p: &Path) -> Result<PathBuf, String> {
    fs::create_dir(p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
    Ok(p.to_owned())
}

fn put(p: &Path, v: &str) -> Result<(), String> {
    fs::write(p, v).map_err(|e| format!("write {v:?} to {}: {e}", p.display()))
}

fn rmdir(p: Option<PathBuf>) {
    if let Some(p) = p {
        if let Err(e) = fs::remove_dir(&p) {
            eprintln!("tcmu-file: rmdir {}: {e}", p.display());
        }
    }
}

/// Only directories named `ours` (or starting with `prefix` and equal to
/// `ours`) under `dir`: then `dir` was made for us and may go with us.
fn only_child(dir: &Path, ours: &str) -> bool {
    fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .filter(|e| e.path().is_dir())
            .all(|e| e.file_name() == ours)
    })
}

impl Target {
    pub fn new(name: &str, wwn: u64) -> Target {
        Target {
            name: name.to_owned(),
            wwn: wwn & 0xf_ffff_ffff,
            hba: None,
            dev: None,
            fabric: None,
            naa: None,
            tpg: None,
            lun: None,
            link: None,
        }
    }

    fn hba_path() -> PathBuf {
        Path::new(CONFIGFS).join("core/user_0")
    }

    fn dev_path(&self) -> PathBuf {
        Self::hba_path().join(&self.name)
    }

    fn naa_name(&self) -> String {
        format!("naa.5001405{:09x}", self.wwn)
    }

    fn check_configfs() -> Result<(), String> {
        let core = Path::new(CONFIGFS).join("core");
        if core.is_dir() {
            Ok(())
        } else {
            Err(format!(
                "{} missing: run as root `modprobe -a target_core_user tcm_loop sd_mod` and `mount -t configfs none /sys/kernel/config`",
                core.display()
            ))
        }
    }

    /// The backstore of an earlier instance with this name, if any.
    pub fn stale(&self) -> Result<Option<Stale>, String> {
        Self::check_configfs()?;
        let dev = self.dev_path();
        if !dev.is_dir() {
            return Ok(None);
        }
        let uio = match self.find_uio() {
            Some((uio, _)) => Some((Path::new("/dev").join(&uio), map0_size(&uio)?)),
            None => None,
        };
        let config = self.find_uio().and_then(|(_, cfg)| {
            let backing = PathBuf::from(cfg.strip_prefix("file/")?);
            let info = fs::read_to_string(dev.join("info")).ok()?;
            // "... SectorSize: 512 ... Config: file/PATH Size: N ...": the
            // token after "Size:" on its own.
            let mut words = info.split_whitespace();
            words.find(|w| *w == "Size:")?;
            let dev_size = words.next()?.parse().ok()?;
            let block_size = fs::read_to_string(dev.join("attrib/hw_block_size"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some(Config {
                backing,
                dev_size,
                block_size,
            })
        });
        Ok(Some(Stale { uio, config }))
    }

    /// Take over the earlier instance's objects: they are ours to serve
    /// and to remove. The LUN and target are recorded where they exist.
    pub fn adopt(&mut self) {
        let hba = Self::hba_path();
        if only_child(&hba, &self.name) {
            self.hba = Some(hba);
        }
        self.dev = Some(self.dev_path());
        self.adopt_loopback();
    }

    /// Take over the tcm_loop target and LUN an earlier instance left
    /// (there may be some without a backstore: a crash between the steps).
    pub fn adopt_loopback(&mut self) {
        let fabric = Path::new(CONFIGFS).join("loopback");
        let naa = fabric.join(self.naa_name());
        if !naa.is_dir() {
            return;
        }
        if only_child(&fabric, &self.naa_name()) {
            self.fabric = Some(fabric);
        }
        let tpg = naa.join("tpgt_1");
        let lun = tpg.join("lun/lun_0");
        let link = lun.join(&self.name);
        self.naa = Some(naa);
        if tpg.is_dir() {
            self.tpg = Some(tpg);
        }
        if lun.is_dir() {
            self.lun = Some(lun);
        }
        if link.is_symlink() {
            self.link = Some(link);
        }
    }

    /// Drop every recorded object without removing it (they belong to a
    /// live instance after all).
    pub fn forget(&mut self) {
        // Field by field: assigning a new Target would drop (and remove)
        // the old one.
        for p in [
            &mut self.hba,
            &mut self.dev,
            &mut self.fabric,
            &mut self.naa,
            &mut self.tpg,
            &mut self.lun,
            &mut self.link,
        ] {
            *p = None;
        }
    }

    /// Fail the commands the ring holds with BUSY (the initiator retries
    /// them) and empty it: `action/reset_ring 1`.
    pub fn reset_ring(dev: &Path) -> Result<(), String> {
        put(&dev.join("action/reset_ring"), "1")
    }

    /// The backstore's configfs directory (for [`Target::reset_ring`]).
    pub fn dev(&self) -> Option<&Path> {
        self.dev.as_deref()
    }

    /// cmd_time_out (seconds a command may stay in the ring before the
    /// kernel fails it; 0: never) and qfull_time_out (seconds a command may
    /// wait for room in a full ring; -1: as cmd_time_out, 0: fail at once).
    /// The kernel refuses cmd_time_out while the device is exported; then
    /// the value already set stays and is returned as the error.
    pub fn set_timeouts(&self, cmd_time_out: u32, qfull_time_out: i64) -> Result<(), String> {
        let dev = self.dev.as_ref().ok_or("no backstore")?;
        let attrib = dev.join("attrib");
        put(&attrib.join("qfull_time_out"), &qfull_time_out.to_string())?;
        put(&attrib.join("cmd_time_out"), &cmd_time_out.to_string()).map_err(|e| {
            let now = fs::read_to_string(attrib.join("cmd_time_out")).unwrap_or_default();
            format!("{e} (cmd_time_out stays {})", now.trim())
        })
    }

    /// The backstore's (cmd_time_out, qfull_time_out) as the kernel has them.
    pub fn timeouts(&self) -> Option<(String, String)> {
        let attrib = self.dev.as_ref()?.join("attrib");
        let read = |n: &str| {
            fs::read_to_string(attrib.join(n))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        Some((read("cmd_time_out")?, read("qfull_time_out")?))
    }

    /// core/user_0/NAME, configured and enabled; returns its /dev/uioN and
    /// the size of its map 0.
    pub fn create_backstore(
        &mut self,
        cfg: &Config,
        cmd_time_out: u32,
        qfull_time_out: i64,
    ) -> Result<(PathBuf, usize), String> {
        Self::check_configfs()?;
        let hba = Self::hba_path();
        if !hba.exists() {
            self.hba = Some(mkdir(&hba)?);
        }
        let dev = mkdir(&self.dev_path())?;
        self.dev = Some(dev.clone());
        let control = dev.join("control");
        put(&control, &format!("dev_size={}", cfg.dev_size))?;
        put(
            &control,
            &format!("dev_config=file/{}", cfg.backing.display()),
        )?;
        put(&control, &format!("hw_block_size={}", cfg.block_size))?;
        put(&control, &format!("hw_max_sectors={MAX_SECTORS}"))?;
        // No netlink listener here: the kernel must not wait for replies.
        put(&control, "nl_reply_supported=-1")?;
        self.set_timeouts(cmd_time_out, qfull_time_out)?;
        put(&dev.join("enable"), "1")?;

        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some((uio, _)) = self.find_uio() {
                return Ok((Path::new("/dev").join(&uio), map0_size(&uio)?));
            }
            if Instant::now() > deadline {
                return Err(format!("no /sys/class/uio device for {}", dev.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The uio device named `tcm-user/<hba>/<name>/<cfgstring>`, and the
    /// cfgstring.
    fn find_uio(&self) -> Option<(String, String)> {
        for e in fs::read_dir("/sys/class/uio").ok()?.flatten() {
            let name = fs::read_to_string(e.path().join("name")).unwrap_or_default();
            let mut parts = name.trim_end().splitn(4, '/');
            if parts.next() == Some("tcm-user") && parts.nth(1) == Some(self.name.as_str()) {
                let cfg = parts.next().unwrap_or("").to_owned();
                return Some((e.file_name().to_str()?.to_owned(), cfg));
            }
        }
        None
    }

    /// loopback/naa.W/tpgt_1 with an I_T nexus and lun_0 linked to the
    /// backstore: the SCSI disk appears (the kernel scans it in the link's
    /// write, so the handler must already serve). Pieces an earlier
    /// instance left are kept.
    pub fn create_loopback(&mut self) -> Result<(), String> {
        let fabric = Path::new(CONFIGFS).join("loopback");
        if !fabric.exists() {
            self.fabric = Some(mkdir(&fabric)?);
        }
        let naa = fabric.join(self.naa_name());
        if self.naa.is_none() {
            self.naa = Some(mkdir(&naa)?);
        }
        let tpg = naa.join("tpgt_1");
        if self.tpg.is_none() {
            self.tpg = Some(mkdir(&tpg)?);
        }
        if fs::read_to_string(tpg.join("nexus")).map_or(true, |n| n.trim().is_empty()) {
            put(
                &tpg.join("nexus"),
                &format!("naa.5001405{:09x}", self.wwn ^ 0xf_ffff_ffff),
            )?;
        }
        let lun = tpg.join("lun/lun_0");
        if self.lun.is_none() {
            self.lun = Some(mkdir(&lun)?);
        }
        if self.link.is_none() {
            let link = lun.join(&self.name);
            let dev = self.dev.clone().ok_or("no backstore")?;
            std::os::unix::fs::symlink(&dev, &link)
                .map_err(|e| format!("link {} -> {}: {e}", link.display(), dev.display()))?;
            self.link = Some(link);
        }
        Ok(())
    }

    pub fn remove_loopback(&mut self) {
        if let Some(l) = self.link.take() {
            if let Err(e) = fs::remove_file(&l) {
                eprintln!("tcmu-file: unlink {}: {e}", l.display());
            }
        }
        rmdir(self.lun.take());
        // Removing the TPG drops its nexus.
        rmdir(self.tpg.take());
        rmdir(self.naa.take());
        rmdir(self.fabric.take());
    }

    pub fn remove_backstore(&mut self) {
        rmdir(self.dev.take());
        rmdir(self.hba.take());
    }
}

fn map0_size(uio: &str) -> Result<usize, String> {
    let size = fs::read_to_string(Path::new("/sys/class/uio").join(uio).join("maps/map0/size"))
        .map_err(|e| format!("{uio} map0 size: {e}"))?;
    usize::from_str_radix(size.trim().trim_start_matches("0x"), 16)
        .map_err(|e| format!("{uio} map0 size {size:?}: {e}"))
}

impl Drop for Target {
    fn drop(&mut self) {
        self.remove_loopback();
        self.remove_backstore();
    }
}

impl Target {
    /// The sdX the kernel made of our LUN, once it is complete: found by
    /// the SCSI address tcm_loop gives the TPG (configfs `address`,
    /// `host:channel:target`, Linux ≥ 4.5; the LUN is 0), not by INQUIRY
    /// strings, which an earlier instance's disk still being removed would
    /// match as well; the SCSI device `running` and the disk's request
    /// queue registered in sysfs (`queue/`: on 5.10 `/sys/block/sdX`
    /// appears before it, and a client reading `queue/zoned` in between
    /// would find no such file). `None` while it is not there yet, or
    /// before [`Target::create_loopback`] made (or adopted) the TPG.
    pub fn disk(&self) -> Option<String> {
        let tpg = self.tpg.as_deref()?;
        let address = fs::read_to_string(tpg.join("address")).ok()?;
        let sdev = Path::new("/sys/bus/scsi/devices").join(format!("{}:0", address.trim()));
        let state = fs::read_to_string(sdev.join("state")).ok()?;
        if state.trim() != "running" {
            return None;
        }
        fs::read_dir(sdev.join("block"))
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .find(|sd| {
                let queue = Path::new("/sys/block").join(sd).join("queue");
                fs::metadata(queue.join("logical_block_size")).is_ok()
                    && Path::new("/dev").join(sd).exists()
            })
    }
}
