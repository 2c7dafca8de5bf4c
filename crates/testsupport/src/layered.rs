//! The bench image's shape (`../shared/images/mkimage.py`), at any scale: five gzip layers:
//! busybox with small files, medium files, incompressible data, text and zeros, then a layer of
//! OCI whiteouts (files, whole directories, an opaque directory), overwrites, type changes
//! (file to symlink, directory to file), symlinks (absolute, relative, dangling), a hard link
//! and a chmod'ed directory. Deterministic: the same scale gives the same digests.

use std::io::Write;

use crate::oci::{image, OciImage};

/// How big each part is. [`Shape::bench`] is the shared bench image's; [`Shape::test`] keeps
/// every feature at a size tests can afford.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub small_dirs: usize,
    pub files_per_dir: usize,
    pub medium_files: usize,
    pub random_mib: (usize, usize),
    pub text_mib: usize,
    pub zeros_mib: usize,
}

impl Shape {
    pub fn bench() -> Shape {
        Shape {
            small_dirs: 200,
            files_per_dir: 100,
            medium_files: 100,
            random_mib: (96, 32),
            text_mib: 64,
            zeros_mib: 16,
        }
    }

    /// The test shape with layers of several MiB of incompressible data: larger than what a
    /// pull holds in memory for an unpacker that is not reading the layer yet.
    pub fn test_large_layers() -> Shape {
        Shape {
            random_mib: (12, 6),
            ..Shape::test()
        }
    }

    pub fn test() -> Shape {
        Shape {
            small_dirs: 60,
            files_per_dir: 8,
            medium_files: 10,
            random_mib: (2, 1),
            text_mib: 2,
            zeros_mib: 1,
        }
    }
}

const MTIME: u64 = 1_700_000_000;
const APPLETS: &[&str] = &["sh", "true", "echo", "cat", "ls", "env", "sleep", "id"];
const WORDS: &[&str] = &[
    "GET",
    "POST",
    "/api/v1/items",
    "/healthz",
    "200",
    "404",
    "500",
    "ok",
    "error",
    "info",
    "latency_ms",
    "bytes",
    "user_id",
    "session",
    "snapshot",
    "overlay",
    "layer",
    "digest",
];

/// xorshift64*: deterministic bytes without a dependency.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn random(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }

    fn text(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 128);
        let mut i = 0u64;
        while out.len() < n {
            let w = |g: &mut Gen| WORDS[(g.next() % WORDS.len() as u64) as usize];
            let line = format!(
                "{} {:08x} {} {} {} status={} n={}\n",
                MTIME + i,
                self.next() as u32,
                w(self),
                w(self),
                w(self),
                w(self),
                self.next() % 100_000
            );
            out.extend_from_slice(line.as_bytes());
            i += 1;
        }
        out.truncate(n);
        out
    }

    fn mixed(&mut self, n: usize, i: usize) -> Vec<u8> {
        if i.is_multiple_of(2) {
            self.random(n)
        } else {
            self.text(n)
        }
    }
}

struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, size: usize) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size as u64);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn dir(&mut self, path: &str, mode: u32) {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.0
            .append_data(&mut h, format!("{path}/"), &[][..])
            .unwrap();
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len());
        self.0.append_data(&mut h, path, data).unwrap();
    }

    fn symlink(&mut self, path: &str, target: &str) {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
    }

    fn hardlink(&mut self, path: &str, target: &str) {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, path, target).unwrap();
    }

    fn whiteout(&mut self, path: &str) {
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
        let marker = if dir.is_empty() {
            format!(".wh.{base}")
        } else {
            format!("{dir}/.wh.{base}")
        };
        self.file(&marker, b"", 0o600);
    }

    /// The tar and its gzip.
    fn finish(self) -> (Vec<u8>, Vec<u8>) {
        let tar = self.0.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&tar).unwrap();
        (tar, gz.finish().unwrap())
    }
}

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Builds the image named `name` at `shape`.
pub fn build(name: &str, shape: Shape) -> OciImage {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static)");
    let mut g = Gen(20_240_601);
    let mut layers = Vec::new();
    let small = |d: usize| format!("data/small/d{d:03}");
    let file_name =
        |d: usize, k: usize| format!("{}/f{:05}", small(d), d * shape.files_per_dir + k);

    let mut l = Layer::new();
    for d in [
        "bin",
        "etc",
        "tmp",
        "root",
        "usr",
        "usr/bin",
        "var",
        "data",
        "data/small",
    ] {
        let mode = match d {
            "tmp" => 0o1777,
            "root" => 0o700,
            _ => 0o755,
        };
        l.dir(d, mode);
    }
    l.file("bin/busybox", &busybox, 0o755);
    for a in APPLETS {
        l.symlink(&format!("bin/{a}"), "busybox");
    }
    l.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
    for d in 0..shape.small_dirs {
        l.dir(&small(d), 0o755);
        for k in 0..shape.files_per_dir {
            let n = g.range(1024, 16384);
            let data = g.mixed(n, d * shape.files_per_dir + k);
            l.file(&file_name(d, k), &data, 0o644);
        }
    }
    layers.push(l.finish());

    let mut l = Layer::new();
    l.dir("data/medium", 0o755);
    l.dir("data/medium/a", 0o755);
    l.dir("data/medium/b", 0o755);
    for i in 0..shape.medium_files {
        let n = g.range(128 << 10, 2 << 20);
        let data = g.mixed(n, i / 2);
        let sub = if i.is_multiple_of(2) { "a" } else { "b" };
        l.file(&format!("data/medium/{sub}/m-{i:03}.bin"), &data, 0o644);
    }
    layers.push(l.finish());

    let mut l = Layer::new();
    l.dir("data/large", 0o755);
    l.file(
        "data/large/rand-0.bin",
        &g.random(shape.random_mib.0 << 20),
        0o644,
    );
    l.file(
        "data/large/rand-1.bin",
        &g.random(shape.random_mib.1 << 20),
        0o644,
    );
    layers.push(l.finish());

    let mut l = Layer::new();
    l.dir("data/large", 0o755);
    l.file(
        "data/large/text-0.log",
        &g.text(shape.text_mib << 20),
        0o644,
    );
    l.file(
        "data/large/zeros.bin",
        &vec![0; shape.zeros_mib << 20],
        0o644,
    );
    layers.push(l.finish());

    let tenth = (shape.small_dirs / 10).max(1);
    let mut l = Layer::new();
    l.dir("data/large", 0o755);
    l.whiteout("data/large/rand-1.bin");
    l.dir("data/small", 0o755);
    for d in 0..tenth {
        l.whiteout(&small(d));
    }
    l.dir("data/medium", 0o755);
    l.dir("data/medium/b", 0o755);
    l.file("data/medium/b/.wh..wh..opq", b"", 0o600);
    for i in 0..3 {
        let data = g.text(4096 + i);
        l.file(&format!("data/medium/b/new-{i}.txt"), &data, 0o644);
    }
    for d in tenth..2 * tenth {
        l.dir(&small(d), if d == tenth { 0o750 } else { 0o755 });
        for k in (0..shape.files_per_dir).step_by(4) {
            let mut data = format!("overwritten {}\n", d * shape.files_per_dir + k).into_bytes();
            let n = g.range(10, 2000);
            data.extend(g.text(n));
            l.file(&file_name(d, k), &data, 0o644);
        }
    }
    l.dir("data/medium/a", 0o755);
    l.symlink("data/medium/a/m-000.bin", "m-002.bin");
    l.file(
        &small(shape.small_dirs - 1),
        b"directory replaced by a file\n",
        0o644,
    );
    l.dir("data/links", 0o755);
    l.symlink("data/links/abs", "/data/large/text-0.log");
    let rel = format!(
        "../small/{}",
        file_name(shape.small_dirs / 4, 0).trim_start_matches("data/small/")
    );
    l.symlink("data/links/rel", &rel);
    l.symlink("data/links/dangling", "/nonexistent");
    l.file("data/links/hl-src", b"hard link source\n", 0o644);
    l.hardlink("data/links/hl-dst", "data/links/hl-src");
    layers.push(l.finish());

    let layers: Vec<(Vec<u8>, Vec<u8>, &str)> = layers
        .into_iter()
        .map(|(tar, gz)| (tar, gz, GZIP))
        .collect();
    image(name, &layers, r#"["ls /data"]"#)
}
