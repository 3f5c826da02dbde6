//! The diff: desired resource vs refreshed object -> one planned `Change`.

use std::collections::BTreeMap;

use crate::{Action, Attrs, Change, KindSchema, Resource, ResourceState, Value};

/// The id a reference resolves to while planning: known when the target exists and is
/// kept, unknown when the target is created or replaced by this plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefValue {
    /// The target's current id.
    Known(String),
    /// The target's id is known only after apply.
    Unknown,
}

/// Decides whether the value the configuration wants and the value an object has are
/// the same for planning (no change). Plain equality unless a value has parts that do
/// not matter once the object exists (an etcd member's bootstrap-only flags).
pub trait Equivalence {
    /// True when `want` (planned) and `now` (the object's) need no change of
    /// attribute `attr` of a `kind`.
    fn equivalent(&self, kind: &str, attr: &str, want: &Value, now: &Value) -> bool;
}

/// Values are the same when they are equal.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exact;

impl Equivalence for Exact {
    fn equivalent(&self, _kind: &str, _attr: &str, want: &Value, now: &Value) -> bool {
        want == now
    }
}

/// Plan the change of one resource that the configuration wants.
///
/// `current` is the refreshed object (None when it is not in state or was deleted
/// outside clusterform); `refs` gives each reference attribute's resolved value.
pub fn diff_resource(
    desired: &Resource,
    current: Option<&ResourceState>,
    schema: &KindSchema,
    refs: &BTreeMap<String, RefValue>,
) -> Change {
    diff_resource_with(desired, current, schema, refs, &Exact)
}

/// [`diff_resource`], comparing values with `eq`.
pub fn diff_resource_with(
    desired: &Resource,
    current: Option<&ResourceState>,
    schema: &KindSchema,
    refs: &BTreeMap<String, RefValue>,
    eq: &dyn Equivalence,
) -> Change {
    let (known, unknown) = resolved(desired, refs);

    let Some(cur) = current else {
        return create_change(desired, known, unknown, schema);
    };

    let mut changed = Vec::new();
    let mut replace_because = Vec::new();
    for a in schema.attrs.iter().filter(|a| a.input) {
        let now = cur.attrs.get(&a.name).unwrap_or(&Value::Null);
        let differs = if unknown.contains(&a.name) {
            true
        } else {
            match known.get(&a.name) {
                Some(want) => !eq.equivalent(&schema.kind, &a.name, want, now),
                // Left out: the provider's value stands for optional + computed
                // attributes; others go back to unset.
                None => !a.computed && !now.is_null(),
            }
        };
        if differs {
            changed.push(a.name.clone());
            if a.force_new {
                replace_because.push(a.name.clone());
            }
        }
    }

    if changed.is_empty() {
        return Change {
            address: desired.address.clone(),
            provider: desired.provider.clone(),
            action: Action::NoOp,
            id: Some(cur.id.clone()),
            before: None,
            after: None,
            after_unknown: Vec::new(),
            refs: desired.refs.clone(),
            deferred: Vec::new(),
            depends_on: desired.dependencies(),
            old_dependencies: cur.dependencies.clone(),
            replace_because,
            replace_reason: None,
            changed,
            sensitive: Vec::new(),
            notes: BTreeMap::new(),
        };
    }

    if !replace_because.is_empty() {
        let mut c = create_change(desired, known, unknown, schema);
        c.action = Action::Replace;
        c.id = Some(cur.id.clone());
        c.before = Some(cur.attrs.clone());
        c.old_dependencies = cur.dependencies.clone();
        c.replace_because = replace_because;
        c.changed = changed;
        return c;
    }

    // In place: the object's attributes with the changed inputs laid over them (an
    // input that is only equivalent keeps the object's value).
    let mut after = cur.attrs.clone();
    for a in schema.attrs.iter().filter(|a| a.input) {
        if !changed.contains(&a.name) {
            continue;
        }
        match known.get(&a.name) {
            Some(v) => {
                after.insert(a.name.clone(), v.clone());
            }
            None if !a.computed => {
                after.remove(&a.name);
            }
            None => {}
        }
    }
    for u in &unknown {
        after.remove(u);
    }
    Change {
        address: desired.address.clone(),
        provider: desired.provider.clone(),
        action: Action::Update,
        id: Some(cur.id.clone()),
        before: Some(cur.attrs.clone()),
        after: Some(after),
        after_unknown: unknown,
        refs: desired.refs.clone(),
        deferred: desired.deferred.clone(),
        depends_on: desired.dependencies(),
        old_dependencies: cur.dependencies.clone(),
        replace_because: Vec::new(),
        replace_reason: None,
        sensitive: sensitive_names(schema),
        notes: schema
            .attrs
            .iter()
            .filter(|a| changed.contains(&a.name))
            .filter_map(|a| a.update_note.clone().map(|n| (a.name.clone(), n)))
            .collect(),
        changed,
    }
}

