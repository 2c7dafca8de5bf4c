//! The `devmapper` snapshotter: each snapshot is a thin device of a device-mapper thin pool
//! that the host has set up (`pool_name`). A snapshot without a parent gets a fresh thin device
//! of `base_image_size` with a new filesystem; a child is a thin snapshot of its parent's
//! device, so nothing is copied. Mounts are the device (`/dev/mapper/<pool>-snap-<id>`) with
//! its filesystem type. Committed devices are unloaded; the pool keeps their blocks.

pub mod dmsetup;
pub mod pool;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::local::Driver;
use crate::storage::Snapshot;
use crate::{Info, Kind, Mount, SnapshotError, Usage};
use pool::{Device, PoolStore, State};

/// The label that tells a devmapper snapshot's filesystem, as containerd's.
pub const FS_TYPE_LABEL: &str = "containerd.io/snapshot/devmapper/fstype";

/// What the devmapper snapshotter is told, from `[plugins."io.containerd.snapshotter.v1.devmapper"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevmapperSettings {
    pub pool_name: String,
    /// Size of every thin device, in bytes.
    pub base_image_size: u64,
    pub async_remove: bool,
    pub discard_blocks: bool,
    pub fs_type: String,
    pub fs_options: String,
}

impl DevmapperSettings {
    /// Checks the configured values as containerd does; every problem is named.
    pub fn parse(
        pool_name: &str,
        base_image_size: &str,
        async_remove: bool,
        discard_blocks: bool,
        fs_type: &str,
        fs_options: &str,
    ) -> Result<Self, String> {
        let size = parse_size(base_image_size).ok_or_else(|| {
            format!("failed to parse base image size: '{base_image_size}': invalid size: '{base_image_size}'")
        })?;
        let fs_type = if fs_type.is_empty() { "ext4" } else { fs_type };
        let mut problems = Vec::new();
        if pool_name.is_empty() {
            problems.push("pool_name is required".to_owned());
        }
        if !matches!(fs_type, "ext4" | "ext2" | "xfs") {
            problems.push(format!("unsupported Filesystem Type: \"{fs_type}\""));
        }
        if size < dmsetup::SECTOR_SIZE {
            problems.push(format!("base_image_size {base_image_size} is too small"));
        }
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(DevmapperSettings {
            pool_name: pool_name.to_owned(),
            base_image_size: size - size % dmsetup::SECTOR_SIZE,
            async_remove,
            discard_blocks,
            fs_type: fs_type.to_owned(),
            fs_options: fs_options.to_owned(),
        })
    }
}

/// A size as Docker's and containerd's configs write them: a number, optionally with a
/// fraction, then an optional unit `k`, `m`, `g`, `t` or `p` (powers of 1024), an optional `i`
/// and an optional `b`, any case: `10G`, `10GB`, `512MiB`, `1.5g`, `4096`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let mut unit = unit.trim_start_matches(' ').to_ascii_lowercase();
    if unit.ends_with('b') {
        unit.pop();
    }
    if unit.len() == 2 && unit.ends_with('i') {
        unit.pop();
    }
    let shift = match unit.as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return None,
    };
    let bytes = value * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

pub struct Devmapper {
    settings: DevmapperSettings,
    root: PathBuf,
    devices: PoolStore,
    /// Set once the first cleanup (at open) has loaded the devices of live snapshots.
    loaded: std::sync::atomic::AtomicBool,
}

