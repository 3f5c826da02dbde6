//! [`Ec2Provider`]: the `Reader` and `Provider` implementation. It connects on the first
//! call (the AWS default chain resolves credentials then) and sends each request to the
//! module of its kind. Refresh is batched: whatever the number of objects, one describe
//! per kind of EC2 object (instances, VPCs, subnets, gateways, route tables, security
//! groups), 200 ids a call.

use std::collections::HashMap;

use async_trait::async_trait;
use clusterform_core::{Attrs, ProviderSchema};
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Provider, ProviderConfig, ProviderError, ReadRequest,
    Reader, Result, UpdateRequest,
};
use tokio::sync::OnceCell;

use crate::api::{Api, filter};
use crate::cloud::Cloud;
use crate::errors::ApiError;
use crate::schema::{PROVIDER_NAME, schema};
use crate::settings::Ec2Settings;
use crate::{instance, network, subnet, tags};

/// How many objects one `read_batch` takes (describes go 200 ids a call within it).
pub const MAX_BATCH: usize = 1000;

/// AWS EC2 as a clusterform provider (name `ec2`).
pub struct Ec2Provider {
    settings: Ec2Settings,
    schema: ProviderSchema,
    cloud: OnceCell<Cloud>,
}

impl std::fmt::Debug for Ec2Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Provider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn unknown_kind(kind: &str) -> ProviderError {
    ProviderError::Permanent(format!(
        "the ec2 provider has no `{kind}` kind (it has network, subnet, machine)"
    ))
}

impl Ec2Provider {
    /// Build the provider from `[provider.ec2]` settings. Touches no network: the client
    /// connects on the first call.
    pub fn from_config(config: &ProviderConfig) -> Result<Ec2Provider> {
        Ok(Ec2Provider::new(Ec2Settings::from_provider_config(config)?))
    }

    /// Build the provider from parsed settings.
    pub fn new(settings: Ec2Settings) -> Ec2Provider {
        Ec2Provider {
            settings,
            schema: schema(),
            cloud: OnceCell::new(),
        }
    }

