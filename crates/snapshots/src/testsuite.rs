//! containerd's snapshotter test suite (`snapshots/testsuite`) in our words: each case takes a
//! fresh snapshotter and a scratch directory and panics on the first broken expectation. Every
//! snapshotter, local or proxied, runs it through [`crate::snapshotter_suite!`]. Cases that mount need
//! root; elsewhere they say they are skipped.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crated_errdefs::{HasKind, Kind as ErrKind};

use crate::{mount, Info, Kind, Snapshotter};

const ROOT_LABEL: &str = "containerd.io/gc.root";

pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The labels a caller set: without those a snapshotter computes itself
/// (`containerd.io/snapshot/...`, such as devmapper's filesystem type).
fn callers(labels: &HashMap<String, String>) -> HashMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| !k.starts_with(crate::INHERITED_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn rooted() -> HashMap<String, String> {
    labels(&[(ROOT_LABEL, "check")])
}

/// Whether mounting cases can run; says so when they cannot.
pub fn can_mount(case: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping {case}: mounting snapshots needs root");
    false
}

fn class<T: std::fmt::Debug>(r: Result<T, crate::SnapshotError>) -> ErrKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

/// A mounted snapshot, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn new(mounts: &[crate::Mount], at: PathBuf) -> Mounted {
        fs::create_dir_all(&at).unwrap();
        mount::mount_all(mounts, &at).unwrap_or_else(|e| panic!("mounting {mounts:?}: {e}"));
        Mounted(at)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = mount::unmount(&self.0) {
            eprintln!("unmounting {}: {e}", self.0.display());
        }
    }
}

/// Prepare + Commit with no filesystem work.
async fn committed(sn: &dyn Snapshotter, name: &str, parent: &str) {
    let key = format!("{name}-active");
    sn.prepare(&key, parent, rooted()).await.unwrap();
    sn.commit(name, &key, rooted()).await.unwrap();
}

pub async fn stat_kinds_and_parents(sn: Arc<dyn Snapshotter>, _work: PathBuf) {
    sn.prepare("a", "", rooted()).await.unwrap();
    let a = sn.stat("a").await.unwrap();
    assert_eq!(
        (a.name.as_str(), a.kind, a.parent.as_str()),
        ("a", Kind::Active, "")
    );
    assert_eq!(a.created, a.updated);
    sn.commit("c", "a", rooted()).await.unwrap();
    assert_eq!(class(sn.stat("a").await), ErrKind::NotFound);
    let c = sn.stat("c").await.unwrap();
    assert_eq!((c.kind, c.parent.as_str()), (Kind::Committed, ""));
    assert!(c.created >= a.created, "a commit's time is its own");
    sn.prepare("b", "c", rooted()).await.unwrap();
    assert_eq!(sn.stat("b").await.unwrap().parent, "c");
    sn.commit("c2", "b", rooted()).await.unwrap();
    assert_eq!(sn.stat("c2").await.unwrap().parent, "c");
    // Walked infos are the Stat ones, field for field.
    let mut walked = sn.walk(&[]).await.unwrap();
    walked.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(
        walked,
        vec![sn.stat("c").await.unwrap(), sn.stat("c2").await.unwrap()]
    );
}