impl Devmapper {
    /// Opens the snapshotter's device records in `root` after checking that device-mapper
    /// answers and that the pool exists.
    pub fn new(root: &Path, settings: DevmapperSettings) -> Result<Self, SnapshotError> {
        dmsetup::version().map_err(SnapshotError::io("devmapper: dmsetup version"))?;
        let pool = dmsetup::device_path(&settings.pool_name);
        match dmsetup::exists(&settings.pool_name) {
            Ok(true) => {}
            Ok(false) => {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "failed to query pool \"{pool}\": the device does not exist"
                )))
            }
            Err(e) => {
                return Err(SnapshotError::io(format!(
                    "failed to query pool \"{pool}\""
                ))(e))
            }
        }
        let devices = PoolStore::open(&root.join(format!("{}.db", settings.pool_name)))?;
        Ok(Devmapper {
            settings,
            root: root.to_path_buf(),
            devices,
            loaded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The device-mapper name of a snapshot's device, as containerd names them.
    fn device_name(&self, snapshot_id: &str) -> String {
        format!("{}-snap-{snapshot_id}", self.settings.pool_name)
    }

    fn pool(&self) -> &str {
        &self.settings.pool_name
    }

    /// Records, makes and loads the device of snapshot `id`: a fresh thin device with a new
    /// filesystem, or a snapshot of `origin`'s.
    fn make_device(&self, id: &str, origin: Option<&str>) -> io::Result<()> {
        let name = self.device_name(id);
        let origin_name = origin.map(|o| self.device_name(o)).unwrap_or_default();
        let origin_device = origin
            .map(|_| self.devices.get(&origin_name).map_err(io::Error::other))
            .transpose()?;
        let record = Device {
            snapshot: id.to_owned(),
            thin_id: 0,
            size: origin_device
                .as_ref()
                .map_or(self.settings.base_image_size, |o| o.size),
            fs_type: origin_device
                .as_ref()
                .map_or(self.settings.fs_type.clone(), |o| o.fs_type.clone()),
            origin: origin_name,
            shared: 0,
            state: State::Creating,
        };
        if self.devices.get(&name).is_ok() {
            // Left by a create whose snapshot record never got written.
            self.remove_device(&name)?;
        }
        let record = self.devices.add(&name, record).map_err(io::Error::other)?;
        let made = match &origin_device {
            None => dmsetup::create_thin(self.pool(), record.thin_id)
                .and_then(|()| dmsetup::activate(self.pool(), &name, record.thin_id, record.size))
                .and_then(|()| self.make_filesystem(&name, &record.fs_type)),
            Some(o) => self
                .snapshot_of(&record.origin, o, record.thin_id)
                .and_then(|()| dmsetup::activate(self.pool(), &name, record.thin_id, record.size)),
        };
        if let Err(e) = made {
            if let Err(undo) = self.remove_device(&name) {
                tracing::warn!("devmapper: undoing {name}: {undo}");
            }
            return Err(e);
        }
        let shared = dmsetup::mapped_bytes(&name)?;
        self.devices
            .update(&name, |d| {
                d.shared = shared;
                d.state = State::Ready;
            })
            .map_err(io::Error::other)
    }

    /// Thin snapshot `id` of the device `origin_name`; a loaded origin is suspended meanwhile so
    /// that the snapshot sees all of its writes.
    fn snapshot_of(&self, origin_name: &str, origin: &Device, id: u32) -> io::Result<()> {
        if !dmsetup::exists(origin_name)? {
            return dmsetup::create_snapshot(self.pool(), id, origin.thin_id);
        }
        dmsetup::suspend(origin_name)?;
        let made = dmsetup::create_snapshot(self.pool(), id, origin.thin_id);
        let resumed = dmsetup::resume(origin_name);
        made.and(resumed)
    }

    /// A new filesystem on the device, without `lost+found` (a snapshot starts empty).
    fn make_filesystem(&self, name: &str, fs_type: &str) -> io::Result<()> {
        let path = dmsetup::device_path(name);
        let mut args: Vec<&str> = Vec::new();
        if fs_type == "xfs" {
            args.extend(self.settings.fs_options.split_whitespace());
        } else {
            let options = if self.settings.fs_options.is_empty() && fs_type == "ext4" {
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0"
            } else {
                &self.settings.fs_options
            };
            args.push("-q");
            if !options.is_empty() {
                args.extend(["-E", options]);
            }
        }
        args.push(&path);
        let mkfs = format!("mkfs.{fs_type}");
        let package = if fs_type == "xfs" {
            "xfsprogs"
        } else {
            "e2fsprogs"
        };
        crate::host::run_tool(&mkfs, package, &args)?
            .map_err(|e| io::Error::other(format!("{mkfs} couldn't initialize {path:?}: {e}")))?;
        let at = self.root.join(format!("mkfs-{name}"));
        std::fs::create_dir_all(&at)?;
        let mount = Mount {
            r#type: fs_type.to_owned(),
            source: path,
            target: String::new(),
            options: mount_options(fs_type, Kind::Active),
        };
        crate::mount::mount_all(std::slice::from_ref(&mount), &at)?;
        let removed = match std::fs::remove_dir(at.join("lost+found")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        crate::mount::unmount(&at)?;
        std::fs::remove_dir(&at)?;
        removed
    }

    /// Unloads the device `name`, waiting for its users to let go (a commit unloads it
    /// deferred instead).
    fn unload(&self, name: &str) -> io::Result<()> {
        if !dmsetup::exists(name)? {
            return Ok(());
        }
        if self.settings.discard_blocks {
            if let Err(e) = dmsetup::discard(name) {
                tracing::warn!("devmapper: discarding {name}: {e}");
            }
        }
        retry_busy(|| dmsetup::remove(name, false, true))
    }

    /// Unloads the device `name`, deletes it from the pool and forgets it.
    fn remove_device(&self, name: &str) -> io::Result<()> {
        let device = match self.devices.get(name) {
            Ok(d) => d,
            Err(SnapshotError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(io::Error::other(e)),
        };
        self.unload(name)?;
        retry_busy(|| dmsetup::delete(self.pool(), device.thin_id))?;
        self.devices.remove(name).map_err(io::Error::other)
    }
}

/// Runs `f` again while the kernel says the device is busy, for up to ten seconds.
fn retry_busy(mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        match f() {
            Err(e)
                if attempts < 100
                    && dmsetup::dmsetup_error(&e).is_some_and(dmsetup::DmsetupError::busy) =>
            {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn mount_options(fs_type: &str, kind: Kind) -> Vec<String> {
    let mut options = Vec::new();
    if fs_type == "xfs" {
        // Every snapshot of a device carries the same filesystem UUID.
        options.push("nouuid".to_owned());
    }
    // Never none: `ctr snapshots mounts` prints `-o` and the options joined, which an empty
    // list leaves without its argument.
    options.push(if kind == Kind::Active { "rw" } else { "ro" }.to_owned());
    options
}

impl Driver for Devmapper {
    fn create(&self, s: &Snapshot) -> io::Result<()> {
        self.make_device(&s.id, s.parent_ids.first().map(String::as_str))
    }

    fn mounts(&self, s: &Snapshot) -> Vec<Mount> {
        let name = self.device_name(&s.id);
        let fs_type = self
            .devices
            .get(&name)
            .map_or_else(|_| self.settings.fs_type.clone(), |d| d.fs_type);
        vec![Mount {
            options: mount_options(&fs_type, s.kind),
            r#type: fs_type,
            source: dmsetup::device_path(&name),
            target: String::new(),
        }]
    }

    fn commit(&self, id: &str) -> io::Result<Usage> {
        let name = self.device_name(id);
        let usage = self.usage(id)?;
        // Suspending flushes what is still queued for the device.
        dmsetup::suspend(&name)?;
        dmsetup::resume(&name)?;
        retry_busy(|| dmsetup::remove(&name, true, false))?;
        Ok(usage)
    }

    fn detach(&self, id: &str, _kind: Kind, _has_parent: bool) -> io::Result<Option<PathBuf>> {
        let name = self.device_name(id);
        self.unload(&name)?;
        match self.devices.update(&name, |d| d.state = State::Removing) {
            Err(SnapshotError::NotFound(_)) | Ok(()) => Ok(None),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    fn purge(&self, id: &str, _staged: Option<PathBuf>) -> io::Result<()> {
        if self.settings.async_remove {
            // Cleanup deletes devices left Removing.
            return Ok(());
        }
        self.remove_device(&self.device_name(id))
    }

    fn usage(&self, id: &str) -> io::Result<Usage> {
        let name = self.device_name(id);
        let shared = self.devices.get(&name).map_err(io::Error::other)?.shared;
        let mapped = dmsetup::mapped_bytes(&name)?;
        Ok(Usage {
            size: mapped.saturating_sub(shared) as i64,
            inodes: 0,
        })
    }

    fn cleanup(&self, live: &HashMap<String, Kind>) -> io::Result<()> {
        let devices = self.devices.all().map_err(io::Error::other)?;
        // The first cleanup runs at open: after a reboot (or a removal whose record stayed),
        // the devices of active snapshots and views are loaded again.
        let at_open = !self.loaded.swap(true, std::sync::atomic::Ordering::SeqCst);
        for (name, device) in devices {
            match live.get(&device.snapshot) {
                None => self.remove_device(&name)?,
                Some(Kind::Active | Kind::View) if at_open && !dmsetup::exists(&name)? => {
                    dmsetup::activate(self.pool(), &name, device.thin_id, device.size)?;
                    if device.state != State::Ready {
                        self.devices
                            .update(&name, |d| d.state = State::Ready)
                            .map_err(io::Error::other)?;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn computed_labels(&self, id: &str, info: &mut Info) {
        if let Ok(device) = self.devices.get(&self.device_name(id)) {
            info.labels
                .entry(FS_TYPE_LABEL.to_owned())
                .or_insert(device.fs_type);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_containerd_reads_them() {
        assert_eq!(parse_size("10G"), Some(10 << 30));
        assert_eq!(parse_size("10GB"), Some(10 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("64mb"), Some(64 << 20));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("8 M"), Some(8 << 20));
        for bad in ["", "G", "10X", "1..5G", ".5G", "10GiBB", "-1G"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn settings_name_every_problem() {
        let err = DevmapperSettings::parse("", "10G", false, false, "btrfs", "").unwrap_err();
        assert!(err.contains("pool_name is required"), "{err}");
        assert!(
            err.contains("unsupported Filesystem Type: \"btrfs\""),
            "{err}"
        );
        let err = DevmapperSettings::parse("p", "", false, false, "", "").unwrap_err();
        assert_eq!(err, "failed to parse base image size: '': invalid size: ''");
        let ok = DevmapperSettings::parse("p", "64M", true, false, "", "").unwrap();
        assert_eq!(ok.fs_type, "ext4");
        assert_eq!(ok.base_image_size, 64 << 20);
    }

    #[test]
    fn read_only_kinds_and_xfs_get_their_mount_options() {
        assert_eq!(mount_options("ext4", Kind::Active), ["rw"]);
        assert_eq!(mount_options("ext4", Kind::View), ["ro"]);
        assert_eq!(mount_options("xfs", Kind::Committed), ["nouuid", "ro"]);
    }
}
