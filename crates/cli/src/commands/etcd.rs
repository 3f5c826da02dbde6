//! `clusterform etcd status`: the cluster's own etcd as its members see it (the member
//! list, the leader, and each member's health, raft index and database size), read-only,
//! through the same client URLs (and tunnel) day-2 changes use; `etcd env`: what an
//! operator's `etcdctl` needs to do the same.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use clusterform_engine::day2::MemberSet;
use clusterform_etcd::{EtcdReader, MemberStatus, check_health};
use futures::future::join_all;
use miette::Result;
use serde_json::json;

use crate::context;
use crate::style::{bold, green, red, yellow};
use crate::{errors, etcd};

/// The version of the JSON form (`etcd status --json`).
pub const FORMAT_VERSION: u32 = 1;
/// Exit code when the cluster is not healthy.
const UNHEALTHY: u8 = 2;

/// `clusterform etcd status`.
pub async fn status(file: &Path, as_json: bool) -> Result<u8> {
    let ctx = context::load_readonly(file)?;
    let snapshot = ctx.store.load().map_err(errors::state)?;
    let set = MemberSet::new(&ctx.model.resources, &snapshot.resources);
    let cluster = &ctx.model.cluster.name;
    if set.current.is_empty() && ctx.model.etcd.endpoints.is_none() {
        return Err(errors::hint(
            format!("the state of `{cluster}` records no etcd member"),
            "apply the cluster first (`clusterform apply`): its central machines run etcd",
        ));
    }
    if !etcd::live(&ctx.model.etcd, &set, &ctx.readers) {
        return Err(errors::hint(
            format!(
                "no etcd runs for `{cluster}`: its provider runs no machines (the plain sim, or an emulator)"
            ),
            "the sim runs real etcd with `[provider.sim] live = true` (as root); or name a running etcd with `[central] etcd_endpoints`",
        ));
    }
    let endpoints = etcd::endpoints(&ctx.model.etcd, &set);
    let access = etcd::connect(
        endpoints,
        ctx.model.etcd.via.as_deref(),
        &set,
        ctx.model.etcd_ca.as_deref(),
    )
    .await?;
    // Read-only from here on: only the reader is used.
    let reader: &dyn EtcdReader = access.client.as_ref();
    let mut members = reader
        .members()
        .await
        .map_err(|e| errors::engine(clusterform_engine::etcd_unreachable(&e)))?;
    members.sort_by(|a, b| {
        (a.name.is_empty(), &a.name, a.id).cmp(&(b.name.is_empty(), &b.name, b.id))
    });
    let statuses: Vec<(u64, Result<MemberStatus, String>)> =
        join_all(members.iter().filter_map(|m| {
            let url = m.client_urls.first()?.clone();
            Some(async move { (m.id, reader.status(&url).await.map_err(|e| e.to_string())) })
        }))
        .await;
    let statuses: BTreeMap<u64, Result<MemberStatus, String>> = statuses.into_iter().collect();
    let alarms = reader.alarms().await.unwrap_or_default();
    let health = check_health(reader, None).await;
    let leader = statuses
        .values()
        .filter_map(|s| s.as_ref().ok())
        .map(|s| s.leader)
        .find(|l| *l != 0);
    let machine_of = |url: &str| set.by_peer_url(url).map(|(a, _)| a.to_string());

    if as_json {
        let rows: Vec<serde_json::Value> = members
            .iter()
            .map(|m| {
                let url = m.peer_urls.first().map(String::as_str).unwrap_or_default();
                let st = statuses.get(&m.id);
                json!({
                    "name": m.name,
                    "id": m.hex_id(),
                    "machine": machine_of(url),
                    "peer_urls": m.peer_urls,
                    "client_urls": m.client_urls,
                    "role": if m.is_learner { "learner" } else { "voter" },
                    "started": m.started(),
                    "leader": leader == Some(m.id),
                    "healthy": matches!(st, Some(Ok(_))),
                    "error": match st {
                        Some(Err(e)) => Some(e.clone()),
                        None if !m.started() => Some("not started".to_string()),
                        _ => None,
                    },
                    "version": st.and_then(|s| s.as_ref().ok()).map(|s| s.version.clone()),
                    "raft_term": st.and_then(|s| s.as_ref().ok()).map(|s| s.raft_term),
                    "raft_index": st.and_then(|s| s.as_ref().ok()).map(|s| s.raft_index),
                    "raft_applied_index": st.and_then(|s| s.as_ref().ok()).map(|s| s.raft_applied_index),
                    "db_size": st.and_then(|s| s.as_ref().ok()).map(|s| s.db_size),
                })
            })
            .collect();
        let v = json!({
            "format_version": FORMAT_VERSION,
            "cluster": cluster,
            "endpoints": access.endpoints,
            "via": access.via,
            "healthy": health.is_ok(),
            "problem": health.as_ref().err().map(|u| u.reason.clone()),
            "leader": leader.map(|l| format!("{l:016x}")),
            "members": rows,
            "alarms": alarms.iter().map(|a| json!({"member": format!("{:016x}", a.member_id), "alarm": a.alarm})).collect::<Vec<_>>(),
        });
        outln!(
            "{}",
            crate::output::json(&serde_json::to_string_pretty(&v).map_err(errors::bug)?)
        );
    } else {
        let mut out = String::new();
        let voters = members.iter().filter(|m| !m.is_learner).count();
        let leader_name = leader
            .and_then(|l| members.iter().find(|m| m.id == l))
            .map_or_else(|| "none".to_string(), |m| m.name.clone());
        let verdict = match &health {
            Ok(_) => green("healthy"),
            Err(u) => red(&format!("NOT healthy: {}", u.reason)),
        };
        let _ = writeln!(
            out,
            "{} of cluster `{cluster}`: {voters} voting member(s) of {}, leader {leader_name}; {verdict}",
            bold("etcd"),
            members.len()
        );
        if let Some(v) = &access.via {
            let _ = writeln!(out, "(reached through {v})");
        }
        out.push('\n');
        let mut rows = vec![[
            "NAME".to_string(),
            "ID".to_string(),
            "MACHINE".to_string(),
            "ROLE".to_string(),
            "HEALTH".to_string(),
            "PEER URL".to_string(),
            "CLIENT URL".to_string(),
            "RAFT INDEX".to_string(),
            "DB SIZE".to_string(),
        ]];
        for m in &members {
            let url = m.peer_urls.first().map(String::as_str).unwrap_or_default();
            let st = statuses.get(&m.id);
            let role = match (m.is_learner, leader == Some(m.id)) {
                (true, _) => "learner",
                (false, true) => "leader",
                (false, false) => "voter",
            };
            let health = match st {
                Some(Ok(_)) => "ok".to_string(),
                Some(Err(e)) => format!("down: {e}"),
                None => "not started".to_string(),
            };
            let ok = st.and_then(|s| s.as_ref().ok());
            rows.push([
                if m.name.is_empty() {
                    "-".to_string()
                } else {
                    m.name.clone()
                },
                m.hex_id(),
                machine_of(url).unwrap_or_else(|| "-".to_string()),
                role.to_string(),
                health,
                url.to_string(),
                m.client_urls.first().cloned().unwrap_or_else(|| "-".into()),
                ok.map_or_else(|| "-".into(), |s| s.raft_index.to_string()),
                ok.map_or_else(|| "-".into(), |s| size(s.db_size)),
            ]);
        }
        let widths: Vec<usize> = (0..9)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "  {}", line.join("  ").trim_end());
        }
        for a in &alarms {
            let _ = writeln!(
                out,
                "\n{} alarm {} raised by member {:016x}",
                yellow("Warning:"),
                a.alarm,
                a.member_id
            );
        }
        out!("{out}");
    }
    Ok(if health.is_ok() { 0 } else { UNHEALTHY })
}

