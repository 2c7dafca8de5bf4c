//! libcni's operations on one network, a list of plugins: ADD runs them in order, each getting
//! the previous one's result, and caches the last result; DEL runs them in reverse with the
//! cached result as prevResult (0.4.0 and later) and then forgets it; CHECK runs them in order
//! against the cached result.

use std::path::PathBuf;

use serde_json::Value;

use crate::cache::{self, CacheEntry, ResultCache};
use crate::exec::{Command, PluginExec, RuntimeConf};
use crate::result::{CniResult, SpecVersion};
use crate::{CniError, NetworkList};

/// ADD of every plugin of `list`; the last plugin's result, which is also cached.
pub(crate) async fn add(
    exec: &PluginExec,
    cache: &ResultCache,
    list: &NetworkList,
    rt: &RuntimeConf,
) -> Result<CniResult, CniError> {
    let mut prev: Option<CniResult> = None;
    for plugin in &list.plugins {
        let result = exec
            .add(&list.name, &list.cni_version, plugin, prev.as_ref(), rt)
            .await
            .map_err(|e| failed(plugin, "add", e))?;
        prev = Some(result);
    }
    let result = prev.ok_or_else(|| CniError::InvalidConfig {
        path: list.source.clone(),
        why: "no plugins in list".into(),
    })?;
    cache.write(&cache::entry(
        list,
        rt,
        result.to_json(&result.cni_version)?,
    ))?;
    Ok(result)
}

/// DEL of every plugin of `list`, last first. The first failure stops it (the record stays, so
/// a retry has the result again).
pub(crate) async fn del(
    exec: &PluginExec,
    cache: &ResultCache,
    list: &NetworkList,
    rt: &RuntimeConf,
) -> Result<(), CniError> {
    let mut cached = None;
    // The cached result as prevResult came with 0.4.0; older plugins get none.
    if version_of(list)? >= SpecVersion::V0_4_0 {
        match cache.read_result(&list.name, &rt.container_id, &rt.if_name, &list.cni_version) {
            Ok(result) => cached = result,
            Err(e) => {
                // An unreadable record cannot help this DEL or any later one.
                tracing::warn!("dropping a CNI cache record: {e}");
                let _ = cache.remove(&list.name, &rt.container_id, &rt.if_name);
            }
        }
    }
    for plugin in list.plugins.iter().rev() {
        exec.del_or_check(
            Command::Del,
            &list.name,
            &list.cni_version,
            plugin,
            cached.as_ref(),
            rt,
        )
        .await
        .map_err(|e| failed(plugin, "delete", e))?;
    }
    if let Err(e) = cache.remove(&list.name, &rt.container_id, &rt.if_name) {
        tracing::warn!("removing a CNI cache record: {e}");
    }
    Ok(())
}

/// DEL of an attachment from its cache record alone: the network list it was added with (the
/// config bytes kept there) and its recorded arguments, as libcni's cached config gives them.
/// For a network that is no longer configured.
pub(crate) async fn del_cached(
    exec: &PluginExec,
    cache: &ResultCache,
    entry: &CacheEntry,
    netns: &str,
) -> Result<(), CniError> {
    let source = PathBuf::from(format!(
        "cache record {}-{}-{}",
        entry.network_name, entry.container_id, entry.if_name
    ));
    let list = NetworkList::parse(&entry.config, false, &source)
        .or_else(|_| NetworkList::parse(&entry.config, true, &source))?;
    if list.name != entry.network_name {
        return Err(CniError::Cache {
            path: source,
            why: format!(
                "its config is of network {:?}, not {:?}",
                list.name, entry.network_name
            ),
        });
    }
    let rt = RuntimeConf {
        container_id: entry.container_id.clone(),
        netns: netns.to_owned(),
        if_name: entry.if_name.clone(),
        args: entry
            .cni_args
            .iter()
            .map(|[k, v]| (k.clone(), v.clone()))
            .collect(),
        capability_args: entry.capability_args.clone(),
    };
    del(exec, cache, &list, &rt).await
}

