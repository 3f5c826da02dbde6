//! Live mode (`[provider.sim] live = true`): owns everything the sim cloud makes outside
//! its database so that machines really run the etcd member or gRPC proxy of their
//! rendered config: one bridge per network in the namespace clusterform runs in (the
//! hub), a network namespace and veth pair per live machine, the etcd processes, and
//! the `live/` folder of the sim folder (per machine: names, pids, logs, etcd data).
//!
//! A machine's network namespace has no name: a holder process (`unshare --net sleep
//! infinity`) keeps it, and `nsenter --net=/proc/PID/ns/net` enters it; it goes away
//! with the last process in it. (A name under /run/netns is a bind mount, and one made
//! by a clusterform started with `ip netns exec HUB`, which gets a mount namespace of
//! its own, would be seen by no other process.)
//!
//! Interface names carry a short hash of the sim folder's canonical path, so that sim
//! folders never share a bridge or veth: `cb1a2b3c41` (bridge of `net-000001`),
//! `cv1a2b3c412` (hub end of `m-000012`'s veth).

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterform_core::Value;
use clusterform_ignition::Config;
use clusterform_ignition::etcd::{member_args, proxy_args};
use clusterform_ignition::inspect::static_address;
use clusterform_provider::{Object, ProviderError};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::SimConfig;
use crate::db;
use crate::net::{self, Cidr};

/// The folder of the sim folder that holds one folder per live machine.
pub(crate) const LIVE_DIR: &str = "live";
/// The names a live machine's parts were made with, in its live folder.
const RECORD_FILE: &str = "live.json";
/// The etcd data folder inside a live machine's folder.
const DATA_DIR: &str = "data";
/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a process gets to go after SIGKILL before stopping counts as failed.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long a started process may take to listen (etcd opens its listeners first
/// thing); one that exits before (a flag etcd refuses, an address it cannot bind) or
/// does not listen by then fails the create.
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// Where `ip` is looked for when it is not on PATH.
const IP_FALLBACKS: [&str; 2] = ["/usr/sbin/ip", "/sbin/ip"];
/// The longest name of a network interface.
const IFNAME_MAX: usize = 15;

/// What a machine runs, each with its own pid file and log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `etcd-member.service`.
    Member,
    /// `etcd-grpc-proxy.service`.
    Proxy,
    /// The process that holds the machine's network namespace.
    Holder,
}

impl Role {
    /// Proxies first: they are clients of the members, stopped before them; the holder
    /// of the namespace last.
    const ALL: [Role; 3] = [Role::Proxy, Role::Member, Role::Holder];

    fn name(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Proxy => "proxy",
            Role::Holder => "netns",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Role::Member => "etcd member",
            Role::Proxy => "etcd gRPC proxy",
            Role::Holder => "network namespace holder",
        }
    }
}

/// One process live mode started, as [`SimCloud::live_machine`](crate::SimCloud::live_machine)
/// reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveProcess {
    /// Its process id.
    pub pid: u32,
    /// When it started: field 22 of `/proc/PID/stat` (clock ticks since boot), which
    /// tells it apart from a later process given the same pid.
    pub started: u64,
    /// True while it runs (a zombie has stopped).
    pub running: bool,
    /// Its stdout and stderr (appended).
    pub log: PathBuf,
}

/// What live mode made for one machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveMachine {
    /// The machine's id.
    pub id: String,
    /// Its network namespace, `/proc/PID/ns/net` of its holder process: `nsenter
    /// --net=NAMESPACE CMD` runs a command on the machine (empty when it is gone).
    pub namespace: String,
    /// The hub end of its veth pair (the other end is `eth0` in the namespace).
    pub veth: String,
    /// The bridge of its network in the hub.
    pub bridge: String,
    /// Its address on `eth0`, with the prefix (`10.0.1.101/16`).
    pub address: String,
    /// Its live folder, `<sim dir>/live/<id>`.
    pub folder: PathBuf,
    /// The etcd member's data folder (`--data-dir`).
    pub data_dir: PathBuf,
    /// The etcd member, when the machine runs one.
    pub member: Option<LiveProcess>,
    /// The etcd gRPC proxy, when the machine runs one.
    pub proxy: Option<LiveProcess>,
    /// The process that holds its network namespace.
    pub holder: Option<LiveProcess>,
}

/// The programs live mode runs, found when the provider is built.
#[derive(Clone, Debug)]
pub(crate) struct Tools {
    /// `ip` (iproute2).
    ip: PathBuf,
    /// etcd.
    etcd: PathBuf,
    /// `unshare` (util-linux), which makes a machine's network namespace.
    unshare: PathBuf,
    /// `nsenter` (util-linux), which runs commands in it.
    nsenter: PathBuf,
}

/// Check that live mode can work here: root, `ip` and the etcd binary.
pub(crate) fn preflight(config: &SimConfig, base_dir: &Path) -> Result<Tools, ProviderError> {
    check_root(proc_self_uid())?;
    let ip = find_ip().ok_or_else(|| {
        ProviderError::Config(
            "live mode (`live = true` in [provider.sim]) needs the `ip` program, which is \
             neither on PATH nor at /usr/sbin/ip or /sbin/ip: install the Debian package \
             `iproute2` (apt-get install iproute2)"
                .to_string(),
        )
    })?;
    let etcd = find_etcd(config.etcd_binary.as_deref(), base_dir)?;
    let util = |name: &str| {
        find_tool(name).ok_or_else(|| {
            ProviderError::Config(format!(
                "live mode (`live = true` in [provider.sim]) needs the `{name}` program, which \
                 is neither on PATH nor in /usr/bin or /bin: install the Debian package \
                 `util-linux` (apt-get install util-linux)"
            ))
        })
    };
    Ok(Tools {
        ip,
        etcd,
        unshare: util("unshare")?,
        nsenter: util("nsenter")?,
    })
}

