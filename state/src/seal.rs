//! Secrets at rest: the state key and sealing with it (AES-256-GCM, a fresh 96-bit nonce
//! per value, the value's place as associated data). The key never comes from the state:
//! it is a passphrase (`CLUSTERFORM_STATE_KEY`, stretched with Argon2id and a salt kept
//! beside the data) or a key file (32 random bytes in hex, mode 0600). Each sealed value
//! names its key's id, so a wrong key is a clear error, never garbage or a fresh start.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The environment variable with the state passphrase.
pub const KEY_ENV: &str = "CLUSTERFORM_STATE_KEY";

/// The prefix of a sealed value (version 1).
const PREFIX: &str = "cfsealed1";

/// What can go wrong with the state key or a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The value was sealed with another key.
    #[error(
        "the state's secrets were sealed with key {expected}, not with the key given (id {given}); set {KEY_ENV} or `[state] encryption` to the key this state was written with"
    )]
    WrongKey {
        /// The id the value names.
        expected: String,
        /// The id of the key at hand.
        given: String,
    },
    /// The value does not open: changed, cut, or not a sealed value.
    #[error(
        "a sealed secret of the state does not open ({0}): the state was changed outside clusterform, or is damaged; restore a backup (`clusterform state restore`)"
    )]
    Corrupt(String),
    /// A key file that cannot be read or made.
    #[error("the state key file {path}: {why}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The passphrase cannot be stretched (empty, or parameters refused).
    #[error("the passphrase in {KEY_ENV}: {0}")]
    Passphrase(String),
}

/// A 256-bit state key. Its `Debug` shows the id only.
#[derive(Clone)]
pub struct StateKey {
    key: [u8; 32],
    id: String,
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateKey({})", self.id)
    }
}

/// How hard a passphrase is stretched (Argon2id).
#[derive(Clone, Copy, Debug)]
pub struct Stretch {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes.
    pub passes: u32,
}

impl Default for Stretch {
    /// OWASP's Argon2id floor: 19 MiB, 2 passes.
    fn default() -> Self {
        Stretch {
            memory_kib: 19 * 1024,
            passes: 2,
        }
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD_NO_PAD
}

impl StateKey {
    fn from_bytes(key: [u8; 32]) -> StateKey {
        let mut h = Sha256::new();
        h.update(b"clusterform state key id\0");
        h.update(key);
        let digest = h.finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        StateKey { key, id }
    }

    /// The key's id: stored beside what it seals, never the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A key stretched from a passphrase and the state's salt.
    pub fn from_passphrase(
        passphrase: &str,
        salt: &[u8; 16],
        stretch: Stretch,
    ) -> Result<StateKey, SealError> {
        if passphrase.trim().is_empty() {
            return Err(SealError::Passphrase("it is empty".into()));
        }
        let params = argon2::Params::new(stretch.memory_kib, stretch.passes, 1, Some(32))
            .map_err(|e| SealError::Passphrase(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; 32];
        argon
            .hash_password_into(passphrase.as_bytes(), salt, &mut key)
            .map_err(|e| SealError::Passphrase(e.to_string()))?;
        Ok(StateKey::from_bytes(key))
    }

    /// A new random key.
    pub fn generate() -> StateKey {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        StateKey::from_bytes(key)
    }

    /// A new random salt for [`StateKey::from_passphrase`].
    pub fn new_salt() -> [u8; 16] {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        salt
    }

    /// Read a key file: 64 hex digits (a trailing newline allowed). A file others can
    /// read is refused: the key would not be the user's alone.
    pub fn read_file(path: &Path) -> Result<StateKey, SealError> {
        let err = |why: String| SealError::KeyFile {
            path: path.to_path_buf(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "its mode is {mode:o}: others may read it; `chmod 600 {}`",
                    path.display()
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let hex = text.trim();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(err("it must hold 64 hex digits (32 bytes)".into()));
        }
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| err(e.to_string()))?;
        }
        Ok(StateKey::from_bytes(key))
    }

