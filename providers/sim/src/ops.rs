//! The cloud's rules for changing objects (create, update, delete), run by the writer
//! inside a transaction: validation, references, id sequences, address assignment,
//! dependency checks.

use std::collections::{HashMap, HashSet};

use clusterform_core::{AttrType, Attrs, KindSchema, ProviderSchema, Value};
use clusterform_provider::{CreateRequest, DeleteRequest, Object, ProviderError, UpdateRequest};
use rusqlite::{Connection, OptionalExtension, params};

use crate::db::{self, SimError};
use crate::net::{self, Cidr};
use crate::schema::{id_prefix, reference_target};

/// Why an operation failed: the cloud refused it, or storage failed.
pub(crate) enum Fail {
    /// The request is refused; nothing changed.
    Reject(ProviderError),
    /// Storage failed.
    Sim(SimError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sim(SimError::Db(e))
    }
}

impl From<SimError> for Fail {
    fn from(e: SimError) -> Self {
        Fail::Sim(e)
    }
}

impl Fail {
    /// The error the engine sees.
    pub(crate) fn into_provider(self) -> ProviderError {
        match self {
            Fail::Reject(e) => e,
            Fail::Sim(e) => e.into_provider(),
        }
    }
}

fn reject(message: String) -> Fail {
    Fail::Reject(ProviderError::Permanent(message))
}

/// What one network looks like to address assignment.
struct NetInfo {
    cidr: Cidr,
    gateway: Option<u32>,
    used: HashSet<u32>,
    /// No address below this one is free (so assignment need not rescan them).
    hint: u32,
}

/// Facts loaded once per write transaction (the transaction holds the write lock, so no
/// other process changes them meanwhile): per network, its range and the addresses in use.
#[derive(Default)]
pub(crate) struct BatchCache {
    nets: HashMap<String, NetInfo>,
}

impl BatchCache {
    fn net(&mut self, conn: &Connection, id: &str) -> Result<&mut NetInfo, Fail> {
        if !self.nets.contains_key(id) {
            let Some(net) = db::get(conn, id)?.filter(|o| o.kind == "network") else {
                return Err(reject(format!("network `{id}` does not exist")));
            };
            let cidr_text = net.attrs.get("cidr").and_then(Value::as_str).unwrap_or("");
            let Some(cidr) = Cidr::parse(cidr_text) else {
                return Err(reject(format!(
                    "network `{id}` has no valid cidr (`{cidr_text}`)"
                )));
            };
            let gateway = net
                .attrs
                .get("gateway")
                .and_then(Value::as_str)
                .and_then(net::parse_ip);
            let mut st = conn.prepare_cached(
                "SELECT json_extract(attrs, '$.address') FROM objects
                 WHERE kind = 'machine' AND json_extract(attrs, '$.network') = ?1",
            )?;
            let used = st
                .query_map([id], |r| r.get::<_, Option<String>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .filter_map(|a| net::parse_ip(&a))
                .collect();
            self.nets.insert(
                id.to_string(),
                NetInfo {
                    cidr,
                    gateway,
                    used,
                    hint: 0,
                },
            );
        }
        self.nets
            .get_mut(id)
            .ok_or_else(|| reject(format!("network `{id}` does not exist")))
    }
}

fn kind_schema<'a>(schema: &'a ProviderSchema, kind: &str) -> Result<&'a KindSchema, Fail> {
    schema.kind(kind).ok_or_else(|| {
        reject(format!(
            "the sim cloud has no resource kind `{kind}` (it has {})",
            schema.kind_names().join(", ")
        ))
    })
}

