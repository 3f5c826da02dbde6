//! An SSH tunnel for workstations outside the cluster network: [`SshVia`] parses
//! `ssh://USER@HOST[:PORT]`, and [`Tunnel`] runs the system `ssh` with one local
//! forward (`-L 127.0.0.1:LOCAL:HOST:PORT`) per etcd client URL, until it is dropped.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The form [`SshVia::parse`] accepts, for messages.
const VIA_FORM: &str = "ssh://USER@HOST[:PORT]";

/// At most this much of ssh's stderr is kept (the end of it).
const STDERR_KEEP: usize = 16 * 1024;

/// Where to open the tunnel: `ssh://USER@HOST[:PORT]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SshVia {
    /// The SSH user (`core`).
    pub user: String,
    /// The bastion host name or address (IPv6 without brackets).
    pub host: String,
    /// The SSH port, when not ssh's default.
    pub port: Option<u16>,
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The `via` text is not `ssh://USER@HOST[:PORT]`.
    #[error("invalid SSH target `{given}`: {reason}; expected the form {VIA_FORM}")]
    BadVia {
        /// The text given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A client URL to forward has no host and port.
    #[error("cannot forward `{url}` through the SSH tunnel: {reason}")]
    BadClientUrl {
        /// The client URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A local port could not be picked, or `ssh` could not be started.
    #[error("cannot open the SSH tunnel via {via}: {detail}")]
    Start {
        /// The SSH target.
        via: String,
        /// What failed.
        detail: String,
    },
    /// `ssh` exited before the forwards were ready.
    #[error(
        "ssh to {via} exited with {status} before the tunnel was ready: {stderr}; check the access by hand with `ssh {login}`"
    )]
    SshExited {
        /// The SSH target.
        via: String,
        /// `USER@HOST` (with `-p PORT` when set), to try by hand.
        login: String,
        /// ssh's exit status.
        status: String,
        /// What ssh printed on stderr (trimmed; "(nothing on stderr)" when empty).
        stderr: String,
    },
    /// The forwards did not accept connections in time.
    #[error(
        "the SSH tunnel via {via} was not ready after {} s (local ports not accepting: {pending}); ssh said: {stderr}; check the access by hand with `ssh {login}`",
        .waited.as_secs()
    )]
    NotReady {
        /// The SSH target.
        via: String,
        /// `USER@HOST` (with `-p PORT` when set), to try by hand.
        login: String,
        /// How long it waited.
        waited: Duration,
        /// The local ports that did not accept connections.
        pending: String,
        /// What ssh printed on stderr so far.
        stderr: String,
    },
}

impl SshVia {
    /// Parses `ssh://USER@HOST[:PORT]` (`ssh://core@bastion.example.com:2222`,
    /// `ssh://core@[2001:db8::1]:22`).
    pub fn parse(text: &str) -> Result<SshVia, TunnelError> {
        let bad = |reason: &str| TunnelError::BadVia {
            given: text.to_string(),
            reason: reason.to_string(),
        };
        let rest = text
            .strip_prefix("ssh://")
            .ok_or_else(|| bad("it does not start with `ssh://`"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(bad("it has a path"));
        }
        let (user, hostport) = rest
            .rsplit_once('@')
            .ok_or_else(|| bad("it has no user (`USER@`)"))?;
        if user.is_empty() {
            return Err(bad("the user is empty"));
        }
        if user.starts_with('-')
            || user.contains([':', '@'])
            || user.chars().any(char::is_whitespace)
        {
            return Err(bad("the user starts with `-` or has `:`, `@` or spaces"));
        }
        let (host, port) = if let Some(after) = hostport.strip_prefix('[') {
            let (host, tail) = after
                .split_once(']')
                .ok_or_else(|| bad("the `[` of an IPv6 address is not closed"))?;
            match tail {
                "" => (host, None),
                t => (
                    host,
                    Some(
                        t.strip_prefix(':')
                            .ok_or_else(|| bad("junk after the IPv6 address"))?,
                    ),
                ),
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if host.starts_with('-') || host.chars().any(char::is_whitespace) {
            return Err(bad("the host is not a host name or address"));
        }
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(bad(&format!(
                        "the port `{p}` is not a number from 1 to 65535"
                    )));
                }
            },
        };
        Ok(SshVia {
            user: user.to_string(),
            host: host.to_string(),
            port,
        })
    }

    /// `USER@HOST` as ssh takes it.
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// What to type to try the access by hand: `USER@HOST`, with `-p PORT` when set.
    pub fn login_hint(&self) -> String {
        match self.port {
            Some(p) => format!("-p {p} {}", self.destination()),
            None => self.destination(),
        }
    }
}

impl FromStr for SshVia {
    type Err = TunnelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SshVia::parse(s)
    }
}

impl fmt::Display for SshVia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => write!(f, "ssh://{}@{host}:{p}", self.user),
            None => write!(f, "ssh://{}@{host}", self.user),
        }
    }
}

