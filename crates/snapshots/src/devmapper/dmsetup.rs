//! dmsetup's command line: the interface through which the devmapper snapshotter asks the
//! kernel's device-mapper for thin devices, snapshots of them, and their removal.

use std::io;

/// The unit of device-mapper tables and status.
pub const SECTOR_SIZE: u64 = 512;

/// A dmsetup call that failed, with what it printed.
#[derive(Debug, thiserror::Error)]
#[error("dmsetup {args}: {output}")]
pub struct DmsetupError {
    pub args: String,
    pub output: String,
}

impl DmsetupError {
    /// The kernel said EBUSY: the device is open or mid-operation; worth a retry.
    pub fn busy(&self) -> bool {
        self.output.contains("Device or resource busy")
    }

    /// The kernel said ENODATA: the thin device id is not in the pool.
    pub fn no_data(&self) -> bool {
        self.output.contains("No data available")
    }

    /// dmsetup knows no device of that name.
    pub fn no_device(&self) -> bool {
        self.output.contains("No such device or address")
            || self.output.contains("Device does not exist")
    }
}

/// The dmsetup error inside `e`, if that is what it is.
pub fn dmsetup_error(e: &io::Error) -> Option<&DmsetupError> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

fn dmsetup(args: &[&str]) -> io::Result<String> {
    crate::host::run_tool("dmsetup", "dmsetup", args)?.map_err(|output| {
        io::Error::other(DmsetupError {
            args: args.join(" "),
            output,
        })
    })
}

/// `/dev/mapper/<name>`: where a device-mapper device appears.
pub fn device_path(name: &str) -> String {
    format!("/dev/mapper/{name}")
}

/// The library and kernel driver versions; fails where device-mapper cannot be used.
pub fn version() -> io::Result<String> {
    dmsetup(&["version"])
}

/// Whether a device of that name is loaded in the kernel.
pub fn exists(name: &str) -> io::Result<bool> {
    match dmsetup(&["info", name]) {
        Ok(_) => Ok(true),
        Err(e) if dmsetup_error(&e).is_some_and(DmsetupError::no_device) => Ok(false),
        Err(e) => Err(e),
    }
}

fn message(pool: &str, text: &str) -> io::Result<()> {
    dmsetup(&["message", pool, "0", text]).map(drop)
}

/// Makes a new, empty thin device `id` in the pool.
pub fn create_thin(pool: &str, id: u32) -> io::Result<()> {
    message(pool, &format!("create_thin {id}"))
}

/// Makes thin device `id` a snapshot of thin device `origin` (which must be suspended or not
/// loaded while this runs).
pub fn create_snapshot(pool: &str, id: u32, origin: u32) -> io::Result<()> {
    message(pool, &format!("create_snap {id} {origin}"))
}

/// Deletes thin device `id` from the pool; a device already gone is not an error.
pub fn delete(pool: &str, id: u32) -> io::Result<()> {
    match message(pool, &format!("delete {id}")) {
        Err(e) if dmsetup_error(&e).is_some_and(DmsetupError::no_data) => Ok(()),
        other => other,
    }
}

/// The table that maps thin device `id` of `pool`, `size` bytes long.
pub fn thin_table(pool: &str, id: u32, size: u64) -> String {
    format!("0 {} thin {} {id}", size / SECTOR_SIZE, device_path(pool))
}

/// Loads thin device `id` as the device `name`.
pub fn activate(pool: &str, name: &str, id: u32, size: u64) -> io::Result<()> {
    dmsetup(&["create", name, "--table", &thin_table(pool, id, size)]).map(drop)
}

pub fn suspend(name: &str) -> io::Result<()> {
    dmsetup(&["suspend", name]).map(drop)
}

pub fn resume(name: &str) -> io::Result<()> {
    dmsetup(&["resume", name]).map(drop)
}

/// Unloads the device `name`: `deferred` lets the kernel do it once the last user closes it;
/// `force` replaces its table by one that fails all I/O first.
pub fn remove(name: &str, deferred: bool, force: bool) -> io::Result<()> {
    let mut args = vec!["remove", "--retry"];
    if deferred {
        args.push("--deferred");
    }
    if force {
        args.push("--force");
    }
    args.push(name);
    match dmsetup(&args) {
        Err(e) if dmsetup_error(&e).is_some_and(DmsetupError::no_device) => Ok(()),
        other => other.map(drop),
    }
}

/// Bytes of the thin device `name` that are mapped to pool blocks.
pub fn mapped_bytes(name: &str) -> io::Result<u64> {
    parse_thin_status(&dmsetup(&["status", name])?)
        .ok_or_else(|| io::Error::other(format!("dmsetup status {name}: unexpected output")))
}

/// A thin target's status line is `<start> <length> thin <mapped sectors> <highest sector>`.
pub fn parse_thin_status(line: &str) -> Option<u64> {
    let mut fields = line.split_whitespace();
    let target = fields.nth(2)?;
    if target != "thin" {
        return None;
    }
    let sectors: u64 = fields.next()?.parse().ok()?;
    Some(sectors * SECTOR_SIZE)
}

/// Tells the device's blocks to the pool as unused (`blkdiscard`), so they return to it.
pub fn discard(name: &str) -> io::Result<()> {
    let path = device_path(name);
    crate::host::run_tool("blkdiscard", "util-linux", &[&path])?
        .map(drop)
        .map_err(|e| io::Error::other(format!("blkdiscard {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_tables_count_sectors() {
        assert_eq!(
            thin_table("pool", 7, 10 << 20),
            "0 20480 thin /dev/mapper/pool 7"
        );
    }

    #[test]
    fn thin_status_gives_mapped_bytes() {
        assert_eq!(
            parse_thin_status("0 2097152 thin 4096 2097151\n"),
            Some(4096 * 512)
        );
        assert_eq!(parse_thin_status("0 2097152 thin Fail"), None);
        assert_eq!(parse_thin_status("0 2097152 linear"), None);
    }
}