/// A util-linux program on PATH, else in /usr/bin or /bin.
fn find_tool(name: &str) -> Option<PathBuf> {
    find_on_path(name).or_else(|| {
        ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| is_executable(p))
    })
}

/// The owner of `/proc/self`: the uid this process runs as.
fn proc_self_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Live mode needs root (`uid` 0) to make namespaces, veth pairs and bridges.
pub(crate) fn check_root(uid: Option<u32>) -> Result<(), ProviderError> {
    if uid == Some(0) {
        return Ok(());
    }
    let who = match uid {
        Some(u) => format!("this process runs as uid {u}"),
        None => "cannot tell who this process runs as (/proc/self is unreadable)".to_string(),
    };
    Err(ProviderError::Config(format!(
        "live mode (`live = true` in [provider.sim]) needs root: it makes a network \
         namespace, a veth pair and a bridge per machine and runs etcd in them, and {who}. \
         Run clusterform as root, ideally in a network namespace of its own so that the \
         host's network is left alone: `sudo ip netns add hub; sudo ip netns exec hub \
         clusterform apply ...`; or set `live = false` for the plain sim"
    )))
}

/// True for a file anyone may execute.
fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` in the folders of PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// `ip` on PATH, else at /usr/sbin/ip or /sbin/ip.
pub(crate) fn find_ip() -> Option<PathBuf> {
    find_on_path("ip").or_else(|| {
        IP_FALLBACKS
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
    })
}

/// The etcd program: `etcd_binary` (a bare name on PATH, a relative path from
/// `base_dir`), else `etcd` on PATH.
fn find_etcd(configured: Option<&Path>, base_dir: &Path) -> Result<PathBuf, ProviderError> {
    const INSTALL: &str = "install the Debian package `etcd-server` (apt-get install etcd-server) \
         or set `etcd_binary` in [provider.sim]";
    let bare = |p: &Path| p.components().count() == 1 && !p.is_absolute();
    match configured {
        Some(p) if !bare(p) => {
            let full = if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            };
            if !full.exists() {
                Err(ProviderError::Config(format!(
                    "live mode runs etcd, but `etcd_binary` `{}` does not exist: {INSTALL}",
                    full.display()
                )))
            } else if !is_executable(&full) {
                Err(ProviderError::Config(format!(
                    "live mode runs etcd, but `etcd_binary` `{}` is not an executable file",
                    full.display()
                )))
            } else {
                Ok(full)
            }
        }
        _ => {
            let name = configured
                .and_then(Path::to_str)
                .unwrap_or("etcd")
                .to_string();
            find_on_path(&name).ok_or_else(|| {
                ProviderError::Config(format!(
                    "live mode runs etcd, but `{name}` is not on PATH: {INSTALL}"
                ))
            })
        }
    }
}

/// 8 hex digits of SHA-256 of the sim folder's canonical path.
fn folder_tag(canonical: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(canonical.as_os_str().as_bytes());
    hex(&digest[..4])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// True for an id live mode puts into names (`m-000012`): letters, digits, `-`, `_`.
fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An interface name of at most 15 characters for object `id`: `kind` (two letters),
/// 7 hex digits of the folder's tag, then the number of the id without its leading
/// zeros (`cv1a2b3c412` for `m-000012`); when that does not fit, `kind` and 13 hex
/// digits of a hash of the tag and the id.
fn iface_name(kind: &str, tag: &str, id: &str) -> String {
    let short_tag: String = tag.chars().take(7).collect();
    let number = id
        .rsplit_once('-')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        .map(|n| {
            let t = n.trim_start_matches('0');
            if t.is_empty() { "0" } else { t }
        });
    if let Some(n) = number {
        let name = format!("{kind}{short_tag}{n}");
        if name.len() <= IFNAME_MAX {
            return name;
        }
    }
    let digest = Sha256::digest(format!("{tag}/{id}").as_bytes());
    let h = hex(&digest[..7]);
    format!("{kind}{}", &h[..IFNAME_MAX - kind.len()])
}

/// The hub end of machine `id`'s veth pair.
fn veth_name(tag: &str, id: &str) -> String {
    iface_name("cv", tag, id)
}

/// The bridge of network `id` in the hub.
fn bridge_name(tag: &str, id: &str) -> String {
    iface_name("cb", tag, id)
}

/// The network a machine is on, as live mode needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NetFacts {
    /// Its range.
    cidr: Cidr,
    /// Its gateway: the `gateway` attribute, else the first host of the range.
    gateway: Ipv4Addr,
}

impl NetFacts {
    /// The facts of a network object.
    fn of(net: &Object) -> Result<NetFacts, String> {
        let text = net.attrs.get("cidr").and_then(Value::as_str).unwrap_or("");
        let cidr = Cidr::parse(text)
            .ok_or_else(|| format!("network `{}` has no valid cidr (`{text}`)", net.id))?;
        let gateway = net
            .attrs
            .get("gateway")
            .and_then(Value::as_str)
            .and_then(net::parse_ip)
            .unwrap_or_else(|| cidr.first_host());
        Ok(NetFacts {
            cidr,
            gateway: Ipv4Addr::from(gateway),
        })
    }
}

/// A machine's `eth0`: address, prefix, default gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Eth0 {
    address: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
}

impl Eth0 {
    fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix)
    }
}

/// The address of a machine's `eth0`: the static one of its rendered
/// `/etc/systemd/network/00-eth0.network` when there is one (its gateway, else the
/// network's), else the sim-assigned `address` with the network's prefix and gateway.
pub(crate) fn choose_eth0(
    config: &Config,
    sim_address: Option<&str>,
    net: NetFacts,
) -> Result<Eth0, String> {
    if let Some(s) = static_address(config) {
        return Ok(Eth0 {
            address: s.address,
            prefix: s.prefix,
            gateway: s.gateway.unwrap_or(net.gateway),
        });
    }
    let text = sim_address.ok_or(
        "the machine has neither a static address in its config nor a sim-assigned `address`",
    )?;
    let ip =
        net::parse_ip(text).ok_or_else(|| format!("`address` `{text}` is not an IPv4 address"))?;
    Ok(Eth0 {
        address: Ipv4Addr::from(ip),
        prefix: net.cidr.prefix(),
        gateway: net.gateway,
    })
}

/// The machine's etcd certificate files (under `/etc/ssl/etcd` in its config), decoded:
/// (file name, contents).
fn tls_files(config: &Config) -> Vec<(String, Vec<u8>)> {
    let dir = format!("{}/", clusterform_ignition::role::ETCD_TLS_DIR);
    let Some(storage) = &config.storage else {
        return Vec::new();
    };
    storage
        .files
        .iter()
        .filter_map(|f| {
            let name = f.path.strip_prefix(&dir)?;
            let c = f.contents.as_ref()?;
            let compression = c.compression.as_deref().filter(|c| !c.is_empty());
            let (bytes, _) =
                clusterform_ignition::decode_data_url(c.source.as_deref()?, compression)?;
            (!name.contains('/')).then(|| (name.to_string(), bytes))
        })
        .collect()
}

/// `args` with the certificate paths (as Flatcar's etcd-wrapper shows them to etcd, and
/// as they are on the machine) pointing into `dir`, where the live machine has them.
fn tls_args(args: &[String], dir: &Path) -> Vec<String> {
    let to = format!("{}/", dir.display());
    args.iter()
        .map(|a| {
            a.replace(
                &format!("{}/", clusterform_ignition::role::ETCD_TLS_DIR_IN_CONTAINER),
                &to,
            )
            .replace(
                &format!("{}/", clusterform_ignition::role::ETCD_TLS_DIR),
                &to,
            )
        })
        .collect()
}

/// The folder of a live machine's etcd certificate files.
const TLS_DIR: &str = "tls";

/// What a machine's config makes it run: the member's and the proxy's arguments.
fn runs(config: &Config) -> Vec<(Role, Vec<String>)> {
    let mut out = Vec::new();
    if let Some(a) = member_args(config) {
        out.push((Role::Member, a));
    }
    if let Some(a) = proxy_args(config) {
        out.push((Role::Proxy, a));
    }
    out
}

/// The names a live machine's parts were made with (`live.json`), so that they are
/// found again even if the naming changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    /// The network namespace as `/proc/PID/ns/net` reads (`net:[4026532456]`): processes
    /// in it are found by it once its holder is gone.
    netns: String,
    veth: String,
    bridge: String,
    address: String,
}

/// The network namespace of process `pid` (`net:[4026532456]`).
fn netns_of(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .and_then(|l| l.to_str().map(str::to_string))
}

/// Every process whose network namespace is `netns`.
fn procs_in(netns: &str) -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| netns_of(*pid).as_deref() == Some(netns))
        .filter_map(Proc::current)
        .collect()
}

/// A process as recorded in `<role>.pid`: `PID STARTTIME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Proc {
    pid: u32,
    started: u64,
}