/// How [`Tunnel::open_with`] runs ssh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelOptions {
    /// How long to wait for every forward to accept connections (default 15 s).
    pub ready_timeout: Duration,
    /// `PATH` for ssh (where `ssh` is looked up, and ssh's own `PATH`); `None`: this
    /// process's `PATH`.
    pub path: Option<OsString>,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        TunnelOptions {
            ready_timeout: Duration::from_secs(15),
            path: None,
        }
    }
}

/// A running `ssh -N -L ...`; dropping it kills ssh and waits for it.
#[derive(Debug)]
pub struct Tunnel {
    child: Child,
    via: SshVia,
    urls: BTreeMap<String, String>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// The `host` and `port` of a client URL, for `-L` (an IPv6 host keeps its brackets).
fn forward_target(url: &str) -> Result<(String, u16), TunnelError> {
    let bad = |reason: &str| TunnelError::BadClientUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("it is not a URL like http://HOST:PORT"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad("its scheme is not http or https")),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad("it has a user part"));
    }
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => (&authority[..=i], authority[i + 1..].strip_prefix(':')),
            None => return Err(bad("the `[` of an IPv6 address is not closed")),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("it has no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad(&format!("the port `{p}` is not a number")))?,
    };
    Ok((host.to_string(), port))
}

/// Free local ports, `n` of them, all different (held open until all are picked).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

fn trimmed_stderr(buf: &Mutex<Vec<u8>>) -> String {
    let bytes = buf.lock().map(|b| b.clone()).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        "(nothing on stderr)".to_string()
    } else {
        text.lines().collect::<Vec<_>>().join(" / ")
    }
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

impl Tunnel {
    /// Opens a tunnel via `via` with one local forward per distinct client URL (host and
    /// port) and waits, up to 15 s, until every local port accepts connections. Returns
    /// the tunnel and the map client URL -> `http://127.0.0.1:LOCAL` (for
    /// [`crate::ClientConfig::url_map`]).
    ///
    /// Blocks: async callers run it in `tokio::task::spawn_blocking`.
    pub fn open(
        via: &SshVia,
        client_urls: &[String],
    ) -> Result<(Tunnel, BTreeMap<String, String>), TunnelError> {
        Tunnel::open_with(via, client_urls, &TunnelOptions::default())
    }

