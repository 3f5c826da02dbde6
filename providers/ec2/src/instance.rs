//! The `machine` kind: a Flatcar EC2 instance. Launch (newest Flatcar AMI of the
//! channel, type from `size`, its subnet, static private address, Ignition as user
//! data, key pair, root volume, security groups, termination protection, tags), wait
//! for `running`; changes in place (type: stop, modify, start; protection; tags); and
//! termination, waiting for `terminated`.

use std::collections::HashMap;

use aws_sdk_ec2::types::{
    AttributeBooleanValue, AttributeValue, BlockDeviceMapping, EbsBlockDevice, Instance,
    InstanceAttributeName, InstanceType, ResourceType, VolumeType,
};
use base64::Engine;
use clusterform_core::Attrs;
use clusterform_provider::{Object, Ownership};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::Value;

use crate::api::{filter, live_instances, pairs, read, tag, tag_spec};
use crate::cloud::{Ami, Cloud, attr_str};
use crate::errors::{ApiError, Class, Op};
use crate::network;
use crate::tags;
use crate::waiter::Want;

/// EC2 takes at most this many bytes of user data (before base64).
pub const USER_DATA_MAX: usize = 16384;

/// How many `DescribeInstanceAttribute` calls run at once when user data is read back.
const USER_DATA_READS: usize = 8;

/// The user data as EC2 takes it (base64), or why it cannot.
pub fn encode_user_data(name: &str, user_data: &str) -> Result<String, String> {
    let n = user_data.len();
    if n > USER_DATA_MAX {
        return Err(format!(
            "the Ignition config of `{name}` is {n} bytes; EC2 takes at most {USER_DATA_MAX} bytes (16 KB) of user data: make the `butane` extras smaller (fetch big files at boot instead of inlining them)"
        ));
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(user_data))
}

/// The state a live instance object reports; None once it is terminated or going away.
fn live_state(i: &Instance) -> Option<&str> {
    let s = i.state()?.name()?.as_str();
    (s != "terminated" && s != "shutting-down").then_some(s)
}

/// The machine object of an instance. EC2 does not report the role, channel, etcd
/// endpoints, SSH keys and protection: they come from the inputs tags, else `prior`
/// (the state's record). User data is `user_data` when read back, else `prior`'s.
pub fn object(i: &Instance, prior: &Attrs, user_data: Option<String>) -> Object {
    let t = pairs(i.tags());
    let mut attrs = Attrs::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            attrs.insert(k.into(), Value::String(v.to_string()));
        }
    };
    put("name", tag(i.tags(), tags::NAME));
    put("size", i.instance_type().map(InstanceType::as_str));
    put("zone", i.placement().and_then(|p| p.availability_zone()));
    put("network", i.vpc_id());
    put("subnet", i.subnet_id());
    put("address", i.private_ip_address());
    put(
        "state",
        i.state().and_then(|s| s.name()).map(|n| n.as_str()),
    );
    put("image", i.image_id());
    put("public_address", i.public_ip_address());
    match tags::read_inputs(t.clone()) {
        Some(inputs) => attrs.extend(inputs),
        None => attrs.extend(tags::inputs_of("machine", prior)),
    }
    match user_data.or_else(|| attr_str(prior, "user_data").map(str::to_string)) {
        Some(u) if !u.is_empty() => {
            attrs.insert("user_data".into(), Value::String(u));
        }
        _ => {}
    }
    let user = tags::user_tags(t.clone());
    if !user.is_empty() {
        attrs.insert("tags".into(), serde_json::json!(user));
    }
    Object {
        kind: "machine".into(),
        id: i.instance_id().unwrap_or_default().to_string(),
        attrs,
        owner: tags::ownership(t),
    }
}

/// Read instances by id in one `DescribeInstances` per 200; terminated ones are absent.
pub async fn read_many(
    cloud: &Cloud,
    ids: &[String],
) -> Result<HashMap<String, Instance>, ApiError> {
    let mut found = cloud.api.instances_by_id(ids).await?;
    found.retain(|_, i| live_state(i).is_some());
    Ok(found)
}