/// The state letter and start time of a process, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything: fields
    // 3 and on follow the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let started = fields.get(19)?.parse().ok()?;
    Some((state, started))
}

impl Proc {
    /// The process `pid` as it is now.
    fn current(pid: u32) -> Option<Proc> {
        proc_stat(pid).map(|(_, started)| Proc { pid, started })
    }

    /// True while this very process (not a later one with its pid) runs; a zombie has
    /// stopped.
    fn running(self) -> bool {
        proc_stat(self.pid)
            .is_some_and(|(state, started)| started == self.started && !matches!(state, 'Z' | 'X'))
    }

    fn rustix_pid(self) -> Option<rustix::process::Pid> {
        rustix::process::Pid::from_raw(i32::try_from(self.pid).ok()?)
    }

    fn signal(self, sig: rustix::process::Signal) {
        if let Some(p) = self.rustix_pid() {
            // It may have exited meanwhile: nothing to do then.
            let _ = rustix::process::kill_process(p, sig);
        }
    }

    /// Collect its exit status when it is a child of this process, so that it does not
    /// stay a zombie; anything else (not our child, not exited) is left alone.
    fn reap(self) {
        if let Some(p) = self.rustix_pid() {
            let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
        }
    }

    fn parse(text: &str) -> Option<Proc> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let started = words.next()?.parse().ok()?;
        Some(Proc { pid, started })
    }
}

/// True when process `pid` has a listening TCP socket: one of its open sockets is in
/// state LISTEN in its network namespace's `/proc/PID/net/tcp` or `tcp6`.
fn listens(pid: u32) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let sockets: HashSet<String> = fds
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    if sockets.is_empty() {
        return false;
    }
    ["tcp", "tcp6"].iter().any(|t| {
        fs::read_to_string(format!("/proc/{pid}/net/{t}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // `st` is the 4th column (0A: LISTEN), the inode the 10th.
                f.get(3) == Some(&"0A") && f.get(9).is_some_and(|i| sockets.contains(*i))
            })
    })
}

/// Wait until none of `procs` runs, or `limit` passed; true when none runs.
fn wait_stopped(procs: &[Proc], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        for p in procs {
            p.reap();
        }
        if !procs.iter().any(|p| p.running()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Stop processes one after the other: SIGTERM, up to 5 s, then SIGKILL. One at a
/// time because an etcd member stopping hands its leadership to a peer first, and
/// waits for that until a timeout when the peer is stopping too.
fn stop_procs(procs: &[Proc]) -> Result<(), String> {
    let mut stuck = Vec::new();
    for p in procs {
        if !p.running() {
            p.reap();
            continue;
        }
        p.signal(rustix::process::Signal::TERM);
        if wait_stopped(&[*p], STOP_GRACE) {
            continue;
        }
        p.signal(rustix::process::Signal::KILL);
        if !wait_stopped(&[*p], KILL_WAIT) {
            stuck.push(p.pid.to_string());
        }
    }
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "process {} still runs after SIGKILL",
            stuck.join(", ")
        ))
    }
}

