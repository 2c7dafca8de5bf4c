//! A gate in front of a registry, on its own loopback port: it asks for credentials the way
//! real registries do (a `Basic` challenge, or a `Bearer` challenge whose realm is the gate's
//! own tiny token server, which hands out a token for good basic credentials), forwards what is
//! authorised to the registry, and can cut the first download of each blob after a number of
//! bytes, so a client has to resume it. One thread per connection; each answer closes its
//! connection.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Auth {
    None,
    Basic,
    Token,
}

pub struct Gate {
    /// `127.0.0.1:PORT`
    pub addr: String,
    stop: Arc<AtomicBool>,
    state: Arc<State>,
}

struct State {
    upstream: String,
    auth: Auth,
    user: String,
    password: String,
    token: String,
    cut_after: Option<usize>,
    /// Blobs whose first download went through the gate.
    tried: Mutex<HashSet<String>>,
    cuts: AtomicUsize,
    /// Requests that asked for a range (a resumed download).
    ranged: AtomicUsize,
    /// Tokens handed out.
    tokens: AtomicUsize,
}

impl Gate {
    /// A gate to `upstream` (a registry's `127.0.0.1:PORT`) asking for `auth` with
    /// `user`/`password`; with `cut_after`, the first download of every blob larger than that
    /// stops after that many bytes.
    pub fn start(
        upstream: &str,
        auth: Auth,
        user: &str,
        password: &str,
        cut_after: Option<usize>,
    ) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the gate");
        let addr = listener.local_addr().expect("gate address").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            auth,
            user: user.to_owned(),
            password: password.to_owned(),
            token: format!("token-{}", std::process::id()),
            cut_after,
            tried: Mutex::new(HashSet::new()),
            cuts: AtomicUsize::new(0),
            ranged: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
        });
        let (s, st, a) = (Arc::clone(&stop), Arc::clone(&state), addr.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, a) = (Arc::clone(&st), a.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &st, &a);
                });
            }
        });
        Gate { addr, stop, state }
    }

    /// How many requests asked for a range.
    pub fn ranged_requests(&self) -> usize {
        self.state.ranged.load(Ordering::SeqCst)
    }

    /// How many tokens the token server gave out.
    pub fn tokens_issued(&self) -> usize {
        self.state.tokens.load(Ordering::SeqCst)
    }

    /// How many downloads were cut.
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn answer(
    conn: &mut TcpStream,
    status: &str,
    headers: &[String],
    body: &str,
) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )?;
    for h in headers {
        write!(conn, "{h}\r\n")?;
    }
    write!(conn, "\r\n{body}")?;
    conn.flush()
}

fn serve(mut conn: TcpStream, state: &State, addr: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push(line.trim_end().to_owned());
    }
    let Some(request_line) = head.first().cloned() else {
        return Ok(());
    };
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    let header = |name: &str| {
        head.iter().skip(1).find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let authorization = header("authorization").unwrap_or_default();
    let good_basic = authorization == basic(&state.user, &state.password);
    if path.starts_with("/token") {
        if !good_basic {
            return answer(&mut conn, "401 Unauthorized", &[], "{\"errors\":[]}");
        }
        state.tokens.fetch_add(1, Ordering::SeqCst);
        return answer(
            &mut conn,
            "200 OK",
            &["Content-Type: application/json".into()],
            &format!("{{\"token\":\"{}\",\"expires_in\":300}}", state.token),
        );
    }
    let allowed = match state.auth {
        Auth::None => true,
        Auth::Basic => good_basic,
        Auth::Token => authorization == format!("Bearer {}", state.token),
    };
    if !allowed {
        let repository = path
            .strip_prefix("/v2/")
            .and_then(|p| p.split("/manifests/").next())
            .and_then(|p| p.split("/blobs/").next())
            .unwrap_or_default();
        let challenge = match state.auth {
            Auth::Basic => "WWW-Authenticate: Basic realm=\"gate\"".to_owned(),
            _ => format!(
                "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"gate\",scope=\"repository:{repository}:pull\""
            ),
        };
        return answer(
            &mut conn,
            "401 Unauthorized",
            &[challenge],
            "{\"errors\":[]}",
        );
    }
    if header("range").is_some() {
        state.ranged.fetch_add(1, Ordering::SeqCst);
    }
    // Forward: the same request without its authorization, closing after one answer.
    let mut upstream = TcpStream::connect(&state.upstream)?;
    write!(upstream, "{request_line}\r\n")?;
    for h in head.iter().skip(1) {
        let name = h.split(':').next().unwrap_or_default().to_ascii_lowercase();
        if !matches!(name.as_str(), "authorization" | "connection" | "host") {
            write!(upstream, "{h}\r\n")?;
        }
    }
    write!(
        upstream,
        "Host: {}\r\nConnection: close\r\n\r\n",
        state.upstream
    )?;
    upstream.flush()?;
    let mut from = BufReader::new(upstream);
    let mut response_head = String::new();
    loop {
        let mut line = String::new();
        if from.read_line(&mut line)? == 0 {
            break;
        }
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            response_head.push_str("Connection: close\r\n\r\n");
            break;
        }
        response_head.push_str(&line);
    }
    conn.write_all(response_head.as_bytes())?;
    let blob = path.contains("/blobs/sha256:") && request_line.starts_with("GET");
    let limit = match state.cut_after {
        Some(n) if blob && header("range").is_none() => {
            let first = state
                .tried
                .lock()
                .map(|mut c| c.insert(path.clone()))
                .unwrap_or(false);
            first.then_some(n)
        }
        _ => None,
    };
    let mut sent = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let n = match limit {
            Some(l) => n.min(l - sent),
            None => n,
        };
        conn.write_all(&buf[..n])?;
        sent += n;
        if limit.is_some_and(|l| sent >= l) {
            // Cut: the connection ends in the middle of the body.
            state.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
    }
    conn.flush()
}