/// CHECK of every plugin of `list` against the cached result.
pub(crate) async fn check(
    exec: &PluginExec,
    cache: &ResultCache,
    list: &NetworkList,
    rt: &RuntimeConf,
) -> Result<(), CniError> {
    if version_of(list)? < SpecVersion::V0_4_0 {
        return Err(CniError::InvalidArgument(format!(
            "configuration version {:?} does not support the CHECK command",
            list.cni_version
        )));
    }
    if list.disable_check {
        return Ok(());
    }
    let cached = cache.read_result(&list.name, &rt.container_id, &rt.if_name, &list.cni_version)?;
    for plugin in &list.plugins {
        exec.del_or_check(
            Command::Check,
            &list.name,
            &list.cni_version,
            plugin,
            cached.as_ref(),
            rt,
        )
        .await
        .map_err(|e| failed(plugin, "check", e))?;
    }
    Ok(())
}

fn version_of(list: &NetworkList) -> Result<SpecVersion, CniError> {
    SpecVersion::parse(&list.cni_version).ok_or_else(|| CniError::InvalidConfig {
        path: list.source.clone(),
        why: format!("invalid cniVersion {:?}", list.cni_version),
    })
}

/// Which plugin failed in which operation, in libcni's words (`plugin type="bridge" failed
/// (add): ...`): go-cni's callers match on the text.
fn failed(plugin: &Value, op: &'static str, source: CniError) -> CniError {
    let text = |key: &str| plugin.get(key).and_then(Value::as_str).unwrap_or("");
    let mut description = format!("type={:?}", text("type"));
    if !text("name").is_empty() {
        description.push_str(&format!(" name={:?}", text("name")));
    }
    CniError::Plugin {
        plugin: description,
        op,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::testing::{fake_plugin, Recorder};

    /// A plugin that records its call and, on ADD, answers an IP derived from its name, with
    /// the prevResult it got passed through in `dns.domain` (so the chain can be seen).
    fn chaining_plugin(bin: &Path, rec: &Recorder, name: &str, ip: &str) {
        fake_plugin(
            bin,
            name,
            &format!(
                r#"{}
if [ "$CNI_COMMAND" = ADD ]; then
  prev=$(sed -n 's/.*"prevResult".*"address":"\([^"]*\)".*/\1/p' "$d/stdin")
  echo '{{"cniVersion":"0.4.0","ips":[{{"version":"4","address":"{ip}"}}],"dns":{{"domain":"'"$prev"'"}}}}'
fi"#,
                rec.script()
            ),
        );
    }

    fn setup() -> (
        tempfile::TempDir,
        Recorder,
        PluginExec,
        ResultCache,
        NetworkList,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::new(dir.path());
        let bin = dir.path().join("bin");
        chaining_plugin(&bin, &rec, "first", "10.0.0.1/24");
        chaining_plugin(&bin, &rec, "second", "10.0.0.2/24");
        let exec = PluginExec::new(vec![bin], Duration::from_secs(10));
        let cache = ResultCache::new(dir.path().join("cache"));
        let list = NetworkList::parse(
            br#"{"cniVersion":"0.4.0","name":"net","plugins":[{"type":"first"},{"type":"second"}]}"#,
            false,
            Path::new("net.conflist"),
        )
        .unwrap();
        (dir, rec, exec, cache, list)
    }

    fn rt() -> RuntimeConf {
        RuntimeConf {
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            if_name: "eth0".into(),
            ..RuntimeConf::default()
        }
    }

    #[tokio::test]
    async fn add_chains_results_and_caches_the_last_del_reverses_with_it() {
        let (dir, rec, exec, cache, list) = setup();
        let result = add(&exec, &cache, &list, &rt()).await.unwrap();
        assert_eq!(result.ips[0].address.to_string(), "10.0.0.2/24");
        assert_eq!(
            result.dns.domain, "10.0.0.1/24",
            "second got first's result"
        );
        let calls = rec.calls();
        assert!(calls[0].stdin.get("prevResult").is_none());
        assert_eq!(
            calls[1].stdin["prevResult"]["ips"][0]["address"],
            "10.0.0.1/24"
        );
        let record = dir.path().join("cache/results/net-c1-eth0");
        assert!(record.exists());
        rec.clear();

        del(&exec, &cache, &list, &rt()).await.unwrap();
        let calls = rec.calls();
        let order: Vec<&str> = calls.iter().map(|c| c.plugin.as_str()).collect();
        assert_eq!(order, ["second", "first"]);
        for call in &calls {
            assert_eq!(call.env("CNI_COMMAND"), "DEL");
            assert_eq!(
                call.stdin["prevResult"]["ips"][0]["address"], "10.0.0.2/24",
                "DEL gets the cached final result"
            );
        }
        assert!(!record.exists());
        rec.clear();

        // Again: no record, so no prevResult, and still fine.
        del(&exec, &cache, &list, &rt()).await.unwrap();
        assert!(rec
            .calls()
            .iter()
            .all(|c| c.stdin.get("prevResult").is_none()));
    }

    #[tokio::test]
    async fn a_failing_plugin_stops_the_chain_and_is_named() {
        let (dir, rec, exec, cache, _) = setup();
        fake_plugin(
            &dir.path().join("bin"),
            "broken",
            r#"cat >/dev/null; echo '{"code":7,"msg":"bad config"}'; exit 1"#,
        );
        let list = NetworkList::parse(
            br#"{"cniVersion":"0.4.0","name":"net","plugins":[{"type":"first"},{"type":"broken","name":"b"},{"type":"second"}]}"#,
            false,
            Path::new("net.conflist"),
        )
        .unwrap();
        let e = add(&exec, &cache, &list, &rt()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"plugin type="broken" name="b" failed (add): bad config"#
        );
        assert_eq!(rec.calls().len(), 1, "the chain stops at the failure");
        assert!(!dir.path().join("cache/results/net-c1-eth0").exists());
        rec.clear();
        let e = del(&exec, &cache, &list, &rt()).await.unwrap_err();
        assert!(e.to_string().contains("failed (delete): bad config"), "{e}");
        let order: Vec<String> = rec.calls().into_iter().map(|c| c.plugin).collect();
        assert_eq!(order, ["second"], "DEL stops at the failure too");
    }

    #[tokio::test]
    async fn a_pre_040_list_gets_no_cached_prev_result_on_del() {
        let (_dir, rec, exec, cache, _) = setup();
        let list = NetworkList::parse(
            br#"{"cniVersion":"0.3.1","name":"old","plugins":[{"type":"first"}]}"#,
            false,
            Path::new("old.conflist"),
        )
        .unwrap();
        add(&exec, &cache, &list, &rt()).await.unwrap();
        rec.clear();
        del(&exec, &cache, &list, &rt()).await.unwrap();
        assert!(rec.calls()[0].stdin.get("prevResult").is_none());
        let e = check(&exec, &cache, &list, &rt()).await.unwrap_err();
        assert!(e.to_string().contains("does not support the CHECK command"));
    }

    #[tokio::test]
    async fn check_runs_in_order_with_the_cached_result_unless_disabled() {
        let (_dir, rec, exec, cache, list) = setup();
        add(&exec, &cache, &list, &rt()).await.unwrap();
        rec.clear();
        check(&exec, &cache, &list, &rt()).await.unwrap();
        let calls = rec.calls();
        let order: Vec<&str> = calls.iter().map(|c| c.plugin.as_str()).collect();
        assert_eq!(order, ["first", "second"]);
        assert_eq!(calls[0].env("CNI_COMMAND"), "CHECK");
        assert_eq!(
            calls[0].stdin["prevResult"]["ips"][0]["address"],
            "10.0.0.2/24"
        );
        rec.clear();
        let disabled = NetworkList {
            disable_check: true,
            ..list
        };
        check(&exec, &cache, &disabled, &rt()).await.unwrap();
        assert!(rec.calls().is_empty());
    }

    #[tokio::test]
    async fn del_from_the_cache_alone_uses_the_recorded_config_and_arguments() {
        let (dir, rec, exec, cache, list) = setup();
        let rt = RuntimeConf {
            args: vec![("K8S_POD_NAME".into(), "p".into())],
            capability_args: serde_json::json!({"portMappings": [{"hostPort": 1}]})
                .as_object()
                .unwrap()
                .clone(),
            ..rt()
        };
        add(&exec, &cache, &list, &rt).await.unwrap();
        rec.clear();
        let entries = cache.entries_of("c1");
        assert_eq!(entries.len(), 1);
        del_cached(&exec, &cache, &entries[0], "").await.unwrap();
        let calls = rec.calls();
        let order: Vec<&str> = calls.iter().map(|c| c.plugin.as_str()).collect();
        assert_eq!(order, ["second", "first"]);
        assert_eq!(calls[0].env("CNI_ARGS"), "K8S_POD_NAME=p");
        assert_eq!(calls[0].env("CNI_NETNS"), "");
        assert_eq!(calls[0].stdin["name"], "net");
        assert!(!dir.path().join("cache/results/net-c1-eth0").exists());
    }
}
