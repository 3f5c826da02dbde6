//! Terraform-style text for plans and apply results, and the JSON forms.

use std::fmt::Write as _;

use clusterform_core::plan::Drift;
use clusterform_core::{Action, Change, EtcdPlan, MemberStep, Plan, StepKind, Value};
use clusterform_engine::{ApplyReport, Outcome, Recovery, Resolution};
use serde_json::json;

use crate::output::clean;
use crate::style::{bold, dim, green, red, yellow};

/// Text from input (Butane content, provider messages, names in a saved plan or the
/// state), control characters escaped: the colours around it are ours, so the whole
/// output cannot be escaped at once.
fn from_input(x: impl std::fmt::Display) -> String {
    clean(&x.to_string()).into_owned()
}

fn value(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        other => {
            let text = other.to_string();
            if clusterform_state::seal::holds_private_key(&text) {
                "(sensitive)".to_string()
            } else {
                text
            }
        }
    }
}

/// The attribute holding a machine's rendered Ignition config.
const USER_DATA: &str = "user_data";

/// An attribute's value as a plan shows it: user data as a one-line summary of the
/// Ignition config, never a wall of JSON and base64.
pub fn attr_value(key: &str, v: &Value) -> String {
    match (key, v) {
        (USER_DATA, Value::String(s)) if clusterform_state::seal::holds_private_key(s) => {
            format!(
                "(sensitive; {})",
                from_input(clusterform_ignition::summarize(s))
            )
        }
        (USER_DATA, Value::String(s)) => {
            format!("({})", from_input(clusterform_ignition::summarize(s)))
        }
        _ => value(v),
    }
}

/// How an attribute is named in a sentence ("because user data changed").
fn attr_label(key: &str) -> String {
    key.replace('_', " ")
}

fn symbol_colored(a: Action) -> String {
    match a {
        Action::Create => green("+"),
        Action::Update => yellow("~"),
        Action::Delete => red("-"),
        Action::Replace => format!("{}/{}", red("-"), green("+")),
        Action::NoOp => " ".to_string(),
    }
}

/// Notes about journal entries resolved before planning: each adoption and removal,
/// and a count of the operations that had not taken effect.
pub fn recoveries(notes: &[Recovery]) -> String {
    let mut out = String::new();
    if notes.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{}\n",
        bold(&format!(
            "Resolved {} unfinished operation(s) of an earlier run:",
            notes.len()
        ))
    );
    let mut not_done = 0;
    for n in notes {
        let what = match &n.resolution {
            Resolution::Adopted(id) => {
                format!("it had been created (id {id}); adopted into the state")
            }
            Resolution::Removed => "the delete had finished; removed from the state".to_string(),
            Resolution::Refresh => {
                "the update may or may not have happened; refresh reads the object as it is"
                    .to_string()
            }
            Resolution::Membership => format!(
                "an etcd membership change ({} of member {}) may be unfinished; the plan reads the member list and finishes it",
                match n.action {
                    Action::Create => "add",
                    Action::Delete => "removal",
                    _ => "promotion",
                },
                n.address
            ),
            Resolution::NotDone => {
                not_done += 1;
                continue;
            }
        };
        let _ = writeln!(
            out,
            "  - {}",
            from_input(format!("{} ({}): {what}", n.address, n.action.name()))
        );
    }
    if not_done > 0 {
        let _ = writeln!(
            out,
            "  - {not_done} operation(s) had not taken effect; nothing to adopt"
        );
    }
    out.push('\n');
    out
}

/// The note about objects that changed outside clusterform (empty when none did).
fn drift_note(p: &Plan) -> String {
    let mut out = String::new();
    if !p.drift.is_empty() {
        let _ = writeln!(
            out,
            "{}\n",
            bold("Note: Objects have changed outside of clusterform")
        );
        for d in &p.drift {
            if d.deleted {
                let _ = writeln!(
                    out,
                    "  # {} has been deleted",
                    bold(&from_input(&d.address))
                );
            } else {
                let _ = writeln!(out, "  # {} has changed", bold(&from_input(&d.address)));
                let w = d.changed.iter().map(|c| c.0.len()).max().unwrap_or(0);
                let shown = |k: &String, v: &Value| {
                    if d.sensitive.contains(k) && !v.is_null() {
                        dim("(sensitive)")
                    } else {
                        attr_value(k, v)
                    }
                };
                for (k, before, after) in &d.changed {
                    let _ = writeln!(
                        out,
                        "    {} {:<w$} = {} -> {}",
                        yellow("~"),
                        from_input(k),
                        shown(k, before),
                        shown(k, after)
                    );
                }
            }
        }
        out.push('\n');
    }
    out
}

