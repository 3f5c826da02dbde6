//! [`EtcdClient`]: the etcd v3 API over etcd's JSON gateway (`/v3/...` on the client
//! port, served by etcd 3.4 and 3.5), with blocking `ureq` calls run on tokio's blocking
//! pool, fail-over between endpoints, and the gateway's JSON (64-bit integers as
//! strings, zero fields omitted) turned into this crate's types.
//!
//! etcd 3.4 answers `member/list` from the asked member's own applied state (the
//! request's `linearizable` field is 3.5's), so `members()` first makes a linearizable
//! range at the same endpoint: that member then has applied every change committed
//! before, and a member promoted a moment ago is not listed as a learner any more.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::{Value, json};

use crate::{Alarm, EtcdAdmin, EtcdError, EtcdReader, Member, MemberStatus, Timeouts};

/// The key `quorum_read` asks for (it need not exist: a linearizable range of a missing
/// key still goes through the leader's read index).
const PROBE_KEY: &[u8] = b"clusterform/health-probe";

/// Where an [`EtcdClient`] connects and how long it waits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// Client URLs of the cluster (`http://10.0.1.101:2379`), tried in order.
    pub endpoints: Vec<String>,
    /// Client URL -> URL actually dialled (an SSH tunnel's `http://127.0.0.1:PORT`).
    /// URLs not in the map are dialled as they are.
    pub url_map: BTreeMap<String, String>,
    /// Connect and request timeouts, for every request.
    pub timeouts: Timeouts,
}

impl ClientConfig {
    /// A configuration for `endpoints`, dialled directly, with default timeouts.
    pub fn new(endpoints: Vec<String>) -> ClientConfig {
        ClientConfig {
            endpoints,
            url_map: BTreeMap::new(),
            timeouts: Timeouts::default(),
        }
    }

    /// The URL dialled for `client_url`: its entry in `url_map` (trailing slashes
    /// ignored), else the URL itself.
    pub fn dial_url(&self, client_url: &str) -> String {
        if let Some(url) = self.url_map.get(client_url) {
            return url.clone();
        }
        let wanted = client_url.trim_end_matches('/');
        self.url_map
            .iter()
            .find(|(k, _)| k.trim_end_matches('/') == wanted)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| client_url.to_string())
    }
}

/// A handle on an etcd cluster through its JSON gateway. Cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    config: ClientConfig,
    agent: ureq::Agent,
}

impl fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether a call changes the cluster: a change is not sent to a second endpoint once
/// the first may have received it (the caller looks the member up again instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A read.
    Read,
    /// A read of state that etcd 3.4 answers from the member's own applied state (the
    /// member list: its `linearizable` field is 3.5's): a linearizable range at the same
    /// endpoint first makes that member apply everything committed before the call.
    /// When the range is refused (no quorum), the read is made anyway, for diagnosis.
    BarrierRead,
    /// A change.
    Change,
}

/// What a client presents to a cluster that requires TLS client certificates: the CA
/// it trusts (and nothing else), its certificate and key, all PEM. Its `Debug` never
/// shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The cluster's CA certificate.
    pub ca_pem: String,
    /// The client certificate.
    pub cert_pem: String,
    /// The client's private key.
    pub key_pem: String,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<sensitive>")
            .finish()
    }
}

/// TLS material that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the etcd client's TLS {what} does not parse: {why}")]
pub struct TlsError {
    /// Which part: the CA certificate, the client certificate, the key.
    pub what: &'static str,
    /// What the parser said.
    pub why: String,
}

impl ClientTls {
    fn tls_config(&self) -> Result<ureq::tls::TlsConfig, TlsError> {
        tls_config(Some(&self.ca_pem), Some((&self.cert_pem, &self.key_pem)))
    }
}

