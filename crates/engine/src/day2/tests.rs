//! Day-2 planning: the order of member steps, the quorum at each, the policies and the
//! guard rails, from plans built by hand over rendered member configs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;

use clusterform_core::{Change, ResourceState};
use clusterform_ignition::{EtcdMember, MachineSpec, Platform, StaticNetwork, render, to_json};

use super::*;

/// The rendered config of member `i` of a cluster of `n` (`demo-central-i`, 10.0.1.101+i).
fn member_config(i: u32, n: u32, extra: &str) -> String {
    let ip = |k: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 101)) + k);
    let spec = MachineSpec {
        hostname: format!("demo-central-{i}{extra}"),
        platform: Platform::Sim,
        ssh_authorized_keys: vec![],
        network: Some(StaticNetwork {
            address: ip(i),
            prefix: 16,
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            dns: vec![],
            vlan: None,
        }),
        docker_tcp: false,
        etcd: Some(EtcdMember {
            name: format!("demo-central-{i}"),
            address: ip(i),
            initial_cluster: (0..n)
                .map(|k| (format!("demo-central-{k}"), ip(k)))
                .collect(),
            cluster_token: "demo".into(),
        }),
        etcd_proxy: None,
        etcd_endpoints: vec![],
        tls: None,
    };
    to_json(&render(&spec, &[]))
}

fn a(i: u32) -> Address {
    Address::indexed("machine", "central", i)
}

fn attrs(ud: String) -> Attrs {
    Attrs::from([("user_data".to_string(), Value::String(ud))])
}

/// A cluster: `state` members 0..state in the state (made with a cluster of `state`),
/// `want` members wanted (rendered for `want`), `extra` marks a config change.
fn set(
    state: u32,
    want: u32,
    extra: &str,
) -> (MemberSet, Vec<Resource>, BTreeMap<Address, ResourceState>) {
    let desired: Vec<Resource> = (0..want)
        .map(|i| Resource {
            address: a(i),
            provider: "sim".into(),
            attrs: attrs(member_config(i, want, extra)),
            refs: Default::default(),
            depends_on: vec![],
            deferred: Vec::new(),
        })
        .collect();
    let current: BTreeMap<Address, ResourceState> = (0..state)
        .map(|i| {
            (
                a(i),
                ResourceState {
                    address: a(i),
                    provider: "sim".into(),
                    id: format!("m-{i}"),
                    attrs: attrs(member_config(i, state, "")),
                    dependencies: vec![],
                },
            )
        })
        .collect();
    (MemberSet::new(&desired, &current), desired, current)
}

fn change(addr: Address, action: Action) -> Change {
    let mut c = clusterform_core::diff::diff_delete(&ResourceState {
        address: addr,
        provider: "sim".into(),
        id: "x".into(),
        attrs: Default::default(),
        dependencies: vec![],
    });
    c.action = action;
    c
}

fn plan_of(changes: Vec<Change>) -> Plan {
    Plan {
        cluster: "demo".into(),
        destroy: false,
        state_lineage: None,
        state_serial: 1,
        changes,
        unchanged: 0,
        drift: vec![],
        forget: vec![],
        etcd: None,
    }
}

fn members(n: u32) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            id: 0x100 + u64::from(i),
            name: format!("demo-central-{i}"),
            peer_urls: vec![format!("http://10.0.1.{}:2380", 101 + i)],
            client_urls: vec![format!("http://10.0.1.{}:2379", 101 + i)],
            is_learner: false,
        })
        .collect()
}

fn settings(update: UpdatePolicy) -> Day2Settings {
    Day2Settings {
        update,
        ..Day2Settings::default()
    }
}

/// `plan_members` with no journal and nothing replaced on request.
fn plan_with(
    p: &mut Plan,
    set: &MemberSet,
    membership: &Membership,
    settings: &Day2Settings,
) -> Result<(), EngineError> {
    plan_members(p, set, membership, &[], settings, &BTreeSet::new())
}

