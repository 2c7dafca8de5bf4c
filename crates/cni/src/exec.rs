//! Running one CNI plugin, as the spec's section 3 and libcni's `invoke` package do: the binary
//! found by `type` in the bin dirs, the `CNI_*` environment, the request config on stdin (name,
//! version, prevResult and runtimeConfig injected), the result or error JSON on stdout, and a
//! deadline after which the plugin is killed.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::result::CniResult;
use crate::CniError;

/// The operations of the spec (CNI_COMMAND) that a runtime issues here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Add,
    Check,
    Del,
    Version,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Check => "CHECK",
            Command::Del => "DEL",
            Command::Version => "VERSION",
        }
    }
}

/// The per-invocation arguments (libcni's `RuntimeConf`): the same for every plugin of a
/// network.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RuntimeConf {
    pub container_id: String,
    /// Empty when the netns is gone (DEL may still run).
    pub netns: String,
    pub if_name: String,
    /// `CNI_ARGS`, in order.
    pub args: Vec<(String, String)>,
    /// Offered to every plugin; each gets the ones its `capabilities` declare.
    pub capability_args: Map<String, Value>,
}

/// Finds and runs plugins.
#[derive(Debug, Clone)]
pub(crate) struct PluginExec {
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
}

impl PluginExec {
    pub(crate) fn new(bin_dirs: Vec<PathBuf>, timeout: Duration) -> PluginExec {
        PluginExec { bin_dirs, timeout }
    }