/// TLS settings: trust only the CA `ca_pem` (else the system's roots), present the
/// client certificate and key of `client_pem` (if any). All PEM.
pub(crate) fn tls_config(
    ca_pem: Option<&str>,
    client_pem: Option<(&str, &str)>,
) -> Result<ureq::tls::TlsConfig, TlsError> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let bad = |what: &'static str| {
        move |e: ureq::Error| TlsError {
            what,
            why: e.to_string(),
        }
    };
    let mut tls = TlsConfig::builder();
    if let Some(ca) = ca_pem {
        let ca = Certificate::from_pem(ca.as_bytes()).map_err(bad("CA certificate"))?;
        tls = tls.root_certs(RootCerts::new_with_certs(&[ca]));
    }
    if let Some((cert, key)) = client_pem {
        let cert = Certificate::from_pem(cert.as_bytes()).map_err(bad("client certificate"))?;
        let key = PrivateKey::from_pem(key.as_bytes()).map_err(bad("private key"))?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
    }
    Ok(tls.build())
}

/// An agent for etcd: answers of any status returned (not errors), no proxy from the
/// environment (etcd is reached directly or through our own tunnel), `idle` pooled
/// connections per host (0: one connection per call), the timeouts of `t`.
pub(crate) fn agent(tls: Option<ureq::tls::TlsConfig>, t: Timeouts, idle: usize) -> ureq::Agent {
    let mut builder = ureq::Agent::config_builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls);
    }
    builder
        .http_status_as_error(false)
        .proxy(None)
        .max_idle_connections(idle * 8)
        .max_idle_connections_per_host(idle)
        .timeout_resolve(Some(t.connect))
        .timeout_connect(Some(t.connect))
        .timeout_per_call(Some(t.connect + t.request))
        .user_agent(format!("clusterform/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

impl EtcdClient {
    /// A client for `config`. Connects lazily: nothing is dialled until the first call.
    pub fn new(config: ClientConfig) -> EtcdClient {
        Self::build(config, None)
    }

    /// A client for a cluster with TLS and client-certificate auth (`https://` URLs): it
    /// trusts only `tls`'s CA and presents its certificate.
    pub fn with_tls(config: ClientConfig, tls: &ClientTls) -> Result<EtcdClient, TlsError> {
        Ok(Self::build(config, Some(tls.tls_config()?)))
    }

    fn build(config: ClientConfig, tls: Option<ureq::tls::TlsConfig>) -> EtcdClient {
        // One connection per call: no stale pooled connection can eat a change.
        let agent = agent(tls, config.timeouts, 0);
        EtcdClient { config, agent }
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// POSTs `body` to `path` at the first of `client_urls` that answers; returns the
    /// client URL that answered and its JSON answer.
    async fn call(
        &self,
        client_urls: Vec<String>,
        path: &'static str,
        body: Value,
        kind: Kind,
    ) -> Result<(String, Value), EtcdError> {
        let targets: Vec<(String, String)> = client_urls
            .iter()
            .map(|u| (u.clone(), self.config.dial_url(u)))
            .collect();
        let agent = self.agent.clone();
        let body = body.to_string();
        let timeouts = self.config.timeouts;
        tokio::task::spawn_blocking(move || {
            post_blocking(&agent, &targets, path, &body, kind, timeouts)
        })
        .await
        .unwrap_or_else(|e| {
            Err(EtcdError::Unreachable {
                endpoints: client_urls,
                detail: format!("the request thread failed: {e}"),
            })
        })
    }

    /// The status of the first endpoint whose member knows a leader.
    async fn leader_status(&self) -> Result<MemberStatus, EtcdError> {
        let mut last = String::from("no endpoint configured");
        for endpoint in &self.config.endpoints {
            match self.status(endpoint).await {
                Ok(s) if s.leader != 0 => return Ok(s),
                Ok(_) => last = format!("{endpoint} knows no leader"),
                Err(e) => last = e.to_string(),
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.config.endpoints.clone(),
            detail: last,
        })
    }
}

/// The blocking part of [`EtcdClient::call`]: one POST per target until one answers.
fn post_blocking(
    agent: &ureq::Agent,
    targets: &[(String, String)],
    path: &'static str,
    body: &str,
    kind: Kind,
    timeouts: Timeouts,
) -> Result<(String, Value), EtcdError> {
    let endpoints: Vec<String> = targets.iter().map(|(u, _)| u.clone()).collect();
    let mut last_detail = String::from("no endpoint configured");
    let mut last_unavailable: Option<EtcdError> = None;
    for (endpoint, dial) in targets {
        let base = dial.trim_end_matches('/');
        let barrier = if kind == Kind::BarrierRead {
            let url = format!("{base}/v3/kv/range");
            let started = Instant::now();
            let answer = post_once(agent, &url, &probe_body().to_string());
            let elapsed_ms = started.elapsed().as_millis();
            match answer {
                Ok((status, _)) => {
                    tracing::debug!(path = "/v3/kv/range", endpoint = %endpoint, dialled = %url, status, elapsed_ms, "etcd read barrier");
                    Ok(())
                }
                Err(e) => {
                    tracing::debug!(path = "/v3/kv/range", endpoint = %endpoint, dialled = %url, elapsed_ms, error = %e, "etcd read barrier failed");
                    Err(e)
                }
            }
        } else {
            Ok(())
        };
        let url = format!("{base}{path}");
        let started = Instant::now();
        let answer = barrier.and_then(|()| post_once(agent, &url, body));
        let elapsed_ms = started.elapsed().as_millis();
        match answer {
            Ok((status, text)) => {
                tracing::debug!(path, endpoint = %endpoint, dialled = %url, status, elapsed_ms, "etcd call");
                if status == 200 {
                    return serde_json::from_str::<Value>(&text)
                        .map(|v| (endpoint.clone(), v))
                        .map_err(|e| EtcdError::Protocol {
                            endpoint: endpoint.clone(),
                            detail: format!("{path}: the answer is not JSON: {e}"),
                        });
                }
                let err = error_from_answer(endpoint, status, &text);
                match &err {
                    // Unavailable (no leader, timed out): another member may do better.
                    EtcdError::Api { code: 14, .. } if kind != Kind::Change => {
                        last_unavailable = Some(err);
                    }
                    // A learner refuses every change without applying it (a member
                    // being replaced is a learner for a while): the next one may take it.
                    EtcdError::Api { message, .. } if refused_by_learner(message) => {
                        last_unavailable = Some(err);
                    }
                    _ => return Err(err),
                }
            }
            Err(e) => {
                tracing::debug!(path, endpoint = %endpoint, dialled = %url, elapsed_ms, error = %e, "etcd call failed");
                let what = describe_transport_error(&e, timeouts);
                let detail = if targets.len() > 1 {
                    format!("{endpoint}: {what}")
                } else {
                    what
                };
                if kind == Kind::Change && !surely_not_sent(&e) {
                    return Err(EtcdError::Unreachable {
                        endpoints: vec![endpoint.clone()],
                        detail: format!("{detail} (the change may have been applied)"),
                    });
                }
                last_detail = detail;
            }
        }
    }
    Err(last_unavailable.unwrap_or(EtcdError::Unreachable {
        endpoints,
        detail: last_detail,
    }))
}

/// One POST of a JSON body: the status and the body of the answer.
fn post_once(agent: &ureq::Agent, url: &str, body: &str) -> Result<(u16, String), ureq::Error> {
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .and_then(|mut resp| {
            let status = resp.status().as_u16();
            resp.body_mut().read_to_string().map(|text| (status, text))
        })
}

/// The body of the linearizable range of [`PROBE_KEY`].
fn probe_body() -> Value {
    let key = base64::engine::general_purpose::STANDARD.encode(PROBE_KEY);
    json!({"key": key, "limit": 1})
}

/// A transport error in a few words ("connection refused", "connect timed out after
/// 2 s"), for messages that name the member already.
pub(crate) fn describe_transport_error(e: &ureq::Error, timeouts: Timeouts) -> String {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => "connection refused".to_string(),
            ErrorKind::ConnectionReset => "connection reset".to_string(),
            ErrorKind::TimedOut => "timed out".to_string(),
            ErrorKind::HostUnreachable => "host unreachable".to_string(),
            ErrorKind::NetworkUnreachable => "network unreachable".to_string(),
            _ => io.to_string(),
        },
        ureq::Error::Timeout(ureq::Timeout::Resolve | ureq::Timeout::Connect) => {
            format!("connect timed out after {:?}", timeouts.connect)
        }
        ureq::Error::Timeout(_) => {
            format!("no answer within {:?}", timeouts.connect + timeouts.request)
        }
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        other => other.to_string(),
    }
}

/// True when `e` happened before the request could reach the server.
pub(crate) fn surely_not_sent(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::BadUri(_) => true,
        ureq::Error::Timeout(t) => {
            matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect)
        }
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::AddrNotAvailable
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
        ),
        _ => false,
    }
}

