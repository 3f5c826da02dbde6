//! The etcd parts of a rendered config, read back: a member's identity (name, peer and
//! client URLs) and flags, the gRPC proxy's command, and the bootstrap-only flags
//! (`--initial-cluster`, `--initial-cluster-state`): a neutral form for comparing
//! configs, and the rewrite a machine needs to join a running cluster.

use crate::inspect::{exec_start, unit};
use crate::types::Config;

/// The unit that runs an etcd member.
pub const MEMBER_UNIT: &str = "etcd-member.service";
/// The unit that runs the local etcd v3 gRPC proxy of a worker.
pub const PROXY_UNIT: &str = "etcd-grpc-proxy.service";

/// Flags that only matter the first time a member starts (etcd ignores them once its
/// data folder exists): a running member whose config differs only in these is not
/// changed.
pub const BOOTSTRAP_FLAGS: &[&str] = &["initial-cluster", "initial-cluster-state"];

/// Who a member is, from its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberIdentity {
    /// `--name`.
    pub name: String,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
}

/// The value of `--NAME=value` (or `--NAME value`) among `args`; the last one wins, as
/// in etcd's flag parsing.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("--{name}=");
    let bare = format!("--{name}");
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        if let Some(v) = args[i].strip_prefix(&eq) {
            found = Some(v);
        } else if args[i] == bare
            && let Some(v) = args.get(i + 1)
        {
            found = Some(v.as_str());
            i += 1;
        }
        i += 1;
    }
    found
}

fn url_list(v: Option<&str>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// The etcd member's flags: the words of `etcd-member.service`'s effective `ExecStart`
/// after the command, without the `$ETCD_OPTS` placeholder. None when the config runs
/// no etcd member.
pub fn member_args(config: &Config) -> Option<Vec<String>> {
    let words = exec_start(unit(config, MEMBER_UNIT)?)?;
    Some(
        words
            .into_iter()
            .skip(1)
            .filter(|w| w != "$ETCD_OPTS" && w != "${ETCD_OPTS}")
            .collect(),
    )
}

/// The member's identity, when the config runs an etcd member with a name and peer URLs.
pub fn member_identity(config: &Config) -> Option<MemberIdentity> {
    let args = member_args(config)?;
    let name = flag(&args, "name")?.to_string();
    let peer_urls = url_list(flag(&args, "initial-advertise-peer-urls"));
    if name.is_empty() || peer_urls.is_empty() {
        return None;
    }
    Some(MemberIdentity {
        name,
        peer_urls,
        client_urls: url_list(flag(&args, "advertise-client-urls")),
    })
}

/// [`member_identity`] of a config given as the JSON a machine's `user_data` holds.
pub fn member_identity_json(user_data: &str) -> Option<MemberIdentity> {
    member_identity(&serde_json::from_str(user_data).ok()?)
}

/// The gRPC proxy's arguments, from `grpc-proxy` on (what follows the etcd image's
/// `etcd` command in the rendered unit): run them as `etcd ARGS...`. None when the
/// config runs no proxy.
pub fn proxy_args(config: &Config) -> Option<Vec<String>> {
    let words = exec_start(unit(config, PROXY_UNIT)?)?;
    let at = words.iter().position(|w| w == "grpc-proxy")?;
    Some(words[at..].to_vec())
}

/// Replace the value of every `--FLAG=value` in `text` (the value quoted `"..."`, or a
/// bare word) with `value`; returns the text and whether the flag was there.
fn rewrite_flag(text: &str, flag: &str, value: &str) -> (String, bool) {
    let needle = format!("--{flag}=");
    let mut out = String::with_capacity(text.len() + value.len());
    let mut rest = text;
    let mut found = false;
    while let Some(at) = rest.find(&needle) {
        // `--initial-cluster=` must not match inside `--x-initial-cluster=`.
        let preceded_ok = at == 0
            || rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_whitespace() || c == '"' || c == '\'');
        let value_start = at + needle.len();
        out.push_str(&rest[..value_start]);
        let tail = &rest[value_start..];
        if !preceded_ok {
            rest = tail;
            continue;
        }
        found = true;
        let consumed = if let Some(q) = tail.strip_prefix('"') {
            out.push('"');
            out.push_str(value);
            out.push('"');
            q.find('"').map_or(tail.len(), |end| end + 2)
        } else {
            out.push_str(value);
            tail.find(|c: char| c.is_whitespace() || c == '\\')
                .unwrap_or(tail.len())
        };
        rest = &tail[consumed..];
    }
    out.push_str(rest);
    (out, found)
}