/// A refresh-only plan: the drift, and what accepting it does to the state.
pub fn refresh_only(p: &Plan) -> String {
    let mut out = drift_note(p);
    if p.drift.is_empty() {
        let _ = writeln!(
            out,
            "{} The objects match the state; there is nothing to accept.",
            bold("No changes.")
        );
        return out;
    }
    let gone = p.drift.iter().filter(|d| d.deleted).count();
    let _ = writeln!(
        out,
        "This is a refresh-only plan: accepting it records {} changed object(s) in the state \
         as they are now and removes {gone} deleted one(s) from it. No object is changed.",
        p.drift.len() - gone
    );
    out
}

/// The whole plan as text.
pub fn plan(p: &Plan) -> String {
    let mut out = drift_note(p);
    if p.is_empty() {
        // Members left stale (`update = "manual"`) are no change, but are worth saying.
        if let Some(e) = &p.etcd {
            etcd_section(&mut out, e);
        }
        let _ = writeln!(
            out,
            "{} Your cluster matches the configuration; nothing to do.",
            bold("No changes.")
        );
        return out;
    }
    if !p.changes.is_empty() {
        let _ = writeln!(
            out,
            "Resource actions are indicated with the following symbols:"
        );
        let used = |a: Action| p.changes.iter().any(|c| c.action == a);
        if used(Action::Create) {
            let _ = writeln!(out, "  {} create", green("+"));
        }
        if used(Action::Update) {
            let _ = writeln!(out, "  {} update in-place", yellow("~"));
        }
        if used(Action::Delete) {
            let _ = writeln!(out, "  {} destroy", red("-"));
        }
        if used(Action::Replace) {
            let _ = writeln!(
                out,
                "{} destroy and then create replacement",
                symbol_colored(Action::Replace)
            );
        }
        let _ = writeln!(out, "\nclusterform will perform the following actions:\n");
        for c in &p.changes {
            change(&mut out, c, p.etcd.as_ref());
        }
    }
    for a in &p.forget {
        let _ = writeln!(
            out,
            "  # {} is gone and will be removed from the state\n",
            from_input(a)
        );
    }
    if let Some(e) = &p.etcd {
        etcd_section(&mut out, e);
    }
    let s = p.summary();
    let _ = writeln!(
        out,
        "{} {} to add, {} to change, {} to destroy.",
        bold("Plan:"),
        s.add,
        s.change,
        s.destroy
    );
    out
}

/// What an etcd member's step means, for the header of its change.
fn step_note(step: &MemberStep) -> String {
    let (pos, of, before, min, after) = (
        step.position,
        step.of,
        step.voters_before,
        step.voters_min,
        step.voters_after,
    );
    match step.kind {
        StepKind::Replace => {
            format!("rolling {pos} of {of}; etcd keeps {min} of {before} members")
        }
        StepKind::Update => format!("rolling {pos} of {of}; etcd keeps {min} of {before} members"),
        StepKind::Join => format!("joins etcd, {pos} of {of}: {before} -> {after} members"),
        StepKind::Leave => format!("leaves etcd first, {pos} of {of}: {before} -> {after} members"),
        StepKind::Promote | StepKind::RemoveStray => String::new(),
    }
}