/// True for a learner's refusal of a call it does not serve (`rpc not supported for
/// learner`): nothing was applied.
fn refused_by_learner(message: &str) -> bool {
    message.contains("not supported for learner")
}

/// True for etcd's answer to promoting a learner that has not caught up yet.
fn is_not_ready(message: &str) -> bool {
    message.contains("in sync with leader") || message.contains("not ready")
}

/// The error for a non-200 answer: the gateway's `{"error","code","message"}` as
/// [`EtcdError::Api`] (or [`EtcdError::NotReady`]), anything else as
/// [`EtcdError::Protocol`].
pub(crate) fn error_from_answer(endpoint: &str, status: u16, body: &str) -> EtcdError {
    #[derive(Deserialize)]
    struct WireError {
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        code: Option<i64>,
    }
    let parsed = serde_json::from_str::<WireError>(body).ok().and_then(|w| {
        let message = w
            .message
            .filter(|m| !m.is_empty())
            .or(w.error.filter(|m| !m.is_empty()))?;
        Some((w.code.unwrap_or_else(|| grpc_code_of_http(status)), message))
    });
    match parsed {
        Some((_, message)) if is_not_ready(&message) => EtcdError::NotReady(message),
        Some((code, message)) => EtcdError::Api {
            endpoint: endpoint.to_string(),
            code,
            message,
        },
        None => {
            let mut snippet: String = body.trim().chars().take(200).collect();
            if snippet.is_empty() {
                snippet = "(empty body)".to_string();
            }
            EtcdError::Protocol {
                endpoint: endpoint.to_string(),
                detail: format!("HTTP {status}: {snippet}"),
            }
        }
    }
}