    /// Build the provider on a client made elsewhere (its own credentials provider, an
    /// emulator in tests); `settings` give the rest. The client's retries should be off:
    /// the engine retries and counts them.
    pub fn with_client(settings: Ec2Settings, client: aws_sdk_ec2::Client) -> Ec2Provider {
        let cloud = Cloud::new(Api { client }, settings.clone());
        Ec2Provider {
            settings,
            schema: schema(),
            cloud: OnceCell::new_with(Some(cloud)),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &Ec2Settings {
        &self.settings
    }

    async fn cloud(&self) -> Result<&Cloud> {
        self.cloud
            .get_or_try_init(|| async {
                self.settings.check()?;
                let api = Api::connect(&self.settings).await?;
                Ok(Cloud::new(api, self.settings.clone()))
            })
            .await
    }

    /// Read one kind's objects by id: id -> object.
    async fn read_kind(
        &self,
        cloud: &Cloud,
        kind: &str,
        reqs: &[&ReadRequest],
    ) -> std::result::Result<HashMap<String, Object>, ProviderError> {
        let ids: Vec<String> = reqs.iter().map(|r| r.id.clone()).collect();
        let prior: HashMap<&str, &Attrs> = reqs.iter().map(|r| (r.id.as_str(), &r.prior)).collect();
        let empty = Attrs::new();
        let prior_of = |id: &str| prior.get(id).copied().unwrap_or(&empty);
        Ok(match kind {
            "machine" => instance::read_many(cloud, &ids)
                .await?
                .into_iter()
                .map(|(id, i)| {
                    let o = instance::object(&i, prior_of(&id), None);
                    (id, o)
                })
                .collect(),
            "network" => network::read_many(cloud, &ids)
                .await?
                .into_iter()
                .map(|(id, (v, p))| {
                    let o = network::object(&v, &p, prior_of(&id));
                    (id, o)
                })
                .collect(),
            "subnet" => subnet::read_many(cloud, &ids).await?,
            other => return Err(unknown_kind(other)),
        })
    }

    /// Everything of one cluster (`Some`) or of every cluster; machines whole or light.
    async fn list(&self, cluster: Option<&str>, whole: bool) -> Result<Vec<Object>> {
        let cloud = self.cloud().await?;
        let by = || match cluster {
            Some(c) => vec![filter(&tags::cluster_key(), [c])],
            None => vec![filter("tag-key", [clusterform_provider::tags::CLUSTER])],
        };
        let (vpcs, subnets, machines) = tokio::try_join!(
            cloud.api.vpcs(by()),
            cloud.api.subnets(by()),
            instance::list(cloud, by(), whole),
        )?;
        let vpc_ids: Vec<String> = vpcs
            .iter()
            .filter_map(|v| v.vpc_id().map(str::to_string))
            .collect();
        let mut parts = if vpc_ids.is_empty() {
            HashMap::new()
        } else {
            network::parts_of(cloud, &vpc_ids).await?
        };
        let mut out: Vec<Object> = vpcs
            .iter()
            .map(|v| {
                let p = parts
                    .remove(v.vpc_id().unwrap_or_default())
                    .unwrap_or_default();
                network::object(v, &p, &Attrs::new())
            })
            .collect();
        let subnet_ids: Vec<String> = subnets
            .iter()
            .filter_map(|s| s.subnet_id().map(str::to_string))
            .collect();
        let mut subnet_objects = if subnet_ids.is_empty() {
            HashMap::new()
        } else {
            subnet::read_many(cloud, &subnet_ids).await?
        };
        out.extend(subnet_ids.iter().filter_map(|id| subnet_objects.remove(id)));
        out.extend(machines);
        Ok(out.into_iter().filter(|o| o.owner.is_some()).collect())
    }
}

#[async_trait]
impl Reader for Ec2Provider {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn schema(&self) -> &ProviderSchema {
        &self.schema
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn runs_machines(&self) -> bool {
        !self.settings.is_local_emulator()
    }

    async fn read(&self, req: &ReadRequest) -> Result<Option<Object>> {
        self.read_batch(std::slice::from_ref(req))
            .await
            .pop()
            .unwrap_or(Ok(None))
    }

    async fn read_batch(&self, reqs: &[ReadRequest]) -> Vec<Result<Option<Object>>> {
        let cloud = match self.cloud().await {
            Ok(c) => c,
            Err(e) => return reqs.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut by_kind: HashMap<&str, Vec<&ReadRequest>> = HashMap::new();
        for r in reqs {
            by_kind.entry(r.kind.as_str()).or_default().push(r);
        }
        let kinds: Vec<(&str, Vec<&ReadRequest>)> = by_kind.into_iter().collect();
        let answers = futures::future::join_all(
            kinds
                .iter()
                .map(|(kind, rs)| self.read_kind(cloud, kind, rs)),
        )
        .await;
        let found: HashMap<&str, std::result::Result<HashMap<String, Object>, ProviderError>> =
            kinds.iter().map(|(k, _)| *k).zip(answers).collect();
        reqs.iter()
            .map(|r| match found.get(r.kind.as_str()) {
                Some(Ok(objects)) => Ok(objects.get(&r.id).cloned()),
                Some(Err(e)) => Err(e.clone()),
                None => Err(unknown_kind(&r.kind)),
            })
            .collect()
    }

    async fn find_by_key(&self, kind: &str, key: &str) -> Result<Option<Object>> {
        let cloud = self.cloud().await?;
        let by_op = || vec![filter(&tags::op_key(), [key])];
        match kind {
            "machine" => Ok(instance::find_by_op(cloud, key).await?),
            "network" => {
                let vpcs = cloud.api.vpcs(by_op()).await.map_err(ProviderError::from)?;
                let Some(v) = vpcs.first() else {
                    return Ok(None);
                };
                let id = v.vpc_id().unwrap_or_default().to_string();
                let parts = network::parts_of(cloud, std::slice::from_ref(&id))
                    .await?
                    .remove(&id)
                    .unwrap_or_default();
                Ok(Some(network::object(v, &parts, &Attrs::new())))
            }
            "subnet" => {
                let subnets = cloud.api.subnets(by_op()).await?;
                let Some(id) = subnets.first().and_then(|s| s.subnet_id()) else {
                    return Ok(None);
                };
                Ok(subnet::read_many(cloud, &[id.to_string()])
                    .await?
                    .remove(id))
            }
            other => Err(unknown_kind(other)),
        }
    }

    async fn list_cluster(&self, cluster: &str) -> Result<Vec<Object>> {
        self.list(Some(cluster), true).await
    }

    /// Light objects: machines without their user data (one call less per machine);
    /// enough to find and delete test clusters.
    async fn list_owned(&self) -> Result<Vec<Object>> {
        self.list(None, false).await
    }

    /// `GetConsoleOutput` (the latest output, base64 in the answer), decoded.
    async fn console(
        &self,
        kind: &str,
        id: &str,
        _prior: &clusterform_core::Attrs,
    ) -> Result<Option<String>> {
        if kind != "machine" {
            return Ok(None);
        }
        let cloud = self.cloud().await?;
        let answer = crate::api::read(|| async {
            cloud
                .api
                .client
                .get_console_output()
                .instance_id(id)
                .latest(true)
                .send()
                .await
                .map_err(|e| ApiError::from_sdk("GetConsoleOutput", e))
        })
        .await
        .map_err(provider_error)?;
        let Some(b64) = answer.output() else {
            return Ok(Some(String::new()));
        };
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| ProviderError::Permanent(format!("GetConsoleOutput: not base64: {e}")))?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

fn provider_error(e: ApiError) -> ProviderError {
    e.into()
}

#[async_trait]
impl Provider for Ec2Provider {
    async fn create(&self, req: &CreateRequest) -> Result<Object> {
        let cloud = self.cloud().await?;
        match req.kind.as_str() {
            "network" => network::create(cloud, &req.attrs, &req.owner).await,
            "subnet" => subnet::create(cloud, &req.attrs, &req.owner).await,
            "machine" => instance::create(cloud, &req.attrs, &req.owner).await,
            other => return Err(unknown_kind(other)),
        }
        .map_err(provider_error)
    }

    async fn update(&self, req: &UpdateRequest) -> Result<Object> {
        let cloud = self.cloud().await?;
        let r = match req.kind.as_str() {
            "network" => network::update(cloud, &req.id, &req.attrs).await,
            "subnet" => subnet::update(cloud, &req.id, &req.attrs).await,
            "machine" => instance::update(cloud, &req.id, &req.attrs, &req.changed).await,
            other => return Err(unknown_kind(other)),
        };
        r.map_err(|e| {
            if e.is_not_found() {
                ProviderError::NotFound(req.id.clone())
            } else {
                e.into()
            }
        })
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        let cloud = self.cloud().await?;
        match req.kind.as_str() {
            "network" => network::delete(cloud, &req.id).await,
            "subnet" => subnet::delete(cloud, &req.id).await,
            "machine" => instance::delete(cloud, &req.id, req.force).await,
            other => return Err(unknown_kind(other)),
        }
        .map_err(provider_error)
    }

    async fn import(&self, kind: &str, id: &str) -> Result<Object> {
        let cloud = self.cloud().await?;
        let req = ReadRequest {
            address: clusterform_core::Address::new(kind, "import"),
            kind: kind.to_string(),
            id: id.to_string(),
            prior: Attrs::new(),
        };
        let found = self
            .read(&req)
            .await?
            .ok_or_else(|| ProviderError::NotFound(id.to_string()))?;
        if kind != "machine" {
            return Ok(found);
        }
        // EC2 does not list user data: read it once.
        let mut o = found;
        if let Some(ud) = instance::fetch_user_data(cloud, id).await? {
            o.attrs
                .insert("user_data".into(), serde_json::Value::String(ud));
        }
        Ok(o)
    }

    fn reader(&self) -> &dyn Reader {
        self
    }
}
