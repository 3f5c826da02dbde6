//! [`KvClient`]: etcd's key-value, transaction and lease API (`/v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/*`, `/v3/auth/authenticate`) over the JSON gateway, blocking,
//! for the etcd state backend. Endpoints are tried in order; a user and password (when
//! given) are exchanged for a token, sent with every call and renewed when etcd says it
//! expired.
//!
//! Callers make every change safe to send twice (a transaction that compares a revision,
//! a lock put that compares "absent"), so a change whose answer was lost is tried at the
//! next endpoint and the caller reads back what happened.

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::EtcdError;
use crate::client::{
    agent, de_u64, decode, describe_transport_error, error_from_answer, tls_config,
};
use crate::{Timeouts, TlsError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How a [`KvClient`] reaches etcd.
#[derive(Clone, Default)]
pub struct KvConfig {
    /// Client URLs (`https://10.0.0.5:2379`), tried in order.
    pub endpoints: Vec<String>,
    /// Connect and request timeouts.
    pub timeouts: Timeouts,
    /// The CA certificate (PEM) the servers' certificates are checked against; `None`:
    /// the system's roots.
    pub ca_pem: Option<String>,
    /// A client certificate and key (PEM) for clusters that require one.
    pub client_pem: Option<(String, String)>,
    /// User name and password for clusters with authentication on.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for KvConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvConfig")
            .field("endpoints", &self.endpoints)
            .field("timeouts", &self.timeouts)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_pem", &self.client_pem.is_some())
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// One key and its value, as a range read returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key.
    pub create_revision: u64,
    /// The revision of its last change.
    pub mod_revision: u64,
    /// The lease it is attached to (0: none).
    pub lease: u64,
}

/// What a range read returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// More keys match than `limit` let through.
    pub more: bool,
    /// The store's revision the read was served at.
    pub revision: u64,
}

/// A condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's last change was at this revision (0: the key does not exist).
    ModRevision(Vec<u8>, u64),
    /// The key was created at this revision (0: the key does not exist).
    CreateRevision(Vec<u8>, u64),
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Put `value` at `key`, attached to `lease` (0: none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease (0: none).
        lease: u64,
    },
    /// Delete `key`, or every key in `[key, range_end)` when `range_end` is given.
    Delete {
        /// The key (or the start of the range).
        key: Vec<u8>,
        /// The end of the range (exclusive).
        range_end: Option<Vec<u8>>,
    },
    /// Read `key`.
    Get(Vec<u8>),
}

impl Op {
    /// Bytes this operation sends (keys and values), for staying under etcd's request
    /// limit.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len() + 16,
            Op::Delete { key, range_end } => {
                key.len() + range_end.as_ref().map_or(0, Vec::len) + 16
            }
            Op::Get(key) => key.len() + 16,
        }
    }
}

/// What a transaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnAnswer {
    /// The conditions held and the `success` operations ran.
    pub succeeded: bool,
    /// The store's revision after it.
    pub revision: u64,
    /// The keys the `Get` operations of the branch that ran read, in order.
    pub reads: Vec<Vec<KeyValue>>,
}

/// The end of the range of every key starting with `prefix` (etcd's `--prefix`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: the range to the end of the key space.
    vec![0]
}

/// A blocking client of etcd's KV, transaction and lease API.
pub struct KvClient {
    config: KvConfig,
    agent: ureq::Agent,
    token: Mutex<Option<String>>,
}

impl std::fmt::Debug for KvClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KvClient {
    /// A client for `config`; nothing is dialled until the first call.
    pub fn new(config: KvConfig) -> Result<KvClient, TlsError> {
        let tls = tls_config(
            config.ca_pem.as_deref(),
            config
                .client_pem
                .as_ref()
                .map(|(c, k)| (c.as_str(), k.as_str())),
        )?;
        // Reads of a large state reuse connections; every change is safe to send twice.
        let agent = agent(Some(tls), config.timeouts, 4);
        Ok(KvClient {
            config,
            agent,
            token: Mutex::new(None),
        })
    }

