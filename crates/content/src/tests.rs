use super::*;
use crated_errdefs::{HasKind, Kind};
use sha2::{Digest as _, Sha256};

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    (dir, s)
}

#[test]
fn write_commit_read_info_walk_delete() {
    let (dir, s) = store();
    let data = b"hello content".repeat(1000);
    let want = digest_of(&data);
    let mut w = s.writer("ref1", data.len() as u64, Some(&want)).unwrap();
    w.write(&data[..5000]).unwrap();
    w.write(&data[5000..]).unwrap();
    assert_eq!(w.status().offset, data.len() as u64);
    let got = w.commit(0, None).unwrap();
    assert_eq!(got.as_str(), want);
    let path = dir.path().join("blobs/sha256").join(&want[7..]);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(s.info(&want).unwrap().size, data.len() as u64);
    let mut buf = [0u8; 5];
    assert_eq!(s.read_at(&want, 6, &mut buf).unwrap(), 5);
    assert_eq!(&buf, b"conte");
    assert_eq!(s.walk().unwrap().len(), 1);
    assert!(s.list_statuses().unwrap().is_empty(), "ingest left behind");
    s.verify(&want).unwrap();
    s.delete(&want).unwrap();
    assert_eq!(s.info(&want).unwrap_err().kind(), Kind::NotFound);
}

#[test]
fn second_writer_on_a_ref_is_unavailable() {
    let (_d, s) = store();
    let w = s.writer("busy", 0, None).unwrap();
    let e = s.writer("busy", 0, None).err().unwrap();
    assert_eq!(e.kind(), Kind::Unavailable);
    assert!(e.to_string().contains("ref busy locked"), "{e}");
    drop(w);
    s.writer("busy", 0, None).unwrap();
}

#[test]
fn resume_continues_from_offset_and_digest() {
    let (_d, s) = store();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let want = digest_of(&data);
    let mut w = s.writer("resume", data.len() as u64, Some(&want)).unwrap();
    w.write(&data[..77_777]).unwrap();
    drop(w); // a client that went away
    let status = s.status("resume").unwrap();
    assert_eq!(status.offset, 77_777);
    assert_eq!(status.total, data.len() as u64);
    assert_eq!(
        status.expected.as_ref().map(|d| d.as_str()),
        Some(want.as_str())
    );
    let mut w = s.writer("resume", 0, None).unwrap();
    assert_eq!(w.offset(), 77_777);
    w.write(&data[77_777..]).unwrap();
    assert_eq!(w.commit(0, None).unwrap().as_str(), want);
}

#[test]
fn wrong_digest_or_size_fails_and_commits_nothing() {
    let (dir, s) = store();
    let mut w = s.writer("bad", 0, None).unwrap();
    w.write(b"abc").unwrap();
    let wrong = digest_of(b"abd");
    let e = w.commit(3, Some(&wrong)).unwrap_err();
    assert_eq!(e.kind(), Kind::FailedPrecondition);
    assert!(
        e.to_string().contains(&wrong) && e.to_string().contains(&digest_of(b"abc")),
        "{e}"
    );
    let mut w = s.writer("bad2", 0, None).unwrap();
    w.write(b"abc").unwrap();
    let e = w.commit(4, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("unexpected commit size 3, expected 4"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    // The failed ingests stay resumable.
    assert_eq!(s.status("bad2").unwrap().offset, 3);
}

#[test]
fn committing_an_existing_blob_is_already_exists_and_leaves_it() {
    let (_d, s) = store();
    let mut w = s.writer("a", 0, None).unwrap();
    w.write(b"same").unwrap();
    let d = w.commit(0, None).unwrap();
    let mut w = s.writer("b", 0, None).unwrap();
    w.write(b"same").unwrap();
    assert_eq!(w.commit(0, None).unwrap_err().kind(), Kind::AlreadyExists);
    s.verify(d.as_str()).unwrap();
    assert!(
        s.status("b").is_err(),
        "ingest of the duplicate left behind"
    );
}

#[test]
fn corrupt_blob_is_reported() {
    let (dir, s) = store();
    let mut w = s.writer("c", 0, None).unwrap();
    w.write(b"precious").unwrap();
    let d = w.commit(0, None).unwrap();
    let path = dir.path().join("blobs/sha256").join(d.encoded());
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, b"precioux").unwrap();
    let e = s.verify(d.as_str()).unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
}

#[test]
fn digests_are_checked() {
    let (_d, s) = store();
    for bad in [
        "sha256:abc",
        "md5:0123",
        "nocolon",
        &format!("sha512:{}", "a".repeat(128)),
    ] {
        assert_eq!(
            s.info(bad).unwrap_err().kind(),
            Kind::InvalidArgument,
            "{bad}"
        );
    }
    let e = s.info(&format!("sha512:{}", "a".repeat(128))).unwrap_err();
    assert!(e.to_string().contains("only sha256"), "{e}");
}

#[test]
fn abort_removes_the_ingest() {
    let (_d, s) = store();
    let mut w = s.writer("x", 0, None).unwrap();
    w.write(b"partial").unwrap();
    drop(w);
    s.abort("x").unwrap();
    assert_eq!(s.status("x").unwrap_err().kind(), Kind::NotFound);
    assert_eq!(s.abort("x").unwrap_err().kind(), Kind::NotFound);
}
