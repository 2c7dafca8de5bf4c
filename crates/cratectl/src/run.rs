//! `cratectl run` and `containers create`: a container from an unpacked image, as `ctr run`
//! makes it: a snapshot on the image's top layer, an OCI spec from the image config
//! (entrypoint, cmd, env, workdir, user, names looked up in the image's own /etc/passwd) over
//! runc's defaults, the container record; for `run` then the task with stdio FIFOs, waited
//! on (forwarding signals), and with `--rm` task, snapshot and container removed. The exit
//! status is the container's.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use crated_api::containerd::services::containers::v1 as containers;
use crated_api::containerd::services::snapshots::v1 as snapshots;
use crated_api::containerd::services::tasks::v1 as tasks;

use crate::client::Connection;
use crate::stdio::{attach_and_wait, Fifos, Process};

/// containerd's type URL for an OCI runtime spec in a container record.
pub const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a container is made from: `run` and `containers create` share these.
#[derive(Args, Debug)]
pub struct ContainerArgs {
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment variables, KEY=VALUE.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Extra mounts: type=bind,src=/host,dst=/in/container,options=rbind:ro
    #[arg(long = "mount")]
    mounts: Vec<String>,
    /// Container labels, KEY=VALUE.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Snapshotter the image is unpacked in.
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
    snapshotter: String,
    /// Runtime name (resolved to a shim on the daemon's PATH).
    #[arg(long, default_value = "io.containerd.runc.v2")]
    runtime: String,
    image: String,
    pub id: String,
    /// Command and arguments (default: the image's entrypoint and cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container, its task and snapshot when it exits.
    #[arg(long)]
    rm: bool,
    /// Start the task and return.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Directory for the stdio FIFOs.
    #[arg(long, default_value = DEFAULT_FIFO_DIR)]
    fifo_dir: PathBuf,
    #[command(flatten)]
    container: ContainerArgs,
}

/// Where the stdio FIFOs of processes go.
pub const DEFAULT_FIFO_DIR: &str = "/run/crated/fifo";

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// One `--mount` value, ctr's syntax.
fn parse_mount(text: &str) -> anyhow::Result<oci_spec::runtime::Mount> {
    let mut m = oci_spec::runtime::Mount::default();
    m.set_typ(Some("bind".into()));
    for part in text.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("mount {text:?}: {part:?} is not key=value"))?;
        match k {
            "type" => m.set_typ(Some(v.into())),
            "src" | "source" => m.set_source(Some(v.into())),
            "dst" | "destination" => m.set_destination(v.into()),
            "options" => m.set_options(Some(v.split(':').map(str::to_owned).collect())),
            _ => bail!("mount {text:?}: unknown key {k:?}"),
        };
    }
    if m.destination().as_os_str().is_empty() {
        bail!("mount {text:?}: dst is required");
    }
    Ok(m)
}

