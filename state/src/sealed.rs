//! [`SealedStore`]: any [`StateStore`] with the cluster's secrets sealed at rest. Before
//! a commit reaches the store, every secret and every sensitive attribute value is sealed
//! with the state key (AES-256-GCM, bound to its place); after a load they are opened
//! again. The key is never in the state: a passphrase, a key file, or the user's default
//! key file, made 0600 the first time something is sealed. A state without sealed values
//! needs no key at all.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use clusterform_core::ResourceState;
use serde_json::Value;

use crate::seal::{KEY_ENV, SealError, StateKey, Stretch, is_sealed};
use crate::{HistoryEntry, LockGuard, LockInfo, Mutation, Snapshot, StateError, StateStore};

/// Which attribute values of a record are sensitive (sealed at rest).
pub type Sensitive = Arc<dyn Fn(&ResourceState, &str) -> bool + Send + Sync>;

/// The secret holding the salt a passphrase is stretched with (not secret itself).
const SALT: &str = "state-key-salt";

/// Where the state key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// `CLUSTERFORM_STATE_KEY`: a passphrase, stretched with Argon2id and the state's salt.
    Passphrase(String),
    /// The key file `[state] encryption` names: it must exist.
    File(PathBuf),
    /// The user's key file for this state: made (0600) the first time a secret is sealed.
    Default(PathBuf),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Passphrase(_) => write!(f, "Passphrase(<sensitive>)"),
            KeySource::File(p) => write!(f, "File({})", p.display()),
            KeySource::Default(p) => write!(f, "Default({})", p.display()),
        }
    }
}

/// Why there is no key for what is sealed (the default key file is missing).
fn no_default_key(path: &std::path::Path) -> SealError {
    SealError::KeyFile {
        path: path.to_path_buf(),
        why: format!(
            "it does not exist here, and something sealed needs it: set `[state] encryption = \"PATH\"` to the key file the state was written with (or {KEY_ENV} to its passphrase)"
        ),
    }
}

impl KeySource {
    /// The key. A passphrase is stretched with `salt` (required for one); the default
    /// key file is made when missing and `create`, with a note for the user.
    pub fn key(
        &self,
        salt: Option<&[u8; 16]>,
        create: bool,
        stretch: Stretch,
    ) -> Result<(StateKey, Option<String>), SealError> {
        match self {
            KeySource::Passphrase(p) => {
                let salt = salt.ok_or_else(|| {
                    SealError::Passphrase("there is no salt to stretch it with".into())
                })?;
                Ok((StateKey::from_passphrase(p, salt, stretch)?, None))
            }
            KeySource::File(path) => Ok((StateKey::read_file(path)?, None)),
            KeySource::Default(path) if path.exists() => Ok((StateKey::read_file(path)?, None)),
            KeySource::Default(path) if create => {
                let key = StateKey::generate();
                if let Err(e) = key.write_new_file(path) {
                    // Another run made it first: that key is the state's.
                    if path.exists() {
                        return Ok((StateKey::read_file(path)?, None));
                    }
                    return Err(e);
                }
                let note = format!(
                    "made the state key {} (mode 0600): the secrets in this state are sealed with it. Keep it, and back it up: without it they cannot be read. Another workstation needs it too ({KEY_ENV} or `[state] encryption` name a key explicitly)",
                    path.display()
                );
                Ok((key, Some(note)))
            }
            KeySource::Default(path) => Err(no_default_key(path)),
        }
    }

    /// How the key is named in messages.
    fn describe(&self) -> String {
        match self {
            KeySource::Passphrase(_) => format!("the passphrase in {KEY_ENV}"),
            KeySource::File(p) => format!("the key file {} (`[state] encryption`)", p.display()),
            KeySource::Default(p) => format!("the key file {}", p.display()),
        }
    }
}

/// The key file beside `path` (the user's key folder) whose key has id `id`.
fn key_file_with_id(path: &Path, id: &str) -> Option<StateKey> {
    std::fs::read_dir(path.parent()?)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .filter_map(|p| StateKey::read_file(&p).ok())
        .find(|k| k.id() == id)
}

/// A state store whose secrets and sensitive values are sealed before they are stored.
pub struct SealedStore {
    inner: Arc<dyn StateStore>,
    source: KeySource,
    sensitive: Sensitive,
    stretch: Stretch,
    key: Mutex<Option<StateKey>>,
    notify: Option<Notify>,
}