pub async fn key_conflicts(sn: Arc<dyn Snapshotter>, _work: PathBuf) {
    committed(sn.as_ref(), "base", "").await;
    sn.prepare("k", "base", rooted()).await.unwrap();
    assert_eq!(
        class(sn.view("k", "base", rooted()).await),
        ErrKind::AlreadyExists
    );
    assert_eq!(
        class(sn.prepare("k", "base", rooted()).await),
        ErrKind::AlreadyExists
    );
    sn.view("v", "base", rooted()).await.unwrap();
    assert_eq!(
        class(sn.view("v", "base", rooted()).await),
        ErrKind::AlreadyExists
    );
    assert_eq!(
        class(sn.prepare("x", "nope", rooted()).await),
        ErrKind::NotFound
    );
    assert_eq!(
        class(sn.prepare("x", "k", rooted()).await),
        ErrKind::InvalidArgument
    );
    assert_eq!(
        class(sn.commit("c", "v", rooted()).await),
        ErrKind::FailedPrecondition
    );
    assert_eq!(
        class(sn.commit("c", "missing", rooted()).await),
        ErrKind::NotFound
    );
    assert_eq!(
        class(sn.commit("base", "k", rooted()).await),
        ErrKind::AlreadyExists
    );
    assert_eq!(class(sn.mounts("base").await), ErrKind::FailedPrecondition);
    assert_eq!(class(sn.mounts("missing").await), ErrKind::NotFound);
    assert_eq!(class(sn.remove("missing").await), ErrKind::NotFound);
    assert_eq!(class(sn.stat("missing").await), ErrKind::NotFound);
}

pub async fn remove_rules(sn: Arc<dyn Snapshotter>, _work: PathBuf) {
    committed(sn.as_ref(), "base", "").await;
    committed(sn.as_ref(), "inter", "base").await;
    sn.prepare("top", "inter", rooted()).await.unwrap();
    let err = sn.remove("inter").await.unwrap_err();
    assert_eq!(err.kind(), ErrKind::FailedPrecondition);
    assert!(err.to_string().contains("remove"), "{err}");
    assert_eq!(class(sn.remove("base").await), ErrKind::FailedPrecondition);
    sn.remove("top").await.unwrap();
    sn.remove("inter").await.unwrap();
    sn.remove("base").await.unwrap();
    // Keys come free again.
    committed(sn.as_ref(), "committed-1", "").await;
    sn.prepare("reuse-1", "committed-1", rooted())
        .await
        .unwrap();
    sn.remove("reuse-1").await.unwrap();
    sn.view("reuse-1", "committed-1", rooted()).await.unwrap();
    sn.remove("reuse-1").await.unwrap();
    sn.prepare("reuse-1", "", rooted()).await.unwrap();
    sn.remove("committed-1").await.unwrap();
    sn.commit("committed-1", "reuse-1", rooted()).await.unwrap();
}

pub async fn update_labels(sn: Arc<dyn Snapshotter>, _work: PathBuf) {
    sn.prepare("a", "", labels(&[(ROOT_LABEL, "x"), ("l1", "v1")]))
        .await
        .unwrap();
    let before = sn.stat("a").await.unwrap();
    let mut info: Info = before.clone();
    info.parent = "doesnotexist".into();
    info.labels = labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3"), (ROOT_LABEL, "x")]);
    let got = sn.update(info.clone(), &[]).await.unwrap();
    assert_eq!(callers(&got.labels), info.labels);
    assert_eq!(got.parent, "", "the parent is not changed by Update");
    assert_eq!(got.created, before.created);
    assert!(got.updated > before.updated);
    info.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
    let got = sn
        .update(info.clone(), &["labels.l1".into(), "labels.l2".into()])
        .await
        .unwrap();
    assert_eq!(
        callers(&got.labels),
        labels(&[("l1", "updated"), ("l3", "v3"), (ROOT_LABEL, "x")])
    );
    info.labels = labels(&[("l4", "v4"), (ROOT_LABEL, "x")]);
    let got = sn.update(info.clone(), &["labels".into()]).await.unwrap();
    assert_eq!(callers(&got.labels), info.labels);
    assert_eq!(sn.stat("a").await.unwrap(), got);
    assert_eq!(
        class(sn.update(info, &["parent".into()]).await),
        ErrKind::InvalidArgument
    );
}