    /// The endpoints, as configured.
    pub fn endpoints(&self) -> &[String] {
        &self.config.endpoints
    }

    /// Reads `key` (or `[key, range_end)`), at `revision` (0: the newest), at most
    /// `limit` keys (0: all), linearizable.
    pub fn range(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
        revision: u64,
        limit: u64,
    ) -> Result<Range, EtcdError> {
        let mut body = json!({"key": B64.encode(key)});
        if let Some(end) = range_end {
            body["range_end"] = json!(B64.encode(end));
        }
        if revision > 0 {
            body["revision"] = json!(revision.to_string());
        }
        if limit > 0 {
            body["limit"] = json!(limit.to_string());
        }
        let (endpoint, v) = self.call("/v3/kv/range", &body)?;
        parse_range(&endpoint, v)
    }

    /// Every key starting with `prefix` at `revision` (0: the newest; the answer's
    /// revision is then the one every page is read at), in pages of `page` keys.
    pub fn range_prefix(
        &self,
        prefix: &[u8],
        revision: u64,
        page: u64,
    ) -> Result<Range, EtcdError> {
        let end = prefix_end(prefix);
        let mut out = Range {
            revision,
            ..Range::default()
        };
        let mut start = prefix.to_vec();
        loop {
            let r = self.range(&start, Some(&end), out.revision, page)?;
            if out.revision == 0 {
                out.revision = r.revision;
            }
            let last = r.kvs.last().map(|kv| kv.key.clone());
            out.kvs.extend(r.kvs);
            match last {
                Some(mut k) if r.more => {
                    k.push(0);
                    start = k;
                }
                _ => return Ok(out),
            }
        }
    }

