//! A one-layer OCI image archive holding Debian's static busybox (`busybox-static`), for
//! tests that import and unpack a real image without a registry.

use std::path::Path;

use sha2::{Digest as _, Sha256};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn append(archive: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    archive.append_data(&mut header, path, bytes).unwrap();
}

/// The layer: `bin/busybox` and `bin/sh` linking to it.
fn layer(busybox: &[u8]) -> Vec<u8> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    layer.append_data(&mut dir, "bin/", &[][..]).unwrap();
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    file.set_mtime(0);
    layer
        .append_data(&mut file, "bin/busybox", busybox)
        .unwrap();
    let mut link = tar::Header::new_ustar();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_mode(0o777);
    link.set_size(0);
    link.set_mtime(0);
    layer.append_link(&mut link, "bin/sh", "busybox").unwrap();
    layer.into_inner().unwrap()
}

/// An OCI image in memory: its `index.json` and its blobs.
pub struct OciImage {
    pub index: Vec<u8>,
    /// (digest, bytes): layers, config, manifest.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// The digest of the manifest the index points at.
    pub manifest: String,
    /// The digests of the config and of the layer blobs, in order.
    pub config: String,
    pub layers: Vec<String>,
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

impl OciImage {
    /// The image as an OCI layout archive, the format `ctr images import` reads.
    pub fn write_archive(&self, out: &Path) {
        let mut archive = tar::Builder::new(Vec::new());
        append(&mut archive, "oci-layout", OCI_LAYOUT);
        append(&mut archive, "index.json", &self.index);
        for (digest, bytes) in &self.blobs {
            let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
            append(&mut archive, &path, bytes);
        }
        std::fs::write(out, archive.into_inner().unwrap()).unwrap();
    }

    /// The image as an archive that `docker load` reads: the OCI layout plus Docker's
    /// `manifest.json` naming the config and layers by path, tagged `repo_tag`.
    pub fn write_docker_archive(&self, out: &Path, repo_tag: &str) {
        let path = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        let layers: Vec<String> = self
            .layers
            .iter()
            .map(|d| format!("\"{}\"", path(d)))
            .collect();
        let manifest = format!(
            r#"[{{"Config":"{}","RepoTags":["{repo_tag}"],"Layers":[{}]}}]"#,
            path(&self.config),
            layers.join(",")
        );
        let mut archive = tar::Builder::new(Vec::new());
        append(&mut archive, "oci-layout", OCI_LAYOUT);
        append(&mut archive, "index.json", &self.index);
        append(&mut archive, "manifest.json", manifest.as_bytes());
        for (digest, bytes) in &self.blobs {
            append(&mut archive, &path(digest), bytes);
        }
        std::fs::write(out, archive.into_inner().unwrap()).unwrap();
    }

    /// The image as an OCI layout directory (what skopeo pushes from).
    pub fn write_layout(&self, dir: &Path) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(dir.join("oci-layout"), OCI_LAYOUT).unwrap();
        std::fs::write(dir.join("index.json"), &self.index).unwrap();
        for (digest, bytes) in &self.blobs {
            std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
        }
    }
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Builds an image from uncompressed layer tars and their media type's compression
/// (`gzip` or none): config with `cmd`, manifest, an index naming it `name` (tag `latest`).
pub fn image(name: &str, layers: &[(Vec<u8>, Vec<u8>, &str)], cmd: &str) -> OciImage {
    image_with_config(name, layers, &format!(r#""Cmd":{cmd}"#))
}

/// [`image`] with the members of the config's `config` object given as JSON text.
pub fn image_with_config(
    name: &str,
    layers: &[(Vec<u8>, Vec<u8>, &str)],
    config_members: &str,
) -> OciImage {
    let arch = host_arch();
    let diff_ids: Vec<String> = layers.iter().map(|(tar, _, _)| sha256(tar)).collect();
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{{config_members}}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let config_digest = sha256(config.as_bytes());
    let mut blobs = Vec::new();
    let mut layer_descs = Vec::new();
    let mut layer_digests = Vec::new();
    for (_, blob, media_type) in layers {
        let digest = sha256(blob);
        layer_digests.push(digest.clone());
        layer_descs.push(format!(
            r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{}}}"#,
            blob.len()
        ));
        blobs.push((digest, blob.clone()));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        layer_descs.join(",")
    );
    let manifest_digest = sha256(manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"latest"}},"platform":{{"architecture":"{arch}","os":"linux"}}}}]}}"#,
        manifest.len()
    );
    blobs.push((config_digest.clone(), config.into_bytes()));
    blobs.push((manifest_digest.clone(), manifest.into_bytes()));
    OciImage {
        index: index.into_bytes(),
        blobs,
        manifest: manifest_digest,
        config: config_digest,
        layers: layer_digests,
    }
}

