//! A small HTTP proxy in front of moto: counts EC2 requests by `Action`, answers every
//! Nth with HTTP 503 `RequestLimitExceeded` without passing it on (`fail_every`), or
//! passes every Nth on and then loses moto's answer, answering 503 instead
//! (`lose_every`: the request took effect, the caller cannot know), or passes requests
//! of one action on and never answers (`hold`: a process killed mid-call).
//! One request per connection (`Connection: close`), which keeps it simple.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw and does.
#[derive(Default)]
pub struct Stats {
    counts: Mutex<BTreeMap<String, u64>>,
    total: AtomicU64,
    /// Answer every Nth request with 503 without passing it on (0: never).
    pub fail_every: AtomicU64,
    /// Pass every Nth request on, then answer 503 instead of moto's answer (0: never).
    pub lose_every: AtomicU64,
    /// Requests answered 503 without passing them on.
    pub failed: AtomicU64,
    /// Requests passed on whose answer was replaced by 503.
    pub lost: AtomicU64,
    hold: Mutex<Option<String>>,
}

impl Stats {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests of one action seen since the last reset (faulted ones included).
    pub fn count(&self, action: &str) -> u64 {
        Self::lock(&self.counts).get(action).copied().unwrap_or(0)
    }

    /// Every request seen since the last reset.
    pub fn total(&self) -> u64 {
        Self::lock(&self.counts).values().sum()
    }

    /// The counts by action.
    pub fn by_action(&self) -> BTreeMap<String, u64> {
        Self::lock(&self.counts).clone()
    }

    /// Forget the counts.
    pub fn reset(&self) {
        Self::lock(&self.counts).clear();
    }

    /// Pass requests of `action` on and never answer them (None: answer everything).
    pub fn hold(&self, action: Option<&str>) {
        *Self::lock(&self.hold) = action.map(str::to_string);
    }
}

/// A running proxy.
pub struct Proxy {
    /// Its URL, for `endpoint` in `[provider.ec2]`.
    pub url: String,
    /// What it saw; change the faults here.
    pub stats: Arc<Stats>,
}

impl Proxy {
    /// Start a proxy in front of `upstream` (`http://127.0.0.1:PORT`) on a free port. It
    /// runs on its own thread until the test process ends.
    pub fn start(upstream: &str) -> Proxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let stats = Arc::new(Stats::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let st = stats.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        continue;
                    };
                    let (st, up) = (st.clone(), upstream.clone());
                    tokio::spawn(async move {
                        let _ = serve(conn, &up, &st).await;
                    });
                }
            });
        });
        Proxy {
            url: format!("http://127.0.0.1:{port}"),
            stats,
        }
    }
}

/// Read one HTTP request (head and Content-Length body).
async fn read_request(conn: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

/// The `Action` of an EC2 query request.
fn action(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action=").map(str::to_string))
        .unwrap_or_else(|| "(none)".to_string())
}

/// Replace or add a header in a request or response head.
fn with_connection_close(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| {
            !l.to_ascii_lowercase().starts_with("connection:")
                && !l.to_ascii_lowercase().starts_with("keep-alive:")
        })
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

const THROTTLED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded (fault-injecting proxy).</Message></Error></Errors><RequestID>proxy-0000</RequestID></Response>";

async fn throttled(conn: &mut TcpStream) -> std::io::Result<()> {
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{THROTTLED}",
        THROTTLED.len()
    );
    conn.write_all(resp.as_bytes()).await?;
    conn.shutdown().await
}

async fn serve(mut conn: TcpStream, upstream: &str, st: &Stats) -> std::io::Result<()> {
    let (head, body) = read_request(&mut conn).await?;
    let act = action(&body);
    *Stats::lock(&st.counts).entry(act.clone()).or_default() += 1;
    let n = st.total.fetch_add(1, Ordering::SeqCst) + 1;
    let fail = st.fail_every.load(Ordering::SeqCst);
    if fail > 0 && n.is_multiple_of(fail) {
        st.failed.fetch_add(1, Ordering::SeqCst);
        return throttled(&mut conn).await;
    }
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(with_connection_close(&head).as_bytes())
        .await?;
    up.write_all(&body).await?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await?;
    if Stats::lock(&st.hold).as_deref() == Some(act.as_str()) {
        // Never answer: the caller is killed while it waits.
        std::future::pending::<()>().await;
    }
    let lose = st.lose_every.load(Ordering::SeqCst);
    if lose > 0 && n.is_multiple_of(lose) {
        st.lost.fetch_add(1, Ordering::SeqCst);
        return throttled(&mut conn).await;
    }
    match resp.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => {
            let head = String::from_utf8_lossy(&resp[..i + 4]).into_owned();
            conn.write_all(with_connection_close(&head).as_bytes())
                .await?;
            conn.write_all(&resp[i + 4..]).await?;
        }
        None => conn.write_all(&resp).await?,
    }
    conn.shutdown().await
}