    /// Runs a transaction: `success` when every `compare` holds, else `failure`.
    pub fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnAnswer, EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::ModRevision(k, r) => json!({
                    "key": B64.encode(k), "target": "MOD", "result": "EQUAL",
                    "mod_revision": r.to_string()
                }),
                Compare::CreateRevision(k, r) => json!({
                    "key": B64.encode(k), "target": "CREATE", "result": "EQUAL",
                    "create_revision": r.to_string()
                }),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<Value> {
            ops.iter()
                .map(|o| match o {
                    Op::Put { key, value, lease } => {
                        let mut put = json!({"key": B64.encode(key), "value": B64.encode(value)});
                        if *lease != 0 {
                            put["lease"] = json!(lease.to_string());
                        }
                        json!({ "request_put": put })
                    }
                    Op::Delete { key, range_end } => {
                        let mut del = json!({"key": B64.encode(key)});
                        if let Some(end) = range_end {
                            del["range_end"] = json!(B64.encode(end));
                        }
                        json!({ "request_delete_range": del })
                    }
                    Op::Get(key) => json!({"request_range": {"key": B64.encode(key)}}),
                })
                .collect()
        };
        let body = json!({"compare": compare, "success": ops(success), "failure": ops(failure)});
        let (endpoint, v) = self.call("/v3/kv/txn", &body)?;
        parse_txn(&endpoint, v)
    }

    /// Grants a lease of `ttl`; returns its id.
    pub fn lease_grant(&self, ttl: Duration) -> Result<u64, EtcdError> {
        let (endpoint, v) = self.call(
            "/v3/lease/grant",
            &json!({"TTL": ttl.as_secs().max(1).to_string()}),
        )?;
        #[derive(Deserialize)]
        struct Grant {
            #[serde(rename = "ID", default, deserialize_with = "de_u64")]
            id: u64,
            #[serde(default)]
            error: Option<String>,
        }
        let g: Grant = decode(&endpoint, "/v3/lease/grant", v)?;
        match (g.id, g.error) {
            (_, Some(e)) if !e.is_empty() => Err(EtcdError::Api {
                endpoint,
                code: 2,
                message: e,
            }),
            (0, _) => Err(EtcdError::Protocol {
                endpoint,
                detail: "/v3/lease/grant: the answer has no lease id".into(),
            }),
            (id, _) => Ok(id),
        }
    }

    /// Renews lease `id`; returns its remaining TTL in seconds (0: it has expired).
    pub fn lease_keep_alive(&self, id: u64) -> Result<u64, EtcdError> {
        let (endpoint, v) = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        #[derive(Deserialize)]
        struct Keep {
            #[serde(rename = "TTL", default, deserialize_with = "de_u64")]
            ttl: u64,
        }
        #[derive(Deserialize)]
        struct Streamed {
            #[serde(default)]
            result: Option<Keep>,
            #[serde(default)]
            error: Option<Value>,
        }
        let s: Streamed = decode(&endpoint, "/v3/lease/keepalive", v)?;
        if let Some(e) = s.error {
            return Err(EtcdError::Api {
                endpoint,
                code: e.get("grpc_code").and_then(Value::as_i64).unwrap_or(2),
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("keep-alive failed")
                    .to_string(),
            });
        }
        Ok(s.result.map_or(0, |k| k.ttl))
    }

    /// Revokes lease `id`: every key attached to it is deleted. A lease that is gone
    /// already is not an error.
    pub fn lease_revoke(&self, id: u64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({"ID": id.to_string()})) {
            Ok(_) => Ok(()),
            Err(EtcdError::Api { message, .. }) if message.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// POSTs `body` to `path` at the first endpoint that answers (with the auth token
    /// when there are credentials); returns the endpoint and its JSON answer.
    fn call(&self, path: &'static str, body: &Value) -> Result<(String, Value), EtcdError> {
        let body = body.to_string();
        let mut last: Option<EtcdError> = None;
        for endpoint in &self.config.endpoints {
            let mut renewed = false;
            loop {
                let token = match self.token(endpoint) {
                    Ok(t) => t,
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                };
                match self.post(endpoint, path, &body, token.as_deref()) {
                    Ok(v) => return Ok((endpoint.clone(), v)),
                    Err(EtcdError::Api { code, message, .. })
                        if !renewed
                            && token.is_some()
                            && (code == 16 || message.contains("auth token")) =>
                    {
                        // An expired token: get another one and try once more.
                        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        renewed = true;
                    }
                    Err(e @ (EtcdError::Unreachable { .. } | EtcdError::Api { code: 14, .. })) => {
                        last = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(match last {
            Some(EtcdError::Unreachable { detail, .. }) if self.config.endpoints.len() > 1 => {
                EtcdError::Unreachable {
                    endpoints: self.config.endpoints.clone(),
                    detail,
                }
            }
            Some(e) => e,
            None => EtcdError::Unreachable {
                endpoints: Vec::new(),
                detail: "no endpoint configured".into(),
            },
        })
    }

    /// The auth token for calls (got from `endpoint` when there is none yet), or `None`
    /// without credentials.
    fn token(&self, endpoint: &str) -> Result<Option<String>, EtcdError> {
        let Some((user, password)) = &self.config.credentials else {
            return Ok(None);
        };
        let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cached.as_ref() {
            return Ok(Some(t.clone()));
        }
        let body = json!({"name": user, "password": password}).to_string();
        let v = self.post(endpoint, "/v3/auth/authenticate", &body, None)?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| EtcdError::Protocol {
                endpoint: endpoint.to_string(),
                detail: "/v3/auth/authenticate: the answer has no token".into(),
            })?
            .to_string();
        *cached = Some(token.clone());
        Ok(Some(token))
    }

    fn post(
        &self,
        endpoint: &str,
        path: &'static str,
        body: &str,
        token: Option<&str>,
    ) -> Result<Value, EtcdError> {
        let url = format!("{}{path}", endpoint.trim_end_matches('/'));
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            request = request.header("Authorization", t);
        }
        let answer = request.send(body).and_then(|mut resp| {
            let status = resp.status().as_u16();
            resp.body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_string()
                .map(|text| (status, text))
        });
        match answer {
            Ok((200, text)) => {
                tracing::trace!(path, endpoint, "etcd kv call");
                serde_json::from_str(&text).map_err(|e| EtcdError::Protocol {
                    endpoint: endpoint.to_string(),
                    detail: format!("{path}: the answer is not JSON: {e}"),
                })
            }
            Ok((status, text)) => Err(error_from_answer(endpoint, status, &text)),
            Err(e) => Err(EtcdError::Unreachable {
                endpoints: vec![endpoint.to_string()],
                detail: describe_transport_error(&e, self.config.timeouts),
            }),
        }
    }
}

#[derive(Deserialize)]
struct WireKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "de_u64")]
    create_revision: u64,
    #[serde(default, deserialize_with = "de_u64")]
    mod_revision: u64,
    #[serde(default, deserialize_with = "de_u64")]
    lease: u64,
}

