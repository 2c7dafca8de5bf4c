//! `cratectl tasks ls|start|kill|ps|pause|resume|metrics|rm` and `cratectl events`.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use crated_api::containerd::services::events::v1 as events;
use crated_api::containerd::services::tasks::v1 as api;
use crated_api::containerd::v1::types::Status;
use tabwriter::TabWriter;

use crate::client::Connection;

#[derive(Subcommand, Debug)]
pub enum TasksCommand {
    /// List tasks.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Start a created task and return.
    Start {
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

pub async fn run(conn: &Connection, command: TasksCommand) -> anyhow::Result<()> {
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
        TasksCommand::Start { id } => {
            tasks
                .start(conn.request(api::StartRequest {
                    container_id: id,
                    exec_id: String::new(),
                }))
                .await?;
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
        TasksCommand::Rm { force, id } => {
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
            let r = tasks
                .delete(conn.request(api::DeleteTaskRequest { container_id: id }))
                .await?
                .into_inner();
            if r.exit_status != 0 {
                println!(
                    "WARN: task {} exit with non-zero exit code {}",
                    r.id, r.exit_status
                );
            }
        }
    }
    Ok(())
}

/// `cratectl events [FILTER...]`: one line per event, as ctr prints them.
pub async fn events(conn: &Connection, filters: Vec<String>) -> anyhow::Result<()> {
    let mut stream = conn
        .events()
        .subscribe(conn.request(events::SubscribeRequest { filters }))
        .await?
        .into_inner();
    while let Some(e) = stream.message().await? {
        let ts = e.timestamp.unwrap_or_default();
        let when = time::OffsetDateTime::from_unix_timestamp(ts.seconds)
            .map(|t| t + time::Duration::nanoseconds(ts.nanos.into()))
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let event = e.event.unwrap_or_default();
        println!("{when} {} {} {}", e.namespace, e.topic, event.type_url);
        std::io::stdout().flush()?;
    }
    Ok(())
}