/// The gRPC code the gateway maps to `status`, for answers that lack a `code`.
fn grpc_code_of_http(status: u16) -> i64 {
    match status {
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        409 => 10,
        412 => 9,
        429 => 8,
        501 => 12,
        503 => 14,
        504 => 4,
        _ => 2,
    }
}

/// A 64-bit integer as the gateway writes it: a string, or a number; absent or null is 0.
pub(crate) fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Num(u64),
        Str(String),
    }
    match Option::<Wire>::deserialize(d)? {
        None => Ok(0),
        Some(Wire::Num(n)) => Ok(n),
        Some(Wire::Str(s)) if s.is_empty() => Ok(0),
        Some(Wire::Str(s)) => s
            .parse()
            .map_err(|_| de::Error::custom(format!("`{s}` is not a 64-bit unsigned integer"))),
    }
}

/// Any field that may be absent or null: its default then.
fn de_or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct WireMember {
    #[serde(rename = "ID", default, deserialize_with = "de_u64")]
    id: u64,
    #[serde(default, deserialize_with = "de_or_default")]
    name: String,
    #[serde(rename = "peerURLs", default, deserialize_with = "de_or_default")]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default, deserialize_with = "de_or_default")]
    client_urls: Vec<String>,
    #[serde(rename = "isLearner", default, deserialize_with = "de_or_default")]
    is_learner: bool,
}

impl From<WireMember> for Member {
    fn from(w: WireMember) -> Member {
        Member {
            id: w.id,
            name: w.name,
            peer_urls: w.peer_urls,
            client_urls: w.client_urls,
            is_learner: w.is_learner,
        }
    }
}

#[derive(Deserialize, Default)]
struct WireHeader {
    #[serde(default, deserialize_with = "de_u64")]
    member_id: u64,
}

