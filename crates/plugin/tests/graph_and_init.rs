use std::collections::HashMap;
use std::sync::Arc;

use crated_plugin::{
    graph, init_all, Environment, GraphError, Instance, PluginError, Registration, Status,
};

fn reg(t: &str, id: &str, requires: &[&str]) -> Registration {
    Registration::new(t, id, |_ctx| async { Ok(Instance::new(Arc::new(()))) }).requires(requires)
}

fn uris(regs: &[Registration]) -> Vec<String> {
    regs.iter().map(|r| r.uri()).collect()
}

#[test]
fn requirements_start_first_in_registration_order() {
    let regs = vec![
        reg("t.grpc.v1", "a", &["t.service.v1"]),
        reg("t.service.v1", "s1", &["t.meta.v1"]),
        reg("t.meta.v1", "m", &[]),
        reg("t.service.v1", "s2", &[]),
        reg("t.other.v1", "o", &[]),
    ];
    let ordered = graph(regs, &[]).unwrap();
    assert_eq!(
        uris(&ordered),
        [
            "t.meta.v1.m",
            "t.service.v1.s1",
            "t.service.v1.s2",
            "t.grpc.v1.a",
            "t.other.v1.o"
        ]
    );
}

#[test]
fn wildcard_starts_after_everything_that_does_not_need_it() {
    let regs = vec![
        reg("t.service.v1", "introspection", &["*"]),
        reg("t.grpc.v1", "introspection", &["t.service.v1"]),
        reg("t.meta.v1", "m", &[]),
        reg("t.snap.v1", "s", &[]),
    ];
    let ordered = uris(&graph(regs, &[]).unwrap());
    let pos = |u: &str| ordered.iter().position(|x| x == u).unwrap();
    assert!(pos("t.service.v1.introspection") > pos("t.meta.v1.m"));
    assert!(pos("t.service.v1.introspection") > pos("t.snap.v1.s"));
    assert!(pos("t.grpc.v1.introspection") > pos("t.service.v1.introspection"));
}

#[test]
fn cycle_is_an_error_naming_the_loop() {
    let regs = vec![
        reg("t.a.v1", "a", &["t.b.v1"]),
        reg("t.b.v1", "b", &["t.c.v1"]),
        reg("t.c.v1", "c", &["t.a.v1"]),
    ];
    let err = graph(regs, &[]).unwrap_err();
    assert_eq!(
        err,
        GraphError::Cycle(vec![
            "t.a.v1.a".into(),
            "t.b.v1.b".into(),
            "t.c.v1.c".into(),
            "t.a.v1.a".into()
        ])
    );
    assert!(err
        .to_string()
        .contains("t.a.v1.a -> t.b.v1.b -> t.c.v1.c -> t.a.v1.a"));
}

#[test]
fn duplicates_and_bad_wildcards_are_refused() {
    assert!(matches!(
        graph(vec![reg("t.a.v1", "a", &[]), reg("t.a.v1", "a", &[])], &[]),
        Err(GraphError::Duplicate(_))
    ));
    assert!(matches!(
        graph(vec![reg("t.a.v1", "a", &["*", "t.b.v1"])], &[]),
        Err(GraphError::BadWildcard(_))
    ));
}

#[test]
fn disabled_plugins_are_removed_before_the_graph() {
    let regs = vec![reg("t.a.v1", "a", &["t.b.v1"]), reg("t.b.v1", "b", &[])];
    let ordered = graph(regs, &["t.b.v1.b".to_string()]).unwrap();
    assert_eq!(uris(&ordered), ["t.a.v1.a"]);
}

fn env(dir: &std::path::Path) -> Environment<'_> {
    Environment {
        root: dir,
        state: dir,
        grpc_address: "/g.sock",
        ttrpc_address: "/t.sock",
        shared: Default::default(),
    }
}

#[tokio::test]
async fn dependents_of_failed_and_disabled_plugins_name_the_root_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let regs = vec![
        Registration::new("t.meta.v1", "bolt", |_ctx| async {
            Err::<Instance, _>(PluginError::failed("disk on fire"))
        }),
        Registration::new("t.service.v1", "ns", |ctx| async move {
            let db = ctx.get_single::<u32>("t.meta.v1")?;
            Ok(Instance::new(db))
        })
        .requires(&["t.meta.v1"]),
        Registration::new("t.grpc.v1", "ns", |ctx| async move {
            let s = ctx.get_by_id::<u32>("t.service.v1", "ns")?;
            Ok(Instance::new(s))
        })
        .requires(&["t.service.v1"]),
        Registration::new("t.snap.v1", "btrfs", |ctx| async move {
            ctx.meta().exports.insert("root".into(), "/x".into());
            Err::<Instance, _>(PluginError::skip("not on btrfs"))
        }),
        Registration::new("t.user.v1", "u", |ctx| async move {
            let s = ctx.get_single::<u32>("t.snap.v1")?;
            Ok(Instance::new(s))
        })
        .requires(&["t.snap.v1"]),
        Registration::new("t.user.v1", "d", |ctx| async move {
            let s = ctx.get_single::<u32>("t.gone.v1")?;
            Ok(Instance::new(s))
        }),
    ];
    let disabled = vec!["t.gone.v1.x".to_string()];
    let ordered = graph(regs, &disabled).unwrap();
    let set = init_all(ordered, HashMap::new(), disabled, &env(dir.path())).await;
    let status = |uri: &str| set.get(uri).unwrap().status.clone();
    assert!(matches!(status("t.meta.v1.bolt"), Status::Failed(e) if e.message == "disk on fire"));
    let Status::Failed(ns) = status("t.service.v1.ns") else {
        panic!()
    };
    assert_eq!(
        ns.message,
        "requires t.meta.v1.bolt, which failed: disk on fire"
    );
    let Status::Failed(grpc) = status("t.grpc.v1.ns") else {
        panic!()
    };
    assert_eq!(
        grpc.message,
        "requires t.service.v1.ns, which failed because t.meta.v1.bolt failed: disk on fire"
    );
    assert_eq!(
        status("t.snap.v1.btrfs"),
        Status::Skipped("not on btrfs".into())
    );
    assert_eq!(
        status("t.snap.v1.btrfs").error_message().unwrap(),
        "not on btrfs: skip plugin"
    );
    assert_eq!(
        set.get("t.snap.v1.btrfs").unwrap().meta.exports["root"],
        "/x"
    );
    let Status::Failed(u) = status("t.user.v1.u") else {
        panic!()
    };
    assert_eq!(
        u.message,
        "requires t.snap.v1.btrfs, which was skipped: not on btrfs"
    );
    let Status::Failed(d) = status("t.user.v1.d") else {
        panic!()
    };
    assert_eq!(d.message, "requires t.gone.v1.x, which is disabled");
    assert!(set.get("t.gone.v1.x").is_none());
    // Directories are made only for plugins that ask for them.
    assert!(!dir.path().join("t.meta.v1.bolt").exists());
}

