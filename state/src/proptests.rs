//! Property tests: any bytes as the state file, and a real state file with random damage,
//! load as a snapshot or an error (never a panic), and a load never writes the file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use clusterform_core::{Address, ResourceState};
use proptest::prelude::*;

use crate::{JournalEntry, LocalStore, Mutation, StateStore};

fn record(name: &str, index: u32) -> ResourceState {
    let mut attrs = clusterform_core::Attrs::new();
    attrs.insert(
        "name".to_string(),
        serde_json::json!(format!("demo-{name}-{index}")),
    );
    attrs.insert("size".to_string(), serde_json::json!("2cpu-4gb"));
    ResourceState {
        address: Address::indexed("machine", name, index),
        provider: "sim".to_string(),
        id: format!("m-{index:06}"),
        attrs,
        dependencies: vec![Address::new("network", "main")],
    }
}

/// A real state file: a few commits with records, a removal and an open journal entry.
fn real_state() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(tmp.path().join(".clusterform"));
        for i in 0..4 {
            store
                .commit(&[Mutation::Put(record("workers", i))])
                .expect("commit");
        }
        store
            .commit(&[
                Mutation::Remove(Address::indexed("machine", "workers", 0)),
                Mutation::JournalOpen(JournalEntry {
                    op_id: "op-1".to_string(),
                    address: Address::indexed("machine", "workers", 9),
                    action: clusterform_core::Action::Create,
                    idempotency_key: "k".to_string(),
                    provider: "sim".to_string(),
                    kind: "machine".to_string(),
                    object_id: None,
                    dependencies: vec![],
                    started_at: "2026-01-01T00:00:00Z".to_string(),
                }),
            ])
            .expect("commit");
        std::fs::read(store.path()).expect("read state")
    })
}

/// Load `bytes` as a state file: no panic, and the file is left as it was.
fn load_never_panics_nor_writes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(".clusterform");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("state.redb"), bytes).expect("write");
    let store = LocalStore::new(dir.clone());
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = store.load();
        let _ = store.history(5);
    }));
    prop_assert!(loaded.is_ok(), "load panicked");
    let after = std::fs::read(dir.join("state.redb")).expect("read back");
    prop_assert!(after == bytes, "a load changed the state file");
    Ok(())
}

#[test]
fn the_real_state_loads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("state.redb"), real_state()).expect("write");
    let snap = LocalStore::new(tmp.path().to_path_buf())
        .load()
        .expect("load");
    assert_eq!(snap.resources.len(), 3);
    assert_eq!(snap.journal.len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_never_panic(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..4096),
        prop::collection::vec(any::<u8>(), 4096..20000),
    ]) {
        load_never_panics_nor_writes(&bytes)?;
    }

    #[test]
    fn damaged_real_state_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        header_garbage in any::<bool>(),
    ) {
        let mut bytes = real_state().to_vec();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if header_garbage {
            // The header of a file redb then tries to repair.
            for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
                *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
            }
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len() + 1));
        }
        load_never_panics_nor_writes(&bytes)?;
    }
}

/// Regression: a real file with garbage after its first 4 KiB made redb ask for a repair;
/// `load` repaired the state file in place (rewriting it) and redb panicked half-way, the
/// panic printed over the error. Now the repair runs on a copy, the file is left as it
/// was, and the panic is reported as `Corrupt` only.
#[test]
fn regression_load_of_a_damaged_file_rewrote_it_and_printed_a_panic() {
    let mut bytes = real_state().to_vec();
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("state.redb"), &bytes).expect("write");
    let store = LocalStore::new(tmp.path().to_path_buf());
    assert!(matches!(
        store.load(),
        Err(crate::StateError::Corrupt { .. } | crate::StateError::Database { .. })
    ));
    assert!(std::fs::read(store.path()).expect("read") == bytes);
}
