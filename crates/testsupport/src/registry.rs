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
    /// For a registry served over https: the PEM file of the authority that signed its
    /// certificate (for 127.0.0.1).
    pub ca: Option<std::path::PathBuf>,
    /// For a registry that asks clients for a certificate: the directory holding one signed
    /// by [`Registry::ca`], as Docker's certs.d names them (`client.cert`, `client.key`).
    pub client_certs: Option<std::path::PathBuf>,
    dir: tempfile::TempDir,
}

/// How a test registry serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    None,
    Server,
    /// The server's certificate, and clients must present one signed by the same authority.
    Mutual,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().expect("local address").port()
}

/// Sends one HTTP/1.0 request (`head`, then `body`) and gives the whole answer.
fn exchange(addr: &str, head: &str, body: &[u8], timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Sends one HTTP/1.0 GET and gives the status line, or None when nothing answers.
pub fn http_status(addr: &str, path: &str) -> Option<String> {
    let head = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let answer = exchange(addr, &head, &[], Duration::from_secs(5)).ok()?;
    answer.lines().next().map(str::to_owned)
}

impl Registry {
    /// Starts a registry; None (after saying why) when docker-registry is not installed and
    /// this is not CI.
    pub fn start() -> Option<Registry> {
        Self::start_with(Tls::None)
    }

    /// Starts a registry serving https with a certificate for 127.0.0.1 signed by a fresh
    /// authority (made with `openssl`), whose file is [`Registry::ca`].
    pub fn start_tls() -> Option<Registry> {
        Self::start_with(Tls::Server)
    }

    /// [`Registry::start_tls`], refusing clients without a certificate from its authority;
    /// one is in [`Registry::client_certs`].
    pub fn start_mutual_tls() -> Option<Registry> {
        Self::start_with(Tls::Mutual)
    }

    fn start_with(tls: Tls) -> Option<Registry> {
        let bin = tool("docker-registry", "docker-registry")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let (ca, client_certs, tls_config) = if tls == Tls::None {
            (None, None, String::new())
        } else {
            let openssl = tool("openssl", "openssl")?;
            let (ca, cert, key) = make_certificates(&openssl, dir.path());
            let mut config = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            let client_certs = (tls == Tls::Mutual).then(|| {
                config.push_str(&format!("    clientcas: [{}]\n", ca.display()));
                make_client_certificate(&openssl, dir.path())
            });
            (Some(ca), client_certs, config)
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n  maintenance: {{uploadpurging: {{enabled: false}}}}\nhttp:\n  addr: {addr}\n{tls_config}",
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
        Some(Registry {
            child,
            addr,
            ca,
            client_certs,
            dir,
        })
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
            .args(
                self.client_certs
                    .iter()
                    .flat_map(|d| [std::ffi::OsString::from("--dest-cert-dir"), d.into()]),
            )
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

    /// Puts a manifest or index document as `repo:reference` with one plain-http PUT (what
    /// skopeo cannot push: an index inside an index) and returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        doc: &[u8],
    ) -> String {
        let head = format!(
            "PUT /v2/{repo}/manifests/{reference} HTTP/1.0\r\nHost: {}\r\n\
             Content-Type: {media_type}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            doc.len()
        );
        let answer = exchange(&self.addr, &head, doc, Duration::from_secs(10))
            .expect("putting a manifest to the registry");
        assert!(
            answer.starts_with("HTTP/1.0 201") || answer.starts_with("HTTP/1.1 201"),
            "{answer}"
        );
        crate::oci::sha256(doc)
    }

    pub fn storage(&self) -> &Path {
        self.dir.path()
    }
}

/// An authority and a certificate it signed for 127.0.0.1 (EC P-256, a day long) in `dir`:
/// the authority's PEM, the certificate's and its key's.
fn openssl_in(openssl: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new(openssl)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new P-256 key without passphrase, for `openssl req`.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A key `<name>.key` and a certificate `<cert>` for `subject` with `extensions`, signed by the
/// authority of [`make_certificates`].
fn issue(openssl: &Path, dir: &Path, name: &str, subject: &str, extensions: &str, cert: &str) {
    let run = |args: &[&str]| openssl_in(openssl, dir, args);
    let (key, csr, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    let mut csr_args = vec!["req", "-subj", subject];
    csr_args.extend(EC_KEY);
    csr_args.extend(["-keyout", &key, "-out", &csr]);
    run(&csr_args);
    std::fs::write(dir.join(&ext), extensions).expect("writing a certificate's extensions");
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        cert,
    ]);
}

/// A client certificate and key signed by the authority of [`make_certificates`], in
/// `<dir>/client/` as `client.cert` and `client.key`.
fn make_client_certificate(openssl: &Path, dir: &Path) -> std::path::PathBuf {
    issue(
        openssl,
        dir,
        "client",
        "/CN=crated test client",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        "client.cert",
    );
    let certs = dir.join("client");
    std::fs::create_dir_all(&certs).expect("client certificate directory");
    for f in ["client.cert", "client.key"] {
        std::fs::rename(dir.join(f), certs.join(f)).expect("moving the client certificate");
    }
    certs
}

/// A private authority (`ca.pem`) and a certificate for 127.0.0.1 it signed, with its key.
fn make_certificates(
    openssl: &Path,
    dir: &Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_args = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=crated test authority",
    ];
    ca_args.extend(EC_KEY);
    ca_args.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    ca_args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    ca_args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl_in(openssl, dir, &ca_args);
    issue(
        openssl,
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        "server.pem",
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