/// Apply `f` to the text of the etcd member unit and each of its drop-ins; returns the
/// config and whether any text was there.
fn map_member_texts(mut config: Config, f: impl Fn(&str) -> String) -> (Config, bool) {
    let mut any = false;
    if let Some(systemd) = config.systemd.as_mut() {
        for u in systemd.units.iter_mut().filter(|u| u.name == MEMBER_UNIT) {
            if let Some(c) = u.contents.as_mut() {
                *c = f(c);
                any = true;
            }
            for d in &mut u.dropins {
                if let Some(c) = d.contents.as_mut() {
                    *c = f(c);
                    any = true;
                }
            }
        }
    }
    (config, any)
}

/// The config with the bootstrap-only flags' values blanked, for comparing a planned
/// member config with the one a running member was created with. None when `user_data`
/// is not a config that runs an etcd member.
pub fn bootstrap_neutral(user_data: &str) -> Option<String> {
    let config: Config = serde_json::from_str(user_data).ok()?;
    unit(&config, MEMBER_UNIT)?;
    let (config, _) = map_member_texts(config, |text| {
        BOOTSTRAP_FLAGS
            .iter()
            .fold(text.to_string(), |t, f| rewrite_flag(&t, f, "").0)
    });
    Some(crate::to_json(&config))
}

/// Why a config cannot be made to join a running cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The text is not an Ignition config.
    #[error("the machine's config is not an Ignition config: {0}")]
    NotAConfig(String),
    /// It runs no etcd member with `--initial-cluster` and `--initial-cluster-state`.
    #[error(
        "the machine's config has no `etcd-member.service` with `--initial-cluster` and `--initial-cluster-state` to set"
    )]
    NoBootstrapFlags,
}