/// Bytes in the largest unit that keeps a whole number part.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `clusterform etcd renew`: the state's CA, renewed (same key and name, a new validity
/// window), kept under the lock; the next apply rolls every machine onto it.
pub fn renew(file: &Path) -> Result<u8> {
    let ctx = context::load(file)?;
    let _guard = ctx
        .store
        .lock("etcd renew", std::time::Duration::from_secs(60))
        .map_err(errors::state)?;
    let snapshot = ctx.store.load().map_err(errors::state)?;
    let (Some(cert), Some(key)) = (
        snapshot.secrets.get(context::CA_CERT),
        snapshot.secrets.get(context::CA_KEY),
    ) else {
        return Err(errors::hint(
            format!(
                "the state of `{}` keeps no etcd CA: nothing to renew",
                ctx.model.cluster.name
            ),
            "the CA is made by the first apply of a cluster whose etcd runs TLS (the default)",
        ));
    };
    let ca = clusterform_pki::Ca::load(cert, &key.clone().into()).map_err(|e| {
        errors::hint(
            format!("the etcd CA in the state cannot be read: {e}"),
            "restore the state from a backup (`clusterform state restore`)",
        )
    })?;
    let renewed = ca
        .renewed(&ctx.model.cluster.name, clusterform_pki::DEFAULT_VALIDITY)
        .map_err(errors::bug)?;
    ctx.store
        .commit(&[clusterform_state::Mutation::SetSecret {
            name: context::CA_CERT.into(),
            value: renewed.cert_pem().to_string(),
        }])
        .map_err(errors::state)?;
    let until = clusterform_pki::not_after(renewed.cert_pem())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    outln!(
        "Renewed the etcd CA of `{}` (same key and name): valid until {until}.\nThe next `clusterform apply` replaces every machine onto new certificates: the etcd members one at a time, as `[central] update` says, each trusting the others' old and new certificates.",
        ctx.model.cluster.name
    );
    Ok(0)
}

