//! Arbitrary bytes as `.clusterform/state.redb`: `LocalStore::load` (and `history`)
//! return Ok or an error, and never panic or hang.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clusterform_state::{LocalStore, StateStore};
use libfuzzer_sys::fuzz_target;

fn state_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("clusterform-fuzz-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("state dir");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = state_dir();
    std::fs::write(dir.join("state.redb"), data).expect("write state file");
    let store = LocalStore::new(dir.to_path_buf());
    let _ = store.load();
    let _ = store.history(5);
});
