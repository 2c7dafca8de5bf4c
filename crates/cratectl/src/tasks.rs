//! `cratectl tasks ls|start|kill|ps|exec|attach|pause|resume|metrics|rm`.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Subcommand;
use crated_api::containerd::services::tasks::v1 as api;
use crated_api::containerd::v1::types::Status;
use tabwriter::TabWriter;

use crate::client::Connection;
use crate::stdio::{attach_and_wait, Fifos, Process};

#[derive(Subcommand, Debug)]
pub enum TasksCommand {
    /// List tasks.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Start a container's task (created now if it has none) and wait for it, attached.
    Start {
        /// Start and return.
        #[arg(short, long)]
        detach: bool,
        /// Allocate a terminal (for a task created now).
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(long, default_value = crate::run::DEFAULT_FIFO_DIR)]
        fifo_dir: std::path::PathBuf,
        id: String,
    },
    /// Run another process in a task's container; exits with its status.
    Exec {
        #[arg(long, required = true)]
        exec_id: String,
        #[arg(short = 't', long)]
        tty: bool,
        /// Start and return.
        #[arg(short, long)]
        detach: bool,
        /// Working directory (default: the container's).
        #[arg(long)]
        cwd: Option<String>,
        #[arg(long, default_value = crate::run::DEFAULT_FIFO_DIR)]
        fifo_dir: std::path::PathBuf,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Attach to a running task's stdio and wait for it; exits with its status.
    Attach {
        id: String,
    },
    /// Signal a task.
    Kill {
        #[arg(short, long, default_value = "SIGTERM")]
        signal: String,
        /// Every process of the task.
        #[arg(short, long)]
        all: bool,
        #[arg(long, default_value = "")]
        exec_id: String,
        id: String,
    },
    /// List the processes of a task.
    Ps {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Print a task's cgroup metrics (the shim's raw Any, decoded as JSON when it can be).
    Metrics {
        id: String,
    },
    /// Delete a stopped task (`-f` kills it first).
    #[command(alias = "delete", alias = "del", alias = "remove")]
    Rm {
        #[arg(short, long)]
        force: bool,
        /// Where a detached start made the task's FIFOs (removed with it).
        #[arg(long, default_value = crate::run::DEFAULT_FIFO_DIR)]
        fifo_dir: std::path::PathBuf,
        id: String,
    },
}

fn signal_number(name: &str) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let sig: nix::sys::signal::Signal = full
        .parse()
        .with_context(|| format!("unknown signal {name:?}"))?;
    Ok(sig as i32 as u32)
}

