//! A daemon-side pull (`cratectl images pull`) from a registry that lies: a config declared
//! 1 TiB large, a token server whose answer never ends, a manifest or a layer whose bytes do not
//! match their digest. Each pull fails with a clear error, the daemon's memory stays bounded,
//! and it goes on serving.

use std::time::Duration;

use crated_testsupport::cmd::fails;
use crated_testsupport::hostile::{Answer, HostileRegistry};
use crated_testsupport::oci::sha256;
use crated_testsupport::{health_check, peak_rss_kib, workspace_bin, Daemon};

mod common;
use common::start;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn pull(daemon: &Daemon, reference: &str) -> String {
    let cratectl = workspace_bin("cratectl");
    fails(daemon.client(
        &cratectl,
        &["images", "pull", "--snapshotter", "native", reference],
    ))
}

/// The daemon still answers, and its peak memory stayed under `mib`.
fn assert_still_serving_within(daemon: &Daemon, mib: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(runtime.block_on(health_check(&daemon.socket)));
    let peak = peak_rss_kib(daemon.pid()).unwrap();
    assert!(peak < mib << 10, "crated peaked at {peak} KiB");
}

fn manifest(config: (&str, i64), layers: &[(&str, i64)]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, s)| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{s}}}"#)
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
        config.0,
        config.1,
        layers.join(",")
    )
}

#[test]
fn a_config_declared_one_tebibyte_large_is_refused_not_allocated() {
    let config = sha256(b"{}");
    let body = manifest((&config, 1 << 40), &[]);
    let registry = HostileRegistry::start(move |_, path| match path {
        "/v2/" => Answer::status(200),
        "/v2/evil/manifests/latest" => Answer::ok(MANIFEST, body.clone()),
        _ => Answer::ok("application/octet-stream", &b"{}"[..]),
    });
    let daemon = start(None);
    let err = pull(&daemon, &format!("{}/evil:latest", registry.addr));
    assert!(err.contains("declares 1099511627776 bytes"), "{err}");
    assert_still_serving_within(&daemon, 512);
}

#[test]
fn a_token_server_that_never_stops_answering_is_cut_off() {
    let registry = HostileRegistry::start(|addr, path| {
        let challenge = format!(
            r#"WWW-Authenticate: Bearer realm="http://{addr}/token",service="evil",scope="repository:evil:pull""#
        );
        if path.starts_with("/token") {
            Answer::Endless {
                headers: vec!["Content-Type: application/json".into()],
                limit: Duration::from_secs(30),
            }
        } else {
            Answer::Fixed {
                status: 401,
                headers: vec![challenge],
                body: Vec::new(),
            }
        }
    });
    let daemon = start(None);
    let err = pull(&daemon, &format!("{}/evil:latest", registry.addr));
    assert!(err.contains("is larger than 1048576 bytes"), "{err}");
    assert_still_serving_within(&daemon, 512);
    // The daemon hung up instead of reading on until the registry gave up.
    assert!(
        registry.bytes_sent() < 256 << 20,
        "{} bytes sent",
        registry.bytes_sent()
    );
}

/// A layer tar holding one file `f` with `content`.
fn layer_tar(content: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, "f", content).unwrap();
    tar.into_inner().unwrap()
}

#[test]
fn a_manifest_or_layer_that_does_not_match_its_digest_fails_the_pull() {
    let (good, bad) = (layer_tar(b"layer"), layer_tar(b"LAYER"));
    let config_body = format!(
        r#"{{"architecture":"{}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        crated_testsupport::oci::host_arch(),
        sha256(&good)
    );
    let config = sha256(config_body.as_bytes());
    let layer = sha256(&good);
    let body = manifest(
        (&config, config_body.len() as i64),
        &[(&layer, good.len() as i64)],
    );
    let digest = sha256(body.as_bytes());
    let (served_body, served_config, served_layer) =
        (body.clone(), config_body.clone(), layer.clone());
    let registry = HostileRegistry::start(move |_, path| {
        let blob = |p: &str| path == format!("/v2/evil/blobs/{p}");
        match path {
            "/v2/" => Answer::status(200),
            // Named by a digest its bytes do not have.
            "/v2/evil/manifests/lying" => Answer::Fixed {
                status: 200,
                headers: vec![
                    format!("Content-Type: {MANIFEST}"),
                    format!("Docker-Content-Digest: {}", sha256(b"other")),
                ],
                body: served_body.clone().into_bytes(),
            },
            "/v2/evil/manifests/latest" => Answer::ok(MANIFEST, served_body.clone()),
            _ if blob(&config) => Answer::ok("application/json", served_config.clone()),
            // As many bytes, and a valid tar, but not the one the digest names.
            _ if blob(&served_layer) => Answer::ok("application/octet-stream", bad.clone()),
            _ => Answer::status(404),
        }
    });
    let daemon = start(None);
    let err = pull(&daemon, &format!("{}/evil:lying", registry.addr));
    assert!(
        err.contains(&format!(
            "has digest {digest}, expected {}",
            sha256(b"other")
        )),
        "{err}"
    );
    let err = pull(&daemon, &format!("{}/evil:latest", registry.addr));
    assert!(err.contains(&layer) && err.contains("digest"), "{err}");
    assert_still_serving_within(&daemon, 512);
    // Nothing of the failed layer was committed.
    assert!(!daemon
        .blob_files()
        .contains(&layer.trim_start_matches("sha256:").to_owned()));
}
