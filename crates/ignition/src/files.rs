//! Reading the local files a configuration names (Butane files, `contents.local`): the
//! one place such files are read, confined to a folder after symlinks are resolved,
//! regular files only (never a FIFO, a device or a folder), and bounded in size.
//!
//! Configuration files may come from someone else (a pull request, a shared repository),
//! so a name in them is hostile input: `../../etc/shadow`, a symlink pointing out of
//! the folder, `/dev/zero` or a FIFO that would block forever. Errors say what is wrong
//! with the file and never contain any of its bytes.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest Butane file read: 1 MiB (Butane files are a few kilobytes; a machine's
/// whole Ignition config must fit in its user data).
pub const BUTANE_LIMIT: u64 = 1 << 20;

/// The largest `contents.local` file read: 16 MiB (it is embedded, compressed and
/// base64-encoded, in every machine's Ignition config).
pub const LOCAL_LIMIT: u64 = 16 << 20;

/// Why a named file was not read. The messages read after the file's name ("Butane
/// file `x.bu` ..."), and never contain the file's content.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The folder files are confined to cannot be resolved.
    #[error("cannot be read: the folder `{}` it must be in cannot be resolved: {source}", root.display())]
    Root {
        /// The folder.
        root: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing at that path (or a dangling symlink).
    #[error("does not exist (looked for {})", path.display())]
    Missing {
        /// The path looked for.
        path: PathBuf,
    },
    /// The path, symlinks resolved, is not inside the folder.
    #[error("is outside the folder `{}` files are read from (it resolves to `{}`)", root.display(), resolved.display())]
    Outside {
        /// The folder (symlinks resolved).
        root: PathBuf,
        /// Where the path leads.
        resolved: PathBuf,
    },
    /// A folder, FIFO, device or socket.
    #[error("is a {kind}, not a regular file")]
    NotRegular {
        /// What it is.
        kind: &'static str,
    },
    /// Bigger than the limit.
    #[error("is larger than the limit of {}", human(*limit))]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Any other error opening or reading it.
    #[error("cannot be read: {0}")]
    Io(#[source] std::io::Error),
}

/// A read file.
#[derive(Debug)]
pub struct ReadFile {
    /// Its path with symlinks resolved (inside the folder).
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Read `name` (relative to `base`, or absolute) if, with every symlink resolved, it is
/// a regular file inside `root` of at most `limit` bytes.
///
/// The type is checked before the file is opened (a FIFO is never opened), the file is
/// opened without blocking and without following a last-moment symlink, checked again
/// on the open handle, and read through a bounded reader.
pub fn read_confined(
    root: &Path,
    base: &Path,
    name: &Path,
    limit: u64,
) -> Result<ReadFile, FileError> {
    let root = std::fs::canonicalize(root).map_err(|source| FileError::Root {
        root: root.to_path_buf(),
        source,
    })?;
    let wanted = base.join(name);
    let path = match std::fs::canonicalize(&wanted) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileError::Missing { path: wanted });
        }
        Err(e) => return Err(FileError::Io(e)),
    };
    if !path.starts_with(&root) {
        return Err(FileError::Outside {
            root,
            resolved: path,
        });
    }
    check(&std::fs::metadata(&path).map_err(FileError::Io)?, limit)?;
    let mut file = open(&path).map_err(FileError::Io)?;
    check(&file.metadata().map_err(FileError::Io)?, limit)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(FileError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    Ok(ReadFile { path, bytes })
}

/// A regular file of at most `limit` bytes (by its size; the read is bounded too).
fn check(meta: &Metadata, limit: u64) -> Result<(), FileError> {
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            kind: kind(meta.file_type()),
        });
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge { limit });
    }
    Ok(())
}

/// Open for reading: on Unix without blocking (a FIFO swapped in after the check does
/// not hang) and refusing a symlink as the last component.
fn open(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// What a file that is not a regular file is, in words.
fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        return "folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "named pipe (FIFO)";
        }
        if t.is_char_device() {
            return "character device";
        }
        if t.is_block_device() {
            return "block device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    "special file"
}