/// The config of a member that joins a running cluster: `--initial-cluster` set to
/// `members` (`name=peer-url` pairs: the current members, this one included) and
/// `--initial-cluster-state` to `existing`. Everything else is left as rendered.
pub fn join_existing(user_data: &str, members: &[(String, String)]) -> Result<String, JoinError> {
    let config: Config =
        serde_json::from_str(user_data).map_err(|e| JoinError::NotAConfig(e.to_string()))?;
    let list = members
        .iter()
        .map(|(n, u)| format!("{n}={u}"))
        .collect::<Vec<_>>()
        .join(",");
    let found = std::cell::Cell::new((false, false));
    let (config, _) = map_member_texts(config, |text| {
        let (t, a) = rewrite_flag(text, "initial-cluster", &list);
        let (t, b) = rewrite_flag(&t, "initial-cluster-state", "existing");
        let (fa, fb) = found.get();
        found.set((fa || a, fb || b));
        t
    });
    match found.get() {
        (true, true) => Ok(crate::to_json(&config)),
        _ => Err(JoinError::NoBootstrapFlags),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::role::{EtcdMember, MachineSpec, Platform, StaticNetwork, render};

    fn member_spec(members: &[(&str, [u8; 4])]) -> MachineSpec {
        let ip = |o: [u8; 4]| Ipv4Addr::new(o[0], o[1], o[2], o[3]);
        MachineSpec {
            hostname: "demo-central-0".into(),
            platform: Platform::Sim,
            ssh_authorized_keys: vec![],
            network: Some(StaticNetwork {
                address: ip(members[0].1),
                prefix: 16,
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                dns: vec![],
                vlan: None,
            }),
            docker_tcp: false,
            etcd: Some(EtcdMember {
                name: members[0].0.into(),
                address: ip(members[0].1),
                initial_cluster: members
                    .iter()
                    .map(|(n, a)| (n.to_string(), ip(*a)))
                    .collect(),
                cluster_token: "demo".into(),
            }),
            etcd_proxy: None,
            etcd_endpoints: vec![],
            tls: None,
        }
    }

    fn json(spec: &MachineSpec) -> String {
        crate::to_json(&render(spec, &[]))
    }

    const THREE: &[(&str, [u8; 4])] = &[
        ("demo-central-0", [10, 0, 1, 101]),
        ("demo-central-1", [10, 0, 1, 102]),
        ("demo-central-2", [10, 0, 1, 103]),
    ];

    #[test]
    fn identity_and_args_of_a_rendered_member() {
        let c = render(&member_spec(THREE), &[]);
        let id = member_identity(&c).unwrap();
        assert_eq!(id.name, "demo-central-0");
        assert_eq!(id.peer_urls, vec!["http://10.0.1.101:2380"]);
        assert_eq!(id.client_urls, vec!["http://10.0.1.101:2379"]);
        let args = member_args(&c).unwrap();
        assert_eq!(args[0], "--name=demo-central-0");
        assert_eq!(
            flag(&args, "initial-cluster"),
            Some(
                "demo-central-0=http://10.0.1.101:2380,demo-central-1=http://10.0.1.102:2380,demo-central-2=http://10.0.1.103:2380"
            )
        );
        assert_eq!(flag(&args, "initial-cluster-state"), Some("new"));
        assert!(!args.iter().any(|a| a.contains("ETCD_OPTS")));
        assert_eq!(
            member_identity_json(&json(&member_spec(THREE))),
            Some(id.clone())
        );
        assert_eq!(member_identity_json("not json"), None);
    }

    #[test]
    fn only_bootstrap_flags_are_neutral() {
        let three = json(&member_spec(THREE));
        let mut five_list = THREE.to_vec();
        five_list.push(("demo-central-3", [10, 0, 1, 104]));
        five_list.push(("demo-central-4", [10, 0, 1, 105]));
        let five = json(&member_spec(&five_list));
        assert_ne!(three, five);
        assert_eq!(bootstrap_neutral(&three), bootstrap_neutral(&five));
        let joined = join_existing(
            &three,
            &[("demo-central-0".into(), "http://10.0.1.101:2380".into())],
        )
        .unwrap();
        assert_eq!(bootstrap_neutral(&joined), bootstrap_neutral(&three));

        // Any other change is still a change.
        let mut other = member_spec(THREE);
        other.hostname = "renamed".into();
        assert_ne!(bootstrap_neutral(&json(&other)), bootstrap_neutral(&three));
        let mut token = member_spec(THREE);
        if let Some(e) = token.etcd.as_mut() {
            e.cluster_token = "other".into();
        }
        assert_ne!(bootstrap_neutral(&json(&token)), bootstrap_neutral(&three));

        // Not a member: nothing to neutralise.
        let mut worker = member_spec(THREE);
        worker.etcd = None;
        assert_eq!(bootstrap_neutral(&json(&worker)), None);
        assert_eq!(bootstrap_neutral("{"), None);
    }

    #[test]
    fn join_sets_the_current_members_and_existing() {
        let three = json(&member_spec(THREE));
        let members = vec![
            (
                "demo-central-0".to_string(),
                "http://10.0.1.101:2380".to_string(),
            ),
            (
                "demo-central-2".to_string(),
                "http://10.0.1.103:2380".to_string(),
            ),
        ];
        let joined = join_existing(&three, &members).unwrap();
        let c: Config = serde_json::from_str(&joined).unwrap();
        let args = member_args(&c).unwrap();
        assert_eq!(
            flag(&args, "initial-cluster"),
            Some("demo-central-0=http://10.0.1.101:2380,demo-central-2=http://10.0.1.103:2380")
        );
        assert_eq!(flag(&args, "initial-cluster-state"), Some("existing"));
        assert_eq!(flag(&args, "initial-cluster-token"), Some("demo"));
        assert_eq!(flag(&args, "name"), Some("demo-central-0"));

        let mut worker = member_spec(THREE);
        worker.etcd = None;
        assert_eq!(
            join_existing(&json(&worker), &members),
            Err(JoinError::NoBootstrapFlags)
        );
        assert!(matches!(
            join_existing("[]", &members),
            Err(JoinError::NotAConfig(_))
        ));
    }

    #[test]
    fn rewrite_flag_handles_quoted_bare_and_lookalikes() {
        let (t, found) = rewrite_flag(
            "x --initial-cluster=\"a=1,b=2\" --initial-cluster-state=new --initial-cluster-token=t",
            "initial-cluster",
            "z",
        );
        assert!(found);
        assert_eq!(
            t,
            "x --initial-cluster=\"z\" --initial-cluster-state=new --initial-cluster-token=t"
        );
        let (t, found) = rewrite_flag(&t, "initial-cluster-state", "existing");
        assert!(found);
        assert!(
            t.contains("--initial-cluster-state=existing --initial"),
            "{t}"
        );
        let (t2, found) = rewrite_flag("--my-initial-cluster=1", "initial-cluster", "z");
        assert!(!found);
        assert_eq!(t2, "--my-initial-cluster=1");
    }

    #[test]
    fn proxy_args_start_at_grpc_proxy() {
        let spec = MachineSpec {
            hostname: "w".into(),
            platform: Platform::Sim,
            ssh_authorized_keys: vec![],
            network: None,
            docker_tcp: false,
            etcd: None,
            etcd_proxy: Some(vec![
                "http://10.0.1.101:2379".into(),
                "http://10.0.1.102:2379".into(),
            ]),
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            tls: None,
        };
        let c = render(&spec, &[]);
        assert_eq!(
            proxy_args(&c).unwrap(),
            vec![
                "grpc-proxy",
                "start",
                "--endpoints=http://10.0.1.101:2379,http://10.0.1.102:2379",
                "--listen-addr=127.0.0.1:2379"
            ]
        );
        assert_eq!(member_args(&c), None);
        assert_eq!(member_identity(&c), None);
    }
}