/// Called with what the user should be told once (a key file was made).
pub type Notify = Arc<dyn Fn(&str) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn place(record: &ResourceState, attr: &str) -> String {
    format!("{}/{attr}", record.address)
}

fn secret_place(name: &str) -> String {
    format!("secret/{name}")
}

impl SealedStore {
    /// `inner` with the values `sensitive` names sealed with the key from `source`.
    pub fn new(inner: Arc<dyn StateStore>, source: KeySource, sensitive: Sensitive) -> Self {
        SealedStore {
            inner,
            source,
            sensitive,
            stretch: Stretch::default(),
            key: Mutex::new(None),
            notify: None,
        }
    }

    /// Tell the user through `notify` what they should be told once (a key file was
    /// made).
    pub fn with_notify(mut self, notify: Notify) -> Self {
        self.notify = Some(notify);
        self
    }

    /// Stretch passphrases with `stretch` (tests use a light one).
    pub fn with_stretch(mut self, stretch: Stretch) -> Self {
        self.stretch = stretch;
        self
    }

    fn err(&self, detail: impl std::fmt::Display) -> StateError {
        StateError::Secret {
            path: self.inner.describe(),
            detail: detail.to_string(),
        }
    }

    fn seal_err(&self, e: SealError) -> StateError {
        match e {
            SealError::WrongKey { expected, given } => self.err(format!(
                "its secrets were sealed with the key whose id is {expected}, and {} is another key (id {given}); set {KEY_ENV}, or `[state] encryption = \"PATH\"`, to the key this state was written with",
                self.source.describe()
            )),
            other => self.err(other),
        }
    }

    /// The passphrase salt `secrets` holds, if valid.
    fn salt_of(secrets: &std::collections::BTreeMap<String, String>) -> Option<[u8; 16]> {
        secrets
            .get(SALT)
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
    }

    /// The key for opening what `secrets` says was sealed; never makes anything.
    fn open_key(
        &self,
        secrets: &std::collections::BTreeMap<String, String>,
        sealed_with: Option<&str>,
    ) -> Result<StateKey, StateError> {
        if let Some(k) = lock(&self.key).clone() {
            return Ok(k);
        }
        let salt = Self::salt_of(secrets);
        if matches!(self.source, KeySource::Passphrase(_)) && salt.is_none() {
            // No passphrase ever sealed anything here: a key file did.
            return Err(self.err(format!(
                "its secrets were sealed with the key whose id is {}, a key file, not a passphrase: unset {KEY_ENV}, and use the key file this state was written with (`[state] encryption = \"PATH\"`, or the one clusterform made on the workstation that first wrote it)",
                sealed_with.unwrap_or("unknown")
            )));
        }
        // A state folder moved or copied elsewhere on this workstation: its key file is
        // still among the user's keys, found by the id the sealed values name.
        if let (KeySource::Default(path), Some(id)) = (&self.source, sealed_with)
            && !path.exists()
            && let Some(key) = key_file_with_id(path, id)
        {
            *lock(&self.key) = Some(key.clone());
            return Ok(key);
        }
        let (key, _) = self
            .source
            .key(salt.as_ref(), false, self.stretch)
            .map_err(|e| match (e, sealed_with) {
                // Say which key it needs: the id names the file among the user's keys.
                (SealError::KeyFile { path, why }, Some(id)) if !path.exists() => {
                    self.seal_err(SealError::KeyFile {
                        path,
                        why: format!("{why}; its values were sealed with the key whose id is {id}"),
                    })
                }
                (e, _) => self.seal_err(e),
            })?;
        *lock(&self.key) = Some(key.clone());
        Ok(key)
    }

    /// The key for sealing, made when there is none yet (a salt for a passphrase, the
    /// default key file), with the mutations that record what was made.
    fn seal_key(&self) -> Result<(StateKey, Vec<Mutation>), StateError> {
        if let Some(k) = lock(&self.key).clone() {
            return Ok((k, Vec::new()));
        }
        let mut extra = Vec::new();
        let mut salt = None;
        if matches!(self.source, KeySource::Passphrase(_)) {
            let secrets = self.inner.load()?.secrets;
            salt = Self::salt_of(&secrets);
            if salt.is_none() {
                let new = StateKey::new_salt();
                extra.push(Mutation::SetSecret {
                    name: SALT.to_string(),
                    value: base64::engine::general_purpose::STANDARD.encode(new),
                });
                salt = Some(new);
            }
        }
        let (key, note) = self
            .source
            .key(salt.as_ref(), true, self.stretch)
            .map_err(|e| self.seal_err(e))?;
        if let (Some(note), Some(n)) = (note, &self.notify) {
            n(&note);
        }
        *lock(&self.key) = Some(key.clone());
        Ok((key, extra))
    }