#[derive(Deserialize, Default)]
struct WireHeader {
    #[serde(default, deserialize_with = "de_u64")]
    revision: u64,
}

#[derive(Deserialize, Default)]
struct WireRange {
    #[serde(default)]
    header: Option<WireHeader>,
    #[serde(default)]
    kvs: Option<Vec<WireKv>>,
    #[serde(default)]
    more: Option<bool>,
}

fn kv_of(endpoint: &str, w: WireKv) -> Result<KeyValue, EtcdError> {
    let bad = |e: base64::DecodeError| EtcdError::Protocol {
        endpoint: endpoint.to_string(),
        detail: format!("a key or value is not base64: {e}"),
    };
    Ok(KeyValue {
        key: B64.decode(&w.key).map_err(bad)?,
        value: B64.decode(&w.value).map_err(bad)?,
        create_revision: w.create_revision,
        mod_revision: w.mod_revision,
        lease: w.lease,
    })
}

fn range_of(endpoint: &str, w: WireRange) -> Result<Range, EtcdError> {
    Ok(Range {
        kvs: w
            .kvs
            .unwrap_or_default()
            .into_iter()
            .map(|kv| kv_of(endpoint, kv))
            .collect::<Result<_, _>>()?,
        more: w.more.unwrap_or(false),
        revision: w.header.unwrap_or_default().revision,
    })
}

fn parse_range(endpoint: &str, v: Value) -> Result<Range, EtcdError> {
    range_of(endpoint, decode(endpoint, "/v3/kv/range", v)?)
}

fn parse_txn(endpoint: &str, v: Value) -> Result<TxnAnswer, EtcdError> {
    #[derive(Deserialize)]
    struct WireResponse {
        #[serde(default)]
        response_range: Option<WireRange>,
    }
    #[derive(Deserialize)]
    struct WireTxn {
        #[serde(default)]
        header: Option<WireHeader>,
        #[serde(default)]
        succeeded: Option<bool>,
        #[serde(default)]
        responses: Option<Vec<WireResponse>>,
    }
    let w: WireTxn = decode(endpoint, "/v3/kv/txn", v)?;
    let mut reads = Vec::new();
    for r in w.responses.unwrap_or_default() {
        if let Some(range) = r.response_range {
            reads.push(range_of(endpoint, range)?.kvs);
        }
    }
    Ok(TxnAnswer {
        succeeded: w.succeeded.unwrap_or(false),
        revision: w.header.unwrap_or_default().revision,
        reads,
    })
}

/// A request timeout fitting reads of a large state (10,000 records): 30 s.
pub const STATE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn a_txn_answer_with_reads_parses() {
        let v = serde_json::json!({
            "header": {"revision": "7"},
            "responses": [{"response_range": {"header": {"revision": "7"}, "kvs": [
                {"key": "YQ==", "create_revision": "2", "mod_revision": "5", "value": "Yg==", "lease": "9"}
            ], "count": "1"}}]
        });
        let t = parse_txn("http://x", v).expect("parses");
        assert!(!t.succeeded);
        assert_eq!(t.revision, 7);
        assert_eq!(
            t.reads,
            vec![vec![KeyValue {
                key: b"a".to_vec(),
                value: b"b".to_vec(),
                create_revision: 2,
                mod_revision: 5,
                lease: 9
            }]]
        );
    }
}