fn change(out: &mut String, c: &Change, etcd: Option<&EtcdPlan>) {
    let shown = |k: &str, v: &Value| -> String {
        if c.sensitive.iter().any(|x| x == k) {
            dim("(sensitive)")
        } else {
            attr_value(k, v)
        }
    };
    let mut notes: Vec<String> = Vec::new();
    if let Some(step) = etcd
        .filter(|e| !e.bootstrap)
        .and_then(|e| e.step_for(&c.address))
    {
        notes.push(step_note(step));
    }
    if c.action == Action::Replace && !c.replace_because.is_empty() {
        let names: Vec<String> = c.replace_because.iter().map(|k| attr_label(k)).collect();
        notes.push(format!("because {} changed", names.join(", ")));
    } else if c.action == Action::Replace
        && let Some(why) = &c.replace_reason
    {
        notes.push(from_input(why));
    }
    let reason = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    };
    let _ = writeln!(
        out,
        "  # {} {}{}",
        bold(&from_input(&c.address)),
        c.action.phrase(),
        reason
    );
    let sym = symbol_colored(c.action);
    let pad = if c.action == Action::Replace {
        ""
    } else {
        "  "
    };
    let _ = writeln!(out, "{pad}{sym} {} {{", from_input(&c.address));

    let empty = Default::default();
    let before = c.before.as_ref().unwrap_or(&empty);
    let after = c.after.as_ref().unwrap_or(&empty);
    let unknown = |k: &str| c.after_unknown.iter().any(|u| u == k);
    // Rows: (marker, name, text).
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut hidden = 0;
    // Lines shown under the user data row: what changed in the machine's config.
    let mut details: Vec<String> = Vec::new();
    match c.action {
        Action::Create => {
            let mut keys: Vec<&String> = after.keys().chain(c.after_unknown.iter()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let v = if unknown(k) {
                    dim("(known after apply)")
                } else {
                    shown(k, &after[k.as_str()])
                };
                rows.push((green("+"), k.clone(), v));
            }
        }
        Action::Delete => {
            let id = c.id.clone().map(Value::String).unwrap_or(Value::Null);
            let mut all: Vec<(&str, &Value)> =
                before.iter().map(|(k, v)| (k.as_str(), v)).collect();
            if !before.contains_key("id") {
                all.push(("id", &id));
            }
            all.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in all {
                rows.push((
                    red("-"),
                    k.to_string(),
                    format!("{} -> null", attr_value(k, v)),
                ));
            }
        }
        Action::Update | Action::Replace => {
            if let Some(id) = &c.id {
                if c.action == Action::Replace {
                    rows.push((
                        yellow("~"),
                        "id".into(),
                        format!(
                            "{} -> {}",
                            value(&Value::String(id.clone())),
                            dim("(known after apply)")
                        ),
                    ));
                } else {
                    rows.push((" ".into(), "id".into(), value(&Value::String(id.clone()))));
                }
            }
            let mut keys: Vec<&String> = c.changed.iter().collect();
            keys.sort();
            for k in keys {
                let old = before
                    .get(k.as_str())
                    .map(|v| shown(k, v))
                    .unwrap_or_else(|| "null".into());
                let new = if unknown(k) {
                    dim("(known after apply)")
                } else {
                    after
                        .get(k.as_str())
                        .map(|v| shown(k, v))
                        .unwrap_or_else(|| "null".into())
                };
                // What changed inside the Ignition config: units and files, in short.
                if k == USER_DATA
                    && let (Some(Value::String(b)), Some(Value::String(a))) =
                        (before.get(USER_DATA), after.get(USER_DATA))
                {
                    {
                        // An etcd member's bootstrap-only flags are not a change.
                        let neutral = clusterform_ignition::etcd::bootstrap_neutral;
                        let (b, a) = match (neutral(b), neutral(a)) {
                            (Some(nb), Some(na)) => (nb, na),
                            _ => (b.clone(), a.clone()),
                        };
                        details = clusterform_ignition::diff_configs(&b, &a).lines;
                    }
                }
                let forces = if c.replace_because.contains(k) {
                    format!(" {}", red("# forces replacement"))
                } else if let Some(note) = c.notes.get(k.as_str()) {
                    format!(" {}", yellow(&format!("# {}", from_input(note))))
                } else {
                    String::new()
                };
                rows.push((yellow("~"), k.clone(), format!("{old} -> {new}{forces}")));
            }
            hidden = before
                .keys()
                .filter(|k| k.as_str() != "id" && !c.changed.contains(k))
                .count();
        }
        Action::NoOp => {}
    }
    let w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    for (m, k, v) in rows {
        let _ = writeln!(out, "      {m} {:<w$} = {v}", from_input(&k));
        if k == USER_DATA {
            for line in &details {
                let _ = writeln!(out, "          {}", dim(&from_input(line)));
            }
        }
    }
    if hidden > 0 {
        let _ = writeln!(
            out,
            "        {}",
            dim(&format!("# ({hidden} unchanged attributes hidden)"))
        );
    }
    let _ = writeln!(out, "    }}\n");
}