/// The user data EC2 holds for an instance (one call; only when adopting).
pub async fn fetch_user_data(cloud: &Cloud, id: &str) -> Result<Option<String>, ApiError> {
    let out = read(|| async {
        cloud
            .api
            .client
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .op("DescribeInstanceAttribute")
    })
    .await?;
    let Some(b64) = out.user_data().and_then(|u| u.value()) else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| {
            ApiError::other(
                "DescribeInstanceAttribute",
                format!("user data of `{id}` is not base64: {e}"),
            )
        })?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Live instances matching `filters` as whole objects (user data read back, one call
/// each, a few at a time) or, for `reap`, without user data.
pub async fn list(
    cloud: &Cloud,
    mut filters: Vec<aws_sdk_ec2::types::Filter>,
    with_user_data: bool,
) -> Result<Vec<Object>, ApiError> {
    filters.push(live_instances());
    let instances = cloud.api.instances(filters).await?;
    if !with_user_data {
        return Ok(instances
            .iter()
            .map(|i| object(i, &Attrs::new(), None))
            .collect());
    }
    stream::iter(instances)
        .map(|i| async move {
            let id = i.instance_id().unwrap_or_default().to_string();
            let ud = fetch_user_data(cloud, &id).await?;
            Ok::<_, ApiError>(object(&i, &Attrs::new(), ud))
        })
        .buffered(USER_DATA_READS)
        .try_collect()
        .await
}

/// The AMI to launch: `ami` from the settings, else the newest Flatcar AMI of the
/// channel (owner `ami_owner`, name `Flatcar-<channel>-*-hvm`, the architecture).
pub async fn ami(cloud: &Cloud, channel: &str) -> Result<Ami, ApiError> {
    let s = &cloud.settings;
    let key = s
        .ami
        .clone()
        .unwrap_or_else(|| format!("channel:{channel}"));
    if let Some(a) = cloud.cached_ami(&key) {
        return Ok(a);
    }
    let _one_at_a_time = cloud.lookup.lock().await;
    if let Some(a) = cloud.cached_ami(&key) {
        return Ok(a);
    }
    let ami = match &s.ami {
        Some(id) if s.root_volume_gb.is_none() => Ami {
            id: id.clone(),
            root_device: None,
        },
        Some(id) => {
            let out = read(|| async {
                cloud
                    .api
                    .client
                    .describe_images()
                    .image_ids(id)
                    .send()
                    .await
                    .op("DescribeImages")
            })
            .await?;
            let image = out.images().first().ok_or_else(|| {
                ApiError::other(
                    "DescribeImages",
                    format!("`ami` = \"{id}\" (in [provider.ec2]) is not an AMI of this region"),
                )
            })?;
            Ami {
                id: id.clone(),
                root_device: image.root_device_name().map(str::to_string),
            }
        }
        None => {
            let pattern = format!("Flatcar-{channel}-*-hvm");
            let out = read(|| async {
                cloud
                    .api
                    .client
                    .describe_images()
                    .owners(&s.ami_owner)
                    .filters(filter("name", [pattern.as_str()]))
                    .filters(filter("state", ["available"]))
                    .send()
                    .await
                    .op("DescribeImages")
            })
            .await?;
            // The architecture is checked here, not by filter: an image without one (as
            // moto registers them) is taken as fitting.
            let newest = out
                .images()
                .iter()
                .filter(|i| i.image_id().is_some())
                .filter(|i| {
                    i.architecture()
                        .is_none_or(|a| a.as_str() == s.architecture.as_str())
                })
                .max_by(|a, b| {
                    (a.creation_date(), a.name()).cmp(&(b.creation_date(), b.name()))
                })
                .ok_or_else(|| {
                    ApiError::other(
                        "DescribeImages",
                        format!(
                            "no Flatcar AMI for channel `{channel}` ({} images named `{pattern}` of owner {}) in this region: check `channel`, or set `ami` (or `ami_owner`) in [provider.ec2]",
                            s.architecture, s.ami_owner
                        ),
                    )
                })?;
            Ami {
                id: newest.image_id().unwrap_or_default().to_string(),
                root_device: newest.root_device_name().map(str::to_string),
            }
        }
    };
    cloud.cache_ami(&key, ami.clone());
    Ok(ami)
}

/// The live instance made by operation `op`, if any.
async fn by_op(cloud: &Cloud, op: &str) -> Result<Option<Instance>, ApiError> {
    Ok(cloud
        .api
        .instances(vec![filter(&tags::op_key(), [op]), live_instances()])
        .await?
        .into_iter()
        .next())
}

/// The subnet of a machine that names none: the network's subnet in its zone.
async fn subnet_in(cloud: &Cloud, vpc: &str, zone: Option<&str>) -> Result<String, ApiError> {
    let mut filters = vec![filter("vpc-id", [vpc])];
    if let Some(z) = zone {
        filters.push(filter("availability-zone", [z]));
    }
    let subnets = cloud.api.subnets(filters).await?;
    subnets
        .iter()
        .find_map(|s| s.subnet_id().map(str::to_string))
        .ok_or_else(|| {
            ApiError::other(
                "DescribeSubnets",
                format!(
                    "the machine names no `subnet` and network `{vpc}` has no subnet{}: add a `subnet` resource and reference it",
                    zone.map(|z| format!(" in zone `{z}`")).unwrap_or_default()
                ),
            )
        })
}

/// Launch the instance and wait until it is running. A retry after a transient error
/// goes on from the step that failed (a launch whose answer was lost is found by its op
/// tag: moto ignores `ClientToken`, EC2 honours it).
pub async fn create(cloud: &Cloud, attrs: &Attrs, owner: &Ownership) -> Result<Object, ApiError> {
    let name = attr_str(attrs, "name").unwrap_or("clusterform");
    let user_data = attr_str(attrs, "user_data").unwrap_or("");
    let encoded =
        encode_user_data(name, user_data).map_err(|m| ApiError::other("RunInstances", m))?;
    let tags = tags::object_tags("machine", attrs, owner, Some(name), None)
        .map_err(|m| ApiError::other("RunInstances", m))?;
    let size = attr_str(attrs, "size")
        .ok_or_else(|| ApiError::other("RunInstances", "`size` (the instance type) is required"))?;
    let vpc = attr_str(attrs, "network")
        .ok_or_else(|| ApiError::other("RunInstances", "`network` is required"))?;
    let protect = attrs
        .get("protect")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let op = owner.op.as_str();
    cloud
        .resumable(op, |mut p| async move {
            let r = async {
                let id = p
                    .made(
                        "instance",
                        || async {
                            Ok(by_op(cloud, op)
                                .await?
                                .and_then(|i| i.instance_id().map(str::to_string)))
                        },
                        || {
                            launch(
                                cloud, attrs, size, vpc, &tags, &encoded, user_data, protect, op,
                            )
                        },
                    )
                    .await?;
                // moto ignores DisableApiTermination at launch; EC2 takes it again.
                if protect {
                    p.once("protect", || set_protection(cloud, &id, true))
                        .await?;
                }
                let running = cloud
                    .waiter
                    .wait(&id, Want::Running, cloud.settings.wait_timeout())
                    .await?
                    .ok_or_else(|| {
                        ApiError::other("DescribeInstances", format!("instance `{id}` vanished"))
                    })?;
                Ok(object(&running, attrs, Some(user_data.to_string())))
            }
            .await;
            (p, r)
        })
        .await
}

async fn set_protection(cloud: &Cloud, id: &str, on: bool) -> Result<(), ApiError> {
    cloud
        .api
        .client
        .modify_instance_attribute()
        .instance_id(id)
        .disable_api_termination(AttributeBooleanValue::builder().value(on).build())
        .send()
        .await
        .op("ModifyInstanceAttribute")
        .map(|_| ())
}

/// One `RunInstances`; the new instance's id.
#[allow(clippy::too_many_arguments)]
async fn launch(
    cloud: &Cloud,
    attrs: &Attrs,
    size: &str,
    vpc: &str,
    tags: &[(String, String)],
    encoded: &str,
    user_data: &str,
    protect: bool,
    op: &str,
) -> Result<String, ApiError> {
    let parts = network::parts_for(cloud, vpc).await?;
    let subnet = match attr_str(attrs, "subnet") {
        Some(s) => s.to_string(),
        None => subnet_in(cloud, vpc, attr_str(attrs, "zone")).await?,
    };
    let channel = attr_str(attrs, "channel").unwrap_or("stable");
    let image = ami(cloud, channel).await?;
    let mut groups: Vec<String> = parts.sg.iter().cloned().collect();
    if attr_str(attrs, "role") == Some("dev") {
        groups.extend(parts.docker_sg.iter().cloned());
    }
    let s = &cloud.settings;
    let mut run = cloud
        .api
        .client
        .run_instances()
        .image_id(&image.id)
        .instance_type(InstanceType::from(size))
        .min_count(1)
        .max_count(1)
        .client_token(op.chars().take(64).collect::<String>())
        .subnet_id(subnet)
        .set_security_group_ids(Some(groups))
        .set_private_ip_address(attr_str(attrs, "address").map(str::to_string))
        .set_key_name(s.key_pair.clone())
        .disable_api_termination(protect)
        .tag_specifications(tag_spec(ResourceType::Instance, tags))
        .tag_specifications(tag_spec(ResourceType::Volume, tags));
    if !user_data.is_empty() {
        run = run.user_data(encoded);
    }
    if let Some(gb) = s.root_volume_gb {
        run = run.block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(image.root_device.as_deref().unwrap_or("/dev/xvda"))
                .ebs(
                    EbsBlockDevice::builder()
                        .volume_size(i32::try_from(gb).unwrap_or(i32::MAX))
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        );
    }
    let out = run.send().await.op("RunInstances")?;
    out.instances()
        .first()
        .and_then(|i| i.instance_id())
        .map(str::to_string)
        .ok_or_else(|| ApiError::other("RunInstances", "EC2 returned no instance"))
}

async fn describe_one(cloud: &Cloud, id: &str) -> Result<Instance, ApiError> {
    read_many(cloud, &[id.to_string()])
        .await?
        .remove(id)
        .ok_or_else(|| ApiError {
            op: "DescribeInstances",
            code: Some("InvalidInstanceID.NotFound".into()),
            message: format!("instance `{id}` not found (terminated?)"),
            class: Class::NotFound,
        })
}

/// Change in place: the type (stop, modify, start again if it was running), the
/// termination protection, the name and tags.
pub async fn update(
    cloud: &Cloud,
    id: &str,
    attrs: &Attrs,
    changed: &[String],
) -> Result<Object, ApiError> {
    let api = &cloud.api.client;
    let timeout = cloud.settings.wait_timeout();
    let inst = describe_one(cloud, id).await?;
    if changed.iter().any(|c| c == "size")
        && let Some(size) = attr_str(attrs, "size")
        && inst.instance_type().map(InstanceType::as_str) != Some(size)
    {
        let state = live_state(&inst).unwrap_or("stopped").to_string();
        let was_up = state == "running" || state == "pending";
        if state != "stopped" {
            api.stop_instances()
                .instance_ids(id)
                .send()
                .await
                .op("StopInstances")?;
            cloud.waiter.wait(id, Want::Stopped, timeout).await?;
        }
        api.modify_instance_attribute()
            .instance_id(id)
            .instance_type(AttributeValue::builder().value(size).build())
            .send()
            .await
            .op("ModifyInstanceAttribute")?;
        if was_up {
            api.start_instances()
                .instance_ids(id)
                .send()
                .await
                .op("StartInstances")?;
            cloud.waiter.wait(id, Want::Running, timeout).await?;
        }
    }
    if changed.iter().any(|c| c == "protect") {
        let protect = attrs
            .get("protect")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        set_protection(cloud, id, protect).await?;
    }
    let mut want: Vec<(String, String)> = Vec::new();
    if let Some(n) = attr_str(attrs, "name") {
        want.push((tags::NAME.to_string(), n.to_string()));
    }
    want.extend(tags::inputs_tags(&tags::inputs_of("machine", attrs)));
    want.extend(tags::tags_attr(attrs));
    cloud.api.sync_tags(id, inst.tags(), &want).await?;
    let now = describe_one(cloud, id).await?;
    Ok(object(&now, attrs, None))
}

/// Terminate and wait until terminated. An instance already gone is fine. An instance
/// with termination protection (`protect = true`) is refused, as EC2 refuses it: the
/// protection is lifted only by applying `protect = false` first.
pub async fn delete(cloud: &Cloud, id: &str, force: bool) -> Result<(), ApiError> {
    let terminate = || async {
        cloud
            .api
            .client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .op("TerminateInstances")
    };
    let mut r = terminate().await;
    if force
        && let Err(e) = &r
        && e.code.as_deref() == Some("OperationNotPermitted")
    {
        // `--allow-protected`: lift the termination protection, then terminate.
        set_protection(cloud, id, false).await?;
        r = terminate().await;
    }
    match r {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) if e.code.as_deref() == Some("OperationNotPermitted") => {
            return Err(ApiError {
                message: format!(
                    "instance `{id}` has termination protection: pass --allow-protected (with `protect = true` in the file), or set `protect = false` and apply first ({})",
                    e.message
                ),
                ..e
            });
        }
        Err(e) => return Err(e),
    }
    cloud
        .waiter
        .wait(id, Want::Terminated, cloud.settings.wait_timeout())
        .await?;
    Ok(())
}