fn steps(p: &Plan) -> Vec<String> {
    p.etcd
        .as_ref()
        .map(|e| {
            e.steps
                .iter()
                .map(|s| {
                    format!(
                        "{} {} {}/{} {}->{}->{}{}",
                        s.kind.name(),
                        s.address
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_else(|| s.name.clone()),
                        s.position,
                        s.of,
                        s.voters_before,
                        s.voters_min,
                        s.voters_after,
                        s.resume
                            .as_ref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bootstrap_flags_do_not_make_a_member_changed() {
    let three = Value::String(member_config(0, 3, ""));
    let five = Value::String(member_config(0, 5, ""));
    let changed = Value::String(member_config(0, 3, "-x"));
    assert!(BootstrapFlags.equivalent("machine", "user_data", &five, &three));
    assert!(!BootstrapFlags.equivalent("machine", "user_data", &changed, &three));
    assert!(!BootstrapFlags.equivalent("volume", "user_data", &five, &three));
    assert!(!BootstrapFlags.equivalent("machine", "size", &five, &three));
    let worker = Value::String("{\"ignition\":{\"version\":\"3.3.0\"}}".into());
    assert!(!BootstrapFlags.equivalent("machine", "user_data", &worker, &three));
}

#[test]
fn grow_joins_one_at_a_time() {
    let (set, _, _) = set(3, 5, "");
    let mut p = plan_of(vec![
        change(a(3), Action::Create),
        change(a(4), Action::Create),
    ]);
    let m = Membership::Known(members(3));
    plan_with(&mut p, &set, &m, &settings(UpdatePolicy::Rolling)).unwrap();
    assert_eq!(
        steps(&p),
        [
            "join machine.central[3] 1/2 3->3->4",
            "join machine.central[4] 2/2 4->4->5"
        ]
    );
    let e = p.etcd.as_ref().unwrap();
    assert!(e.live && !e.bootstrap && e.voters == 3);
}

#[test]
fn shrink_leaves_from_the_highest_index() {
    let (set, _, _) = set(5, 3, "");
    let mut p = plan_of(vec![
        change(a(3), Action::Delete),
        change(a(4), Action::Delete),
    ]);
    plan_with(
        &mut p,
        &set,
        &Membership::Known(members(5)),
        &settings(UpdatePolicy::Rolling),
    )
    .unwrap();
    assert_eq!(
        steps(&p),
        [
            "leave machine.central[4] 1/2 5->4->4",
            "leave machine.central[3] 2/2 4->3->3"
        ]
    );
}

#[test]
fn rolling_replacement_keeps_a_quorum_at_every_step() {
    let (set, _, _) = set(3, 3, "-new");
    let mut p = plan_of((0..3).map(|i| change(a(i), Action::Replace)).collect());
    plan_with(
        &mut p,
        &set,
        &Membership::NotRunning,
        &settings(UpdatePolicy::Rolling),
    )
    .unwrap();
    assert_eq!(
        steps(&p),
        [
            "replace machine.central[0] 1/3 3->2->3",
            "replace machine.central[1] 2/3 3->2->3",
            "replace machine.central[2] 3/3 3->2->3"
        ]
    );
    let e = p.etcd.as_ref().unwrap();
    assert!(!e.live, "the plain sim runs no etcd: no calls");
    for s in &e.steps {
        assert!(s.voters_min >= quorum(s.voters_before - 1));
    }
}

#[test]
fn manual_lists_stale_members_and_leaves_them() {
    let (set, _, _) = set(3, 3, "-new");
    let mut p = plan_of((0..3).map(|i| change(a(i), Action::Replace)).collect());
    let mut forced = change(a(1), Action::Replace);
    forced.replace_reason = Some("requested with --replace".into());
    p.changes[1] = forced;
    plan_members(
        &mut p,
        &set,
        &Membership::NotRunning,
        &[],
        &settings(UpdatePolicy::Manual),
        &BTreeSet::from([a(1)]),
    )
    .unwrap();
    let e = p.etcd.as_ref().unwrap();
    assert_eq!(e.stale, vec![a(0), a(2)]);
    assert_eq!(p.changes.len(), 1);
    assert_eq!(p.changes[0].address, a(1));
    assert_eq!(p.unchanged, 2);
    assert_eq!(steps(&p), ["replace machine.central[1] 1/1 3->2->3"]);
}

#[test]
fn the_only_member_and_all_at_once_need_allow_data_loss() {
    let (set1, _, _) = set(1, 1, "-new");
    let mut p = plan_of(vec![change(a(0), Action::Replace)]);
    let err = plan_with(
        &mut p,
        &set1,
        &Membership::NotRunning,
        &settings(UpdatePolicy::Rolling),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("`machine.central[0]` is the only etcd member"),
        "{text}"
    );
    assert!(
        text.contains("loses the etcd cluster and every key"),
        "{text}"
    );
    let mut allowed = settings(UpdatePolicy::Rolling);
    allowed.allow_data_loss = true;
    plan_with(&mut p, &set1, &Membership::NotRunning, &allowed).unwrap();
    let e = p.etcd.as_ref().unwrap();
    assert!(e.bootstrap && !e.live && e.steps.is_empty());
    assert_eq!(e.data_loss.len(), 1);

    let (set3, _, _) = set(3, 3, "-new");
    let mut p = plan_of((0..3).map(|i| change(a(i), Action::Replace)).collect());
    let err = plan_with(
        &mut p,
        &set3,
        &Membership::Known(members(3)),
        &settings(UpdatePolicy::AllAtOnce),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("replaces 3 of 3 etcd members together"),
        "{err}"
    );
}

#[test]
fn all_at_once_replaces_every_member_once_one_is() {
    let (set, _, _) = set(3, 3, "");
    let p = plan_of(vec![change(a(1), Action::Replace)]);
    let forced = forced_replacements(
        &p,
        &set,
        &Membership::Known(members(3)),
        &settings(UpdatePolicy::AllAtOnce),
    );
    assert_eq!(forced.keys().cloned().collect::<Vec<_>>(), vec![a(0), a(2)]);
    assert!(
        forced_replacements(
            &p,
            &set,
            &Membership::Known(members(3)),
            &settings(UpdatePolicy::Rolling)
        )
        .is_empty()
    );
}

#[test]
fn a_member_missing_from_the_cluster_is_made_again() {
    let (set, _, _) = set(3, 3, "");
    let p = plan_of(vec![]);
    let mut two = members(3);
    two.remove(1);
    let forced = forced_replacements(
        &p,
        &set,
        &Membership::Known(two.clone()),
        &settings(UpdatePolicy::Manual),
    );
    assert_eq!(forced.keys().cloned().collect::<Vec<_>>(), vec![a(1)]);
    assert!(forced[&a(1)].contains("not in the cluster"), "{forced:?}");
    // Replanned with it replaced: the old member is already gone, so the step only
    // adds it back (2 -> 3 voters).
    let mut p = plan_of(vec![change(a(1), Action::Replace)]);
    p.changes[0].replace_reason = Some(forced[&a(1)].clone());
    plan_with(
        &mut p,
        &set,
        &Membership::Known(two),
        &settings(UpdatePolicy::Manual),
    )
    .unwrap();
    assert_eq!(
        steps(&p),
        ["replace machine.central[1] 1/1 2->2->3 (the old member was already removed from etcd)"]
    );
}

#[test]
fn what_a_stopped_run_left_is_repaired_first() {
    // State: 3 members; the cluster also has central[3] as an unpromoted learner of a
    // machine the state records (a run stopped before promoting it), and an unstarted
    // learner of a machine that is no longer wanted.
    let (set, _, _) = set(4, 4, "");
    let mut ms = members(3);
    ms.push(Member {
        id: 0x200,
        name: "demo-central-3".into(),
        peer_urls: vec!["http://10.0.1.104:2380".into()],
        client_urls: vec!["http://10.0.1.104:2379".into()],
        is_learner: true,
    });
    ms.push(Member {
        id: 0x201,
        name: String::new(),
        peer_urls: vec!["http://10.0.1.150:2380".into()],
        client_urls: vec![],
        is_learner: true,
    });
    let entry = JournalEntry {
        op_id: "op-1".into(),
        address: a(3),
        action: Action::Update,
        idempotency_key: "cf-op-1".into(),
        provider: ETCD_JOURNAL.into(),
        kind: ETCD_KIND.into(),
        object_id: Some("http://10.0.1.104:2380".into()),
        dependencies: vec![],
        started_at: "2026-12-02T10:00:00Z".into(),
    };
    let mut p = plan_of(vec![]);
    assert!(involves_members(&p, &set, std::slice::from_ref(&entry)));
    plan_members(
        &mut p,
        &set,
        &Membership::Known(ms),
        std::slice::from_ref(&entry),
        &settings(UpdatePolicy::Rolling),
        &BTreeSet::new(),
    )
    .unwrap();
    assert_eq!(
        steps(&p),
        [
            "promote machine.central[3] 1/1 3->3->4 (it joined as a learner and was never promoted)",
            "remove-stray http://10.0.1.150:2380 1/1 4->4->4 (it was added by a run that stopped, and never started)"
        ]
    );
    assert_eq!(p.etcd.as_ref().unwrap().resolves, vec!["op-1".to_string()]);
    assert!(!p.is_empty(), "the repairs are work to do");
}

#[test]
fn a_join_resumes_an_added_member() {
    let (set, _, _) = set(2, 3, "");
    let mut ms = members(2);
    ms.push(Member {
        id: 0x300,
        name: String::new(),
        peer_urls: vec!["http://10.0.1.103:2380".into()],
        client_urls: vec![],
        is_learner: true,
    });
    let mut p = plan_of(vec![change(a(2), Action::Create)]);
    plan_with(
        &mut p,
        &set,
        &Membership::Known(ms),
        &settings(UpdatePolicy::Rolling),
    )
    .unwrap();
    assert_eq!(
        steps(&p),
        ["join machine.central[2] 1/1 2->2->3 (already added to etcd (a learner))"]
    );
}

#[test]
fn day_one_and_teardown_make_no_membership_call() {
    let (set0, _, _) = set(0, 3, "");
    let mut p = plan_of((0..3).map(|i| change(a(i), Action::Create)).collect());
    plan_with(
        &mut p,
        &set0,
        &Membership::NotRunning,
        &settings(UpdatePolicy::Rolling),
    )
    .unwrap();
    assert!(
        p.etcd.is_none(),
        "a new cluster forms from its rendered configs"
    );

    let (set3, _, _) = set(3, 0, "");
    let mut p = plan_of((0..3).map(|i| change(a(i), Action::Delete)).collect());
    p.destroy = true;
    assert!(!involves_members(&p, &set3, &[]));
    plan_with(
        &mut p,
        &set3,
        &Membership::Known(members(3)),
        &settings(UpdatePolicy::Rolling),
    )
    .unwrap();
    assert!(
        p.etcd.is_none(),
        "destroying every member tears the cluster down"
    );
}

#[test]
fn an_unreachable_cluster_is_noted() {
    let (set, _, _) = set(3, 4, "");
    let mut p = plan_of(vec![change(a(3), Action::Create)]);
    plan_with(
        &mut p,
        &set,
        &Membership::Unreachable("connection refused".into()),
        &settings(UpdatePolicy::Rolling),
    )
    .unwrap();
    let e = p.etcd.as_ref().unwrap();
    assert!(e.live);
    assert!(e.notes[0].contains("connection refused"), "{:?}", e.notes);
    assert_eq!(steps(&p), ["join machine.central[3] 1/1 3->3->4"]);
}

#[test]
fn drift_names_missing_extra_and_unpromoted_members() {
    let (set, _, _) = set(3, 3, "");
    assert!(!member_drift(&set.current, &members(3)).drifted());
    let mut ms = members(3);
    ms.remove(0);
    ms[0].is_learner = true;
    ms.push(Member {
        id: 0xabc,
        name: "intruder".into(),
        peer_urls: vec!["http://10.9.9.9:2380".into()],
        client_urls: vec![],
        is_learner: false,
    });
    let d = member_drift(&set.current, &ms);
    assert!(d.drifted());
    assert_eq!(d.voters, 2);
    assert_eq!(d.missing.len(), 1);
    assert_eq!(d.missing[0].address, Some(a(0)));
    assert_eq!(d.learners[0].name, "demo-central-1");
    assert_eq!(d.extra[0].name, "intruder");
    assert_eq!(d.extra[0].id.as_deref(), Some("0000000000000abc"));
}

#[test]
fn a_teardown_after_a_stopped_run_calls_nothing_and_closes_its_entries() {
    let (set3, _, _) = set(3, 0, "");
    let entry = JournalEntry {
        op_id: "op-9".into(),
        address: a(1),
        action: Action::Delete,
        idempotency_key: "cf-op-9".into(),
        provider: ETCD_JOURNAL.into(),
        kind: ETCD_KIND.into(),
        object_id: Some("http://10.0.1.102:2380".into()),
        dependencies: vec![],
        started_at: "2026-12-02T10:00:00Z".into(),
    };
    let mut p = plan_of((0..3).map(|i| change(a(i), Action::Delete)).collect());
    p.destroy = true;
    plan_members(
        &mut p,
        &set3,
        &Membership::Unreachable("connection refused".into()),
        std::slice::from_ref(&entry),
        &settings(UpdatePolicy::Rolling),
        &BTreeSet::new(),
    )
    .unwrap();
    let e = p.etcd.as_ref().unwrap();
    assert!(e.steps.is_empty() && !e.live, "{e:?}");
    assert_eq!(e.resolves, vec!["op-9".to_string()]);
}