/// The etcd part of a plan: the membership steps in order with the members at each,
/// members left stale, what is lost, and notes.
pub fn etcd_section(out: &mut String, e: &EtcdPlan) {
    for a in &e.stale {
        let _ = writeln!(
            out,
            "  # {} has a stale config and is left as it is (`update = \"manual\"`); replace it with `clusterform apply --replace {a}`\n",
            bold(&from_input(a))
        );
    }
    for loss in &e.data_loss {
        let _ = writeln!(
            out,
            "{} {}\n",
            red(&bold("Warning: this plan loses the etcd data:")),
            from_input(loss)
        );
    }
    if !e.steps.is_empty() {
        let _ = writeln!(
            out,
            "etcd members change one at a time (`update = \"{}\"`); each step starts once the cluster is healthy:",
            e.update.name()
        );
        for (i, s) in e.steps.iter().enumerate() {
            let who = s
                .address
                .as_ref()
                .map_or_else(|| format!("member `{}`", s.name), ToString::to_string);
            let what = match s.kind {
                StepKind::Join => format!(
                    "{who} joins: {} -> {} members (added as a learner, promoted once it has caught up)",
                    s.voters_before, s.voters_after
                ),
                StepKind::Leave => format!(
                    "{who} leaves: {} -> {} members (removed from etcd, then its machine is deleted)",
                    s.voters_before, s.voters_after
                ),
                StepKind::Replace => format!(
                    "{who} is replaced: removed from etcd, made again with the same name and address, added back; etcd keeps {} of {} members meanwhile",
                    s.voters_min, s.voters_before
                ),
                StepKind::Update => format!(
                    "{who} is changed in place; etcd keeps {} of {} members meanwhile",
                    s.voters_min, s.voters_before
                ),
                StepKind::Promote => format!(
                    "{who} is promoted to a voting member: {} -> {} members",
                    s.voters_before, s.voters_after
                ),
                StepKind::RemoveStray => format!(
                    "{who} ({}) is removed from etcd: {} -> {} members",
                    s.peer_url, s.voters_before, s.voters_after
                ),
            };
            let resume = s
                .resume
                .as_ref()
                .map(|r| format!(" [{r}]"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}. {}",
                i + 1,
                from_input(format!("{what}{resume}"))
            );
        }
        if !e.live {
            let _ = writeln!(
                out,
                "  (the provider runs no machines, so no etcd runs: these steps only set the order of the changes, and no membership call is made; the sim runs real etcd with `[provider.sim] live = true`)"
            );
        }
        out.push('\n');
    } else if !e.resolves.is_empty() {
        let _ = writeln!(
            out,
            "The etcd member list matches the central machines: {} unfinished membership change(s) of an earlier run need nothing more.\n",
            e.resolves.len()
        );
    }
    for n in &e.notes {
        let _ = writeln!(out, "{} {}\n", yellow("Note:"), from_input(n));
    }
}

/// The plan as JSON for machines (`plan --json`); sensitive values read `(sensitive)`.
pub fn plan_json(p: &Plan) -> serde_json::Value {
    let s = p.summary();
    let changes: Vec<Change> = p
        .changes
        .iter()
        .map(|c| {
            let mut c = c.clone();
            for side in [&mut c.before, &mut c.after].into_iter().flatten() {
                for k in &c.sensitive {
                    if let Some(v) = side.get_mut(k) {
                        *v = Value::String("(sensitive)".into());
                    }
                }
            }
            c
        })
        .collect();
    let drift: Vec<Drift> = p
        .drift
        .iter()
        .map(|d| {
            let mut d = d.clone();
            for (k, before, after) in &mut d.changed {
                if d.sensitive.contains(k) {
                    for v in [before, after] {
                        if !v.is_null() {
                            *v = Value::String("(sensitive)".into());
                        }
                    }
                }
            }
            d
        })
        .collect();
    json!({
        "format_version": "1",
        "cluster": p.cluster,
        "destroy": p.destroy,
        "state": { "lineage": p.state_lineage, "serial": p.state_serial },
        "summary": { "add": s.add, "change": s.change, "destroy": s.destroy, "unchanged": p.unchanged },
        "resource_changes": changes,
        "drift": drift,
        "forget": p.forget,
        "etcd": p.etcd,
    })
}