/// The instance made by operation `op`, whole (crash recovery).
pub async fn find_by_op(cloud: &Cloud, op: &str) -> Result<Option<Object>, ApiError> {
    let Some(i) = by_op(cloud, op).await? else {
        return Ok(None);
    };
    let id = i.instance_id().unwrap_or_default().to_string();
    let ud = fetch_user_data(cloud, &id).await?;
    Ok(Some(object(&i, &Attrs::new(), ud)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{InstanceState, InstanceStateName, Placement, Tag};
    use serde_json::json;

    #[test]
    fn user_data_up_to_16_kb() {
        let ok = "x".repeat(USER_DATA_MAX);
        let b64 = encode_user_data("demo-central-0", &ok).expect("exactly the limit");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64")
                .len(),
            USER_DATA_MAX
        );
        let e = encode_user_data("demo-central-0", &"x".repeat(USER_DATA_MAX + 1))
            .expect_err("over the limit");
        assert!(e.contains("`demo-central-0`"), "{e}");
        assert!(e.contains("16385 bytes"), "{e}");
        assert!(e.contains("at most 16384"), "{e}");
    }

    fn instance(state: InstanceStateName, tags: Vec<(String, String)>) -> Instance {
        Instance::builder()
            .instance_id("i-1")
            .instance_type(InstanceType::from("t3.small"))
            .placement(Placement::builder().availability_zone("eu-west-1a").build())
            .vpc_id("vpc-1")
            .subnet_id("subnet-1")
            .private_ip_address("10.0.1.101")
            .image_id("ami-1")
            .state(InstanceState::builder().name(state).build())
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .build()
    }

    fn owner() -> Ownership {
        Ownership {
            cluster: "demo".into(),
            address: "machine.central[0]".parse().expect("address"),
            op: "cf-1".into(),
            expires_at: None,
            created_by: None,
            created_at: None,
        }
    }

    #[test]
    fn object_maps_ec2_fields_and_tags_to_attributes() {
        let attrs: Attrs = serde_json::from_value(json!({
            "name": "demo-central-0", "role": "etcd", "channel": "stable", "protect": true,
            "etcd_endpoints": ["http://10.0.1.101:2379"], "tags": {"team": "infra"},
            "user_data": "{\"ignition\":{}}"
        }))
        .expect("attrs");
        let t = tags::object_tags("machine", &attrs, &owner(), Some("demo-central-0"), None)
            .expect("tags");
        let o = object(
            &instance(InstanceStateName::Running, t),
            &Attrs::new(),
            Some("{\"ignition\":{}}".into()),
        );
        assert_eq!(o.id, "i-1");
        assert_eq!(o.owner, Some(owner()));
        let want: Attrs = serde_json::from_value(json!({
            "name": "demo-central-0", "role": "etcd", "channel": "stable", "protect": true,
            "etcd_endpoints": ["http://10.0.1.101:2379"], "tags": {"team": "infra"},
            "user_data": "{\"ignition\":{}}", "size": "t3.small", "zone": "eu-west-1a",
            "network": "vpc-1", "subnet": "subnet-1", "address": "10.0.1.101",
            "state": "running", "image": "ami-1"
        }))
        .expect("attrs");
        assert_eq!(o.attrs, want);
    }

    #[test]
    fn unreported_inputs_fall_back_to_the_state() {
        // An instance whose inputs tags were removed outside clusterform, and the state's
        // record of it: role and user data come from the record.
        let prior: Attrs = serde_json::from_value(json!({
            "role": "worker", "user_data": "{}", "size": "t3.large"
        }))
        .expect("attrs");
        let o = object(
            &instance(
                InstanceStateName::Stopped,
                vec![("Name".into(), "w".into())],
            ),
            &prior,
            None,
        );
        assert_eq!(o.attrs.get("role"), Some(&json!("worker")));
        assert_eq!(o.attrs.get("user_data"), Some(&json!("{}")));
        // What EC2 reports wins: the type and the state are EC2's.
        assert_eq!(o.attrs.get("size"), Some(&json!("t3.small")));
        assert_eq!(o.attrs.get("state"), Some(&json!("stopped")));
        assert_eq!(o.owner, None);
        assert!(!o.attrs.contains_key("tags"));
    }

    #[test]
    fn terminated_instances_are_not_live() {
        assert_eq!(
            live_state(&instance(InstanceStateName::Terminated, vec![])),
            None
        );
        assert_eq!(
            live_state(&instance(InstanceStateName::ShuttingDown, vec![])),
            None
        );
        assert_eq!(
            live_state(&instance(InstanceStateName::Stopped, vec![])),
            Some("stopped")
        );
    }
}
