//! EC2 tags: what every object carries (`Name`, the ownership tags of
//! `clusterform_provider::tags`, the user's `tags`, the network part it is) and the
//! inputs EC2 cannot report back (a machine's role, channel, etcd endpoints, SSH keys,
//! protection; a network's gateway and DNS), kept as JSON in `clusterform:inputs` tags so
//! that an object found without the state (crash recovery, `state restore`) is whole.
//! Pure.

use std::collections::BTreeMap;

use clusterform_core::Attrs;
use clusterform_provider::{Ownership, tags};
use serde_json::Value;

/// The tag with the object's display name.
pub const NAME: &str = "Name";
/// The part of a network an object is: `internet-gateway`, `route-table`,
/// `security-group`, `docker-security-group`.
pub const PART: &str = "clusterform:part";
/// The inputs EC2 cannot report, as JSON; long values continue in `clusterform:inputs:1`, ...
pub const INPUTS: &str = "clusterform:inputs";
/// Prefix of every tag clusterform writes.
const OURS: &str = "clusterform:";
/// EC2 allows this many tags per resource.
pub const MAX_TAGS: usize = 50;
/// EC2 allows tag values this many characters long.
pub const MAX_VALUE_CHARS: usize = 256;
/// EC2 allows tag keys this many characters long.
pub const MAX_KEY_CHARS: usize = 128;

/// The attributes of each kind that EC2 does not report and that the inputs tags carry.
pub fn unobservable(kind: &str) -> &'static [&'static str] {
    match kind {
        "machine" => &[
            "role",
            "channel",
            "etcd_endpoints",
            "ssh_authorized_keys",
            "protect",
        ],
        "network" => &["gateway", "dns"],
        _ => &[],
    }
}

/// The subset of `attrs` that [`unobservable`] names for `kind`.
pub fn inputs_of(kind: &str, attrs: &Attrs) -> serde_json::Map<String, Value> {
    clusterform_provider::pick(attrs, unobservable(kind))
}

/// The inputs as tags: `clusterform:inputs` holds the first 256 characters of the JSON,
/// `clusterform:inputs:1`... the rest. None when there are none.
pub fn inputs_tags(inputs: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    if inputs.is_empty() {
        return Vec::new();
    }
    let json = Value::Object(inputs.clone()).to_string();
    let chars: Vec<char> = json.chars().collect();
    chars
        .chunks(MAX_VALUE_CHARS)
        .enumerate()
        .map(|(i, c)| {
            let key = if i == 0 {
                INPUTS.to_string()
            } else {
                format!("{INPUTS}:{i}")
            };
            (key, c.iter().collect())
        })
        .collect()
}