/// The end of an apply or destroy.
pub fn apply_summary(r: &ApplyReport, destroy: bool) -> String {
    let mut out = String::new();
    for (addr, _, o) in &r.outcomes {
        match o {
            Outcome::Failed(e) => {
                let _ = writeln!(
                    out,
                    "{} {}",
                    red("Error:"),
                    from_input(format!("{addr}: {e}"))
                );
            }
            Outcome::Skipped(cause) => {
                let _ = writeln!(
                    out,
                    "{} {}",
                    yellow("Skipped:"),
                    from_input(format!("{addr}: skipped because `{cause}` failed"))
                );
            }
            Outcome::Cancelled => {
                let _ = writeln!(
                    out,
                    "{} {}: not started (interrupted)",
                    yellow("Cancelled:"),
                    from_input(addr)
                );
            }
            Outcome::Done => {}
        }
    }
    for (who, kind, o) in &r.members {
        match o {
            Outcome::Failed(e) => {
                let _ = writeln!(
                    out,
                    "{} {}",
                    red("Error:"),
                    from_input(format!("etcd {} of {who}: {e}", kind.name()))
                );
            }
            Outcome::Skipped(cause) => {
                let _ = writeln!(
                    out,
                    "{} {}",
                    yellow("Skipped:"),
                    from_input(format!(
                        "etcd {} of {who}: skipped because `{cause}` failed",
                        kind.name()
                    ))
                );
            }
            Outcome::Cancelled => {
                let _ = writeln!(
                    out,
                    "{} {}",
                    yellow("Cancelled:"),
                    from_input(format!(
                        "etcd {} of {who}: not started (interrupted)",
                        kind.name()
                    ))
                );
            }
            Outcome::Done => {}
        }
    }
    if !out.is_empty() {
        out.push('\n');
    }
    let head = match (r.success(), destroy) {
        (true, false) => green(&bold("Apply complete!")),
        (true, true) => green(&bold("Destroy complete!")),
        (false, false) => red(&bold("Apply failed.")),
        (false, true) => red(&bold("Destroy failed.")),
    };
    let _ = write!(
        out,
        "{head} Resources: {} added, {} changed, {} destroyed.",
        r.added, r.changed, r.destroyed
    );
    let mut extra = Vec::new();
    if r.failed() > 0 {
        extra.push(format!("{} failed", r.failed()));
    }
    if r.skipped() > 0 {
        extra.push(format!("{} skipped", r.skipped()));
    }
    if r.cancelled() > 0 {
        extra.push(format!("{} not started", r.cancelled()));
    }
    if r.retries > 0 {
        extra.push(format!("{} retries", r.retries));
    }
    if !extra.is_empty() {
        let _ = write!(out, " ({})", extra.join(", "));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterform_core::{Address, Attrs};

    fn plan_with(c: Change) -> Plan {
        Plan {
            cluster: "demo".into(),
            destroy: false,
            state_lineage: None,
            state_serial: 0,
            changes: vec![c],
            unchanged: 0,
            drift: vec![],
            forget: vec![],
            etcd: None,
        }
    }

    #[test]
    fn an_update_note_is_shown_beside_its_attribute() {
        let attrs = |size: &str| Attrs::from([("size".to_string(), Value::String(size.into()))]);
        let c = Change {
            address: Address::new("machine", "m"),
            provider: "libvirt".into(),
            action: Action::Update,
            id: Some("m".into()),
            before: Some(attrs("2cpu-4gb")),
            after: Some(attrs("4cpu-8gb")),
            after_unknown: vec![],
            deferred: vec![],
            refs: Default::default(),
            depends_on: vec![],
            old_dependencies: vec![],
            replace_because: vec![],
            replace_reason: None,
            changed: vec!["size".into()],
            sensitive: vec![],
            notes: [("size".to_string(), "restarts the machine".to_string())].into(),
        };
        let text = plan(&plan_with(c));
        assert!(
            text.contains("size = \"2cpu-4gb\" -> \"4cpu-8gb\" # restarts the machine"),
            "{text}"
        );
    }

    #[test]
    fn sensitive_values_are_never_printed() {
        let secret = "hunter2-canary";
        let mut after = Attrs::new();
        after.insert("password".into(), Value::String(secret.into()));
        after.insert("size".into(), Value::String("s".into()));
        let c = Change {
            address: Address::new("machine", "m"),
            provider: "sim".into(),
            action: Action::Create,
            id: None,
            before: None,
            after: Some(after),
            after_unknown: vec![],
            deferred: vec![],
            refs: Default::default(),
            depends_on: vec![],
            old_dependencies: vec![],
            replace_because: vec![],
            replace_reason: None,
            changed: vec![],
            sensitive: vec!["password".into()],
            notes: Default::default(),
        };
        let mut p = plan_with(c);
        // Changed outside clusterform: the drift note hides it as well.
        p.drift.push(Drift {
            address: Address::new("machine", "m"),
            deleted: false,
            changed: vec![(
                "password".into(),
                Value::String("old-secret-canary".into()),
                Value::String(secret.into()),
            )],
            sensitive: vec!["password".into()],
        });
        let text = plan(&p);
        assert!(!text.contains("old-secret-canary"), "{text}");
        assert!(text.contains("password = (sensitive)"), "{text}");
        assert!(!text.contains(secret), "{text}");
        let json = plan_json(&p).to_string();
        assert!(!json.contains(secret), "{json}");
        assert!(!json.contains("old-secret-canary"), "{json}");
        assert!(json.contains("(sensitive)"), "{json}");
    }
}
