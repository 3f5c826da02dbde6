//! The EC2 client and the calls every part of the provider shares: building the client
//! from the settings and the AWS default chain, describes by filter (paginated, 200
//! filter values a call), and tag changes.
//!
//! Retries: the SDK's are off. A throttled or failed mutation is a transient error for
//! the engine, which retries the operation with backoff and jitter, shows it in the
//! progress line and counts it in the summary (creates go on from the step that
//! failed). Describes have no side effects: a throttled one is tried again here, a few
//! times, so that a batched refresh of 7 calls is not restarted whole for one of them.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::types::{
    Filter, Instance, InternetGateway, ResourceType, RouteTable, SecurityGroup, Subnet, Tag,
    TagSpecification, Vpc,
};
use clusterform_provider::ProviderError;

use crate::errors::{ApiError, Class, Op};
use crate::settings::Ec2Settings;

/// EC2 takes at most this many values in the filters of one call.
pub const FILTER_VALUES: usize = 200;

/// Tries of a describe that EC2 throttles (or answers 5xx).
pub const READ_ATTEMPTS: u32 = 4;

/// Run a describe, trying it again after a transient failure (at most
/// [`READ_ATTEMPTS`] tries, 100 ms doubling, with jitter).
pub async fn read<T, F, Fut>(mut call: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.class == Class::Transient && attempt < READ_ATTEMPTS => {
                tracing::info!("{e}; trying again in {delay:?}");
                let jitter = rand::Rng::random_range(&mut rand::rng(), Duration::ZERO..=delay);
                tokio::time::sleep(delay / 2 + jitter).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The EC2 client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Api {
    /// The SDK client.
    pub client: Client,
}

/// A filter.
pub fn filter(name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
}

/// The filter of instances that still exist (not terminated, not shutting down).
pub fn live_instances() -> Filter {
    filter(
        "instance-state-name",
        ["pending", "running", "stopping", "stopped"],
    )
}

/// Tags as SDK tags.
pub fn sdk_tags(tags: &[(String, String)]) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// A tag specification for a new resource.
pub fn tag_spec(kind: ResourceType, tags: &[(String, String)]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(sdk_tags(tags)))
        .build()
}

/// SDK tags as `(key, value)` pairs.
pub fn pairs(tags: &[Tag]) -> Vec<(&str, &str)> {
    tags.iter()
        .filter_map(|t| Some((t.key()?, t.value().unwrap_or(""))))
        .collect()
}

/// The value of tag `key`.
pub fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

impl Api {
    /// A client for the settings: region, profile and endpoint from them, the rest
    /// (credentials above all) from the AWS default chain.
    pub async fn connect(settings: &Ec2Settings) -> Result<Api, ProviderError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(p) = &settings.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &settings.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &settings.endpoint {
            loader = loader.endpoint_url(e);
        }
        let conf = loader.load().await;
        if conf.region().is_none() {
            return Err(ProviderError::Config(
                "no AWS region: set `region` in [provider.ec2] (or AWS_REGION, or a region in your AWS profile)".to_string(),
            ));
        }
        Ok(Api {
            client: Client::new(&conf),
        })
    }

    /// Instances by id, in calls of 200 ids (by filter: an id that is gone is simply
    /// missing from the answer instead of failing the call). Terminated ones included.
    pub async fn instances_by_id(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Instance>, ApiError> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(FILTER_VALUES) {
            for i in self
                .instances(vec![filter("instance-id", chunk.iter().cloned())])
                .await?
            {
                if let Some(id) = i.instance_id() {
                    out.insert(id.to_string(), i);
                }
            }
        }
        Ok(out)
    }

    /// Instances matching the filters, every page.
    pub async fn instances(&self, filters: Vec<Filter>) -> Result<Vec<Instance>, ApiError> {
        let pages = read(|| async {
            self.client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .into_paginator()
                .send()
                .try_collect()
                .await
                .op("DescribeInstances")
        })
        .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.reservations.unwrap_or_default())
            .flat_map(|r| r.instances.unwrap_or_default())
            .collect())
    }

    /// VPCs matching the filters.
    pub async fn vpcs(&self, filters: Vec<Filter>) -> Result<Vec<Vpc>, ApiError> {
        let pages = read(|| async {
            self.client
                .describe_vpcs()
                .set_filters(Some(filters.clone()))
                .into_paginator()
                .send()
                .try_collect()
                .await
                .op("DescribeVpcs")
        })
        .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.vpcs.unwrap_or_default())
            .collect())
    }

    /// Subnets matching the filters.
    pub async fn subnets(&self, filters: Vec<Filter>) -> Result<Vec<Subnet>, ApiError> {
        let pages = read(|| async {
            self.client
                .describe_subnets()
                .set_filters(Some(filters.clone()))
                .into_paginator()
                .send()
                .try_collect()
                .await
                .op("DescribeSubnets")
        })
        .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.subnets.unwrap_or_default())
            .collect())
    }

    /// Internet gateways matching the filters.
    pub async fn internet_gateways(
        &self,
        filters: Vec<Filter>,
    ) -> Result<Vec<InternetGateway>, ApiError> {
        let pages = read(|| async {
            self.client
                .describe_internet_gateways()
                .set_filters(Some(filters.clone()))
                .into_paginator()
                .send()
                .try_collect()
                .await
                .op("DescribeInternetGateways")
        })
        .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.internet_gateways.unwrap_or_default())
            .collect())
    }

    /// Route tables matching the filters.
    pub async fn route_tables(&self, filters: Vec<Filter>) -> Result<Vec<RouteTable>, ApiError> {
        let pages = read(|| async {
            self.client
                .describe_route_tables()
                .set_filters(Some(filters.clone()))
                .into_paginator()
                .send()
                .try_collect()
                .await
                .op("DescribeRouteTables")
        })
        .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.route_tables.unwrap_or_default())
            .collect())
    }

    /// Security groups matching the filters.
    pub async fn security_groups(
        &self,
        filters: Vec<Filter>,
    ) -> Result<Vec<SecurityGroup>, ApiError> {
        let pages = read(|| async {
            self.client
                .describe_security_groups()
                .set_filters(Some(filters.clone()))
                .into_paginator()
                .send()
                .try_collect()
                .await
                .op("DescribeSecurityGroups")
        })
        .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.security_groups.unwrap_or_default())
            .collect())
    }

    /// Make the tags clusterform manages on `resource` (its name, the user's tags, the
    /// inputs) equal `want`; ownership and part tags are left alone.
    pub async fn sync_tags(
        &self,
        resource: &str,
        current: &[Tag],
        want: &[(String, String)],
    ) -> Result<(), ApiError> {
        let managed =
            |k: &str| !k.starts_with("clusterform:") || k.starts_with(crate::tags::INPUTS);
        let stale: Vec<Tag> = pairs(current)
            .into_iter()
            .filter(|(k, _)| managed(k) && !k.starts_with("aws:"))
            .filter(|(k, _)| !want.iter().any(|(w, _)| w == k))
            .map(|(k, _)| Tag::builder().key(k).build())
            .collect();
        let fresh: Vec<(String, String)> = want
            .iter()
            .filter(|(k, v)| managed(k) && tag(current, k) != Some(v.as_str()))
            .cloned()
            .collect();
        if !stale.is_empty() {
            self.client
                .delete_tags()
                .resources(resource)
                .set_tags(Some(stale))
                .send()
                .await
                .op("DeleteTags")?;
        }
        if !fresh.is_empty() {
            self.client
                .create_tags()
                .resources(resource)
                .set_tags(Some(sdk_tags(&fresh)))
                .send()
                .await
                .op("CreateTags")?;
        }
        Ok(())
    }
}
