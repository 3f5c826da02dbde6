//! Arbitrary bytes (as UTF-8) as a Butane file: `parse_butane` returns a config or a
//! located error, and never panics.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A files directory with a couple of files for `contents.local`.
fn files_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("clusterform-fuzz-butane-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("files dir");
        std::fs::write(dir.join("hello.txt"), "hello\n").expect("file");
        std::fs::write(dir.join("sub/zeros"), vec![0u8; 4096]).expect("file");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let dir = files_dir();
        let _ = clusterform_ignition::parse_butane(&dir.join("fuzz.bu"), text, dir);
    }
});
