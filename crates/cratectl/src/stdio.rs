//! A process's stdio as ctr handles it: FIFOs made here and given to the shim, our terminal
//! in raw mode with its size passed on, stdin copied in (and closed at its end), stdout and
//! stderr copied out, SIGINT/SIGTERM forwarded; then the exit status.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use crated_api::containerd::services::tasks::v1 as tasks;

use crate::client::Connection;

/// A task's init process (empty `exec_id`) or one of its exec'd processes.
#[derive(Debug, Clone)]
pub struct Process {
    pub id: String,
    pub exec_id: String,
}

impl Process {
    /// Starts the process (created by Create or Exec).
    pub async fn start(&self, conn: &Connection) -> anyhow::Result<()> {
        conn.tasks()
            .start(conn.request(tasks::StartRequest {
                container_id: self.id.clone(),
                exec_id: self.exec_id.clone(),
            }))
            .await?;
        Ok(())
    }
}

/// The FIFOs of one process, opened so the shim never blocks on them and we never read a
/// spurious end before it has opened them.
pub struct Fifos {
    dir: PathBuf,
    stdin: PathBuf,
    stdout: PathBuf,
    stderr: Option<PathBuf>,
    /// Left in place when we are gone (a detached task's, for `tasks attach`).
    keep: bool,
}

impl Fifos {
    /// New FIFOs for process `name` (the container id, or an exec id) of container `id`.
    pub fn create(base: &Path, id: &str, tty: bool) -> anyhow::Result<Fifos> {
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
            keep: false,
        })
    }

    /// The FIFOs opened read-write, to be held until the shim has its ends: no blocking open
    /// for it, no early end of file for us.
    pub fn hold(&self) -> std::io::Result<Vec<tokio::net::unix::pipe::Receiver>> {
        self.all().map(|p| hold_open(p)).collect()
    }

    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.stdin, &self.stdout]
            .into_iter()
            .chain(self.stderr.as_ref())
    }

    /// stdin, stdout and stderr as the task API takes them (empty: none).
    pub fn paths(&self) -> [String; 3] {
        let text = |p: &PathBuf| p.to_string_lossy().into_owned();
        [
            text(&self.stdin),
            text(&self.stdout),
            self.stderr.as_ref().map(text).unwrap_or_default(),
        ]
    }
}

impl Fifos {
    /// Leaves the FIFOs for later clients; `tasks rm` removes them with the task.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Removes the FIFOs of process `id` that a detached start left, given its stdout path:
    /// only if they are ours (in `<base>/<id>-<pid>/`), and only the FIFOs and that directory,
    /// so a task logging to a file of its own loses nothing.
    pub fn remove_left(base: &Path, id: &str, stdout: &str) {
        let Some(dir) = Path::new(stdout).parent() else {
            return;
        };
        let ours = dir.parent() == Some(base)
            && dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&format!("{id}-")))
                .is_some_and(|pid| pid.parse::<u32>().is_ok());
        if !ours {
            return;
        }
        for name in ["stdin", "stdout", "stderr"] {
            let _ = std::fs::remove_file(dir.join(format!("{id}-{name}")));
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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
pub struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    pub fn enter() -> RawTerminal {
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

pub fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: winsize is plain integers, for which all zeroes is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer given.
    let rc = unsafe { libc::ioctl(std::io::stdin().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Attaches to the process behind the FIFO paths `[stdin, stdout, stderr]`, starts it if
/// `start`, and returns its exit status once it exits and its output is copied. `held` keeps
/// the FIFOs open until the shim has its ends (else our reads would end before its writes
/// begin).
pub async fn attach_and_wait(
    conn: &Connection,
    process: &Process,
    paths: &[String; 3],
    tty: bool,
    held: Vec<tokio::net::unix::pipe::Receiver>,
    start: bool,
) -> anyhow::Result<i32> {
    let mut copies = Vec::new();
    if !paths[1].is_empty() {
        copies.push(tokio::spawn(copy_out(
            open_read(Path::new(&paths[1]))?,
            tokio::io::stdout(),
        )));
    }
    if !paths[2].is_empty() {
        copies.push(tokio::spawn(copy_out(
            open_read(Path::new(&paths[2]))?,
            tokio::io::stderr(),
        )));
    }
    let stdin_fifo = if paths[0].is_empty() {
        None
    } else {
        Some(
            tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(&paths[0])
                .with_context(|| format!("opening {}", paths[0]))?,
        )
    };
    let _raw = tty.then(RawTerminal::enter);
    if let Some(mut to) = stdin_fifo {
        let (conn, process) = (conn.clone(), process.clone());
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut to).await;
            drop(to);
            let _ = conn
                .tasks()
                .close_io(conn.request(tasks::CloseIoRequest {
                    container_id: process.id,
                    exec_id: process.exec_id,
                    stdin: true,
                }))
                .await;
        });
    }
    let mut waiter = conn.tasks();
    let wait_req = conn.request(tasks::WaitRequest {
        container_id: process.id.clone(),
        exec_id: process.exec_id.clone(),
    });
    let wait = tokio::spawn(async move { waiter.wait(wait_req).await });
    if start {
        process.start(conn).await?;
    }
    // The shim has its ends once started (an exec's are opened at start, not before).
    drop(held);
    if tty {
        if let Some((w, h)) = terminal_size() {
            let _ = conn
                .tasks()
                .resize_pty(conn.request(tasks::ResizePtyRequest {
                    container_id: process.id.clone(),
                    exec_id: process.exec_id.clone(),
                    width: w.into(),
                    height: h.into(),
                }))
                .await;
        }
    }
    let signals = forward_signals(conn.clone(), process.clone(), tty);
    let status = wait.await??.into_inner().exit_status;
    signals.abort();
    for c in copies {
        let _ = c.await;
    }
    Ok(status as i32)
}

/// SIGINT and SIGTERM go to the task (with a terminal, ^C reaches it through the pty);
/// SIGWINCH resizes its terminal.
fn forward_signals(conn: Connection, process: Process, tty: bool) -> tokio::task::JoinHandle<()> {
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
                            container_id: process.id.clone(),
                            exec_id: process.exec_id.clone(),
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
                    container_id: process.id.clone(),
                    exec_id: process.exec_id.clone(),
                    signal: sig as u32,
                    all: false,
                }))
                .await;
        }
    })
}