/// The busybox image: one uncompressed layer. Its layer digest is also its diff id and, for
/// one layer, the chain id of the unpacked snapshot.
pub fn busybox(name: &str) -> (OciImage, String) {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static)");
    let layer = layer(&busybox);
    let digest = sha256(&layer);
    let image = image(
        name,
        &[(
            layer.clone(),
            layer,
            "application/vnd.oci.image.layer.v1.tar",
        )],
        r#"["/bin/sh"]"#,
    );
    (image, digest)
}

/// A pause image as Kubernetes' sandboxes use: Debian's static `catatonit -P` (it waits for
/// signals and reaps, doing nothing else) at `/pause`, beside busybox.
pub fn pause(name: &str) -> OciImage {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static)");
    let base = layer(&busybox);
    let catatonit =
        std::fs::read("/usr/bin/catatonit").expect("/usr/bin/catatonit (Debian's catatonit)");
    let mut top = tar::Builder::new(Vec::new());
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o755);
    file.set_size(catatonit.len() as u64);
    file.set_mtime(0);
    top.append_data(&mut file, "pause", &catatonit[..]).unwrap();
    let top = top.into_inner().unwrap();
    let media = "application/vnd.oci.image.layer.v1.tar";
    image_with_config(
        name,
        &[(base.clone(), base, media), (top.clone(), top, media)],
        r#""Entrypoint":["/pause","-P"]"#,
    )
}

/// The busybox image with a second layer holding `etc/passwd` and `etc/group` (user `www`,
/// uid 33, gid 44; group `staff`, gid 50) and `user` as the config's `User`.
pub fn busybox_as_user(name: &str, user: &str) -> OciImage {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static)");
    let base = layer(&busybox);
    let mut etc = tar::Builder::new(Vec::new());
    append(
        &mut etc,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:44:www:/var/www:/bin/sh\n",
    );
    append(&mut etc, "etc/group", b"root:x:0:\nstaff:x:50:www\n");
    let etc = etc.into_inner().unwrap();
    let media = "application/vnd.oci.image.layer.v1.tar";
    image_with_config(
        name,
        &[(base.clone(), base, media), (etc.clone(), etc, media)],
        &format!(r#""Cmd":["/bin/sh"],"User":"{user}""#),
    )
}

/// What [`import_busybox`] did: the layer's digest and ctr's output.
pub struct Imported {
    pub layer: String,
    pub stdout: String,
}

/// Writes the busybox image `name` as an archive under `dir` and imports it into `daemon` with
/// `ctr images import --snapshotter SNAPSHOTTER` (unpacked there); Err holds ctr's stderr.
pub fn import_busybox(
    daemon: &crate::Daemon,
    ctr: &Path,
    name: &str,
    snapshotter: &str,
    dir: &Path,
) -> Result<Imported, String> {
    let archive = dir.join("busybox.tar");
    let layer = busybox_archive(name, &archive);
    let archive = archive.to_str().ok_or("the archive path is not UTF-8")?;
    let out = daemon.client(
        ctr,
        &["images", "import", "--snapshotter", snapshotter, archive],
    );
    if !out.status.success() {
        return Err(format!(
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Imported {
        layer,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// Writes the busybox image archive of image `name` to `out`; returns the layer's digest.
pub fn busybox_archive(name: &str, out: &Path) -> String {
    let (image, layer) = busybox(name);
    image.write_archive(out);
    layer
}
