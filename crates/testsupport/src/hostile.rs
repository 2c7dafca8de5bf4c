//! A hostile registry on a loopback port: each request's path is handed to a function that says
//! what to answer, which may be a lie (a size or digest that does not match) or a body that never
//! ends. One thread per connection; each answer closes its connection. Stopped on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the registry answers to one request.
pub enum Answer {
    /// A status, extra header lines (`Name: value`) and a body of known length.
    Fixed {
        status: u16,
        headers: Vec<String>,
        body: Vec<u8>,
    },
    /// A 200 whose body has no length and never ends: bytes are sent until the client hangs up,
    /// or for at most `limit` (a bound that keeps the test finite).
    Endless {
        headers: Vec<String>,
        limit: Duration,
    },
}

impl Answer {
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Answer {
        Answer::Fixed {
            status: 200,
            headers: vec![format!("Content-Type: {content_type}")],
            body: body.into(),
        }
    }

    pub fn status(status: u16) -> Answer {
        Answer::Fixed {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

type Route = dyn Fn(&str, &str) -> Answer + Send + Sync;

pub struct HostileRegistry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl HostileRegistry {
    /// Serves `route(addr, path)` (the path with its query) for every request.
    pub fn start(route: impl Fn(&str, &str) -> Answer + Send + Sync + 'static) -> HostileRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let addr = listener.local_addr().expect("local address").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let route: Arc<Route> = Arc::new(route);
        let (s, n, a) = (Arc::clone(&stop), Arc::clone(&sent), addr.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (route, n, a) = (Arc::clone(&route), Arc::clone(&n), a.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &*route, &a, &n);
                });
            }
        });
        HostileRegistry { addr, stop, sent }
    }

    /// Body bytes sent so far, over all answers.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(conn: TcpStream, route: &Route, addr: &str, sent: &AtomicU64) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut out = conn;
    match route(addr, &path) {
        Answer::Fixed {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for h in headers {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
            if !request_line.starts_with("HEAD ") {
                out.write_all(&body)?;
                sent.fetch_add(body.len() as u64, Ordering::SeqCst);
            }
        }
        Answer::Endless { headers, limit } => {
            let mut head = String::from("HTTP/1.1 200 OK\r\nConnection: close\r\n");
            for h in headers {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
            let chunk = vec![b'a'; 64 << 10];
            let started = Instant::now();
            while started.elapsed() < limit {
                out.write_all(&chunk)?;
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
    }
    Ok(())
}