    /// The plugin binary `plugin` (a `type`): the first regular file of that name in the bin
    /// dirs (libcni's `FindInPath`).
    pub(crate) fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        if plugin.is_empty() || plugin.contains('/') {
            return Err(CniError::InvalidArgument(format!(
                "invalid plugin name {plugin:?}"
            )));
        }
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|path| path.metadata().is_ok_and(|m| m.is_file()))
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.to_owned(),
                dirs: format!("{:?}", self.bin_dirs),
            })
    }

    /// ADD: the plugin's result.
    pub(crate) async fn add(
        &self,
        network: &str,
        cni_version: &str,
        plugin: &Value,
        prev: Option<&CniResult>,
        rt: &RuntimeConf,
    ) -> Result<CniResult, CniError> {
        let path = self.find(plugin_type(plugin))?;
        // libcni checks these on ADD only: they become interface and file names.
        validate_name("containerID", &rt.container_id)?;
        validate_name("network name", network)?;
        validate_if_name(&rt.if_name)?;
        let stdin = request_config(network, cni_version, plugin, prev, &rt.capability_args)?;
        let stdout = self.run(Command::Add, &path, &stdin, rt).await?;
        CniResult::parse(&stdout, cni_version)
    }

    /// DEL or CHECK: success or the plugin's error.
    pub(crate) async fn del_or_check(
        &self,
        command: Command,
        network: &str,
        cni_version: &str,
        plugin: &Value,
        prev: Option<&CniResult>,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        let path = self.find(plugin_type(plugin))?;
        let stdin = request_config(network, cni_version, plugin, prev, &rt.capability_args)?;
        self.run(command, &path, &stdin, rt).await.map(drop)
    }

    /// VERSION: the spec versions the plugin speaks. Plugins older than the command answer
    /// with an error and speak 0.1.0 only.
    pub(crate) async fn versions(&self, plugin: &str) -> Result<Vec<String>, CniError> {
        let path = self.find(plugin)?;
        // Plugins built on an old skel insist on these being set.
        let rt = RuntimeConf {
            netns: "dummy".into(),
            if_name: "dummy".into(),
            ..RuntimeConf::default()
        };
        let stdin = format!(
            r#"{{"cniVersion":"{}"}}"#,
            crate::result::SpecVersion::CURRENT
        );
        let stdout = match self
            .run(Command::Version, &path, stdin.as_bytes(), &rt)
            .await
        {
            Err(CniError::PluginFailed { msg, .. }) if msg == "unknown CNI_COMMAND: VERSION" => {
                return Ok(vec!["0.1.0".into()])
            }
            other => other?,
        };
        #[derive(Deserialize)]
        struct Info {
            #[serde(default, rename = "supportedVersions")]
            supported: Vec<String>,
        }
        let info: Info = serde_json::from_slice(&stdout).map_err(|e| CniError::InvalidResult {
            why: format!("VERSION answer: {e}"),
        })?;
        Ok(info.supported)
    }

    /// Runs `path` with `command`, `stdin` and the environment of `rt`; its stdout on success.
    async fn run(
        &self,
        command: Command,
        path: &Path,
        stdin: &[u8],
        rt: &RuntimeConf,
    ) -> Result<Vec<u8>, CniError> {
        let args = rt
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let cni_path = std::env::join_paths(&self.bin_dirs)
            .map_err(|e| CniError::InvalidArgument(format!("CNI bin dirs: {e}")))?;
        tracing::debug!(
            plugin = %path.display(),
            command = command.as_str(),
            container = %rt.container_id,
            ifname = %rt.if_name,
            "running CNI plugin"
        );
        let mut attempt = 0u64;
        let mut child = loop {
            // The daemon's environment is kept (plugins run iptables and need PATH); the
            // CNI_* variables override any inherited ones.
            let spawned = tokio::process::Command::new(path)
                .env("CNI_COMMAND", command.as_str())
                .env("CNI_CONTAINERID", &rt.container_id)
                .env("CNI_NETNS", &rt.netns)
                .env("CNI_IFNAME", &rt.if_name)
                .env("CNI_ARGS", &args)
                .env("CNI_PATH", &cni_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(child) => break child,
                // A binary still open for writing (being installed, or written by another
                // thread whose descriptor a concurrent fork holds) is busy for a moment;
                // libcni retries too.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) => {
                    attempt += 1;
                    if attempt > 5 {
                        return Err(CniError::Exec {
                            path: path.to_path_buf(),
                            source: e,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => {
                    return Err(CniError::Exec {
                        path: path.to_path_buf(),
                        source: e,
                    })
                }
            }
        };
        let input = child.stdin.take();
        let feed = async move {
            if let Some(mut input) = input {
                // A plugin may exit without reading all of stdin (VERSION, errors): a broken
                // pipe then says nothing about the outcome, which the exit status tells.
                if let Err(e) = input.write_all(stdin).await {
                    tracing::debug!("writing a CNI plugin's stdin: {e}");
                }
            }
        };
        let finished = tokio::time::timeout(self.timeout, async {
            let ((), output) = tokio::join!(feed, child.wait_with_output());
            output
        })
        .await;
        // On timeout the child was dropped with the future, which kills it.
        let output = finished
            .map_err(|_| CniError::Timeout {
                path: path.to_path_buf(),
                after: self.timeout,
            })?
            .map_err(|e| CniError::Exec {
                path: path.to_path_buf(),
                source: e,
            })?;
        if !output.status.success() {
            return Err(plugin_error(output.status, &output.stdout, &output.stderr));
        }
        if !output.stderr.is_empty() {
            tracing::debug!(
                plugin = %path.display(),
                "CNI plugin stderr: {}",
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        Ok(output.stdout)
    }
}

/// A plugin's `type`; conf.rs made sure every plugin has one.
fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The error of a failed plugin: its error JSON on stdout, or else what stderr and the exit
/// status say (libcni's `pluginErr` wording).
fn plugin_error(status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> CniError {
    #[derive(Deserialize)]
    struct ErrorJson {
        #[serde(default)]
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim_end().to_owned();
    let failed = |msg: String| CniError::PluginFailed {
        code: 0,
        msg,
        details: String::new(),
    };
    if stdout.iter().all(u8::is_ascii_whitespace) {
        if stderr.is_empty() {
            return failed(format!("netplugin failed with no error message: {status}"));
        }
        return failed(format!("netplugin failed: {:?}: {status}", text(stderr)));
    }
    match serde_json::from_slice::<ErrorJson>(stdout) {
        Ok(e) => CniError::PluginFailed {
            code: e.code,
            msg: e.msg,
            details: e.details,
        },
        Err(e) => failed(format!(
            "netplugin failed but error parsing its diagnostic message {:?}: {e}",
            text(stdout)
        )),
    }
}

/// The config one plugin gets on stdin: its own, with the network's `name` and `cniVersion`,
/// `prevResult` when there is one, `runtimeConfig` holding the capability arguments the
/// plugin declares in `capabilities` (only those), and without `capabilities` (the spec says
/// it must not be set).
pub(crate) fn request_config(
    network: &str,
    cni_version: &str,
    plugin: &Value,
    prev: Option<&CniResult>,
    capability_args: &Map<String, Value>,
) -> Result<Vec<u8>, CniError> {
    let Value::Object(original) = plugin else {
        return Err(CniError::InvalidArgument(format!(
            "plugin config of {network:?} is not an object"
        )));
    };
    let mut config = original.clone();
    config.insert("name".into(), Value::String(network.to_owned()));
    config.insert("cniVersion".into(), Value::String(cni_version.to_owned()));
    if let Some(prev) = prev {
        config.insert("prevResult".into(), prev.to_json(&prev.cni_version)?);
    }
    let mut runtime = Map::new();
    if let Some(Value::Object(declared)) = config.remove("capabilities") {
        for (capability, enabled) in declared {
            if enabled == Value::Bool(true) {
                if let Some(value) = capability_args.get(&capability) {
                    runtime.insert(capability, value.clone());
                }
            }
        }
    }
    if !runtime.is_empty() {
        config.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    serde_json::to_vec(&Value::Object(config))
        .map_err(|e| CniError::InvalidArgument(format!("cannot encode a plugin config: {e}")))
}

/// A container ID or network name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, as libcni requires.
fn validate_name(what: &str, name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(CniError::InvalidArgument(format!(
            "invalid characters in {what} {name:?}"
        )))
    }
}

/// An interface name the kernel takes: 1 to 15 bytes, not `.`/`..`, no `/`, `:` or space.
fn validate_if_name(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() > 15 {
        "is longer than 15 characters"
    } else if name == "." || name == ".." {
        "is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "contains / or : or whitespace"
    } else {
        return Ok(());
    };
    Err(CniError::InvalidArgument(format!(
        "interface name {name:?} {why}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fake_plugin, Recorder};

    fn rt() -> RuntimeConf {
        RuntimeConf {
            container_id: "c1".into(),
            netns: "/var/run/netns/cni-x".into(),
            if_name: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAME".into(), "p".into()),
            ],
            capability_args: serde_json::json!({
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                "bandwidth": {"ingressRate": 1}
            })
            .as_object()
            .unwrap()
            .clone(),
        }
    }

    #[test]
    fn the_request_config_injects_name_version_prev_result_and_declared_capabilities() {
        let plugin = serde_json::json!({
            "type": "portmap",
            "name": "overridden",
            "capabilities": {"portMappings": true, "bandwidth": false, "dns": true},
        });
        let prev = CniResult::parse(
            br#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/24"}]}"#,
            "0.4.0",
        )
        .unwrap();
        let bytes =
            request_config("net", "0.4.0", &plugin, Some(&prev), &rt().capability_args).unwrap();
        let conf: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(conf["name"], "net");
        assert_eq!(conf["cniVersion"], "0.4.0");
        assert_eq!(conf["type"], "portmap");
        assert!(conf.get("capabilities").is_none());
        assert_eq!(
            conf["runtimeConfig"],
            serde_json::json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}),
            "only declared and enabled capabilities the runtime offers"
        );
        assert_eq!(conf["prevResult"]["ips"][0]["address"], "10.0.0.2/24");
        // Without capabilities or a previous result neither key appears.
        let bare = request_config(
            "net",
            "1.0.0",
            &serde_json::json!({"type": "bridge"}),
            None,
            &rt().capability_args,
        )
        .unwrap();
        let bare: Value = serde_json::from_slice(&bare).unwrap();
        assert!(bare.get("runtimeConfig").is_none() && bare.get("prevResult").is_none());
    }

    #[test]
    fn names_are_validated_as_libcni_does() {
        assert!(validate_name("containerID", "abc-1_2.3").is_ok());
        assert!(validate_name("containerID", "-abc").is_err());
        assert!(validate_name("containerID", "").is_err());
        assert!(validate_name("containerID", "a/b").is_err());
        assert!(validate_if_name("eth0").is_ok());
        assert!(validate_if_name("0123456789abcdef").is_err());
        assert!(validate_if_name("..").is_err());
        assert!(validate_if_name("a b").is_err());
        assert!(validate_if_name("").is_err());
    }

    #[tokio::test]
    async fn a_plugin_gets_the_cni_environment_and_stdin_and_its_result_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::new(dir.path());
        fake_plugin(
            &dir.path().join("bin"),
            "fake",
            &format!(
                "{}\necho '{{\"cniVersion\":\"1.0.0\",\"interfaces\":[{{\"name\":\"eth0\"}}],\"ips\":[{{\"address\":\"10.4.0.2/16\",\"interface\":0}}]}}'",
                rec.script()
            ),
        );
        let exec = PluginExec::new(
            vec![dir.path().join("none"), dir.path().join("bin")],
            Duration::from_secs(10),
        );
        let result = exec
            .add(
                "net",
                "1.0.0",
                &serde_json::json!({"type": "fake"}),
                None,
                &rt(),
            )
            .await
            .unwrap();
        assert_eq!(result.ips[0].address.to_string(), "10.4.0.2/16");
        let calls = rec.calls();
        assert_eq!(calls.len(), 1);
        let call = &calls[0];
        assert_eq!(call.env("CNI_COMMAND"), "ADD");
        assert_eq!(call.env("CNI_CONTAINERID"), "c1");
        assert_eq!(call.env("CNI_NETNS"), "/var/run/netns/cni-x");
        assert_eq!(call.env("CNI_IFNAME"), "eth0");
        assert_eq!(call.env("CNI_ARGS"), "IgnoreUnknown=1;K8S_POD_NAME=p");
        assert_eq!(
            call.env("CNI_PATH"),
            format!(
                "{}:{}",
                dir.path().join("none").display(),
                dir.path().join("bin").display()
            )
        );
        assert_eq!(call.stdin["name"], "net");
        // The daemon's environment is passed on.
        assert!(!call.env("PATH").is_empty());
    }

    #[tokio::test]
    async fn a_plugin_error_reaches_the_caller_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fake_plugin(
            &bin,
            "json-error",
            r#"cat >/dev/null; echo '{"cniVersion":"0.4.0","code":11,"msg":"no IP addresses available in range set","details":"10.0.0.0/30"}'; exit 1"#,
        );
        fake_plugin(&bin, "stderr-error", "echo 'it broke' >&2; exit 2");
        fake_plugin(&bin, "silent-error", "exit 3");
        fake_plugin(&bin, "garbage", "echo 'not json'; exit 0");
        fake_plugin(&bin, "slow", "sleep 30");
        let exec = PluginExec::new(vec![bin], Duration::from_millis(500));
        let add = |t: &'static str| {
            let exec = exec.clone();
            async move {
                exec.add(
                    "net",
                    "0.4.0",
                    &serde_json::json!({ "type": t }),
                    None,
                    &rt(),
                )
                .await
                .unwrap_err()
            }
        };
        let e = add("json-error").await;
        assert!(
            matches!(e, CniError::PluginFailed { code: 11, .. }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "no IP addresses available in range set; 10.0.0.0/30"
        );
        let e = add("stderr-error").await.to_string();
        assert!(e.contains("netplugin failed: \"it broke\""), "{e}");
        let e = add("silent-error").await.to_string();
        assert!(e.contains("netplugin failed with no error message"), "{e}");
        let e = add("garbage").await.to_string();
        assert!(e.contains("invalid CNI result"), "{e}");
        let started = std::time::Instant::now();
        let e = add("slow").await;
        assert!(matches!(e, CniError::Timeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let e = add("absent").await;
        assert!(matches!(e, CniError::PluginNotFound { .. }), "{e:?}");
        assert!(e
            .to_string()
            .starts_with("failed to find plugin \"absent\" in path"));
    }

    #[tokio::test]
    async fn version_lists_what_the_plugin_supports() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fake_plugin(
            &bin,
            "new",
            r#"[ "$CNI_COMMAND" = VERSION ] && echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}'"#,
        );
        fake_plugin(
            &bin,
            "old",
            r#"echo '{"code":4,"msg":"unknown CNI_COMMAND: VERSION"}'; exit 1"#,
        );
        let exec = PluginExec::new(vec![bin], Duration::from_secs(10));
        assert_eq!(exec.versions("new").await.unwrap(), ["0.4.0", "1.0.0"]);
        assert_eq!(exec.versions("old").await.unwrap(), ["0.1.0"]);
    }
}