/// The last lines of a log, for an error message.
fn log_tail(path: &Path) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> String {
    format!("cannot {what} `{}`: {e}", path.display())
}

/// Live mode for one sim folder.
#[derive(Debug)]
pub(crate) struct Live {
    /// `<sim dir>/live`.
    root: PathBuf,
    /// The hash of the sim folder's canonical path.
    tag: String,
    /// `ip`; None when it is missing (then nothing live can exist to be removed).
    ip: Option<PathBuf>,
    /// The programs that start machines; None for [`SimCloud`](crate::SimCloud),
    /// which never starts anything.
    tools: Option<Tools>,
}

impl Live {
    /// Live mode for the sim folder `dir` (which must exist); `tools` from
    /// [`preflight`] when it may start machines.
    pub(crate) fn new(dir: &Path, tools: Option<&Tools>) -> Result<Live, String> {
        let canonical = fs::canonicalize(dir).map_err(|e| io_err("resolve", dir, &e))?;
        Ok(Live {
            root: canonical.join(LIVE_DIR),
            tag: folder_tag(&canonical),
            ip: tools.map(|t| t.ip.clone()).or_else(find_ip),
            tools: tools.cloned(),
        })
    }

    fn iface_prefix(&self, kind: &str) -> String {
        format!("{kind}{}", self.tag.chars().take(7).collect::<String>())
    }

