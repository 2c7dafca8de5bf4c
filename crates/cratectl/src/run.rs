//! `cratectl run`: a container from an unpacked image, as `ctr run` makes it: a snapshot on the
//! image's top layer, an OCI spec from the image config (entrypoint, cmd, env, workdir, user)
//! over runc's defaults, the container record, stdio FIFOs, the task; then wait (forwarding
//! signals), and with `--rm` remove task, snapshot and container. The exit status is the
//! container's.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use crated_api::containerd::services::containers::v1 as containers;
use crated_api::containerd::services::images::v1 as images;
use crated_api::containerd::services::snapshots::v1 as snapshots;
use crated_api::containerd::services::tasks::v1 as tasks;

use crate::client::Connection;

/// containerd's type URL for an OCI runtime spec in a container record.
pub const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container, its task and snapshot when it exits.
    #[arg(long)]
    rm: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Start the task and return.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Environment variables, KEY=VALUE.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Extra mounts: type=bind,src=/host,dst=/in/container,options=rbind:ro
    #[arg(long = "mount")]
    mounts: Vec<String>,
    /// Snapshotter the image is unpacked in.
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
    snapshotter: String,
    /// Runtime name (resolved to a shim on the daemon's PATH).
    #[arg(long, default_value = "io.containerd.runc.v2")]
    runtime: String,
    /// Directory for the stdio FIFOs.
    #[arg(long, default_value = "/run/crated/fifo")]
    fifo_dir: PathBuf,
    image: String,
    id: String,
    /// Command and arguments (default: the image's entrypoint and cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

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
    id: &str,
    config: &serde_json::Value,
    run: &RunArgs,
) -> anyhow::Result<oci_spec::runtime::Spec> {
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
    if let Some(u) = c["User"].as_str().filter(|u| !u.is_empty()) {
        let (uid, gid) = u.split_once(':').unwrap_or((u, u));
        let uid: u32 = uid
            .parse()
            .with_context(|| format!("user {u:?}: only numeric uid[:gid] is supported"))?;
        let gid: u32 = gid.parse().unwrap_or(uid);
        user.set_uid(uid);
        user.set_gid(gid);
    }
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

/// The FIFOs of one process, opened so the shim never blocks on them and we never read a
/// spurious end before it has opened them.
struct Fifos {
    dir: PathBuf,
    stdin: PathBuf,
    stdout: PathBuf,
    stderr: Option<PathBuf>,
}

impl Fifos {
    fn create(base: &Path, id: &str, tty: bool) -> anyhow::Result<Fifos> {
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let dir = base.join(format!("{id}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let make = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(format!("{id}-{name}"));
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o700))
                .with_context(|| format!("creating {}", p.display()))?;
            Ok(p)
        };
        Ok(Fifos {
            stdin: make("stdin")?,
            stdout: make("stdout")?,
            stderr: if tty { None } else { Some(make("stderr")?) },
            dir,
        })
    }

    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.stdin, &self.stdout]
            .into_iter()
            .chain(self.stderr.as_ref())
    }

    /// stdin, stdout and stderr as the task API takes them (empty: none).
    fn paths(&self) -> [String; 3] {
        let text = |p: &PathBuf| p.to_string_lossy().into_owned();
        [
            text(&self.stdin),
            text(&self.stdout),
            self.stderr.as_ref().map(text).unwrap_or_default(),
        ]
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn open_read(p: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new().open_receiver(p)
}

fn hold_open(p: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(p)
}

/// Copies a process's output FIFO to ours until the shim closes it.
async fn copy_out(
    mut from: tokio::net::unix::pipe::Receiver,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) {
    // tokio's copy flushes whenever the FIFO has nothing more yet: prompts show at once.
    let _ = tokio::io::copy(&mut from, &mut to).await;
}

/// Puts the terminal in raw mode while it lives.
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        let stdin = std::io::stdin();
        match nix::sys::termios::tcgetattr(&stdin) {
            Ok(saved) => {
                let mut raw = saved.clone();
                nix::sys::termios::cfmakeraw(&mut raw);
                let _ =
                    nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &raw);
                RawTerminal(Some(saved))
            }
            Err(_) => RawTerminal(None),
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

fn terminal_size() -> Option<(u16, u16)> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer given.
    let rc = unsafe { libc::ioctl(std::io::stdin().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

pub async fn run(conn: &Connection, args: RunArgs) -> anyhow::Result<i32> {
    let image = conn
        .images()
        .get(conn.request(images::GetImageRequest {
            name: args.image.clone(),
        }))
        .await
        .with_context(|| format!("image {:?}", args.image))?
        .into_inner()
        .image
        .context("the daemon answered no image")?;
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
    let spec = spec(conn.namespace(), &args.id, &contents.config, &args)?;
    let spec_json = serde_json::to_vec(&spec)?;
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
    let created = conn
        .containers()
        .create(conn.request(containers::CreateContainerRequest {
            container: Some(containers::Container {
                id: args.id.clone(),
                image: args.image.clone(),
                runtime: Some(containers::container::Runtime {
                    name: args.runtime.clone(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: SPEC_TYPE.into(),
                    value: spec_json,
                }),
                snapshotter: args.snapshotter.clone(),
                snapshot_key: args.id.clone(),
                ..Default::default()
            }),
        }))
        .await;
    if let Err(e) = created {
        let _ = remove_snapshot(conn, &args.snapshotter, &args.id).await;
        return Err(e.into());
    }
    let result = run_task(conn, &args, mounts).await;
    if args.rm || (result.is_err() && !args.detach) {
        let _ = conn
            .tasks()
            .delete(conn.request(tasks::DeleteTaskRequest {
                container_id: args.id.clone(),
            }))
            .await;
        remove_snapshot(conn, &args.snapshotter, &args.id).await?;
        conn.containers()
            .delete(conn.request(containers::DeleteContainerRequest {
                id: args.id.clone(),
            }))
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

async fn run_task(
    conn: &Connection,
    args: &RunArgs,
    rootfs: Vec<crated_api::containerd::types::Mount>,
) -> anyhow::Result<i32> {
    let id = args.id.clone();
    let fifos = if args.detach {
        None
    } else {
        Some(Fifos::create(&args.fifo_dir, &id, args.tty)?)
    };
    // Held open (read and write) until the shim has its ends: no blocking open for it, no
    // early end of file for us.
    let held = fifos
        .iter()
        .flat_map(Fifos::all)
        .map(|p| hold_open(p))
        .collect::<std::io::Result<Vec<_>>>()?;
    let [stdin, stdout, stderr] = fifos.as_ref().map(Fifos::paths).unwrap_or_default();
    conn.tasks()
        .create(conn.request(tasks::CreateTaskRequest {
            container_id: id.clone(),
            rootfs,
            stdin,
            stdout,
            stderr,
            terminal: args.tty,
            ..Default::default()
        }))
        .await?;
    if args.detach {
        conn.tasks()
            .start(conn.request(tasks::StartRequest {
                container_id: id,
                exec_id: String::new(),
            }))
            .await?;
        return Ok(0);
    }
    let fifos = fifos.context("fifos")?;
    let mut copies = Vec::new();
    copies.push(tokio::spawn(copy_out(
        open_read(&fifos.stdout)?,
        tokio::io::stdout(),
    )));
    if let Some(e) = &fifos.stderr {
        copies.push(tokio::spawn(copy_out(open_read(e)?, tokio::io::stderr())));
    }
    let stdin_fifo = tokio::net::unix::pipe::OpenOptions::new().open_sender(&fifos.stdin)?;
    drop(held);
    let _raw = args.tty.then(RawTerminal::enter);
    let stdin_conn = conn.clone();
    let stdin_id = id.clone();
    tokio::spawn(async move {
        let mut to = stdin_fifo;
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut to).await;
        drop(to);
        let _ = stdin_conn
            .tasks()
            .close_io(stdin_conn.request(tasks::CloseIoRequest {
                container_id: stdin_id,
                exec_id: String::new(),
                stdin: true,
            }))
            .await;
    });
    let mut waiter = conn.tasks();
    let wait_req = conn.request(tasks::WaitRequest {
        container_id: id.clone(),
        exec_id: String::new(),
    });
    let wait = tokio::spawn(async move { waiter.wait(wait_req).await });
    conn.tasks()
        .start(conn.request(tasks::StartRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        }))
        .await?;
    if args.tty {
        if let Some((w, h)) = terminal_size() {
            let _ = conn
                .tasks()
                .resize_pty(conn.request(tasks::ResizePtyRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                    width: w.into(),
                    height: h.into(),
                }))
                .await;
        }
    }
    let signals = forward_signals(conn.clone(), id.clone(), args.tty);
    let status = wait.await??.into_inner().exit_status;
    signals.abort();
    for c in copies {
        let _ = c.await;
    }
    Ok(status as i32)
}

/// SIGINT and SIGTERM go to the task (with a terminal, ^C reaches it through the pty);
/// SIGWINCH resizes its terminal.
fn forward_signals(conn: Connection, id: String, tty: bool) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term), Ok(mut winch)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::window_change()),
        ) else {
            return;
        };
        loop {
            let sig = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
                _ = winch.recv() => {
                    if let (true, Some((w, h))) = (tty, terminal_size()) {
                        let _ = conn.tasks().resize_pty(conn.request(tasks::ResizePtyRequest {
                            container_id: id.clone(),
                            exec_id: String::new(),
                            width: w.into(),
                            height: h.into(),
                        })).await;
                    }
                    continue;
                }
            };
            let _ = conn
                .tasks()
                .kill(conn.request(tasks::KillRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                    signal: sig as u32,
                    all: false,
                }))
                .await;
        }
    })
}