pub async fn walk_filters(sn: Arc<dyn Snapshotter>, _work: PathBuf) {
    let root = |extra: &[(&str, &str)]| {
        let mut l = labels(extra);
        l.insert(ROOT_LABEL.into(), "check-walk".into());
        l
    };
    sn.prepare("a-np", "", root(&[])).await.unwrap();
    sn.prepare("p-a", "", root(&[])).await.unwrap();
    sn.commit("p", "p-a", root(&[])).await.unwrap();
    sn.prepare("a", "p", root(&[])).await.unwrap();
    sn.view("v", "p", root(&[])).await.unwrap();
    sn.prepare("p-wl-a", "", root(&[])).await.unwrap();
    sn.commit("p-wl", "p-wl-a", root(&[("l", "1")]))
        .await
        .unwrap();
    sn.prepare("a-wl", "p-wl", root(&[("l", "2")]))
        .await
        .unwrap();
    sn.view("v-wl", "p-wl", root(&[("l", "3")])).await.unwrap();
    sn.prepare("a-np-wl", "", root(&[("l", "2")]))
        .await
        .unwrap();
    let names = |filters: &[&str]| {
        let sn = sn.clone();
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        async move {
            let mut n: Vec<String> = sn
                .walk(&filters)
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
            n.sort();
            n
        }
    };
    let want = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&[r#"labels."containerd.io/gc.root"==check-walk"#]).await,
        want(&["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"])
    );
    assert_eq!(
        names(&["kind==active"]).await,
        want(&["a-np", "a", "a-wl", "a-np-wl"])
    );
    assert_eq!(names(&["kind==view"]).await, want(&["v", "v-wl"]));
    assert_eq!(names(&["kind==committed"]).await, want(&["p", "p-wl"]));
    assert_eq!(
        names(&["name==p", "name==a-np-wl"]).await,
        want(&["p", "a-np-wl"])
    );
    assert_eq!(names(&["name==a-wl,labels.l"]).await, want(&["a-wl"]));
    assert_eq!(names(&["parent==p"]).await, want(&["a", "v"]));
    assert_eq!(
        names(&[r#"parent!="""#]).await,
        want(&["a", "v", "a-wl", "v-wl"])
    );
    assert_eq!(
        names(&["labels.l"]).await,
        want(&["p-wl", "a-wl", "v-wl", "a-np-wl"])
    );
    assert_eq!(names(&["labels.l==2"]).await, want(&["a-wl", "a-np-wl"]));
}

pub async fn close_twice(sn: Arc<dyn Snapshotter>, _work: PathBuf) {
    sn.close().await.unwrap();
    sn.close().await.unwrap();
}

/// Basic: what is written through an active snapshot is in the view of its committed child.
pub async fn layers_through_mounts(sn: Arc<dyn Snapshotter>, work: PathBuf) {
    if !can_mount("layers_through_mounts") {
        return;
    }
    let mounts = sn.prepare("p", "", rooted()).await.unwrap();
    {
        let m = Mounted::new(&mounts, work.join("p"));
        assert_eq!(
            fs::metadata(&m.0).unwrap().permissions().mode() & 0o777,
            0o755,
            "a new root is 0755"
        );
        fs::write(m.0.join("foo"), b"foo\n").unwrap();
        fs::create_dir_all(m.0.join("a/b")).unwrap();
        fs::write(m.0.join("a/b/c"), b"c").unwrap();
        fs::write(m.0.join("gone"), b"x").unwrap();
    }
    sn.commit("c1", "p", rooted()).await.unwrap();
    let mounts = sn.prepare("n", "c1", rooted()).await.unwrap();
    {
        let m = Mounted::new(&mounts, work.join("n"));
        assert_eq!(fs::read(m.0.join("foo")).unwrap(), b"foo\n");
        fs::write(m.0.join("bar"), b"bar").unwrap();
        fs::write(m.0.join("foo"), b"foo2").unwrap();
        fs::remove_dir_all(m.0.join("a/b")).unwrap();
        fs::remove_file(m.0.join("gone")).unwrap();
        fs::set_permissions(m.0.join("bar"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::lchown(m.0.join("bar"), Some(1), Some(1)).unwrap();
    }
    sn.commit("c2", "n", rooted()).await.unwrap();
    let mounts = sn.view("v", "c2", rooted()).await.unwrap();
    {
        let m = Mounted::new(&mounts, work.join("v"));
        assert_eq!(fs::read(m.0.join("foo")).unwrap(), b"foo2");
        assert_eq!(fs::read(m.0.join("bar")).unwrap(), b"bar");
        let bar = fs::metadata(m.0.join("bar")).unwrap();
        assert_eq!((bar.mode() & 0o777, bar.uid(), bar.gid()), (0o600, 1, 1));
        assert!(m.0.join("a").is_dir());
        assert!(!m.0.join("a/b").exists());
        assert!(!m.0.join("gone").exists());
        let err = fs::write(m.0.join("new"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "a view is read-only");
    }
    // A view of the first layer alone.
    let mounts = sn.view("v1", "c1", rooted()).await.unwrap();
    {
        let m = Mounted::new(&mounts, work.join("v1"));
        assert_eq!(fs::read(m.0.join("foo")).unwrap(), b"foo\n");
        assert!(m.0.join("gone").exists());
        assert!(fs::write(m.0.join("new"), b"x").is_err());
    }
    let u = sn.usage("c1").await.unwrap();
    // Snapshotters on block devices count bytes only, as containerd's devmapper does.
    assert!(u.size > 0 && (u.inodes >= 5 || u.inodes == 0), "{u:?}");
    sn.remove("v").await.unwrap();
    sn.remove("v1").await.unwrap();
    assert_eq!(class(sn.remove("c1").await), ErrKind::FailedPrecondition);
    sn.remove("c2").await.unwrap();
    sn.remove("c1").await.unwrap();
    sn.cleanup().await.unwrap();
}

/// 128 layers deep, each adding a file: the last view sees them all (a long lowerdir mounts).
pub async fn deep_chain(sn: Arc<dyn Snapshotter>, work: PathBuf) {
    if !can_mount("deep_chain") {
        return;
    }
    let mut parent = String::new();
    for i in 0..128 {
        let key = format!("{}/layer-{i}-active", work.display());
        let mounts = sn.prepare(&key, &parent, rooted()).await.unwrap();
        {
            let m = Mounted::new(&mounts, work.join("m"));
            fs::write(m.0.join(format!("f{i}")), i.to_string()).unwrap();
        }
        let name = format!("{}/layer-{i}", work.display());
        sn.commit(&name, &key, rooted()).await.unwrap();
        parent = name;
    }
    let mounts = sn.view("deep-view", &parent, rooted()).await.unwrap();
    let m = Mounted::new(&mounts, work.join("m"));
    for i in 0..128 {
        assert_eq!(
            fs::read_to_string(m.0.join(format!("f{i}"))).unwrap(),
            i.to_string()
        );
    }
}

/// Runs a host tool a case needs; its trimmed output. Not starting or failing is a panic
/// with what it printed.
fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Makes a btrfs filesystem in a sparse file next to `root` and mounts it on `root`; false
/// (saying why) where that cannot be done: not root, or no `mkfs.btrfs` (Debian's btrfs-progs).
pub fn mount_loop_btrfs(root: &Path) -> bool {
    let image = root.with_extension("btrfs.img");
    let made = fs::File::create(&image).and_then(|f| f.set_len(512 << 20));
    if let Err(e) = made {
        panic!("creating {}: {e}", image.display());
    }
    let image_path = image.to_str().expect("a UTF-8 image path");
    run_ok("mkfs.btrfs", &["-q", image_path]);
    run_ok(
        "mount",
        &[
            "-o",
            "loop",
            image_path,
            root.to_str().expect("a UTF-8 root"),
        ],
    );
    true
}

/// Whether btrfs cases can run: root, and `mkfs.btrfs` on PATH. Says why not; on CI (`CI`
/// set) a missing tool is a failure, since CI installs it.
pub fn btrfs_available() -> bool {
    if !can_mount("btrfs cases") {
        return false;
    }
    let found = std::process::Command::new("mkfs.btrfs")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let on_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        assert!(!on_ci, "mkfs.btrfs is missing on CI: install btrfs-progs");
        eprintln!("skipping btrfs cases: mkfs.btrfs not found (Debian package btrfs-progs)");
    }
    found
}

/// Set in the guest of the devmapper VM test, which has device-mapper.
pub const DEVMAPPER_GUEST_ENV: &str = "CRATED_TEST_DEVMAPPER_GUEST";

/// Whether devmapper cases can run: only inside the VM that `suite_tests::devmapper_vm` boots
/// (this host has no device-mapper); says so elsewhere.
pub fn in_devmapper_guest() -> bool {
    if std::env::var_os(DEVMAPPER_GUEST_ENV).is_some() {
        return true;
    }
    eprintln!(
        "skipping devmapper case here: it runs inside the VM of suite_tests::devmapper_vm, which has device-mapper"
    );
    false
}

/// Makes a thin pool named `name` on two sparse loop files in `dir` (512 MiB of data, 32 MiB
/// of metadata, 64 KiB blocks), as containerd's documentation sets one up for tests.
pub fn make_thin_pool(dir: &Path, name: &str) {
    fs::create_dir_all(dir).unwrap();
    let mut devices = Vec::new();
    for (file, size) in [("meta", 32u64 << 20), ("data", 512 << 20)] {
        let path = dir.join(file);
        fs::File::create(&path).unwrap().set_len(size).unwrap();
        devices.push(run_ok(
            "losetup",
            &["--find", "--show", path.to_str().unwrap()],
        ));
    }
    let table = format!(
        "0 {} thin-pool {} {} 128 32768 1 skip_block_zeroing",
        (512u64 << 20) / 512,
        devices[0],
        devices[1]
    );
    run_ok("dmsetup", &["create", name, "--table", &table]);
}

/// The guard of cases that can run anywhere.
pub fn always() -> bool {
    true
}

/// Runs one case with a fresh snapshotter from `make` (given its root) and a scratch dir.
pub async fn run_case<F, Fut, M>(make: M, case: F)
where
    M: FnOnce(&Path) -> Arc<dyn Snapshotter>,
    F: FnOnce(Arc<dyn Snapshotter>, PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let base = std::env::temp_dir().join(format!("crated-snapshot-suite-{}", uuid_like()));
    fs::create_dir_all(base.join("root")).unwrap();
    fs::create_dir_all(base.join("work")).unwrap();
    let sn = make(&base.join("root"));
    case(sn, base.join("work")).await;
    // A snapshotter on a filesystem of its own (btrfs on a loop file) has it mounted at root.
    let _ = mount::unmount(&base.join("root"));
    let _ = fs::remove_dir_all(&base);
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        crate::now_nanos(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test per suite case for a snapshotter made by `$make` (a
/// `fn(&Path) -> Arc<dyn Snapshotter>` given the root). With `if $guard`, each test first asks
/// `$guard()` (a `fn() -> bool` that says why when it returns false) whether it can run here.
#[macro_export]
macro_rules! snapshotter_suite {
    ($make:expr, if $guard:expr; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            if !$guard() {
                return;
            }
            $crate::testsuite::run_case($make, $crate::testsuite::$case).await;
        }
    )*};
    ($make:expr, if $guard:expr) => {
        $crate::snapshotter_suite!(
            $make, if $guard;
            stat_kinds_and_parents,
            key_conflicts,
            remove_rules,
            update_labels,
            walk_filters,
            close_twice,
            layers_through_mounts,
            deep_chain,
        );
    };
    ($make:expr) => {
        $crate::snapshotter_suite!($make, if $crate::testsuite::always);
    };
}