#[derive(Deserialize)]
struct WireMemberList {
    #[serde(default, deserialize_with = "de_or_default")]
    members: Vec<WireMember>,
}

#[derive(Deserialize)]
struct WireMemberAdd {
    #[serde(default)]
    member: Option<WireMember>,
    #[serde(default, deserialize_with = "de_or_default")]
    members: Vec<WireMember>,
}

#[derive(Deserialize)]
struct WireStatus {
    #[serde(default, deserialize_with = "de_or_default")]
    header: WireHeader,
    #[serde(default, deserialize_with = "de_or_default")]
    version: String,
    #[serde(rename = "dbSize", default, deserialize_with = "de_u64")]
    db_size: u64,
    #[serde(default, deserialize_with = "de_u64")]
    leader: u64,
    #[serde(rename = "raftIndex", default, deserialize_with = "de_u64")]
    raft_index: u64,
    #[serde(rename = "raftTerm", default, deserialize_with = "de_u64")]
    raft_term: u64,
    #[serde(rename = "raftAppliedIndex", default, deserialize_with = "de_u64")]
    raft_applied_index: u64,
    #[serde(rename = "isLearner", default, deserialize_with = "de_or_default")]
    is_learner: bool,
    #[serde(default, deserialize_with = "de_or_default")]
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct WireAlarm {
    #[serde(rename = "memberID", default, deserialize_with = "de_u64")]
    member_id: u64,
    #[serde(default = "no_alarm", deserialize_with = "de_alarm_type")]
    alarm: String,
}

#[derive(Deserialize)]
struct WireAlarms {
    #[serde(default, deserialize_with = "de_or_default")]
    alarms: Vec<WireAlarm>,
}

/// The `AlarmType` of an entry without one (zero values are omitted).
fn no_alarm() -> String {
    "NONE".to_string()
}

/// An `AlarmType`: its name (`NOSPACE`), or its number when enums come as integers.
fn de_alarm_type<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Num(i64),
        Str(String),
    }
    Ok(match Option::<Wire>::deserialize(d)? {
        None => "NONE".to_string(),
        Some(Wire::Str(s)) => s,
        Some(Wire::Num(0)) => "NONE".to_string(),
        Some(Wire::Num(1)) => "NOSPACE".to_string(),
        Some(Wire::Num(2)) => "CORRUPT".to_string(),
        Some(Wire::Num(n)) => format!("ALARM{n}"),
    })
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    endpoint: &str,
    what: &str,
    v: Value,
) -> Result<T, EtcdError> {
    serde_json::from_value(v).map_err(|e| EtcdError::Protocol {
        endpoint: endpoint.to_string(),
        detail: format!("{what}: {e}"),
    })
}

/// The members of a `member/list`, `member/remove` or `member/promote` answer.
pub(crate) fn parse_members(endpoint: &str, v: Value) -> Result<Vec<Member>, EtcdError> {
    let w: WireMemberList = decode(endpoint, "member list", v)?;
    Ok(w.members.into_iter().map(Member::from).collect())
}

/// The new member and the members of a `member/add` answer.
pub(crate) fn parse_member_add(
    endpoint: &str,
    v: Value,
) -> Result<(Member, Vec<Member>), EtcdError> {
    let w: WireMemberAdd = decode(endpoint, "member add", v)?;
    let member = w.member.ok_or_else(|| EtcdError::Protocol {
        endpoint: endpoint.to_string(),
        detail: "member add: the answer has no `member`".to_string(),
    })?;
    Ok((
        member.into(),
        w.members.into_iter().map(Member::from).collect(),
    ))
}

/// A `maintenance/status` answer of the member at `endpoint`.
pub(crate) fn parse_status(endpoint: &str, v: Value) -> Result<MemberStatus, EtcdError> {
    let w: WireStatus = decode(endpoint, "status", v)?;
    Ok(MemberStatus {
        endpoint: endpoint.to_string(),
        member_id: w.header.member_id,
        version: w.version,
        db_size: w.db_size,
        leader: w.leader,
        raft_index: w.raft_index,
        raft_term: w.raft_term,
        raft_applied_index: w.raft_applied_index,
        is_learner: w.is_learner,
        errors: w.errors,
    })
}