/// The desired attributes with references resolved where their id is known, and the
/// names of those known only after apply (unknown references and deferred attributes).
fn resolved(desired: &Resource, refs: &BTreeMap<String, RefValue>) -> (Attrs, Vec<String>) {
    let mut known: Attrs = desired.attrs.clone();
    let mut unknown: Vec<String> = Vec::new();
    for d in &desired.deferred {
        known.remove(d);
        unknown.push(d.clone());
    }
    for (attr, v) in refs {
        match v {
            RefValue::Known(id) => {
                known.insert(attr.clone(), Value::String(id.clone()));
            }
            RefValue::Unknown => unknown.push(attr.clone()),
        }
    }
    (known, unknown)
}

/// Plan the replacement of an existing object though no attribute forces it (the
/// operator asked for it with `--replace`, or it must be made again), saying why.
pub fn replacement(
    desired: &Resource,
    current: &ResourceState,
    schema: &KindSchema,
    refs: &BTreeMap<String, RefValue>,
    reason: String,
) -> Change {
    let (known, unknown) = resolved(desired, refs);
    let changed: Vec<String> = schema
        .attrs
        .iter()
        .filter(|a| a.input)
        .filter(|a| match known.get(&a.name) {
            Some(want) => Some(want) != current.attrs.get(&a.name),
            None => unknown.contains(&a.name),
        })
        .map(|a| a.name.clone())
        .collect();
    let mut c = create_change(desired, known, unknown, schema);
    c.action = Action::Replace;
    c.id = Some(current.id.clone());
    c.before = Some(current.attrs.clone());
    c.old_dependencies = current.dependencies.clone();
    c.changed = changed;
    c.replace_reason = Some(reason);
    c
}

/// The names of the kind's sensitive attributes.
fn sensitive_names(schema: &KindSchema) -> Vec<String> {
    schema
        .attrs
        .iter()
        .filter(|a| a.sensitive)
        .map(|a| a.name.clone())
        .collect()
}

fn create_change(
    desired: &Resource,
    known: Attrs,
    mut unknown: Vec<String>,
    schema: &KindSchema,
) -> Change {
    for a in schema.attrs.iter().filter(|a| a.computed) {
        if !known.contains_key(&a.name) && !unknown.contains(&a.name) {
            unknown.push(a.name.clone());
        }
    }
    if !unknown.iter().any(|u| u == "id") {
        unknown.push("id".to_string());
    }
    unknown.sort();
    Change {
        address: desired.address.clone(),
        provider: desired.provider.clone(),
        action: Action::Create,
        id: None,
        before: None,
        after: Some(known),
        after_unknown: unknown,
        refs: desired.refs.clone(),
        deferred: desired.deferred.clone(),
        depends_on: desired.dependencies(),
        old_dependencies: Vec::new(),
        replace_because: Vec::new(),
        replace_reason: None,
        changed: Vec::new(),
        sensitive: sensitive_names(schema),
        notes: BTreeMap::new(),
    }
}