    fn seal_record(&self, key: &StateKey, r: &ResourceState) -> Result<ResourceState, StateError> {
        let mut out = r.clone();
        for (name, v) in out.attrs.iter_mut() {
            let already = matches!(v, Value::String(s) if is_sealed(s));
            if v.is_null() || already || !(self.sensitive)(r, name) {
                continue;
            }
            let json = serde_json::to_vec(v).map_err(|e| self.err(e))?;
            *v = Value::String(
                key.seal(&json, &place(r, name))
                    .map_err(|e| self.seal_err(e))?,
            );
        }
        Ok(out)
    }

    fn needs_sealing(&self, m: &Mutation) -> bool {
        match m {
            Mutation::Put(r) => r
                .attrs
                .iter()
                .any(|(k, v)| !v.is_null() && (self.sensitive)(r, k)),
            Mutation::SetSecret { name, .. } => name != SALT,
            _ => false,
        }
    }

    /// Open every sealed value of `snap` with the key.
    fn open_snapshot(&self, snap: &mut Snapshot) -> Result<(), StateError> {
        let sealed_attrs = snap.resources.values().any(|r| {
            r.attrs
                .values()
                .any(|v| matches!(v, Value::String(s) if is_sealed(s)))
        });
        let sealed_secrets = snap.secrets.keys().any(|k| k != SALT);
        if !sealed_attrs && !sealed_secrets {
            return Ok(());
        }
        let sample = snap
            .resources
            .values()
            .flat_map(|r| r.attrs.values())
            .filter_map(Value::as_str)
            .chain(
                snap.secrets
                    .iter()
                    .filter(|(k, _)| *k != SALT)
                    .map(|(_, v)| v.as_str()),
            )
            .find_map(crate::seal::sealed_key_id)
            .map(str::to_string);
        let key = self.open_key(&snap.secrets, sample.as_deref())?;
        for r in snap.resources.values_mut() {
            let address = r.address.clone();
            for (name, v) in r.attrs.iter_mut() {
                let Value::String(s) = v else { continue };
                if !is_sealed(s) {
                    continue;
                }
                let plain = key
                    .open(s, &format!("{address}/{name}"))
                    .map_err(|e| self.seal_err(e))?;
                *v = serde_json::from_slice(&plain).map_err(|e| {
                    self.err(format!("`{address}`'s `{name}` opens to no JSON: {e}"))
                })?;
            }
        }
        for (name, v) in snap.secrets.iter_mut() {
            if name == SALT {
                continue;
            }
            let plain = key
                .open(v, &secret_place(name))
                .map_err(|e| self.seal_err(e))?;
            *v = String::from_utf8(plain)
                .map_err(|e| self.err(format!("secret `{name}` is not text: {e}")))?;
        }
        Ok(())
    }

    /// Seal everything of `snap` again with the key of `new` (and its salt), as one
    /// commit of the store underneath: `state rekey`. `snap` is what
    /// [`StateStore::load`] gave with the old key (opened).
    pub fn reseal(snap: &Snapshot, new: &SealedStore) -> Result<u64, StateError> {
        let mut mutations: Vec<Mutation> = snap
            .resources
            .values()
            .cloned()
            .map(Mutation::Put)
            .collect();
        for (name, value) in &snap.secrets {
            if name != SALT {
                mutations.push(Mutation::SetSecret {
                    name: name.clone(),
                    value: value.clone(),
                });
            }
        }
        new.commit(&mutations)
    }
}

