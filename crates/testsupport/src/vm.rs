//! A throwaway virtual machine for tests that need what this host's kernel lacks (device-mapper
//! thin pools): Debian's kernel, which `scripts/setup.sh` unpacks, booted by qemu with an
//! initramfs made here of busybox and the kernel modules asked for. The guest mounts this
//! host's root read-only over 9p, chroots into it (so every binary and test executable of the
//! host is there, wherever the checkout is), and runs a script; a host directory shared
//! writable at `/run/share` carries the script in and its output out. The guest's scratch
//! space is a tmpfs at `/run/tmp` (its `TMPDIR`): the host's `/tmp` stays visible. No udev runs in the guest: `DM_DISABLE_UDEV=1` has
//! dmsetup make the `/dev/mapper` nodes itself.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/setup.sh` unpacks Debian's kernel package.
pub const DEFAULT_VM_DIR: &str = "/var/cache/crated-test/vm";

/// Modules every guest loads: virtio and 9p, to reach the host's files.
const BASE_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// What a device-mapper guest loads: loop devices, thin pools and ext4, after the crc32c that
/// ext4 and thin-pool metadata look up at run time (their modinfo does not name it).
pub const DEVICE_MAPPER_MODULES: &[&str] = &["crc32c_generic", "loop", "dm-thin-pool", "ext4"];

pub struct Vm {
    kernel: PathBuf,
    /// `lib/modules/<version>/kernel` of the unpacked package.
    modules: PathBuf,
}

/// What a guest's script left: its exit status, what it printed, and the console.
#[derive(Debug)]
pub struct VmRun {
    pub status: Option<i32>,
    pub output: String,
    pub console: String,
}

impl Vm {
    /// The VM, when qemu and the guest kernel are installed. Missing on CI is a failure
    /// (`scripts/setup.sh` installs both); elsewhere this says why the caller skips.
    pub fn find() -> Option<Vm> {
        let dir = std::env::var_os("CRATED_VM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_VM_DIR));
        crate::tool("qemu-system-x86_64", "qemu-system-x86")?;
        let kernel = first_entry(&dir.join("boot"), "vmlinuz-");
        let modules = first_entry(&dir.join("lib/modules"), "").map(|d| d.join("kernel"));
        match (kernel, modules) {
            (Some(kernel), Some(modules)) if modules.is_dir() => Some(Vm { kernel, modules }),
            _ => {
                assert!(
                    !crate::on_ci(),
                    "no guest kernel in {} on CI: scripts/setup.sh unpacks Debian's linux-image there",
                    dir.display()
                );
                eprintln!(
                    "SKIPPED: no guest kernel in {} (scripts/setup.sh unpacks Debian's linux-image there); this test boots it",
                    dir.display()
                );
                None
            }
        }
    }

    /// Boots the guest with `modules` (and their dependencies) loaded, runs `script` with bash
    /// as root in the host's root, and returns once the guest has powered off or `timeout`
    /// has passed. `share` is the host directory the guest sees at `/run/share`.
    pub fn run(&self, modules: &[&str], share: &Path, script: &str, timeout: Duration) -> VmRun {
        std::fs::write(share.join("script.sh"), script).expect("writing the guest script");
        let _ = std::fs::remove_file(share.join("status"));
        let initrd = share.join("initrd.cpio");
        self.initramfs(modules, &initrd);
        let accel = std::env::var("CRATED_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", &accel, "-m", "2048", "-smp", "2"])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=share,security_model=none,multidevs=remap",
                share.display()
            ))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(share.join("console")).expect("console file"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting qemu-system-x86_64");
        let deadline = Instant::now() + timeout;
        while child.try_wait().expect("waiting for qemu").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let read = |name: &str| std::fs::read_to_string(share.join(name)).unwrap_or_default();
        VmRun {
            status: read("status").trim().parse().ok(),
            output: read("output"),
            console: read("console"),
        }
    }

    /// Runs this test executable again in the guest, with `guest_env=1` and libtest `args`
    /// (a filter and options), and fails unless it ended well and printed `summary` (libtest's
    /// line, such as `test result: ok. 7 passed; 0 failed`), showing the guest's output and the
    /// end of its console.
    pub fn run_this_test_executable(
        &self,
        modules: &[&str],
        guest_env: &str,
        args: &str,
        summary: &str,
        timeout: Duration,
    ) {
        let share = tempfile::tempdir().expect("a share directory");
        let exe = std::env::current_exe().expect("the test executable");
        let script = format!("export {guest_env}=1\nexec {} {args}\n", exe.display());
        let run = self.run(modules, share.path(), &script, timeout);
        let tail: Vec<&str> = run.console.lines().rev().take(30).collect();
        assert_eq!(
            run.status,
            Some(0),
            "guest output:\n{}\nconsole (last lines, newest first):\n{}",
            run.output,
            tail.join("\n")
        );
        assert!(run.output.contains(summary), "{}", run.output);
    }

    /// An uncompressed initramfs: busybox, the modules in load order, and an init that
    /// loads them, enters the host's root and runs the script.
    fn initramfs(&self, wanted: &[&str], at: &Path) {
        let order = self.load_order(BASE_MODULES.iter().chain(wanted));
        let mut cpio = Cpio::default();
        for dir in ["bin", "dev", "proc", "sys", "host", "lib"] {
            cpio.dir(dir);
        }
        cpio.char_device("dev/console", 5, 1);
        let busybox =
            std::fs::read("/bin/busybox").expect("/bin/busybox (Debian package busybox-static)");
        cpio.file("bin/busybox", 0o755, &busybox);
        let mut names = Vec::new();
        for path in &order {
            let name = path
                .file_name()
                .expect("module file name")
                .to_string_lossy()
                .into_owned();
            cpio.file(
                &format!("lib/{name}"),
                0o644,
                &std::fs::read(path).expect("module"),
            );
            names.push(name);
        }
        cpio.file("init", 0o755, guest_init(&names).as_bytes());
        std::fs::write(at, cpio.finish()).expect("writing the initramfs");
    }

    /// The module files to load for `wanted`, each after what it depends on.
    fn load_order<'a>(&self, wanted: impl Iterator<Item = &'a &'a str>) -> Vec<PathBuf> {
        let mut files = HashMap::new();
        index_modules(&self.modules, &mut files);
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in wanted {
            visit(&files, name, &mut seen, &mut order);
        }
        order
    }
}