    /// [`Tunnel::open`] with options.
    pub fn open_with(
        via: &SshVia,
        client_urls: &[String],
        options: &TunnelOptions,
    ) -> Result<(Tunnel, BTreeMap<String, String>), TunnelError> {
        let start_err = |detail: String| TunnelError::Start {
            via: via.to_string(),
            detail,
        };
        // Distinct targets, in the order first seen.
        let mut targets: Vec<(String, u16)> = Vec::new();
        let mut target_of: Vec<(String, String, usize)> = Vec::new();
        for url in client_urls {
            let scheme = url.split_once("://").map_or("http", |(s, _)| s).to_string();
            let target = forward_target(url)?;
            let index = match targets.iter().position(|t| *t == target) {
                Some(i) => i,
                None => {
                    targets.push(target);
                    targets.len() - 1
                }
            };
            target_of.push((url.clone(), scheme, index));
        }
        let ports =
            free_ports(targets.len()).map_err(|e| start_err(format!("no free local port: {e}")))?;

        let mut args: Vec<String> = [
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ServerAliveInterval=15",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(p) = via.port {
            args.push("-p".to_string());
            args.push(p.to_string());
        }
        for ((host, port), local) in targets.iter().zip(&ports) {
            args.push("-L".to_string());
            args.push(format!("127.0.0.1:{local}:{host}:{port}"));
        }
        args.push(via.destination());

        let mut cmd = Command::new("ssh");
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(path) = &options.path {
            cmd.env("PATH", path);
        }
        tracing::debug!(?args, "starting ssh");
        let mut child = cmd
            .spawn()
            .map_err(|e| start_err(format!("cannot run `ssh`: {e}")))?;

        // Drain stderr all along, so a chatty ssh never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_done = Arc::new(Mutex::new(false));
        if let Some(mut pipe) = child.stderr.take() {
            let buf = Arc::clone(&stderr);
            let done = Arc::clone(&stderr_done);
            thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut b) = buf.lock() {
                        b.extend_from_slice(&chunk[..n]);
                        if b.len() > STDERR_KEEP {
                            let cut = b.len() - STDERR_KEEP;
                            b.drain(..cut);
                        }
                    }
                }
                if let Ok(mut d) = done.lock() {
                    *d = true;
                }
            });
        }

        let urls: BTreeMap<String, String> = target_of
            .into_iter()
            .map(|(url, scheme, i)| (url, format!("{scheme}://127.0.0.1:{}", ports[i])))
            .collect();
        let mut tunnel = Tunnel {
            child,
            via: via.clone(),
            urls,
            stderr,
        };

        let started = Instant::now();
        let mut pending: Vec<u16> = ports.clone();
        loop {
            if let Ok(Some(status)) = tunnel.child.try_wait() {
                // Let the reader thread take what ssh printed last (bounded wait).
                let until = Instant::now() + Duration::from_secs(1);
                while !stderr_done.lock().map(|d| *d).unwrap_or(true) && Instant::now() < until {
                    thread::sleep(Duration::from_millis(10));
                }
                return Err(TunnelError::SshExited {
                    via: via.to_string(),
                    login: via.login_hint(),
                    status: describe_status(status),
                    stderr: trimmed_stderr(&tunnel.stderr),
                });
            }
            pending.retain(|port| {
                let addr = SocketAddr::from(([127, 0, 0, 1], *port));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
            });
            if pending.is_empty() {
                tracing::debug!(via = %via, elapsed_ms = started.elapsed().as_millis(), "ssh tunnel ready");
                let map = tunnel.urls.clone();
                return Ok((tunnel, map));
            }
            if started.elapsed() >= options.ready_timeout {
                let pending: Vec<String> = pending.iter().map(u16::to_string).collect();
                // Returning drops `tunnel`, which kills ssh.
                return Err(TunnelError::NotReady {
                    via: via.to_string(),
                    login: via.login_hint(),
                    waited: options.ready_timeout,
                    pending: pending.join(", "),
                    stderr: trimmed_stderr(&tunnel.stderr),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where the tunnel goes.
    pub fn via(&self) -> &SshVia {
        &self.via
    }

    /// The map client URL -> local URL it was opened with.
    pub fn url_map(&self) -> &BTreeMap<String, String> {
        &self.urls
    }

    /// The process id of ssh.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Ok` while ssh runs; the error says how it ended (and what it printed) once it
    /// has exited.
    pub fn check(&mut self) -> Result<(), TunnelError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(TunnelError::SshExited {
                via: self.via.to_string(),
                login: self.via.login_hint(),
                status: describe_status(status),
                stderr: trimmed_stderr(&self.stderr),
            }),
            Err(e) => Err(TunnelError::Start {
                via: self.via.to_string(),
                detail: format!("cannot check on ssh: {e}"),
            }),
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // Already exited: kill fails harmlessly, wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_host_and_port() {
        let v = SshVia::parse("ssh://core@bastion.example.com:2222").unwrap();
        assert_eq!(
            v,
            SshVia {
                user: "core".into(),
                host: "bastion.example.com".into(),
                port: Some(2222)
            }
        );
        assert_eq!(v.to_string(), "ssh://core@bastion.example.com:2222");
        assert_eq!(v.login_hint(), "-p 2222 core@bastion.example.com");
        let v: SshVia = "ssh://core@10.0.0.5".parse().unwrap();
        assert_eq!(v.port, None);
        assert_eq!(v.destination(), "core@10.0.0.5");
        assert_eq!(v.login_hint(), "core@10.0.0.5");
        let v = SshVia::parse("ssh://core@[2001:db8::1]:22/").unwrap();
        assert_eq!(v.host, "2001:db8::1");
        assert_eq!(v.port, Some(22));
        assert_eq!(v.to_string(), "ssh://core@[2001:db8::1]:22");
    }

    #[test]
    fn rejects_other_forms_and_says_which_is_expected() {
        for bad in [
            "core@bastion",
            "http://core@bastion",
            "ssh://bastion",
            "ssh://@bastion",
            "ssh://core@",
            "ssh://core@bastion:",
            "ssh://core@bastion:0",
            "ssh://core@bastion:99999",
            "ssh://core@bastion:22x",
            "ssh://core:secret@bastion",
            "ssh://core@bastion/path",
            "ssh://core@-oProxyCommand=x",
            "ssh://-oProxyCommand=x@bastion",
            "ssh://core@[2001:db8::1",
        ] {
            let err = SshVia::parse(bad).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("ssh://USER@HOST[:PORT]"), "{bad}: {text}");
            assert!(text.contains(bad), "{bad}: {text}");
        }
    }

    #[test]
    fn forward_targets_of_client_urls() {
        assert_eq!(
            forward_target("http://10.0.1.101:2379").unwrap(),
            ("10.0.1.101".to_string(), 2379)
        );
        assert_eq!(
            forward_target("https://etcd.internal/").unwrap(),
            ("etcd.internal".to_string(), 443)
        );
        assert_eq!(
            forward_target("http://[fd00::1]:2379").unwrap(),
            ("[fd00::1]".to_string(), 2379)
        );
        assert!(forward_target("10.0.1.101:2379").is_err());
        assert!(forward_target("unix://x").is_err());
        assert!(forward_target("http://:2379").is_err());
        assert!(forward_target("http://h:x").is_err());
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(5).unwrap();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 5);
    }
}