    /// Write this key to a new file, mode 0600 from the start (never readable by others,
    /// not even for a moment); an existing file is never overwritten. The file appears
    /// whole or not at all (written aside, then linked into place), so a process racing
    /// to make the same key file reads a complete one.
    pub fn write_new_file(&self, path: &Path) -> Result<(), SealError> {
        use std::io::Write;
        let err = |why: String| SealError::KeyFile {
            path: path.to_path_buf(),
            why,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(
            ".{}-{:08x}.tmp",
            std::process::id(),
            rand::rng().next_u32()
        ));
        let tmp = path.with_file_name(name);
        let _ = std::fs::remove_file(&tmp);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let written = (|| {
            let mut f = opts.open(&tmp)?;
            let hex: String = self.key.iter().map(|b| format!("{b:02x}")).collect();
            f.write_all(format!("{hex}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        written.map_err(|e| err(e.to_string()))
    }

    /// Seal `plain`; `place` (e.g. the resource address and attribute) is bound to it, so
    /// a sealed value moved elsewhere does not open.
    pub fn seal(&self, plain: &[u8], place: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.key));
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: place.as_bytes(),
                },
            )
            .map_err(|_| SealError::Corrupt(format!("{place} cannot be sealed (too large)")))?;
        let mut body = nonce.to_vec();
        body.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}:{}:{}", self.id, b64().encode(body)))
    }

    /// Open a value sealed by [`StateKey::seal`] for `place`.
    pub fn open(&self, sealed: &str, place: &str) -> Result<Vec<u8>, SealError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some(PREFIX), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Corrupt("not a sealed value".into()));
        };
        if id != self.id {
            return Err(SealError::WrongKey {
                expected: id.to_string(),
                given: self.id.clone(),
            });
        }
        let body = b64()
            .decode(body)
            .map_err(|e| SealError::Corrupt(e.to_string()))?;
        if body.len() < 12 + 16 {
            return Err(SealError::Corrupt("too short".into()));
        }
        let (nonce, ct) = body.split_at(12);
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.key));
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: place.as_bytes(),
                },
            )
            .map_err(|_| SealError::Corrupt("authentication failed".into()))
    }
}

/// True when `text` is a sealed value (of any key).
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(PREFIX) && text[PREFIX.len()..].starts_with(':')
}

/// The id of the key a sealed value names.
pub fn sealed_key_id(text: &str) -> Option<&str> {
    let mut parts = text.splitn(3, ':');
    (parts.next() == Some(PREFIX)).then(|| parts.next())?
}

/// The marker every PEM private key has (`-----BEGIN [EC ]PRIVATE KEY-----`).
const PEM_KEY: &str = "PRIVATE KEY-----";