impl StateStore for SealedStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn load(&self) -> Result<Snapshot, StateError> {
        let mut snap = self.inner.load()?;
        self.open_snapshot(&mut snap)?;
        Ok(snap)
    }

    fn load_secrets(&self) -> Result<Snapshot, StateError> {
        let mut snap = self.inner.load_secrets()?;
        self.open_snapshot(&mut snap)?;
        Ok(snap)
    }

    fn commit(&self, mutations: &[Mutation]) -> Result<u64, StateError> {
        if !mutations.iter().any(|m| self.needs_sealing(m)) {
            return self.inner.commit(mutations);
        }
        let (key, mut out) = self.seal_key()?;
        out.reserve(mutations.len());
        for m in mutations {
            out.push(match m {
                Mutation::Put(r) => Mutation::Put(self.seal_record(&key, r)?),
                Mutation::SetSecret { name, value } if name != SALT => Mutation::SetSecret {
                    name: name.clone(),
                    value: key
                        .seal(value.as_bytes(), &secret_place(name))
                        .map_err(|e| self.seal_err(e))?,
                },
                other => other.clone(),
            });
        }
        self.inner.commit(&out)
    }

    fn lock(&self, operation: &str, wait: Duration) -> Result<Box<dyn LockGuard>, StateError> {
        self.inner.lock(operation, wait)
    }

    fn lock_holder(&self) -> Result<Option<LockInfo>, StateError> {
        self.inner.lock_holder()
    }

    fn force_unlock(&self, id: &str) -> Result<LockInfo, StateError> {
        self.inner.force_unlock(id)
    }

    fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StateError> {
        self.inner.history(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalStore, MemStore};
    use clusterform_core::Address;

    fn quick() -> Stretch {
        Stretch {
            memory_kib: 256,
            passes: 1,
        }
    }

    const CANARY: &str = "-----BEGIN PRIVATE KEY-----canary-4242";

    fn record(name: &str) -> ResourceState {
        let mut r = ResourceState {
            address: Address::indexed("machine", name, 0),
            provider: "sim".into(),
            id: format!("i-{name}"),
            attrs: Default::default(),
            dependencies: Vec::new(),
        };
        r.attrs.insert(
            "user_data".into(),
            Value::String(format!("{{\"key\":\"{CANARY}\"}}")),
        );
        r.attrs.insert("size".into(), Value::String("small".into()));
        r
    }

    fn user_data_only() -> Sensitive {
        Arc::new(|_r: &ResourceState, a: &str| a == "user_data")
    }

    fn sealed(inner: Arc<dyn StateStore>, source: KeySource) -> SealedStore {
        SealedStore::new(inner, source, user_data_only()).with_stretch(quick())
    }

    fn file_bytes(dir: &std::path::Path) -> Vec<u8> {
        let mut all = Vec::new();
        for e in std::fs::read_dir(dir).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_file() {
                all.extend(std::fs::read(p).expect("read"));
            }
        }
        all
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn secrets_and_sensitive_values_never_reach_the_file_and_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let keyfile = dir.path().join("keys/state.key");
        let store: Arc<dyn StateStore> = Arc::new(LocalStore::new(dir.path().join("state")));
        let told: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = told.clone();
        let s = sealed(store.clone(), KeySource::Default(keyfile.clone()))
            .with_notify(Arc::new(move |n: &str| lock(&sink).push(n.to_string())));
        s.commit(&[
            Mutation::Put(record("a")),
            Mutation::SetSecret {
                name: "etcd-ca-key".into(),
                value: CANARY.into(),
            },
        ])
        .expect("commit");
        let notes = lock(&told).clone();
        assert!(notes[0].contains("made the state key"), "{notes:?}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&keyfile).expect("key file").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Not in the state file, in any form.
        let bytes = file_bytes(&dir.path().join("state"));
        assert!(
            !contains(&bytes, "canary-4242"),
            "the canary is in the state file"
        );
        assert!(
            contains(&bytes, "small"),
            "what is not sensitive stays readable"
        );
        // The store underneath sees sealed values; this store opens them.
        let raw = store.load().expect("raw");
        assert!(is_sealed(raw.secrets["etcd-ca-key"].as_str()));
        let back = sealed(store.clone(), KeySource::Default(keyfile.clone()))
            .load()
            .expect("load");
        assert_eq!(back.secrets["etcd-ca-key"], CANARY);
        assert_eq!(
            back.resources[&Address::indexed("machine", "a", 0)],
            record("a")
        );
    }

    #[test]
    fn a_wrong_or_missing_key_is_a_clear_error_never_a_fresh_start() {
        let mem: Arc<dyn StateStore> = Arc::new(MemStore::new());
        let right = sealed(mem.clone(), KeySource::Passphrase("correct horse".into()));
        right.commit(&[Mutation::Put(record("a"))]).expect("commit");

        let wrong = sealed(mem.clone(), KeySource::Passphrase("battery staple".into()));
        let e = wrong.load().expect_err("wrong key");
        let text = e.to_string();
        assert!(text.contains("sealed with the key whose id is"), "{text}");
        assert!(text.contains(KEY_ENV), "{text}");

        let dir = tempfile::tempdir().expect("dir");
        let missing = sealed(mem.clone(), KeySource::Default(dir.path().join("none.key")));
        let text = missing.load().expect_err("no key").to_string();
        assert!(text.contains("does not exist here"), "{text}");
        assert!(
            text.contains("sealed with the key whose id is"),
            "names the key: {text}"
        );
        assert!(!dir.path().join("none.key").exists(), "a read makes no key");

        // A state with nothing sealed needs no key.
        let plain: Arc<dyn StateStore> = Arc::new(MemStore::new());
        let mut r = record("b");
        r.attrs.remove("user_data");
        plain.commit(&[Mutation::Put(r)]).expect("commit");
        sealed(plain, KeySource::Default(dir.path().join("none.key")))
            .load()
            .expect("no key needed");
        // The passphrase's salt is beside the data, the passphrase nowhere.
        let raw = mem.load().expect("raw");
        assert!(raw.secrets.contains_key(SALT));
        assert!(!format!("{raw:?}").contains("correct horse"));
    }

    #[test]
    fn a_moved_state_finds_its_key_file_by_the_id_it_was_sealed_with() {
        let dir = tempfile::tempdir().expect("dir");
        let mem: Arc<dyn StateStore> = Arc::new(MemStore::new());
        sealed(
            mem.clone(),
            KeySource::Default(dir.path().join("keys/old.key")),
        )
        .commit(&[Mutation::Put(record("a"))])
        .expect("commit");
        // Another folder's key file name (its hash differs): the key is found by its id,
        // and no new key file is made.
        let moved = sealed(
            mem.clone(),
            KeySource::Default(dir.path().join("keys/new.key")),
        );
        let snap = moved.load().expect("found by id");
        assert!(
            snap.resources[&Address::indexed("machine", "a", 0)].attrs["user_data"]
                .as_str()
                .is_some_and(|u| u.contains(CANARY))
        );
        assert!(!dir.path().join("keys/new.key").exists());
        // Not among the keys: the clear error, as before.
        let other = tempfile::tempdir().expect("dir");
        sealed(
            mem.clone(),
            KeySource::Default(other.path().join("keys/x.key")),
        )
        .load()
        .expect_err("not this key");
    }

    #[test]
    fn runs_racing_to_make_the_key_file_all_get_the_one_made() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys/state.key");
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let p = path.clone();
                    s.spawn(move || {
                        KeySource::Default(p)
                            .key(None, true, quick())
                            .expect("a key")
                            .0
                            .id()
                            .to_string()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(ids.iter().all(|i| i == &ids[0]), "{ids:?}");
        let left: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("read")
            .collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
    }

    #[test]
    fn rekey_seals_everything_again_with_the_new_key() {
        let mem: Arc<dyn StateStore> = Arc::new(MemStore::new());
        let old = sealed(mem.clone(), KeySource::Passphrase("old pass".into()));
        old.commit(&[
            Mutation::Put(record("a")),
            Mutation::SetSecret {
                name: "etcd-ca-key".into(),
                value: CANARY.into(),
            },
        ])
        .expect("commit");
        let dir = tempfile::tempdir().expect("dir");
        let newfile = dir.path().join("new.key");
        StateKey::generate().write_new_file(&newfile).expect("key");
        let snap = old.load().expect("load");
        let new = sealed(mem.clone(), KeySource::File(newfile.clone()));
        SealedStore::reseal(&snap, &new).expect("rekey");
        let again = sealed(mem.clone(), KeySource::File(newfile))
            .load()
            .expect("load");
        assert_eq!(again.secrets["etcd-ca-key"], CANARY);
        assert_eq!(again.resources.len(), 1);
        let e = sealed(mem.clone(), KeySource::Passphrase("old pass".into()))
            .load()
            .expect_err("the old key no longer opens it");
        assert!(e.to_string().contains("another key"), "{e}");
    }
}
