//! The backup of the previous run's state: made before a run's first commit, readable
//! when the state file itself is damaged.

use std::collections::BTreeMap;

use clusterform_core::{Address, ResourceState};

use crate::{LocalStore, Mutation, StateError, StateStore};

fn record(name: &str) -> ResourceState {
    ResourceState {
        address: Address::new("network", name),
        provider: "sim".into(),
        id: format!("net-{name}"),
        attrs: BTreeMap::new(),
        dependencies: vec![],
    }
}

#[test]
fn each_run_backs_up_the_state_it_found_and_the_backup_survives_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(".clusterform");

    // Run 1 creates the state: nothing to back up yet.
    let run1 = LocalStore::new(dir.clone());
    run1.commit(&[Mutation::Put(record("a"))]).expect("commit");
    assert!(!run1.backup_path().exists());

    // Run 2 backs up what run 1 left, once, before its first commit.
    let run2 = LocalStore::new(dir.clone());
    run2.commit(&[Mutation::Put(record("b"))]).expect("commit");
    run2.commit(&[Mutation::Put(record("c"))]).expect("commit");
    let backup = run2.backup_path();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup)
        .expect("backup")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The state file is damaged: loading it fails clearly...
    std::fs::write(dir.join("state.redb"), b"not a database at all").expect("clobber");
    let damaged = LocalStore::new(dir.clone()).load();
    assert!(
        matches!(damaged, Err(StateError::Corrupt { .. })),
        "{damaged:?}"
    );

    // ...and the backup holds run 1's state, readable as a store of its own.
    let restored_dir = tmp.path().join("restored");
    std::fs::create_dir_all(&restored_dir).expect("mkdir");
    std::fs::copy(&backup, restored_dir.join("state.redb")).expect("copy");
    let snap = LocalStore::new(restored_dir).load().expect("backup loads");
    assert_eq!(snap.serial, 1);
    let names: Vec<String> = snap.resources.keys().map(ToString::to_string).collect();
    assert_eq!(names, vec!["network.a"]);
}
