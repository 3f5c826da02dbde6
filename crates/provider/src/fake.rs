//! An in-memory provider for unit tests: objects in a map, ids `fake-N`, call counts,
//! and addresses that fail on demand. The simulated cloud for users is `providers/sim`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use clusterform_core::{Address, AttrSchema, AttrType, KindSchema, ProviderSchema, Value};

use crate::{
    CreateRequest, DeleteRequest, Object, Provider, ProviderError, ReadRequest, Reader, Result,
    UpdateRequest,
};

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Object>,
    next: u64,
    calls: BTreeMap<&'static str, u64>,
}

/// The fake provider (name `fake`): kinds `network` and `machine`.
pub struct FakeProvider {
    schema: ProviderSchema,
    inner: Mutex<Inner>,
    fail: Mutex<BTreeSet<Address>>,
    runs_machines: AtomicBool,
}

impl Default for FakeProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeProvider {
    /// An empty fake cloud.
    pub fn new() -> Self {
        let network = KindSchema {
            kind: "network".into(),
            doc: "a network".into(),
            attrs: vec![
                AttrSchema::required("cidr", AttrType::String, "").force_new(),
                AttrSchema::optional("dns", AttrType::StringList, ""),
            ],
        };
        let machine = KindSchema {
            kind: "machine".into(),
            doc: "a machine".into(),
            attrs: vec![
                AttrSchema::required("size", AttrType::String, ""),
                AttrSchema::optional("zone", AttrType::String, "").force_new(),
                AttrSchema::optional("network", AttrType::Reference, "").force_new(),
                AttrSchema::optional_computed("address", AttrType::String, "").force_new(),
                AttrSchema::optional("name", AttrType::String, "").force_new(),
                AttrSchema::optional("user_data", AttrType::String, "").force_new(),
            ],
        };
        FakeProvider {
            schema: ProviderSchema {
                provider: "fake".into(),
                kinds: vec![network, machine],
            },
            inner: Mutex::new(Inner::default()),
            fail: Mutex::new(BTreeSet::new()),
            runs_machines: AtomicBool::new(false),
        }
    }

    /// Say whether its machines "boot" (see [`Reader::runs_machines`]; default false).
    pub fn set_runs_machines(&self, runs: bool) {
        self.runs_machines.store(runs, Ordering::SeqCst);
    }

    /// Make every create/update/delete of `address` fail permanently.
    pub fn fail_on(&self, address: Address) {
        self.lock_fail().insert(address);
    }

    /// The objects that exist now.
    pub fn objects(&self) -> Vec<Object> {
        self.lock().objects.values().cloned().collect()
    }

    /// How many times each method was called.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.lock().calls.clone()
    }

    /// Change an attribute behind the engine's back (drift).
    pub fn tamper(&self, id: &str, attr: &str, value: Value) {
        if let Some(o) = self.lock().objects.get_mut(id) {
            o.attrs.insert(attr.to_string(), value);
        }
    }

    /// Delete an object behind the engine's back (drift).
    pub fn remove(&self, id: &str) {
        self.lock().objects.remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_fail(&self) -> std::sync::MutexGuard<'_, BTreeSet<Address>> {
        self.fail.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, call: &'static str) {
        *self.lock().calls.entry(call).or_default() += 1;
    }

    fn check_fail(&self, address: &Address) -> Result<()> {
        if self.lock_fail().contains(address) {
            return Err(ProviderError::Permanent(format!(
                "injected failure for `{address}`"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Reader for FakeProvider {
    fn name(&self) -> &str {
        "fake"
    }
    fn schema(&self) -> &ProviderSchema {
        &self.schema
    }
    fn max_batch(&self) -> usize {
        100
    }
    fn runs_machines(&self) -> bool {
        self.runs_machines.load(Ordering::SeqCst)
    }
    async fn read(&self, req: &ReadRequest) -> Result<Option<Object>> {
        self.count("read");
        Ok(self.lock().objects.get(&req.id).cloned())
    }
    async fn read_batch(&self, reqs: &[ReadRequest]) -> Vec<Result<Option<Object>>> {
        self.count("read_batch");
        let inner = self.lock();
        reqs.iter()
            .map(|r| Ok(inner.objects.get(&r.id).cloned()))
            .collect()
    }
    async fn find_by_key(&self, kind: &str, key: &str) -> Result<Option<Object>> {
        self.count("find_by_key");
        Ok(self
            .lock()
            .objects
            .values()
            .find(|o| o.kind == kind && o.owner.as_ref().is_some_and(|w| w.op == key))
            .cloned())
    }
    async fn list_cluster(&self, cluster: &str) -> Result<Vec<Object>> {
        self.count("list_cluster");
        Ok(self
            .lock()
            .objects
            .values()
            .filter(|o| o.owner.as_ref().is_some_and(|w| w.cluster == cluster))
            .cloned()
            .collect())
    }
    async fn list_owned(&self) -> Result<Vec<Object>> {
        self.count("list_owned");
        Ok(self
            .lock()
            .objects
            .values()
            .filter(|o| o.owner.is_some())
            .cloned()
            .collect())
    }
}

#[async_trait]
impl Provider for FakeProvider {
    async fn create(&self, req: &CreateRequest) -> Result<Object> {
        self.count("create");
        self.check_fail(&req.owner.address)?;
        let mut inner = self.lock();
        if let Some(o) = inner
            .objects
            .values()
            .find(|o| o.owner.as_ref().is_some_and(|w| w.op == req.owner.op))
        {
            return Ok(o.clone());
        }
        inner.next += 1;
        let id = format!("fake-{}", inner.next);
        let mut attrs = req.attrs.clone();
        if req.kind == "machine" && !attrs.contains_key("address") {
            attrs.insert(
                "address".into(),
                Value::String(format!("10.9.0.{}", inner.next)),
            );
        }
        let o = Object {
            kind: req.kind.clone(),
            id: id.clone(),
            attrs,
            owner: Some(req.owner.clone()),
        };
        inner.objects.insert(id, o.clone());
        Ok(o)
    }
    async fn update(&self, req: &UpdateRequest) -> Result<Object> {
        self.count("update");
        self.check_fail(&req.address)?;
        let mut inner = self.lock();
        let o = inner
            .objects
            .get_mut(&req.id)
            .ok_or_else(|| ProviderError::NotFound(req.id.clone()))?;
        for (k, v) in &req.attrs {
            o.attrs.insert(k.clone(), v.clone());
        }
        Ok(o.clone())
    }
    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        self.count("delete");
        self.check_fail(&req.address)?;
        self.lock().objects.remove(&req.id);
        Ok(())
    }
    async fn import(&self, _kind: &str, id: &str) -> Result<Object> {
        self.count("import");
        self.lock()
            .objects
            .get(id)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(id.to_string()))
    }
    fn reader(&self) -> &dyn Reader {
        self
    }
}