/// The exit status of the process the command waited for (0 for the others).
pub async fn run(conn: &Connection, command: TasksCommand) -> anyhow::Result<i32> {
    let mut tasks = conn.tasks();
    match command {
        TasksCommand::Ls { quiet } => {
            let found = tasks
                .list(conn.request(api::ListTasksRequest::default()))
                .await?
                .into_inner()
                .tasks;
            let mut tw = TabWriter::new(std::io::stdout()).padding(4);
            if !quiet {
                writeln!(tw, "TASK\tPID\tSTATUS")?;
            }
            for t in found {
                if quiet {
                    writeln!(tw, "{}", t.id)?;
                    continue;
                }
                let status = Status::try_from(t.status)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN");
                writeln!(tw, "{}\t{}\t{}", t.id, t.pid, status)?;
            }
            tw.flush()?;
        }
        TasksCommand::Start {
            detach,
            tty,
            fifo_dir,
            id,
        } => {
            let existing = tasks
                .get(conn.request(api::GetRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                }))
                .await;
            let Ok(existing) = existing else {
                // A terminal if the container's spec asks for one, as ctr.
                let container = crate::containers::get(conn, &id).await?;
                let spec: serde_json::Value = container
                    .spec
                    .and_then(|s| serde_json::from_slice(&s.value).ok())
                    .unwrap_or_default();
                let tty = tty || spec["process"]["terminal"].as_bool().unwrap_or(false);
                return crate::run::start_task(conn, &id, tty, detach, &fifo_dir, None).await;
            };
            let p = existing.into_inner().process.unwrap_or_default();
            let process = Process {
                id,
                exec_id: String::new(),
            };
            if detach {
                process.start(conn).await?;
                return Ok(0);
            }
            let paths = [p.stdin, p.stdout, p.stderr];
            return attach_and_wait(conn, &process, &paths, p.terminal, Vec::new(), true).await;
        }
        TasksCommand::Exec {
            exec_id,
            tty,
            detach,
            cwd,
            fifo_dir,
            id,
            args,
        } => return exec(conn, &id, &exec_id, tty, detach, cwd, &fifo_dir, args).await,
        TasksCommand::Attach { id } => {
            let p = tasks
                .get(conn.request(api::GetRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                }))
                .await?
                .into_inner()
                .process
                .context("the daemon answered no process")?;
            let process = Process {
                id,
                exec_id: String::new(),
            };
            let paths = [p.stdin, p.stdout, p.stderr];
            return attach_and_wait(conn, &process, &paths, p.terminal, Vec::new(), false).await;
        }
        TasksCommand::Kill {
            signal,
            all,
            exec_id,
            id,
        } => {
            tasks
                .kill(conn.request(api::KillRequest {
                    container_id: id,
                    exec_id,
                    signal: signal_number(&signal)?,
                    all,
                }))
                .await?;
        }
        TasksCommand::Ps { id } => {
            let found = tasks
                .list_pids(conn.request(api::ListPidsRequest { container_id: id }))
                .await?
                .into_inner()
                .processes;
            let mut tw = TabWriter::new(std::io::stdout()).padding(4);
            writeln!(tw, "PID\tINFO")?;
            for p in found {
                let info = p.info.map(|i| i.type_url).unwrap_or_else(|| "-".into());
                writeln!(tw, "{}\t{}", p.pid, info)?;
            }
            tw.flush()?;
        }
        TasksCommand::Pause { id } => {
            tasks
                .pause(conn.request(api::PauseTaskRequest { container_id: id }))
                .await?;
        }
        TasksCommand::Resume { id } => {
            tasks
                .resume(conn.request(api::ResumeTaskRequest { container_id: id }))
                .await?;
        }
        TasksCommand::Metrics { id } => {
            let metrics = tasks
                .metrics(conn.request(api::MetricsRequest {
                    filters: vec![format!("id=={id}")],
                }))
                .await?
                .into_inner()
                .metrics;
            let m = metrics
                .into_iter()
                .next()
                .with_context(|| format!("no metrics for task {id}"))?;
            let data = m.data.unwrap_or_default();
            println!("ID\tTIMESTAMP\tTYPE\tBYTES");
            let ts = m.timestamp.unwrap_or_default();
            println!(
                "{}\t{}.{:09}\t{}\t{}",
                m.id,
                ts.seconds,
                ts.nanos,
                data.type_url,
                data.value.len()
            );
        }
        TasksCommand::Rm {
            force,
            fifo_dir,
            id,
        } => {
            if force {
                let _ = tasks
                    .kill(conn.request(api::KillRequest {
                        container_id: id.clone(),
                        exec_id: String::new(),
                        signal: libc::SIGKILL as u32,
                        all: true,
                    }))
                    .await;
                let _ = tasks
                    .wait(conn.request(api::WaitRequest {
                        container_id: id.clone(),
                        exec_id: String::new(),
                    }))
                    .await;
            }
            let stdout = tasks
                .get(conn.request(api::GetRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                }))
                .await
                .ok()
                .and_then(|p| p.into_inner().process)
                .map(|p| p.stdout)
                .unwrap_or_default();
            let r = tasks
                .delete(conn.request(api::DeleteTaskRequest {
                    container_id: id.clone(),
                }))
                .await?
                .into_inner();
            // The FIFOs a detached run or start left for attaching.
            Fifos::remove_left(&fifo_dir, &id, &stdout);
            if r.exit_status != 0 {
                println!(
                    "WARN: task {} exit with non-zero exit code {}",
                    r.id, r.exit_status
                );
            }
        }
    }
    Ok(0)
}

/// The container's process spec with these arguments (and terminal, working directory),
/// given to the shim as containerd's Process type.
#[allow(clippy::too_many_arguments)]
async fn exec(
    conn: &Connection,
    id: &str,
    exec_id: &str,
    tty: bool,
    detach: bool,
    cwd: Option<String>,
    fifo_dir: &std::path::Path,
    args: Vec<String>,
) -> anyhow::Result<i32> {
    let container = crate::containers::get(conn, id).await?;
    let spec: serde_json::Value =
        serde_json::from_slice(&container.spec.map(|s| s.value).unwrap_or_default())
            .context("the container's spec is not JSON")?;
    let mut process = spec["process"].clone();
    if !process.is_object() {
        bail!("the container's spec has no process");
    }
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(tty);
    if let Some(cwd) = cwd {
        process["cwd"] = serde_json::json!(cwd);
    }
    let fifos = Fifos::create(fifo_dir, exec_id, tty)?;
    let held = fifos.hold()?;
    let paths = fifos.paths();
    conn.tasks()
        .exec(conn.request(api::ExecProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            stdin: paths[0].clone(),
            stdout: paths[1].clone(),
            stderr: paths[2].clone(),
            terminal: tty,
            spec: Some(prost_types::Any {
                type_url: PROCESS_TYPE.into(),
                value: serde_json::to_vec(&process)?,
            }),
        }))
        .await?;
    let process = Process {
        id: id.to_owned(),
        exec_id: exec_id.to_owned(),
    };
    if detach {
        process.start(conn).await?;
        fifos.keep();
        return Ok(0);
    }
    let status = attach_and_wait(conn, &process, &paths, tty, held, true).await;
    // The exec id is freed whatever happened to our side of it.
    let deleted = conn
        .tasks()
        .delete_process(conn.request(api::DeleteProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        }))
        .await;
    let status = status?;
    deleted?;
    Ok(status)
}

/// containerd's type URL for an OCI process spec.
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