/// `clusterform etcd env`: `export` lines for `etcdctl`; with TLS the client files are
/// written 0600 into `<state folder>/etcd-client/` (0700).
pub fn env(file: &Path) -> Result<u8> {
    let ctx = context::load_readonly(file)?;
    let snapshot = ctx.store.load().map_err(errors::state)?;
    let set = MemberSet::new(&ctx.model.resources, &snapshot.resources);
    let endpoints = etcd::endpoints(&ctx.model.etcd, &set);
    if endpoints.is_empty() {
        return Err(errors::hint(
            format!(
                "the state of `{}` records no etcd member",
                ctx.model.cluster.name
            ),
            "apply the cluster first (`clusterform apply`): its central machines run etcd",
        ));
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut out = String::new();
    let _ = writeln!(out, "export ETCDCTL_API=3");
    let _ = writeln!(
        out,
        "export ETCDCTL_ENDPOINTS={}",
        quote(&endpoints.join(","))
    );
    // The CA is the state's: one only made for this look is no use against the cluster.
    let kept = snapshot.secrets.contains_key(context::CA_KEY);
    if let (Some(ca), true) = (ctx.model.etcd_ca.as_deref(), kept) {
        let tls = etcd::client_tls(ca)?;
        let dir = ctx.state_location.private_dir().join("etcd-client");
        crate::private::write_files(
            &dir,
            &[
                ("ca.crt", &tls.ca_pem),
                ("client.crt", &tls.cert_pem),
                ("client.key", &tls.key_pem),
            ],
            "check that the state folder is yours and writable",
        )?;
        for (var, name) in [
            ("ETCDCTL_CACERT", "ca.crt"),
            ("ETCDCTL_CERT", "client.crt"),
            ("ETCDCTL_KEY", "client.key"),
        ] {
            let _ = writeln!(
                out,
                "export {var}={}",
                quote(&dir.join(name).display().to_string())
            );
        }
    }
    out!("{out}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(20480), "20.0 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
    }
}