#[tokio::test]
async fn plugin_directories_are_created_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let regs = vec![Registration::new("t.snap.v1", "s", |ctx| async move {
        assert!(!ctx.root_path().exists());
        let root = ctx.root()?;
        let state = ctx.state()?;
        assert!(root.is_dir() && state.is_dir());
        Ok(Instance::new(Arc::new(root)))
    })];
    let set = init_all(
        graph(regs, &[]).unwrap(),
        HashMap::new(),
        vec![],
        &env(dir.path()),
    )
    .await;
    assert!(set.get("t.snap.v1.s").unwrap().is_ok());
    assert!(dir.path().join("t.snap.v1.s").is_dir());
}

#[tokio::test]
async fn independent_inits_overlap_and_dependents_wait() {
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let log = Arc::new(Mutex::new(Vec::<&str>::new()));
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let regs = vec![
        // Finishes only once the later, independent plugin has run: a serial start-up would hang.
        Registration::new("t.a.v1", "slow", move |_ctx| async move {
            rx.await.map_err(PluginError::failed)?;
            l1.lock().unwrap().push("slow");
            Ok(Instance::new(Arc::new(1u32)))
        }),
        Registration::new("t.b.v1", "fast", move |_ctx| async move {
            l2.lock().unwrap().push("fast");
            let _ = tx.send(());
            Ok(Instance::new(Arc::new(2u32)))
        }),
        Registration::new("t.c.v1", "user", move |ctx| async move {
            let v = ctx.get_single::<u32>("t.a.v1")?;
            l3.lock().unwrap().push("user");
            Ok(Instance::new(v))
        })
        .requires(&["t.a.v1"]),
    ];
    let set = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        init_all(
            graph(regs, &[]).unwrap(),
            HashMap::new(),
            vec![],
            &env(dir.path()),
        ),
    )
    .await
    .expect("start-up hung: independent plugins did not overlap");
    assert_eq!(*log.lock().unwrap(), ["fast", "slow", "user"]);
    assert!(set.get("t.c.v1.user").unwrap().is_ok());
    // Records keep the start-up order, not the completion order.
    let order: Vec<String> = set.records().iter().map(|r| r.uri()).collect();
    assert_eq!(order, ["t.a.v1.slow", "t.b.v1.fast", "t.c.v1.user"]);
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct SnapConfig {
    root_path: String,
}

#[tokio::test]
async fn typed_config_and_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crated_config::parse_str(
        "c.toml",
        "version = 2\n[plugins.\"t.snap.v1.s\"]\nroot_path = \"/p\"\n",
        false,
    )
    .unwrap();
    let regs = vec![
        Registration::new("t.snap.v1", "s", |mut ctx| async move {
            let c: SnapConfig = ctx.config()?;
            Ok(Instance::new(Arc::new(c.root_path)))
        })
        .with_config::<SnapConfig>(),
        Registration::new("t.snap.v1", "t", |_ctx| async {
            Ok(Instance::new(Arc::new("t".to_string())))
        }),
        Registration::new("t.user.v1", "u", |ctx| async move {
            let all = ctx.get_by_type::<String>("t.snap.v1")?;
            let names: Vec<String> = all.iter().map(|(id, v)| format!("{id}={v}")).collect();
            assert!(
                ctx.get_by_id::<u64>("t.snap.v1", "s").is_err(),
                "wrong type must not downcast"
            );
            Ok(Instance::new(Arc::new(names.join(","))))
        })
        .requires(&["t.snap.v1"]),
    ];
    let mut configs = HashMap::new();
    for r in &regs {
        if let Some(c) = r.decode_config(cfg.plugins.get(&r.uri())).unwrap() {
            configs.insert(r.uri(), c);
        }
    }
    assert_eq!(
        regs[0].default_config().unwrap().unwrap()["root_path"].as_str(),
        Some("")
    );
    let set = init_all(graph(regs, &[]).unwrap(), configs, vec![], &env(dir.path())).await;
    let rec = set.get("t.user.v1.u").unwrap();
    assert!(rec.is_ok(), "{:?}", rec.status);
    let names = set.instances::<String>("t.user.v1");
    assert_eq!(names.len(), 1);
    // Both snapshotters, in order, the first with its configured value.
    assert_eq!(names[0].1.as_str(), "s=/p,t=t");
}