/// Plan the deletion of an object the configuration no longer has.
pub fn diff_delete(current: &ResourceState) -> Change {
    Change {
        address: current.address.clone(),
        provider: current.provider.clone(),
        action: Action::Delete,
        id: Some(current.id.clone()),
        before: Some(current.attrs.clone()),
        after: None,
        after_unknown: Vec::new(),
        refs: BTreeMap::new(),
        deferred: Vec::new(),
        depends_on: Vec::new(),
        old_dependencies: current.dependencies.clone(),
        replace_because: Vec::new(),
        replace_reason: None,
        changed: Vec::new(),
        sensitive: Vec::new(),
        notes: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Address, AttrSchema, AttrType};
    use serde_json::json;

    fn schema() -> KindSchema {
        KindSchema {
            kind: "machine".into(),
            doc: String::new(),
            attrs: vec![
                AttrSchema::required("size", AttrType::String, ""),
                AttrSchema::required("zone", AttrType::String, "").force_new(),
                AttrSchema::required("network", AttrType::Reference, "").force_new(),
                AttrSchema::optional_computed("address", AttrType::String, "").force_new(),
                AttrSchema::computed("state", AttrType::String, ""),
            ],
        }
    }

    fn desired(size: &str, zone: &str) -> Resource {
        let mut attrs = Attrs::new();
        attrs.insert("size".into(), json!(size));
        attrs.insert("zone".into(), json!(zone));
        let mut refs = BTreeMap::new();
        refs.insert("network".into(), Address::new("network", "main"));
        Resource {
            address: Address::indexed("machine", "w", 0),
            provider: "sim".into(),
            attrs,
            refs,
            depends_on: vec![],
            deferred: Vec::new(),
        }
    }

    fn current(size: &str, zone: &str) -> ResourceState {
        let mut attrs = Attrs::new();
        attrs.insert("size".into(), json!(size));
        attrs.insert("zone".into(), json!(zone));
        attrs.insert("network".into(), json!("net-1"));
        attrs.insert("address".into(), json!("10.0.0.7"));
        attrs.insert("state".into(), json!("running"));
        ResourceState {
            address: Address::indexed("machine", "w", 0),
            provider: "sim".into(),
            id: "m-1".into(),
            attrs,
            dependencies: vec![Address::new("network", "main")],
        }
    }

    fn known_net() -> BTreeMap<String, RefValue> {
        BTreeMap::from([("network".to_string(), RefValue::Known("net-1".into()))])
    }

    #[test]
    fn create_marks_computed_unknown() {
        let c = diff_resource(&desired("s", "a"), None, &schema(), &known_net());
        assert_eq!(c.action, Action::Create);
        assert_eq!(c.after_unknown, vec!["address", "id", "state"]);
        assert_eq!(
            c.after.as_ref().and_then(|a| a.get("network")),
            Some(&json!("net-1"))
        );
    }

    #[test]
    fn same_is_noop_and_optional_computed_is_kept() {
        let cur = current("s", "a");
        let c = diff_resource(&desired("s", "a"), Some(&cur), &schema(), &known_net());
        assert_eq!(c.action, Action::NoOp);
    }

    #[test]
    fn size_updates_in_place() {
        let cur = current("s", "a");
        let c = diff_resource(&desired("l", "a"), Some(&cur), &schema(), &known_net());
        assert_eq!(c.action, Action::Update);
        assert_eq!(c.changed, vec!["size"]);
        assert_eq!(
            c.after.as_ref().and_then(|a| a.get("size")),
            Some(&json!("l"))
        );
        assert_eq!(
            c.after.as_ref().and_then(|a| a.get("address")),
            Some(&json!("10.0.0.7"))
        );
        assert!(c.notes.is_empty(), "no note without a schema note");
    }

    #[test]
    fn an_update_note_travels_with_the_changed_attribute() {
        let mut s = schema();
        s.attrs[0] =
            AttrSchema::required("size", AttrType::String, "").update_note("restarts the machine");
        let cur = current("s", "a");
        let c = diff_resource(&desired("l", "a"), Some(&cur), &s, &known_net());
        assert_eq!(c.action, Action::Update);
        assert_eq!(
            c.notes.get("size").map(String::as_str),
            Some("restarts the machine")
        );
        let same = diff_resource(&desired("s", "a"), Some(&cur), &s, &known_net());
        assert!(same.notes.is_empty());
    }

    #[test]
    fn zone_forces_replacement() {
        let cur = current("s", "a");
        let c = diff_resource(&desired("s", "b"), Some(&cur), &schema(), &known_net());
        assert_eq!(c.action, Action::Replace);
        assert_eq!(c.replace_because, vec!["zone"]);
    }

    #[test]
    fn unknown_reference_forces_replacement() {
        let cur = current("s", "a");
        let refs = BTreeMap::from([("network".to_string(), RefValue::Unknown)]);
        let c = diff_resource(&desired("s", "a"), Some(&cur), &schema(), &refs);
        assert_eq!(c.action, Action::Replace);
        assert_eq!(c.replace_because, vec!["network"]);
        assert!(c.after_unknown.contains(&"network".to_string()));
    }

    #[test]
    fn a_replacement_on_request_says_why() {
        let cur = current("s", "a");
        let c = replacement(
            &desired("s", "a"),
            &cur,
            &schema(),
            &known_net(),
            "requested with --replace".into(),
        );
        assert_eq!(c.action, Action::Replace);
        assert_eq!(c.id.as_deref(), Some("m-1"));
        assert!(c.replace_because.is_empty());
        assert!(c.changed.is_empty(), "nothing differs: {:?}", c.changed);
        assert_eq!(
            c.replace_reason.as_deref(),
            Some("requested with --replace")
        );
        assert_eq!(c.before.as_ref(), Some(&cur.attrs));
        assert!(c.after_unknown.contains(&"id".to_string()));
    }

    struct IgnoreSize;
    impl Equivalence for IgnoreSize {
        fn equivalent(&self, _: &str, attr: &str, want: &Value, now: &Value) -> bool {
            attr == "size" || want == now
        }
    }

    #[test]
    fn an_equivalent_value_is_no_change_and_is_kept_in_place() {
        let cur = current("s", "a");
        let c = diff_resource_with(
            &desired("l", "a"),
            Some(&cur),
            &schema(),
            &known_net(),
            &IgnoreSize,
        );
        assert_eq!(c.action, Action::NoOp);
        // Another change updates in place and keeps the object's (equivalent) size.
        let mut d = desired("l", "a");
        d.attrs.insert("zone".into(), json!("a"));
        let mut s = schema();
        s.attrs[1] = AttrSchema::required("zone", AttrType::String, "");
        let mut cur2 = cur.clone();
        cur2.attrs.insert("zone".into(), json!("b"));
        let c = diff_resource_with(&d, Some(&cur2), &s, &known_net(), &IgnoreSize);
        assert_eq!(c.action, Action::Update);
        assert_eq!(c.changed, vec!["zone"]);
        assert_eq!(
            c.after.as_ref().and_then(|a| a.get("size")),
            Some(&json!("s"))
        );
    }

    #[test]
    fn delete_keeps_old_dependencies() {
        let c = diff_delete(&current("s", "a"));
        assert_eq!(c.action, Action::Delete);
        assert_eq!(c.old_dependencies, vec![Address::new("network", "main")]);
    }
}