/// `1 MiB`, `16 MiB`, or bytes.
fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const MARKER: &str = "SECRET-MARKER-d41d8cd9";

    struct Fx {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn fx() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("ok.txt"), "fine\n").unwrap();
        let outside = tmp.path().join("secret.txt");
        std::fs::write(&outside, MARKER).unwrap();
        Fx {
            _tmp: tmp,
            root,
            outside,
        }
    }

    fn read(f: &Fx, name: &str, limit: u64) -> Result<ReadFile, FileError> {
        read_confined(&f.root, &f.root, Path::new(name), limit)
    }

    fn refused(f: &Fx, name: &str, limit: u64) -> FileError {
        let e = read(f, name, limit).expect_err(name);
        assert!(!e.to_string().contains(MARKER), "{e}");
        assert!(!format!("{e:?}").contains(MARKER), "{e:?}");
        e
    }

    #[test]
    fn reads_a_regular_file_inside() {
        let f = fx();
        let r = read(&f, "ok.txt", 100).unwrap();
        assert_eq!(r.bytes, b"fine\n");
        assert!(r.path.ends_with("ok.txt"));
        std::fs::create_dir(f.root.join("sub")).unwrap();
        std::fs::write(f.root.join("sub/x"), "x").unwrap();
        assert_eq!(read(&f, "sub/../sub/x", 100).unwrap().bytes, b"x");
    }

    #[test]
    fn a_symlink_inside_the_folder_is_followed() {
        let f = fx();
        std::os::unix::fs::symlink("ok.txt", f.root.join("link")).unwrap();
        assert_eq!(read(&f, "link", 100).unwrap().bytes, b"fine\n");
    }

    #[test]
    fn exactly_the_limit_is_read() {
        let f = fx();
        assert_eq!(read(&f, "ok.txt", 5).unwrap().bytes.len(), 5);
        assert!(matches!(
            refused(&f, "ok.txt", 4),
            FileError::TooLarge { limit: 4 }
        ));
    }

    #[test]
    fn parent_and_absolute_paths_outside_are_refused() {
        let f = fx();
        assert!(matches!(
            refused(&f, "../secret.txt", 1000),
            FileError::Outside { .. }
        ));
        let abs = f.outside.display().to_string();
        assert!(matches!(refused(&f, &abs, 1000), FileError::Outside { .. }));
    }

    #[test]
    fn a_symlink_pointing_outside_is_refused() {
        let f = fx();
        std::os::unix::fs::symlink(&f.outside, f.root.join("shadow")).unwrap();
        let e = refused(&f, "shadow", 1000);
        assert!(matches!(e, FileError::Outside { .. }), "{e}");
        // A symlinked folder leading out.
        std::os::unix::fs::symlink(f.outside.parent().unwrap(), f.root.join("up")).unwrap();
        assert!(matches!(
            refused(&f, "up/secret.txt", 1000),
            FileError::Outside { .. }
        ));
    }

    #[test]
    fn folders_devices_and_fifos_are_refused_without_blocking() {
        let f = fx();
        std::fs::create_dir(f.root.join("dir")).unwrap();
        assert!(matches!(
            refused(&f, "dir", 1000),
            FileError::NotRegular { kind: "folder" }
        ));
        std::os::unix::fs::symlink("/dev/zero", f.root.join("zero")).unwrap();
        // /dev/zero is outside the folder: refused for that before its type matters.
        assert!(matches!(
            refused(&f, "zero", 1000),
            FileError::Outside { .. }
        ));
        // With the root at /dev, the type is what refuses it.
        let e = read_confined(Path::new("/dev"), Path::new("/dev"), Path::new("zero"), 10)
            .expect_err("device");
        assert!(
            matches!(
                e,
                FileError::NotRegular {
                    kind: "character device"
                }
            ),
            "{e}"
        );
        let fifo = f.root.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let started = std::time::Instant::now();
        let e = refused(&f, "fifo", 1000);
        assert!(
            matches!(
                e,
                FileError::NotRegular {
                    kind: "named pipe (FIFO)"
                }
            ),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_huge_sparse_file_is_refused_by_its_size() {
        let f = fx();
        let file = File::create(f.root.join("big")).unwrap();
        file.set_len(64 << 20).unwrap();
        let e = refused(&f, "big", LOCAL_LIMIT);
        assert!(matches!(e, FileError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("16 MiB"), "{e}");
    }

    #[test]
    fn missing_files_and_roots_are_told_apart() {
        let f = fx();
        assert!(matches!(refused(&f, "nope", 10), FileError::Missing { .. }));
        std::os::unix::fs::symlink("nowhere", f.root.join("dangling")).unwrap();
        assert!(matches!(
            refused(&f, "dangling", 10),
            FileError::Missing { .. }
        ));
        let e = read_confined(&f.root.join("gone"), &f.root, Path::new("ok.txt"), 10)
            .expect_err("no root");
        assert!(matches!(e, FileError::Root { .. }), "{e}");
    }
}
