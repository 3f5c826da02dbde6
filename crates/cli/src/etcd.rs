//! Reaching the cluster's own etcd from the CLI: which client URLs to call (the central
//! machines', or `[central] etcd_endpoints`), whether an etcd runs at all (the provider
//! boots its machines), the SSH tunnel of `[central] etcd_via`, and the member list the
//! plan reads.

use std::sync::Arc;

use clusterform_config::EtcdSettings;
use clusterform_engine::Readers;
use clusterform_engine::day2::{MemberSet, Membership};
use clusterform_etcd::{ClientConfig, ClientTls, EtcdClient, EtcdReader, SshVia, Timeouts, Tunnel};
use miette::Result;

use crate::errors;

/// A connection to the cluster's etcd: the client, and the tunnel it goes through (kept
/// open as long as this lives).
pub struct EtcdAccess {
    /// The client.
    pub client: Arc<EtcdClient>,
    /// The client URLs it calls (before the tunnel).
    pub endpoints: Vec<String>,
    /// `ssh://...` when it goes through a tunnel.
    pub via: Option<String>,
    _tunnel: Option<Tunnel>,
}

/// True when an etcd runs for these member machines: `[central] etcd_endpoints` is set,
/// or a provider of one of them boots its machines (not the plain `sim`, not an
/// emulator).
pub fn live(settings: &EtcdSettings, set: &MemberSet, readers: &Readers) -> bool {
    settings.endpoints.is_some()
        || set
            .providers
            .values()
            .any(|p| readers.get(p).is_ok_and(|r| r.runs_machines()))
}

/// The client URLs membership calls go to: `[central] etcd_endpoints`, else those of
/// the member machines in the state.
pub fn endpoints(settings: &EtcdSettings, set: &MemberSet) -> Vec<String> {
    match &settings.endpoints {
        Some(e) => e.clone(),
        None => set.client_urls(),
    }
}

/// Every client URL a call may go to during a run (the members now and those the
/// configuration adds), for the tunnel.
fn tunnel_targets(endpoints: &[String], set: &MemberSet) -> Vec<String> {
    let mut out: Vec<String> = endpoints.to_vec();
    for id in set.current.values().chain(set.desired.values()) {
        for u in &id.client_urls {
            if !out.contains(u) {
                out.push(u.clone());
            }
        }
    }
    out
}

/// Connect: open the tunnel of `via` (if any) to every client URL of `set`, and build
/// the client for `endpoints`.
pub async fn connect(
    endpoints: Vec<String>,
    via: Option<&str>,
    set: &MemberSet,
    ca: Option<&clusterform_pki::Ca>,
) -> Result<EtcdAccess> {
    let mut config = ClientConfig::new(endpoints.clone());
    config.timeouts = Timeouts::default();
    let tunnel = match via {
        None => None,
        Some(v) => {
            let parsed = SshVia::parse(v).map_err(|e| {
                errors::hint(
                    format!("`[central] etcd_via`: {e}"),
                    "write it like \"ssh://core@bastion.example.com\"",
                )
            })?;
            let targets = tunnel_targets(&endpoints, set);
            let opened = tokio::task::spawn_blocking(move || Tunnel::open(&parsed, &targets))
                .await
                .map_err(errors::bug)?
                .map_err(|e| {
                    errors::hint(
                        format!("cannot open the SSH tunnel of `[central] etcd_via = \"{v}\"`: {e}"),
                        "check that `ssh` reaches that machine without a password prompt (BatchMode), and that it reaches the etcd members",
                    )
                })?;
            let (tunnel, map) = opened;
            config.url_map = map;
            Some(tunnel)
        }
    };
    let client = match ca {
        None => EtcdClient::new(config),
        Some(ca) => EtcdClient::with_tls(config, &client_tls(ca)?).map_err(|e| {
            errors::hint(
                format!("cannot set up TLS for the etcd calls: {e}"),
                "the CA kept in the state may be damaged: restore a backup of the state",
            )
        })?,
    };
    Ok(EtcdAccess {
        client: Arc::new(client),
        endpoints,
        via: via.map(str::to_string),
        _tunnel: tunnel,
    })
}

/// clusterform's own client certificate of the cluster's CA (the same on every run).
pub fn client_tls(ca: &clusterform_pki::Ca) -> Result<ClientTls> {
    let issued = ca
        .client("clusterform", clusterform_pki::DEFAULT_VALIDITY)
        .map_err(|e| {
            errors::bug(format!(
                "cannot issue clusterform's etcd client certificate: {e}"
            ))
        })?;
    Ok(ClientTls {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem.expose().to_string(),
    })
}

/// Read the member list for a plan: not at all when no etcd runs, else what it says
/// (or why it could not be read). The access is returned to make the changes with.
pub async fn membership(
    live: bool,
    endpoints: &[String],
    via: Option<&str>,
    set: &MemberSet,
    ca: Option<&clusterform_pki::Ca>,
) -> (Membership, Option<EtcdAccess>) {
    if !live {
        return (Membership::NotRunning, None);
    }
    if endpoints.is_empty() {
        return (
            Membership::Unreachable(
                "no client URL to call: the state records no etcd member".to_string(),
            ),
            None,
        );
    }
    let access = match connect(endpoints.to_vec(), via, set, ca).await {
        Ok(a) => a,
        Err(e) => return (Membership::Unreachable(format!("{e}")), None),
    };
    match access.client.members().await {
        Ok(ms) => (Membership::Known(ms), Some(access)),
        Err(e) => (Membership::Unreachable(e.to_string()), Some(access)),
    }
}