/// True when `text` holds a PEM private key: as text, inside a JSON string, in a
/// percent-encoded data URL (`PRIVATE%20KEY-----`), or in a base64 one (an Ignition
/// file's contents). Such values are sealed at rest and shown as `(sensitive)`.
pub fn holds_private_key(text: &str) -> bool {
    if text.contains(PEM_KEY) || text.contains("PRIVATE%20KEY-----") {
        return true;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut rest = text;
    while let Some(at) = rest.find(";base64,") {
        rest = &rest[at + ";base64,".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
            .unwrap_or(rest.len());
        if let Ok(bytes) = b64.decode(&rest[..end]) {
            let has = |b: &[u8]| b.windows(PEM_KEY.len()).any(|w| w == PEM_KEY.as_bytes());
            if has(&bytes) {
                return true;
            }
            // Ignition contents may be gzip-compressed (`compression: gzip`).
            if bytes.starts_with(&[0x1f, 0x8b]) {
                use std::io::Read as _;
                let mut plain = Vec::new();
                let mut gz = flate2::read::GzDecoder::new(&bytes[..]).take(16 << 20);
                if gz.read_to_end(&mut plain).is_ok() && has(&plain) {
                    return true;
                }
            }
        }
        rest = &rest[end..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_are_found_in_every_form_a_config_carries_them() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n";
        assert!(holds_private_key(pem));
        assert!(holds_private_key(
            &serde_json::to_string(pem).expect("json")
        ));
        assert!(holds_private_key(
            "data:,-----BEGIN%20PRIVATE%20KEY-----%0A"
        ));
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("x{pem}"));
        assert!(holds_private_key(&format!(
            "{{\"source\":\"data:;base64,{b64}\"}}"
        )));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, pem.as_bytes()).expect("gzip");
        let gz = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
        assert!(holds_private_key(&format!("data:;base64,{gz}")));
        assert!(!holds_private_key("-----BEGIN CERTIFICATE-----"));
        assert!(!holds_private_key("data:;base64,aGVsbG8="));
    }

    fn quick() -> Stretch {
        Stretch {
            memory_kib: 256,
            passes: 1,
        }
    }

    #[test]
    fn sealed_values_open_with_their_key_and_place_only() {
        let k = StateKey::generate();
        let s = k
            .seal(
                b"-----BEGIN PRIVATE KEY-----canary",
                "machine.central[0].tls_key",
            )
            .expect("seal");
        assert!(is_sealed(&s));
        assert!(!s.contains("canary") && !s.contains("PRIVATE"));
        assert_eq!(
            k.open(&s, "machine.central[0].tls_key").expect("open"),
            b"-----BEGIN PRIVATE KEY-----canary"
        );
        // Another place: refused (a value cannot be moved to another attribute).
        assert!(matches!(
            k.open(&s, "machine.central[1].tls_key"),
            Err(SealError::Corrupt(_))
        ));
        // Another key: refused, naming the expected key.
        let other = StateKey::generate();
        match other.open(&s, "machine.central[0].tls_key") {
            Err(SealError::WrongKey { expected, given }) => {
                assert_eq!(expected, k.id());
                assert_eq!(given, other.id());
            }
            r => panic!("{r:?}"),
        }
        // A changed byte: refused.
        let mut bad = s.clone();
        let last = bad.pop().map_or('A', |c| if c == 'A' { 'B' } else { 'A' });
        bad.push(last);
        assert!(k.open(&bad, "machine.central[0].tls_key").is_err());
        // Two seals of one value differ (fresh nonces).
        assert_ne!(
            s,
            k.seal(
                b"-----BEGIN PRIVATE KEY-----canary",
                "machine.central[0].tls_key"
            )
            .expect("seal")
        );
    }

    #[test]
    fn passphrases_stretch_to_the_same_key_with_the_same_salt() {
        let salt = StateKey::new_salt();
        let a = StateKey::from_passphrase("correct horse", &salt, quick()).expect("a");
        let b = StateKey::from_passphrase("correct horse", &salt, quick()).expect("b");
        assert_eq!(a.id(), b.id());
        let c = StateKey::from_passphrase("correct horse!", &salt, quick()).expect("c");
        assert_ne!(a.id(), c.id());
        let d =
            StateKey::from_passphrase("correct horse", &StateKey::new_salt(), quick()).expect("d");
        assert_ne!(a.id(), d.id());
        assert!(StateKey::from_passphrase("  ", &salt, quick()).is_err());
        assert!(!format!("{a:?}").contains("correct"));
    }

    #[test]
    fn key_files_are_made_0600_and_others_readable_ones_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/state.key");
        let k = StateKey::generate();
        k.write_new_file(&path).expect("write");
        assert!(k.write_new_file(&path).is_err(), "never overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let read = StateKey::read_file(&path).expect("read");
        assert_eq!(read.id(), k.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let e = StateKey::read_file(&path).expect_err("world-readable");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::write(dir.path().join("short.key"), "abcd").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dir.path().join("short.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod");
        }
        let e = StateKey::read_file(&dir.path().join("short.key")).expect_err("short");
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }
}
