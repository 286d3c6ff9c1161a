//! configfs: the user_0 backstore, its uio device, and the tcm_loop LUN
//! that makes it a local SCSI disk. Everything created is removed again in
//! reverse order.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const CONFIGFS: &str = "/sys/kernel/config/target";
/// Largest command, in 512-byte sectors (hw_max_sectors): 512 KiB.
pub const MAX_SECTORS: u32 = 1024;

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

    /// core/user_0/NAME, configured and enabled; returns its /dev/uioN and
    /// the size of its map 0.
    pub fn create_backstore(
        &mut self,
        backing: &Path,
        dev_size: u64,
        block_size: u32,
    ) -> Result<(PathBuf, usize), String> {
        let core = Path::new(CONFIGFS).join("core");
        if !core.is_dir() {
            return Err(format!(
                "{} missing: modprobe target_core_user tcm_loop, mount configfs, run as root",
                core.display()
            ));
        }
        let hba = core.join("user_0");
        if !hba.exists() {
            self.hba = Some(mkdir(&hba)?);
        }
        let dev = mkdir(&hba.join(&self.name))?;
        self.dev = Some(dev.clone());
        let control = dev.join("control");
        put(&control, &format!("dev_size={dev_size}"))?;
        put(&control, &format!("dev_config=file/{}", backing.display()))?;
        put(&control, &format!("hw_block_size={block_size}"))?;
        put(&control, &format!("hw_max_sectors={MAX_SECTORS}"))?;
        // No netlink listener here: the kernel must not wait for replies.
        put(&control, "nl_reply_supported=-1")?;
        put(&dev.join("enable"), "1")?;

        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(uio) = self.find_uio() {
                let size = fs::read_to_string(
                    Path::new("/sys/class/uio")
                        .join(&uio)
                        .join("maps/map0/size"),
                )
                .map_err(|e| format!("{uio} map0 size: {e}"))?;
                let size = usize::from_str_radix(size.trim().trim_start_matches("0x"), 16)
                    .map_err(|e| format!("{uio} map0 size {size:?}: {e}"))?;
                return Ok((Path::new("/dev").join(uio), size));
            }
            if Instant::now() > deadline {
                return Err(format!("no /sys/class/uio device for {}", dev.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The uio device named `tcm-user/<hba>/<name>/<cfgstring>`.
    fn find_uio(&self) -> Option<String> {
        for e in fs::read_dir("/sys/class/uio").ok()?.flatten() {
            let name = fs::read_to_string(e.path().join("name")).unwrap_or_default();
            let mut parts = name.trim_end().splitn(4, '/');
            if parts.next() == Some("tcm-user") && parts.nth(1) == Some(self.name.as_str()) {
                return e.file_name().to_str().map(str::to_owned);
            }
        }
        None
    }

    /// loopback/naa.W/tpgt_1 with an I_T nexus and lun_0 linked to the
    /// backstore: the SCSI disk appears (the kernel scans it in the link's
    /// write, so the handler must already serve).
    pub fn create_loopback(&mut self) -> Result<(), String> {
        let fabric = Path::new(CONFIGFS).join("loopback");
        if !fabric.exists() {
            self.fabric = Some(mkdir(&fabric)?);
        }
        let naa = mkdir(&fabric.join(format!("naa.5001405{:09x}", self.wwn)))?;
        self.naa = Some(naa.clone());
        let tpg = mkdir(&naa.join("tpgt_1"))?;
        self.tpg = Some(tpg.clone());
        put(
            &tpg.join("nexus"),
            &format!("naa.5001405{:09x}", self.wwn ^ 0xf_ffff_ffff),
        )?;
        let lun = mkdir(&tpg.join("lun/lun_0"))?;
        self.lun = Some(lun.clone());
        let link = lun.join(&self.name);
        let dev = self.dev.clone().ok_or("no backstore")?;
        std::os::unix::fs::symlink(&dev, &link)
            .map_err(|e| format!("link {} -> {}: {e}", link.display(), dev.display()))?;
        self.link = Some(link);
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

impl Drop for Target {
    fn drop(&mut self) {
        self.remove_loopback();
        self.remove_backstore();
    }
}

/// The sdX whose INQUIRY came from us, if it is there yet.
pub fn find_disk() -> Option<String> {
    for e in fs::read_dir("/sys/block").ok()?.flatten() {
        let model = fs::read_to_string(e.path().join("device/model")).unwrap_or_default();
        let vendor = fs::read_to_string(e.path().join("device/vendor")).unwrap_or_default();
        if model.trim() == "TCMU-FILE" && vendor.trim() == "RSCOPE" {
            return e.file_name().to_str().map(str::to_owned);
        }
    }
    None
}