fn first_entry(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found.pop()
}

/// Module name (with `_` for `-`) -> file, for every `.ko` under `dir`.
fn index_modules(dir: &Path, files: &mut HashMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, files);
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            files.insert(stem.replace('-', "_"), path);
        }
    }
}

fn visit(
    files: &HashMap<String, PathBuf>,
    name: &str,
    seen: &mut HashSet<String>,
    order: &mut Vec<PathBuf>,
) {
    let key = name.replace('-', "_");
    if !seen.insert(key.clone()) {
        return;
    }
    // Built into the kernel when no file has it.
    let Some(path) = files.get(&key) else {
        return;
    };
    let bytes = std::fs::read(path).expect("reading a module");
    for dep in module_depends(&bytes) {
        visit(files, &dep, seen, order);
    }
    order.push(path.clone());
}

/// The `depends=` entry of a module's `.modinfo` section.
fn module_depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(start) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &module[start + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn guest_init(modules: &[String]) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /lib/$m || echo "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /host
for d in proc sys dev; do mount --rbind /$d /host/$d; done
mount -t tmpfs run /host/run
mkdir -p /host/run/share /host/run/tmp
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share /host/run/share
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/run/tmp DM_DISABLE_UDEV=1 \
    /bin/bash -c 'cd /run/tmp; /bin/bash /run/share/script.sh > /run/share/output 2>&1; echo $? > /run/share/status; sync'
umount /host/run/share
poweroff -f
"#,
        modules = modules.join(" ")
    )
}

/// An initramfs archive in the kernel's `newc` cpio format.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        write!(self.out, "070701").expect("in memory");
        for f in fields {
            write!(self.out, "{f:08x}").expect("in memory");
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_dependencies_come_from_modinfo() {
        let module = b"\x7fELF...\0license=GPL\0depends=dm-bio-prison,dm-mod\0intree=Y\0";
        assert_eq!(module_depends(module), ["dm-bio-prison", "dm-mod"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn cpio_entries_are_aligned_and_end_with_the_trailer() {
        let mut cpio = Cpio::default();
        cpio.file("init", 0o755, b"abc");
        let out = cpio.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // namesize of "init" plus its NUL.
        assert_eq!(&out[6 + 11 * 8..6 + 12 * 8], b"00000005");
        let trailer = out.windows(10).position(|w| w == b"TRAILER!!!");
        assert!(trailer.is_some());
    }
}
