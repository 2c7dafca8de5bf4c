//! Debian's `docker-registry` (the OCI distribution registry) on a free loopback port, with
//! storage in a temp dir, and images pushed to it with `skopeo`. Stopped on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::oci::OciImage;
use crate::tool;

pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().expect("local address").port()
}

/// Sends one HTTP/1.0 GET and gives the status line, or None when nothing answers.
pub fn http_status(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.lines().next().map(str::to_owned)
}

impl Registry {
    /// Starts a registry; None (after saying why) when docker-registry is not installed and
    /// this is not CI.
    pub fn start() -> Option<Registry> {
        let bin = tool("docker-registry", "docker-registry")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n  maintenance: {{uploadpurging: {{enabled: false}}}}\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .expect("writing the registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_status(&addr, "/v2/").is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "docker-registry exited ({status}): {}",
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Registry { child, addr, dir })
    }

    /// Pushes `image` as `repo:tag` with skopeo, keeping its digests.
    pub fn push(&self, image: &OciImage, reference: &str) {
        let skopeo = tool("skopeo", "skopeo").expect("skopeo pushes test images");
        let layout = self
            .dir
            .path()
            .join(format!("layout-{}", reference.replace([':', '/'], "-")));
        image.write_layout(&layout);
        let policy = self.dir.path().join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let out = Command::new(skopeo)
            .arg("--policy")
            .arg(&policy)
            .args([
                "copy",
                "-q",
                "--dest-tls-verify=false",
                "--preserve-digests",
            ])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{}/{reference}", self.addr))
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&layout);
    }

    pub fn storage(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