/// The active alarms of a `maintenance/alarm` answer (`NONE` entries dropped).
pub(crate) fn parse_alarms(endpoint: &str, v: Value) -> Result<Vec<Alarm>, EtcdError> {
    let w: WireAlarms = decode(endpoint, "alarms", v)?;
    Ok(w.alarms
        .into_iter()
        .filter(|a| a.alarm != "NONE" && !a.alarm.is_empty())
        .map(|a| Alarm {
            member_id: a.member_id,
            alarm: a.alarm,
        })
        .collect())
}

#[async_trait]
impl EtcdReader for EtcdClient {
    fn endpoints(&self) -> Vec<String> {
        self.config.endpoints.clone()
    }

    async fn members(&self) -> Result<Vec<Member>, EtcdError> {
        let (ep, v) = self
            .call(
                self.config.endpoints.clone(),
                "/v3/cluster/member/list",
                json!({"linearizable": true}),
                Kind::BarrierRead,
            )
            .await?;
        parse_members(&ep, v)
    }

    async fn status(&self, client_url: &str) -> Result<MemberStatus, EtcdError> {
        let (ep, v) = self
            .call(
                vec![client_url.to_string()],
                "/v3/maintenance/status",
                json!({}),
                Kind::Read,
            )
            .await?;
        parse_status(&ep, v)
    }

    async fn alarms(&self) -> Result<Vec<Alarm>, EtcdError> {
        let (ep, v) = self
            .call(
                self.config.endpoints.clone(),
                "/v3/maintenance/alarm",
                json!({"action": "GET"}),
                Kind::Read,
            )
            .await?;
        parse_alarms(&ep, v)
    }

    async fn quorum_read(&self) -> Result<(), EtcdError> {
        self.call(
            self.config.endpoints.clone(),
            "/v3/kv/range",
            probe_body(),
            Kind::Read,
        )
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl EtcdAdmin for EtcdClient {
    async fn add_member(
        &self,
        peer_url: &str,
        learner: bool,
    ) -> Result<(Member, Vec<Member>), EtcdError> {
        let (ep, v) = self
            .call(
                self.config.endpoints.clone(),
                "/v3/cluster/member/add",
                json!({"peerURLs": [peer_url], "isLearner": learner}),
                Kind::Change,
            )
            .await?;
        parse_member_add(&ep, v)
    }

    async fn remove_member(&self, id: u64) -> Result<Vec<Member>, EtcdError> {
        let (ep, v) = self
            .call(
                self.config.endpoints.clone(),
                "/v3/cluster/member/remove",
                json!({"ID": id.to_string()}),
                Kind::Change,
            )
            .await?;
        parse_members(&ep, v)
    }

    async fn promote_member(&self, id: u64) -> Result<Vec<Member>, EtcdError> {
        let (ep, v) = self
            .call(
                self.config.endpoints.clone(),
                "/v3/cluster/member/promote",
                json!({"ID": id.to_string()}),
                Kind::Change,
            )
            .await?;
        parse_members(&ep, v)
    }

    async fn move_leader(&self, to: u64) -> Result<(), EtcdError> {
        let status = self.leader_status().await?;
        if status.leader == to {
            return Ok(());
        }
        let members = self.members().await?;
        let leader_url = members
            .iter()
            .find(|m| m.id == status.leader)
            .and_then(|m| m.client_urls.first().cloned())
            .ok_or_else(|| EtcdError::Protocol {
                endpoint: status.endpoint.clone(),
                detail: format!(
                    "the leader {:016x} is not a started member of the member list",
                    status.leader
                ),
            })?;
        self.call(
            vec![leader_url],
            "/v3/maintenance/transfer-leadership",
            json!({"targetID": to.to_string()}),
            Kind::Change,
        )
        .await
        .map(|_| ())
    }

    fn reader(&self) -> &dyn EtcdReader {
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