    fn folder(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Run `ip ARGS`; its stdout, or an error naming the command and what it said.
    fn ip(&self, args: &[&str]) -> Result<String, String> {
        let ip = self
            .ip
            .as_ref()
            .ok_or("the `ip` program is missing (Debian package `iproute2`)")?;
        self.run(
            Command::new(ip).args(args),
            &format!("ip {}", args.join(" ")),
        )
    }

    /// Run `ip ARGS` in the network namespace `netns` (`/proc/PID/ns/net`).
    fn ip_in(&self, netns: &str, args: &[&str]) -> Result<String, String> {
        let (Some(ip), Some(tools)) = (&self.ip, &self.tools) else {
            return Err("live mode is not set up to run commands here".to_string());
        };
        self.run(
            Command::new(&tools.nsenter)
                .arg(format!("--net={netns}"))
                .arg("--")
                .arg(ip)
                .args(args),
            &format!("ip {} (in {netns})", args.join(" ")),
        )
    }

    /// Run `cmd` (shown as `what`); its stdout, or an error saying what it said.
    fn run(&self, cmd: &mut Command, what: &str) -> Result<String, String> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `{what}`: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`{what}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Like [`Live::ip`], but a complaint containing `gone` (the thing is not there)
    /// counts as done.
    fn ip_gone_ok(&self, args: &[&str], gone: &str) -> Result<(), String> {
        match self.ip(args) {
            Ok(_) => Ok(()),
            Err(e) if e.contains(gone) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The machine ids that have a live folder.
    fn folder_ids(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| is_safe_id(id))
            .collect();
        ids.sort();
        ids
    }

    /// The links of the current namespace whose names start with `prefix` (of type
    /// `kind`, when given); none when `ip` is missing.
    fn links(&self, prefix: &str, kind: Option<&str>) -> Result<Vec<String>, String> {
        if self.ip.is_none() {
            return Ok(Vec::new());
        }
        let mut args = vec!["-o", "link", "show"];
        if let Some(k) = kind {
            args.extend(["type", k]);
        }
        Ok(self
            .ip(&args)?
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    fn read_record(&self, id: &str) -> Option<Record> {
        let text = fs::read_to_string(self.folder(id).join(RECORD_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn pid_file(&self, id: &str, role: Role) -> PathBuf {
        self.folder(id).join(format!("{}.pid", role.name()))
    }

    fn log_file(&self, id: &str, role: Role) -> PathBuf {
        self.folder(id).join(format!("{}.log", role.name()))
    }

    fn read_proc(&self, id: &str, role: Role) -> Option<Proc> {
        Proc::parse(&fs::read_to_string(self.pid_file(id, role)).ok()?)
    }

    /// Start what machine `machine` runs, when its config runs an etcd member or proxy
    /// (else nothing happens). Called in the write transaction right after its row was
    /// inserted (`conn` sees it and its network). On failure whatever was set up is
    /// removed again.
    pub(crate) fn start_machine(&self, conn: &Connection, machine: &Object) -> Result<(), String> {
        let Some(config) = machine
            .attrs
            .get("user_data")
            .and_then(Value::as_str)
            .and_then(|t| serde_json::from_str::<Config>(t).ok())
        else {
            return Ok(());
        };
        let mut runs = runs(&config);
        if runs.is_empty() {
            return Ok(());
        }
        let tls = tls_files(&config);
        if !tls.is_empty() {
            let dir = self.folder(&machine.id).join(TLS_DIR);
            for (_, args) in &mut runs {
                *args = tls_args(args, &dir);
            }
        }
        let fail = |e: String| format!("cannot start machine `{}` live: {e}", machine.id);
        if !is_safe_id(&machine.id) {
            return Err(fail(format!(
                "its id `{}` cannot name a namespace",
                machine.id
            )));
        }
        let net_id = machine
            .attrs
            .get("network")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("it has no network".to_string()))?;
        let net = db::get(conn, net_id)
            .map_err(|e| fail(e.to_string()))?
            .filter(|o| o.kind == "network")
            .ok_or_else(|| fail(format!("network `{net_id}` does not exist")))?;
        let facts = NetFacts::of(&net).map_err(fail)?;
        let sim_address = machine.attrs.get("address").and_then(Value::as_str);
        let eth0 = choose_eth0(&config, sim_address, facts).map_err(fail)?;
        // Leftovers under this id (a create rolled back after its live parts were made,
        // whose cleanup did not finish) go first.
        if self.folder(&machine.id).exists() {
            self.stop_machine(&machine.id).map_err(fail)?;
        }
        match self.set_up(&machine.id, &net.id, facts, eth0, &runs, &tls) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Best effort: the error that made the create fail is what matters; the
                // next write batch cleans up what is left (the row does not exist).
                let _ = self.stop_machine(&machine.id);
                Err(fail(e))
            }
        }
    }

    fn set_up(
        &self,
        id: &str,
        net_id: &str,
        net: NetFacts,
        eth0: Eth0,
        runs: &[(Role, Vec<String>)],
        tls: &[(String, Vec<u8>)],
    ) -> Result<(), String> {
        let folder = self.folder(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&folder)
            .map_err(|e| io_err("create the folder", &folder, &e))?;
        // The certificate files, as Ignition lays them out on a machine (keys 0600 here:
        // the live processes run as the one user).
        if !tls.is_empty() {
            let dir = folder.join(TLS_DIR);
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| io_err("create the folder", &dir, &e))?;
            for (name, bytes) in tls {
                let path = dir.join(name);
                let mut opts = fs::OpenOptions::new();
                opts.write(true).create_new(true);
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(&path).map_err(|e| io_err("create", &path, &e))?;
                std::io::Write::write_all(&mut f, bytes).map_err(|e| io_err("write", &path, &e))?;
            }
        }
        let holder = self.spawn_holder(id)?;
        let netns_path = format!("/proc/{}/ns/net", holder.pid);
        let record = Record {
            netns: netns_of(holder.pid)
                .ok_or_else(|| format!("the namespace holder (pid {}) is gone", holder.pid))?,
            veth: veth_name(&self.tag, id),
            bridge: bridge_name(&self.tag, net_id),
            address: eth0.cidr(),
        };
        let text = serde_json::to_string_pretty(&record)
            .map_err(|e| format!("cannot encode {RECORD_FILE}: {e}"))?;
        let record_path = folder.join(RECORD_FILE);
        fs::write(&record_path, text).map_err(|e| io_err("write", &record_path, &e))?;

        self.ensure_bridge(&record.bridge, net_id, net)?;
        let ns = netns_path.as_str();
        let veth = record.veth.as_str();
        // A hub veth of that name can only be a leftover: its machine is gone.
        self.ip_gone_ok(&["link", "del", veth], "Cannot find device")?;
        let holder_pid = holder.pid.to_string();
        self.ip(&[
            "link",
            "add",
            veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &holder_pid,
        ])?;
        self.ip(&["link", "set", veth, "master", &record.bridge])?;
        self.ip(&["link", "set", veth, "up"])?;
        self.ip_in(ns, &["link", "set", "lo", "up"])?;
        self.ip_in(ns, &["addr", "add", &record.address, "dev", "eth0"])?;
        self.ip_in(ns, &["link", "set", "eth0", "up"])?;
        let gateway = eth0.gateway.to_string();
        if eth0.gateway != eth0.address {
            self.ip_in(
                ns,
                &[
                    "route", "replace", "default", "via", &gateway, "dev", "eth0", "onlink",
                ],
            )?;
        }

        let mut children = Vec::with_capacity(runs.len());
        for (role, args) in runs {
            let child = self.spawn(id, ns, *role, args)?;
            children.push((*role, child));
        }
        for (role, child) in &mut children {
            self.wait_listening(id, *role, child)?;
        }
        // The children are not waited for: they belong to the sim cloud and outlive
        // this process (stopping one reaps it, see `Proc::reap`).
        Ok(())
    }

    /// Wait until a started process listens on a TCP port; an error (with the end of
    /// its log) when it exits first or does not listen in time.
    fn wait_listening(&self, id: &str, role: Role, child: &mut Child) -> Result<(), String> {
        let deadline = Instant::now() + LISTEN_WAIT;
        let log = self.log_file(id, role);
        let failed = |what: String| {
            format!(
                "its {} {what}; the end of `{}`:\n{}",
                role.describe(),
                log.display(),
                log_tail(&log)
            )
        };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!("exited at once ({status})")));
            }
            if listens(child.id()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "does not listen on any port {} s after starting",
                    LISTEN_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Make the bridge of a network in the current namespace, with the network's
    /// gateway address, unless it is there; refuse when the namespace already has an
    /// address overlapping the network (the host's own network, another sim folder's).
    fn ensure_bridge(&self, bridge: &str, net_id: &str, net: NetFacts) -> Result<(), String> {
        let gw = format!("{}/{}", net.gateway, net.cidr.prefix());
        if self
            .links(bridge, Some("bridge"))?
            .iter()
            .any(|b| b == bridge)
        {
            self.ip(&["addr", "replace", &gw, "dev", bridge])?;
            return self.ip(&["link", "set", bridge, "up"]).map(|_| ());
        }
        for line in self.ip(&["-o", "-4", "addr", "show"])?.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| *w == "inet") else {
                continue;
            };
            let (Some(dev), Some(addr)) = (words.get(1), words.get(at + 1)) else {
                continue;
            };
            if let Some(c) = Cidr::parse(addr)
                && c.overlaps(net.cidr)
            {
                return Err(format!(
                    "network `{net_id}` ({}) overlaps {addr} on `{dev}` in the network \
                     namespace clusterform runs in; run clusterform in a network namespace \
                     of its own (`ip netns add hub; ip netns exec hub clusterform ...`)",
                    net.cidr
                ));
            }
        }
        self.ip(&["link", "add", bridge, "type", "bridge"])?;
        self.ip(&["addr", "replace", &gw, "dev", bridge])?;
        self.ip(&["link", "set", bridge, "up"])?;
        Ok(())
    }

    /// Start the process that holds the machine's new network namespace (`unshare
    /// --net sleep infinity`), record it, and wait until it is in its namespace.
    fn spawn_holder(&self, id: &str) -> Result<Proc, String> {
        let Some(tools) = &self.tools else {
            return Err("live mode is not set up to start processes here".to_string());
        };
        let mut cmd = Command::new(&tools.unshare);
        cmd.args(["--net", "--", "sleep", "infinity"]);
        let mut child = self.start(id, Role::Holder, &mut cmd)?;
        let ours = netns_of(std::process::id());
        let deadline = Instant::now() + LISTEN_WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "`unshare --net` could not make a network namespace ({status})"
                ));
            }
            let theirs = netns_of(child.id());
            if theirs.is_some() && theirs != ours {
                break;
            }
            if Instant::now() >= deadline {
                return Err("`unshare --net` did not make a network namespace in time".to_string());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.read_proc(id, Role::Holder)
            .ok_or_else(|| "the namespace holder was not recorded".to_string())
    }

    /// Start one process of the machine in its namespace `ns` (`/proc/PID/ns/net`).
    fn spawn(&self, id: &str, ns: &str, role: Role, args: &[String]) -> Result<Child, String> {
        let Some(tools) = &self.tools else {
            return Err("live mode is not set up to start processes here".to_string());
        };
        let folder = self.folder(id);
        let mut cmd = Command::new(&tools.nsenter);
        cmd.arg(format!("--net={ns}"))
            .arg("--")
            .arg(&tools.etcd)
            .args(args);
        if role == Role::Member {
            cmd.arg("--data-dir").arg(folder.join(DATA_DIR));
        }
        self.start(id, role, &mut cmd)
    }

    /// Start `cmd` as process `role` of machine `id`: in its live folder, output to its
    /// log, in a process group of its own; record its pid and start time.
    fn start(&self, id: &str, role: Role, cmd: &mut Command) -> Result<Child, String> {
        let folder = self.folder(id);
        let log_path = self.log_file(id, role);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_err("open", &log_path, &e))?;
        let err = log.try_clone().map_err(|e| io_err("open", &log_path, &e))?;
        // The environment's own ETCD_* settings would be mixed into the flags.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(&folder)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // A Ctrl-C to clusterform's terminal must not reach it.
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start its {}: {e}", role.describe()))?;
        let proc = Proc::current(child.id()).ok_or_else(|| {
            format!(
                "its {} (pid {}) is gone right after starting",
                role.describe(),
                child.id()
            )
        })?;
        let pid_path = self.pid_file(id, role);
        if let Err(e) = fs::write(&pid_path, format!("{} {}\n", proc.pid, proc.started)) {
            let _ = stop_procs(&[proc]);
            return Err(io_err("write", &pid_path, &e));
        }
        Ok(child)
    }

    /// Stop what machine `id` runs and remove its namespace (with its veth pair) and its
    /// live folder (with the etcd data). Missing parts are fine.
    pub(crate) fn stop_machine(&self, id: &str) -> Result<(), String> {
        let record = self.read_record(id);
        let veth = record
            .as_ref()
            .map_or_else(|| veth_name(&self.tag, id), |r| r.veth.clone());
        let mut procs: Vec<Proc> = Vec::new();
        for role in Role::ALL {
            let recorded = self.read_proc(id, role);
            if role == Role::Holder {
                // Anything else in the namespace (started by hand, or by an older run).
                if let Some(ns) = record.as_ref().map(|r| r.netns.as_str()) {
                    let others: Vec<Proc> = procs_in(ns)
                        .into_iter()
                        .filter(|p| Some(*p) != recorded && !procs.contains(p))
                        .collect();
                    procs.extend(others);
                }
            }
            procs.extend(recorded);
        }
        let mut errors = Vec::new();
        if let Err(e) = stop_procs(&procs) {
            errors.push(e);
        }
        if self.ip.is_some() {
            // Gone with the namespace (its last process stopped), else removed here.
            let del = |links: Vec<String>| {
                if links.contains(&veth) {
                    self.ip_gone_ok(&["link", "del", &veth], "Cannot find device")
                } else {
                    Ok(())
                }
            };
            if let Err(e) = self.links(&veth, None).and_then(del) {
                errors.push(e);
            }
        }
        let folder = self.folder(id);
        match fs::remove_dir_all(&folder) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(io_err("remove", &folder, &e)),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "cannot remove the live parts of machine `{id}`: {}",
                errors.join("; ")
            ))
        }
    }

    /// Remove the bridge of a deleted network (from the current namespace).
    pub(crate) fn remove_bridge(&self, net_id: &str) -> Result<(), String> {
        let bridge = bridge_name(&self.tag, net_id);
        let fail = |e: String| format!("cannot remove the bridge of network `{net_id}`: {e}");
        if self
            .links(&bridge, Some("bridge"))
            .map_err(fail)?
            .contains(&bridge)
        {
            self.ip_gone_ok(&["link", "del", &bridge], "Cannot find device")
                .map_err(fail)?;
        }
        Ok(())
    }

    /// Remove what has no object any more: live folders and namespaces of machines
    /// whose row does not exist (a create that was killed before it committed, a
    /// delete whose cleanup was cut short), bridges of networks that are gone. Called
    /// at the start of each write batch, in its transaction. Best effort: what cannot
    /// be removed is tried again next time.
    pub(crate) fn clean_orphans(&self, conn: &Connection) -> Result<(), String> {
        let ids = |kind: &str| -> Result<HashSet<String>, String> {
            let mut st = conn
                .prepare_cached("SELECT id FROM objects WHERE kind = ?1")
                .map_err(|e| e.to_string())?;
            st.query_map([kind], |r| r.get::<_, String>(0))
                .map_err(|e| e.to_string())?
                .collect::<rusqlite::Result<HashSet<String>>>()
                .map_err(|e| e.to_string())
        };
        let machines = ids("machine")?;
        let mut errors = Vec::new();
        let candidates: BTreeSet<String> = self.folder_ids().into_iter().collect();
        for id in candidates.iter().filter(|id| !machines.contains(*id)) {
            if let Err(e) = self.stop_machine(id) {
                errors.push(e);
            }
        }
        let bridges = self
            .links(&self.iface_prefix("cb"), Some("bridge"))
            .unwrap_or_else(|e| {
                errors.push(e);
                Vec::new()
            });
        if !bridges.is_empty() {
            let wanted: HashSet<String> = ids("network")?
                .iter()
                .map(|id| bridge_name(&self.tag, id))
                .collect();
            for b in bridges.iter().filter(|b| !wanted.contains(*b)) {
                if let Err(e) = self.ip_gone_ok(&["link", "del", b], "Cannot find device") {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// What live mode made for machine `id`, if anything.
    pub(crate) fn machine(&self, id: &str) -> Option<LiveMachine> {
        if !is_safe_id(id) {
            return None;
        }
        let folder = self.folder(id);
        if !folder.is_dir() {
            return None;
        }
        let record = self.read_record(id);
        let process = |role: Role| {
            self.read_proc(id, role).map(|p| LiveProcess {
                pid: p.pid,
                started: p.started,
                running: p.running(),
                log: self.log_file(id, role),
            })
        };
        let holder = process(Role::Holder);
        Some(LiveMachine {
            id: id.to_string(),
            namespace: holder
                .as_ref()
                .filter(|h| h.running)
                .map(|h| format!("/proc/{}/ns/net", h.pid))
                .unwrap_or_default(),
            veth: record
                .as_ref()
                .map_or_else(|| veth_name(&self.tag, id), |r| r.veth.clone()),
            bridge: record
                .as_ref()
                .map(|r| r.bridge.clone())
                .unwrap_or_default(),
            address: record.map(|r| r.address).unwrap_or_default(),
            data_dir: folder.join(DATA_DIR),
            folder,
            member: process(Role::Member),
            proxy: process(Role::Proxy),
            holder,
        })
    }

    /// Every machine that has a live folder, sorted by id.
    pub(crate) fn machines(&self) -> Vec<LiveMachine> {
        self.folder_ids()
            .iter()
            .filter_map(|id| self.machine(id))
            .collect()
    }

    /// True when machine `id` has a live folder.
    pub(crate) fn has_folder(&self, id: &str) -> bool {
        is_safe_id(id) && self.folder(id).is_dir()
    }

    /// Stop every process and remove every namespace of this sim folder, and the veth
    /// ends and bridges of this folder in the current namespace (those in another
    /// namespace are left to it). Live folders stay (logs, data).
    pub(crate) fn stop_all(&self) -> Result<(), String> {
        let ids = self.folder_ids();
        let mut procs: Vec<Proc> = Vec::new();
        for role in Role::ALL {
            if role == Role::Holder {
                for ns in ids.iter().filter_map(|id| self.read_record(id)) {
                    let others: Vec<Proc> = procs_in(&ns.netns)
                        .into_iter()
                        .filter(|p| !procs.contains(p))
                        .collect();
                    procs.extend(others);
                }
            }
            procs.extend(ids.iter().filter_map(|id| self.read_proc(id, role)));
        }
        let mut errors = Vec::new();
        if let Err(e) = stop_procs(&procs) {
            errors.push(e);
        }
        let mut links = Vec::new();
        for (prefix, kind) in [("cv", None), ("cb", Some("bridge"))] {
            match self.links(&self.iface_prefix(prefix), kind) {
                Ok(l) => links.extend(l),
                Err(e) => errors.push(e),
            }
        }
        for l in &links {
            if let Err(e) = self.ip_gone_ok(&["link", "del", l], "Cannot find device") {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use clusterform_ignition::{EtcdMember, MachineSpec, Platform, StaticNetwork, render};

    use super::*;

    #[test]
    fn root_check_names_the_way_out() {
        assert!(check_root(Some(0)).is_ok());
        for uid in [Some(1000), None] {
            let Err(ProviderError::Config(m)) = check_root(uid) else {
                panic!("uid {uid:?} is not root");
            };
            assert!(m.contains("needs root"), "{m}");
            assert!(m.contains("ip netns add hub"), "{m}");
            assert!(m.contains("ip netns exec hub clusterform"), "{m}");
            assert!(m.contains("live = false"), "{m}");
        }
        let Err(ProviderError::Config(m)) = check_root(Some(1000)) else {
            panic!("not root");
        };
        assert!(m.contains("uid 1000"), "{m}");
    }

    #[test]
    fn etcd_binary_errors_name_the_package() {
        let base = Path::new("/nonexistent-base");
        let Err(ProviderError::Config(m)) = find_etcd(Some(Path::new("/nonexistent/etcd")), base)
        else {
            panic!("a missing etcd is an error");
        };
        assert!(
            m.contains("`/nonexistent/etcd` does not exist") && m.contains("etcd-server"),
            "{m}"
        );
        let Err(ProviderError::Config(m)) = find_etcd(Some(Path::new("bin/etcd")), base) else {
            panic!("a missing etcd is an error");
        };
        assert!(m.contains("/nonexistent-base/bin/etcd"), "{m}");
        let Err(ProviderError::Config(m)) =
            find_etcd(Some(Path::new("no-such-etcd-program")), base)
        else {
            panic!("a missing etcd is an error");
        };
        assert!(
            m.contains("`no-such-etcd-program` is not on PATH") && m.contains("etcd-server"),
            "{m}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let plain_file = tmp.path().join("etcd");
        fs::write(&plain_file, "not a program").unwrap();
        fs::set_permissions(&plain_file, fs::Permissions::from_mode(0o644)).unwrap();
        let Err(ProviderError::Config(m)) = find_etcd(Some(&plain_file), base) else {
            panic!("a file that is not executable is an error");
        };
        assert!(m.contains("not an executable file"), "{m}");
    }

    #[test]
    fn names_are_stable_short_and_distinct() {
        let tag = folder_tag(Path::new("/tmp/sim"));
        assert_eq!(tag.len(), 8);
        assert!(tag.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(tag, folder_tag(Path::new("/tmp/sim")));
        assert_ne!(tag, folder_tag(Path::new("/tmp/sim2")));
        assert_eq!(veth_name(&tag, "m-000012"), format!("cv{}12", &tag[..7]));
        assert_eq!(bridge_name(&tag, "net-000001"), format!("cb{}1", &tag[..7]));
        assert_eq!(veth_name(&tag, "m-000000"), format!("cv{}0", &tag[..7]));
        let ids = [
            "m-000001",
            "m-000010",
            "m-999999",
            "m-1000000",
            "m-123456789012",
            "odd id",
            "m-",
            "x",
        ];
        let mut seen = HashSet::new();
        for id in ids {
            for name in [veth_name(&tag, id), bridge_name(&tag, id)] {
                assert!(name.len() <= IFNAME_MAX, "{name} is too long");
                assert!(
                    name.chars().all(|c| c.is_ascii_alphanumeric()),
                    "{name} has odd characters"
                );
                assert!(seen.insert(name.clone()), "{name} twice");
            }
        }
        // The same id in another sim folder gets other names.
        let other = folder_tag(Path::new("/tmp/other"));
        assert_ne!(veth_name(&tag, "m-000001"), veth_name(&other, "m-000001"));
        assert!(is_safe_id("m-000001"));
        assert!(!is_safe_id("../x"));
        assert!(!is_safe_id(""));
    }

    fn net(cidr: &str, gateway: Option<&str>) -> NetFacts {
        let mut attrs = clusterform_core::Attrs::new();
        attrs.insert("cidr".into(), Value::String(cidr.into()));
        if let Some(g) = gateway {
            attrs.insert("gateway".into(), Value::String(g.into()));
        }
        NetFacts::of(&Object {
            kind: "network".into(),
            id: "net-000001".into(),
            attrs,
            owner: None,
        })
        .expect("a valid network")
    }

    fn spec(network: Option<StaticNetwork>) -> MachineSpec {
        MachineSpec {
            hostname: "m".into(),
            platform: Platform::Sim,
            ssh_authorized_keys: vec![],
            network,
            docker_tcp: false,
            etcd: None,
            etcd_proxy: None,
            etcd_endpoints: vec![],
            tls: None,
        }
    }

    #[test]
    fn eth0_prefers_the_static_address() {
        let facts = net("10.0.0.0/16", Some("10.0.0.1"));
        assert_eq!(facts.gateway, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            net("10.0.0.0/16", None).gateway,
            Ipv4Addr::new(10, 0, 0, 1),
            "no gateway: the first host"
        );
        let fixed = render(
            &spec(Some(StaticNetwork {
                address: Ipv4Addr::new(10, 0, 1, 101),
                prefix: 24,
                gateway: Ipv4Addr::new(10, 0, 1, 254),
                dns: vec![],
                vlan: None,
            })),
            &[],
        );
        let e = choose_eth0(&fixed, Some("10.0.0.10"), facts).expect("static");
        assert_eq!(e.cidr(), "10.0.1.101/24");
        assert_eq!(e.gateway, Ipv4Addr::new(10, 0, 1, 254));

        let dhcp = render(&spec(None), &[]);
        let e = choose_eth0(&dhcp, Some("10.0.0.10"), facts).expect("sim address");
        assert_eq!(e.cidr(), "10.0.0.10/16");
        assert_eq!(e.gateway, Ipv4Addr::new(10, 0, 0, 1));
        assert!(choose_eth0(&dhcp, None, facts).is_err());
        assert!(choose_eth0(&dhcp, Some("ten"), facts).is_err());
    }

    #[test]
    fn runs_what_the_config_says() {
        let plain = render(&spec(None), &[]);
        assert!(runs(&plain).is_empty());
        let mut m = spec(None);
        m.etcd = Some(EtcdMember {
            name: "a".into(),
            address: Ipv4Addr::new(10, 0, 1, 101),
            initial_cluster: vec![("a".into(), Ipv4Addr::new(10, 0, 1, 101))],
            cluster_token: "t".into(),
        });
        let r = runs(&render(&m, &[]));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, Role::Member);
        assert_eq!(r[0].1[0], "--name=a");
        let mut w = spec(None);
        w.etcd_proxy = Some(vec!["http://10.0.1.101:2379".into()]);
        let r = runs(&render(&w, &[]));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, Role::Proxy);
        assert_eq!(r[0].1[0], "grpc-proxy");
    }

    #[test]
    fn proc_stat_reads_this_process() {
        let me = std::process::id();
        let p = Proc::current(me).expect("this process has a stat");
        assert!(p.running());
        assert!(
            !Proc {
                pid: me,
                started: p.started + 1
            }
            .running(),
            "another start time is another process"
        );
        assert_eq!(
            Proc::parse("12 345\n"),
            Some(Proc {
                pid: 12,
                started: 345
            })
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0");
        if l.is_ok() {
            assert!(listens(me), "a listening socket is seen");
        }
        assert!(!listens(u32::MAX), "no such process");
        assert_eq!(Proc::parse("12"), None);
    }
}