/// The OCI spec: runc's defaults, the image config, then the flags.
fn spec(
    ns: &str,
    config: &serde_json::Value,
    run: &ContainerArgs,
    (uid, gid): (u32, u32),
) -> anyhow::Result<oci_spec::runtime::Spec> {
    let id = &run.id;
    let c = &config["config"];
    // As ctr: arguments given replace the image's entrypoint and cmd.
    let args = if run.args.is_empty() {
        let mut a = strings(&c["Entrypoint"]);
        a.extend(strings(&c["Cmd"]));
        a
    } else {
        run.args.clone()
    };
    if args.is_empty() {
        bail!("no command given and the image has neither Entrypoint nor Cmd");
    }
    let mut env = vec![DEFAULT_PATH.to_owned()];
    for e in strings(&c["Env"])
        .into_iter()
        .chain(run.env.iter().cloned())
    {
        let key = e.split('=').next().unwrap_or_default().to_owned();
        env.retain(|x| x.split('=').next() != Some(key.as_str()));
        env.push(e);
    }
    let mut user = oci_spec::runtime::User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_hostname(None);
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_terminal(Some(run.tty));
    process.set_user(user);
    process.set_cwd(PathBuf::from(
        c["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .unwrap_or("/"),
    ));
    spec.set_process(Some(process));
    let mut root = oci_spec::runtime::Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    if !run.mounts.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in &run.mounts {
            mounts.push(parse_mount(m)?);
        }
        spec.set_mounts(Some(mounts));
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(PathBuf::from(format!("/{ns}/{id}"))));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The image's `User` resolved against the container's files (mounted read-only for the
/// lookup, as ctr does, when a name needs looking up).
async fn resolve_user(
    config: &serde_json::Value,
    mounts: &[crated_api::containerd::types::Mount],
) -> anyhow::Result<(u32, u32)> {
    let Some(user) = config["config"]["User"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
    else {
        return Ok((0, 0));
    };
    if !crate::user::needs_files(&user) {
        return crate::user::resolve(&user, None);
    }
    let mounts = crated_snapshots::wire::mounts_from_api(mounts.to_vec());
    tokio::task::spawn_blocking(move || {
        let scratch = tempfile::tempdir().context("a directory to mount the rootfs on")?;
        let resolved = crated_diff::with_read_only(&mounts, scratch.path(), |root| {
            Ok(crate::user::resolve(&user, root))
        })
        .context("mounting the rootfs to look up the user")?;
        resolved.with_context(|| format!("image user {user:?}"))
    })
    .await?
}

/// Makes the container (its snapshot and record) and returns the rootfs mounts. The snapshot is
/// made under a lease until the container record holds it, else a collection in between (one
/// another client's lease release set off) would take it.
pub async fn create_container(
    conn: &Connection,
    args: &ContainerArgs,
) -> anyhow::Result<Vec<crated_api::containerd::types::Mount>> {
    let lease = crate::leases::temporary(conn, "container").await?;
    let result = create_container_under(&conn.with_lease(&lease)?, args).await;
    crate::leases::release(conn, lease).await;
    result
}

async fn create_container_under(
    conn: &Connection,
    args: &ContainerArgs,
) -> anyhow::Result<Vec<crated_api::containerd::types::Mount>> {
    let image = crate::images::get(conn, &args.image).await?;
    let contents = crate::images::contents(conn, &image.target.unwrap_or_default()).await?;
    let chain = crated_images::chain_ids(&contents.diff_ids)
        .pop()
        .context("the image has no layers")?;
    let unpacked = conn
        .snapshots()
        .stat(conn.request(snapshots::StatSnapshotRequest {
            snapshotter: args.snapshotter.clone(),
            key: chain.clone(),
        }))
        .await;
    if unpacked.is_err() {
        bail!(
            "image {} is not unpacked in snapshotter {:?}: pull or import it with --snapshotter {}",
            args.image,
            args.snapshotter,
            args.snapshotter
        );
    }
    let labels = args
        .labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => bail!("label {l:?} is not KEY=VALUE"),
        })
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
    let mounts = conn
        .snapshots()
        .prepare(conn.request(snapshots::PrepareSnapshotRequest {
            snapshotter: args.snapshotter.clone(),
            key: args.id.clone(),
            parent: chain,
            labels: HashMap::new(),
        }))
        .await?
        .into_inner()
        .mounts;
    let record = async {
        let user = resolve_user(&contents.config, &mounts).await?;
        let spec = spec(conn.namespace(), &contents.config, args, user)?;
        conn.containers()
            .create(conn.request(containers::CreateContainerRequest {
                container: Some(containers::Container {
                    id: args.id.clone(),
                    image: args.image.clone(),
                    labels,
                    runtime: Some(containers::container::Runtime {
                        name: args.runtime.clone(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_TYPE.into(),
                        value: serde_json::to_vec(&spec)?,
                    }),
                    snapshotter: args.snapshotter.clone(),
                    snapshot_key: args.id.clone(),
                    ..Default::default()
                }),
            }))
            .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = record {
        let _ = remove_snapshot(conn, &args.snapshotter, &args.id).await;
        return Err(e);
    }
    Ok(mounts)
}

pub async fn run(conn: &Connection, args: RunArgs) -> anyhow::Result<i32> {
    let c = &args.container;
    let rootfs = create_container(conn, c).await?;
    let result = start_task(
        conn,
        &c.id,
        c.tty,
        args.detach,
        &args.fifo_dir,
        Some(rootfs),
    )
    .await;
    if args.rm || (result.is_err() && !args.detach) {
        let _ = conn
            .tasks()
            .delete(conn.request(tasks::DeleteTaskRequest {
                container_id: c.id.clone(),
            }))
            .await;
        remove_snapshot(conn, &c.snapshotter, &c.id).await?;
        conn.containers()
            .delete(conn.request(containers::DeleteContainerRequest { id: c.id.clone() }))
            .await?;
    }
    result
}

async fn remove_snapshot(conn: &Connection, snapshotter: &str, key: &str) -> anyhow::Result<()> {
    conn.snapshots()
        .remove(conn.request(snapshots::RemoveSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.to_owned(),
        }))
        .await?;
    Ok(())
}

/// Creates the container's task with stdio FIFOs and starts it: detached, it returns at once
/// (the FIFOs stay for `tasks attach`); else it is attached to and its exit status returned.
/// `rootfs`: the container's mounts when known, else asked of its snapshotter.
pub async fn start_task(
    conn: &Connection,
    id: &str,
    tty: bool,
    detach: bool,
    fifo_dir: &std::path::Path,
    rootfs: Option<Vec<crated_api::containerd::types::Mount>>,
) -> anyhow::Result<i32> {
    let rootfs = match rootfs {
        Some(r) => r,
        None => {
            let c = crate::containers::get(conn, id).await?;
            conn.snapshots()
                .mounts(conn.request(snapshots::MountsRequest {
                    snapshotter: c.snapshotter,
                    key: c.snapshot_key,
                }))
                .await?
                .into_inner()
                .mounts
        }
    };
    let fifos = Fifos::create(fifo_dir, id, tty)?;
    let held = fifos.hold()?;
    let paths = fifos.paths();
    conn.tasks()
        .create(conn.request(tasks::CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs,
            stdin: paths[0].clone(),
            stdout: paths[1].clone(),
            stderr: paths[2].clone(),
            terminal: tty,
            ..Default::default()
        }))
        .await?;
    let process = Process {
        id: id.to_owned(),
        exec_id: String::new(),
    };
    if detach {
        process.start(conn).await?;
        fifos.keep();
        return Ok(0);
    }
    attach_and_wait(conn, &process, &paths, tty, held, true).await
}