/// Read the inputs back from tags. None when there are no inputs tags or they do not
/// join into a JSON object (someone edited them).
pub fn read_inputs<'a>(
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<serde_json::Map<String, Value>> {
    let mut parts: BTreeMap<usize, &str> = BTreeMap::new();
    for (k, v) in tags {
        if k == INPUTS {
            parts.insert(0, v);
        } else if let Some(i) = k.strip_prefix(INPUTS).and_then(|r| r.strip_prefix(':')) {
            parts.insert(i.parse().ok()?, v);
        }
    }
    if parts.is_empty() || parts.keys().copied().ne(0..parts.len()) {
        return None;
    }
    let json: String = parts.values().copied().collect();
    match serde_json::from_str(&json) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// The user's tags among `tags`: all but `Name`, clusterform's and AWS's own.
pub fn user_tags<'a>(
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, String> {
    tags.into_iter()
        .filter(|(k, _)| *k != NAME && !k.starts_with(OURS) && !k.starts_with("aws:"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `tags` attribute as a map of strings (the schema checked the type).
pub fn tags_attr(attrs: &Attrs) -> BTreeMap<String, String> {
    attrs
        .get("tags")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Every tag an object of `kind` is created with, checked against EC2's limits.
/// `part` is set for the parts of a network.
pub fn object_tags(
    kind: &str,
    attrs: &Attrs,
    owner: &Ownership,
    name: Option<&str>,
    part: Option<&str>,
) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    if let Some(n) = name {
        out.push((NAME.to_string(), n.to_string()));
    }
    out.extend(owner.to_tags().into_iter().map(|(k, v)| (k.to_string(), v)));
    if let Some(p) = part {
        out.push((PART.to_string(), p.to_string()));
    } else {
        out.extend(inputs_tags(&inputs_of(kind, attrs)));
    }
    for (k, v) in tags_attr(attrs) {
        if k == NAME || k.starts_with(OURS) || k.starts_with("aws:") {
            return Err(format!(
                "tag `{k}` is reserved (`Name` comes from `name`; `clusterform:` and `aws:` tags are written by clusterform and AWS): rename it in `tags`"
            ));
        }
        if k.is_empty() || k.chars().count() > MAX_KEY_CHARS {
            return Err(format!(
                "tag key `{k}` must be 1 to {MAX_KEY_CHARS} characters long"
            ));
        }
        if v.chars().count() > MAX_VALUE_CHARS {
            return Err(format!(
                "the value of tag `{k}` is longer than EC2's {MAX_VALUE_CHARS} characters: shorten it"
            ));
        }
        out.push((k, v));
    }
    check_values(&out)?;
    if out.len() > MAX_TAGS {
        return Err(format!(
            "this object needs {} tags (name, ownership, {} of `tags`, and the inputs EC2 cannot report, like SSH keys), EC2 allows {MAX_TAGS}: use fewer `tags` or shorter `ssh_authorized_keys`",
            out.len(),
            tags_attr(attrs).len()
        ));
    }
    Ok(out)
}

fn check_values(tags: &[(String, String)]) -> Result<(), String> {
    for (k, v) in tags {
        if v.chars().count() > MAX_VALUE_CHARS {
            return Err(format!(
                "tag `{k}` would be {} characters long, EC2 allows {MAX_VALUE_CHARS}: shorten the value it comes from",
                v.chars().count()
            ));
        }
    }
    Ok(())
}

/// The ownership of an object with these tags (None: not clusterform's).
pub fn ownership<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Ownership> {
    Ownership::from_tags(tags)
}

/// The tag key that finds objects of one cluster.
pub fn cluster_key() -> String {
    format!("tag:{}", tags::CLUSTER)
}

/// The tag key that finds the object of one operation.
pub fn op_key() -> String {
    format!("tag:{}", tags::OP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner() -> Ownership {
        Ownership {
            cluster: "demo".into(),
            address: "machine.central[0]".parse().expect("address"),
            op: "cf-123".into(),
            expires_at: Some("2030-01-01T00:00:00Z".into()),
            created_by: Some("ann@box".into()),
            created_at: None,
        }
    }

    fn attrs(v: Value) -> Attrs {
        serde_json::from_value(v).expect("attrs")
    }

    fn pairs(t: &[(String, String)]) -> Vec<(&str, &str)> {
        t.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn machine_tags_round_trip() {
        let a = attrs(json!({
            "name": "demo-central-0", "role": "etcd", "channel": "stable", "size": "t3.small",
            "etcd_endpoints": ["http://10.0.1.101:2379"], "protect": true,
            "ssh_authorized_keys": ["ssh-ed25519 AAAA me"], "tags": {"team": "infra"},
            "user_data": "{}"
        }));
        let t = object_tags("machine", &a, &owner(), Some("demo-central-0"), None).expect("tags");
        let p = pairs(&t);
        assert!(p.contains(&("Name", "demo-central-0")));
        assert!(p.contains(&("clusterform:cluster", "demo")));
        assert!(p.contains(&("clusterform:address", "machine.central[0]")));
        assert!(p.contains(&("clusterform:op", "cf-123")));
        assert!(p.contains(&("clusterform:expires-at", "2030-01-01T00:00:00Z")));
        assert!(p.contains(&("team", "infra")));
        assert_eq!(ownership(p.clone()), Some(owner()));
        assert_eq!(
            user_tags(p.clone()),
            BTreeMap::from([("team".to_string(), "infra".to_string())])
        );
        let inputs = read_inputs(p).expect("inputs");
        assert_eq!(inputs.get("role"), Some(&json!("etcd")));
        assert_eq!(inputs.get("protect"), Some(&json!(true)));
        assert!(
            !inputs.contains_key("size"),
            "observable: not in the inputs tag"
        );
        assert!(!inputs.contains_key("user_data"), "too big: not in tags");
    }

    #[test]
    fn long_inputs_continue_in_numbered_tags() {
        let key = format!("ssh-rsa {} me@laptop", "A".repeat(700));
        let a = attrs(json!({"ssh_authorized_keys": [key.clone(), key], "role": "worker"}));
        let t = object_tags("machine", &a, &owner(), Some("w"), None).expect("tags");
        let inputs: Vec<&(String, String)> =
            t.iter().filter(|(k, _)| k.starts_with(INPUTS)).collect();
        assert!(inputs.len() >= 6, "{}", inputs.len());
        assert!(
            inputs
                .iter()
                .all(|(_, v)| v.chars().count() <= MAX_VALUE_CHARS)
        );
        // Order of the tags as EC2 returns them does not matter.
        let mut p = pairs(&t);
        p.reverse();
        assert_eq!(read_inputs(p), Some(inputs_of("machine", &a)));
    }

    #[test]
    fn damaged_inputs_read_as_none() {
        assert_eq!(read_inputs([("Name", "x")]), None);
        assert_eq!(read_inputs([(INPUTS, "{\"role\":")]), None);
        assert_eq!(
            read_inputs([(INPUTS, "{}"), ("clusterform:inputs:2", "x")]),
            None
        );
        assert_eq!(read_inputs([(INPUTS, "[1]")]), None);
    }

    #[test]
    fn parts_carry_their_part_not_inputs() {
        let a = attrs(json!({"name": "n", "cidr": "10.0.0.0/16", "gateway": "10.0.0.1"}));
        let t = object_tags(
            "network",
            &a,
            &owner(),
            Some("n-igw"),
            Some("internet-gateway"),
        )
        .expect("tags");
        let p = pairs(&t);
        assert!(p.contains(&(PART, "internet-gateway")));
        assert!(read_inputs(p).is_none());
        let t = object_tags("network", &a, &owner(), Some("n"), None).expect("tags");
        assert_eq!(
            read_inputs(pairs(&t)).and_then(|m| m.get("gateway").cloned()),
            Some(json!("10.0.0.1"))
        );
    }

    #[test]
    fn reserved_and_oversized_tags_are_refused() {
        for (tags, want) in [
            (json!({"Name": "x"}), "tag `Name` is reserved"),
            (
                json!({"clusterform:op": "x"}),
                "tag `clusterform:op` is reserved",
            ),
            (json!({"aws:foo": "x"}), "reserved"),
            (json!({"k": "v".repeat(300)}), "longer than EC2's 256"),
        ] {
            let a = attrs(json!({ "tags": tags }));
            let e = object_tags("machine", &a, &owner(), Some("m"), None).expect_err("refused");
            assert!(e.contains(want), "{e}");
        }
        let many: serde_json::Map<String, Value> =
            (0..50).map(|i| (format!("k{i}"), json!("v"))).collect();
        let a = attrs(json!({ "tags": many }));
        let e = object_tags("machine", &a, &owner(), Some("m"), None).expect_err("too many");
        assert!(e.contains("EC2 allows 50"), "{e}");
    }
}