/// The inputs without null values (null means "not set").
fn clean(attrs: &Attrs) -> Attrs {
    attrs
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Reject unknown attributes, values of the wrong type, outputs set by the caller and
/// missing required inputs.
fn validate(ks: &KindSchema, attrs: &Attrs) -> Result<(), Fail> {
    for (k, v) in attrs {
        let Some(a) = ks.attr(k) else {
            return Err(reject(format!(
                "a {} has no attribute `{k}` (it has {})",
                ks.kind,
                ks.input_names().join(", ")
            )));
        };
        if !a.input {
            return Err(reject(format!(
                "`{k}` of a {} is set by the cloud and cannot be given",
                ks.kind
            )));
        }
        if !a.ty.accepts(v) {
            return Err(reject(format!(
                "`{k}` of a {} must be {}, not `{v}`",
                ks.kind,
                a.ty.describe()
            )));
        }
    }
    if let Some(a) = ks
        .attrs
        .iter()
        .find(|a| a.required && !attrs.contains_key(&a.name))
    {
        return Err(reject(format!("a {} needs `{}`", ks.kind, a.name)));
    }
    Ok(())
}

/// Check that every reference (that differs from `before`, when given) names an
/// existing object of the right kind.
fn check_refs(
    conn: &Connection,
    ks: &KindSchema,
    attrs: &Attrs,
    before: Option<&Attrs>,
) -> Result<(), Fail> {
    let mut st = conn.prepare_cached("SELECT 1 FROM objects WHERE id = ?1 AND kind = ?2")?;
    for a in ks.attrs.iter().filter(|a| a.ty == AttrType::Reference) {
        let Some(id) = attrs.get(&a.name).and_then(Value::as_str) else {
            continue;
        };
        if before.is_some_and(|b| b.get(&a.name).and_then(Value::as_str) == Some(id)) {
            continue;
        }
        let target = reference_target(&a.name);
        let found: Option<i64> = st.query_row(params![id, target], |r| r.get(0)).optional()?;
        if found.is_none() {
            return Err(reject(format!("{target} `{id}` does not exist")));
        }
    }
    Ok(())
}

fn next_id(conn: &Connection, kind: &str, prefix: &str) -> Result<String, Fail> {
    let mut st = conn.prepare_cached(
        "INSERT INTO counters(name, n) VALUES (?1, 1)
         ON CONFLICT(name) DO UPDATE SET n = n + 1 RETURNING n",
    )?;
    let n: i64 = st.query_row([kind], |r| r.get(0))?;
    Ok(format!("{prefix}-{n:06}"))
}

fn json(v: &impl serde::Serialize) -> Result<String, Fail> {
    serde_json::to_string(v).map_err(|e| reject(format!("cannot encode the object: {e}")))
}

/// Create an object, or return the one an earlier call with the same idempotency key
/// made; true when the object is new.
pub(crate) fn create(
    conn: &Connection,
    schema: &ProviderSchema,
    cache: &mut BatchCache,
    req: &CreateRequest,
) -> Result<(Object, bool), Fail> {
    if let Some(o) = db::by_op(conn, &req.owner.op)? {
        if o.kind != req.kind {
            return Err(reject(format!(
                "idempotency key `{}` was already used to create {} `{}`",
                req.owner.op, o.kind, o.id
            )));
        }
        return Ok((o, false));
    }
    let ks = kind_schema(schema, &req.kind)?;
    let prefix = id_prefix(&req.kind)
        .ok_or_else(|| reject(format!("the sim cloud has no resource kind `{}`", req.kind)))?;
    let mut attrs = clean(&req.attrs);
    validate(ks, &attrs)?;
    check_refs(conn, ks, &attrs, None)?;

    let mut taken: Option<(String, u32)> = None;
    match req.kind.as_str() {
        "network" => {
            let text = attrs.get("cidr").and_then(Value::as_str).unwrap_or("");
            let Some(cidr) = Cidr::parse(text) else {
                return Err(reject(format!(
                    "`{text}` is not an IPv4 range like `10.0.0.0/16`"
                )));
            };
            if let Some(gw) = attrs.get("gateway").and_then(Value::as_str) {
                match net::parse_ip(gw) {
                    Some(ip) if cidr.contains(ip) => {}
                    Some(_) => {
                        return Err(reject(format!("gateway `{gw}` is outside `{text}`")));
                    }
                    None => return Err(reject(format!("gateway `{gw}` is not an IPv4 address"))),
                }
            }
        }
        "subnet" => {
            let text = attrs.get("cidr").and_then(Value::as_str).unwrap_or("");
            if Cidr::parse(text).is_none() {
                return Err(reject(format!(
                    "`{text}` is not an IPv4 range like `10.0.1.0/24`"
                )));
            }
        }
        "machine" => {
            let net_id = attrs
                .get("network")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let info = cache.net(conn, &net_id)?;
            let ip = match attrs.get("address").and_then(Value::as_str) {
                Some(text) => {
                    let Some(ip) = net::parse_ip(text) else {
                        return Err(reject(format!("address `{text}` is not an IPv4 address")));
                    };
                    if !info.cidr.is_host(ip) {
                        return Err(reject(format!(
                            "address `{text}` is not a host address of network `{net_id}`"
                        )));
                    }
                    if info.used.contains(&ip) || info.gateway == Some(ip) {
                        return Err(reject(format!(
                            "address `{text}` is already in use in network `{net_id}`"
                        )));
                    }
                    ip
                }
                None => {
                    let gateway = info.gateway;
                    let used = &info.used;
                    let from = info.hint.max(info.cidr.first_free_candidate());
                    let Some(ip) = info
                        .cidr
                        .next_free(from, |ip| used.contains(&ip) || gateway == Some(ip))
                    else {
                        return Err(reject(format!(
                            "network `{net_id}` has no free address left"
                        )));
                    };
                    attrs.insert("address".into(), Value::String(net::show_ip(ip)));
                    // Everything below `ip` is taken: the next search starts after it.
                    info.hint = ip.saturating_add(1);
                    ip
                }
            };
            attrs.insert("state".into(), Value::String("running".into()));
            taken = Some((net_id, ip));
        }
        _ => {}
    }

    let id = next_id(conn, &req.kind, prefix)?;
    let mut st = conn.prepare_cached(
        "INSERT INTO objects(id, kind, cluster, address, op, attrs, owner, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
    )?;
    st.execute(params![
        id,
        req.kind,
        req.owner.cluster,
        req.owner.address.to_string(),
        req.owner.op,
        json(&attrs)?,
        json(&req.owner)?,
    ])?;
    if let Some((net_id, ip)) = taken
        && let Some(info) = cache.nets.get_mut(&net_id)
    {
        info.used.insert(ip);
    }
    Ok((
        Object {
            kind: req.kind.clone(),
            id,
            attrs,
            owner: Some(req.owner.clone()),
        },
        true,
    ))
}

/// Apply the in-place attributes of an object; refuse to change a force-new one.
pub(crate) fn update(
    conn: &Connection,
    schema: &ProviderSchema,
    req: &UpdateRequest,
) -> Result<Object, Fail> {
    let Some(cur) = db::get(conn, &req.id)?.filter(|o| o.kind == req.kind) else {
        return Err(Fail::Reject(ProviderError::NotFound(req.id.clone())));
    };
    let ks = kind_schema(schema, &req.kind)?;
    let mut attrs = clean(&req.attrs);
    validate(ks, &attrs)?;
    for a in ks.attrs.iter().filter(|a| a.input && a.force_new) {
        let new = attrs.get(&a.name);
        if new.is_none() && a.computed {
            continue;
        }
        if new != cur.attrs.get(&a.name) {
            return Err(reject(format!(
                "`{}` of {} `{}` cannot be changed in place: the {} must be replaced",
                a.name, req.kind, req.id, req.kind
            )));
        }
    }
    check_refs(conn, ks, &attrs, Some(&cur.attrs))?;
    for a in ks.attrs.iter().filter(|a| a.computed) {
        if !attrs.contains_key(&a.name)
            && let Some(v) = cur.attrs.get(&a.name)
        {
            attrs.insert(a.name.clone(), v.clone());
        }
    }
    let mut st = conn.prepare_cached("UPDATE objects SET attrs = ?2 WHERE id = ?1")?;
    st.execute(params![req.id, json(&attrs)?])?;
    Ok(Object {
        kind: cur.kind,
        id: cur.id,
        attrs,
        owner: cur.owner,
    })
}

fn count_refs(conn: &Connection, kind: &str, attr: &str, id: &str) -> Result<u64, Fail> {
    let mut st = conn.prepare_cached(
        "SELECT count(*) FROM objects WHERE kind = ?1 AND json_extract(attrs, '$.' || ?2) = ?3",
    )?;
    let n: i64 = st.query_row(params![kind, attr, id], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Delete an object unless others still depend on it; a missing object is fine.
/// Returns the deleted object, if there was one.
pub(crate) fn delete(
    conn: &Connection,
    cache: &mut BatchCache,
    req: &DeleteRequest,
) -> Result<Option<Object>, Fail> {
    let Some(cur) = db::get(conn, &req.id)?.filter(|o| o.kind == req.kind) else {
        return Ok(None);
    };
    let dependents: Vec<(u64, &str)> = match cur.kind.as_str() {
        "network" => vec![
            (count_refs(conn, "machine", "network", &cur.id)?, "machine"),
            (count_refs(conn, "subnet", "network", &cur.id)?, "subnet"),
        ],
        "subnet" => vec![(count_refs(conn, "machine", "subnet", &cur.id)?, "machine")],
        _ => Vec::new(),
    };
    let still: Vec<String> = dependents
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, w)| plural(n, w))
        .collect();
    if !still.is_empty() {
        return Err(reject(format!(
            "DependencyViolation: {} `{}` still has {}",
            cur.kind,
            cur.id,
            still.join(" and ")
        )));
    }
    conn.prepare_cached("DELETE FROM objects WHERE id = ?1")?
        .execute([&cur.id])?;
    match cur.kind.as_str() {
        "network" => {
            cache.nets.remove(&cur.id);
        }
        "machine" => {
            let net_id = cur.attrs.get("network").and_then(Value::as_str);
            let ip = cur
                .attrs
                .get("address")
                .and_then(Value::as_str)
                .and_then(net::parse_ip);
            if let (Some(net_id), Some(ip)) = (net_id, ip)
                && let Some(info) = cache.nets.get_mut(net_id)
            {
                info.used.remove(&ip);
                info.hint = info.hint.min(ip);
            }
        }
        _ => {}
    }
    Ok(Some(cur))
}
