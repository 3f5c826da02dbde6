//! The `subnet` kind: a subnet of the network's VPC in one availability zone, mapping
//! public addresses on launch (`public_ip`) and associated with the network's route
//! table, so that its machines reach the internet.

use std::collections::HashMap;

use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType, RouteTable, Subnet};
use clusterform_core::Attrs;
use clusterform_provider::{Object, Ownership};
use serde_json::Value;

use crate::api::{FILTER_VALUES, filter, pairs, sdk_tags, tag, tag_spec};
use crate::cloud::{Cloud, Progress, attr_str};
use crate::errors::{ApiError, Class, Op};
use crate::network;
use crate::tags;

/// The subnet object.
pub fn object(s: &Subnet, route_table: Option<&str>) -> Object {
    let t = pairs(s.tags());
    let mut attrs = Attrs::new();
    if let Some(n) = tag(s.tags(), tags::NAME) {
        attrs.insert("name".into(), Value::String(n.to_string()));
    }
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            attrs.insert(k.into(), Value::String(v.to_string()));
        }
    };
    put("network", s.vpc_id());
    put("cidr", s.cidr_block());
    put("zone", s.availability_zone());
    put("route_table", route_table);
    let user = tags::user_tags(t.clone());
    if !user.is_empty() {
        attrs.insert("tags".into(), serde_json::json!(user));
    }
    Object {
        kind: "subnet".into(),
        id: s.subnet_id().unwrap_or_default().to_string(),
        attrs,
        owner: tags::ownership(t),
    }
}

/// The route table each subnet is explicitly associated with.
pub fn associations(rts: &[RouteTable]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for rt in rts {
        let Some(id) = rt.route_table_id() else {
            continue;
        };
        for a in rt.associations() {
            if let Some(s) = a.subnet_id() {
                out.insert(s.to_string(), id.to_string());
            }
        }
    }
    out
}

/// Read subnets by id: one `DescribeSubnets` and one `DescribeRouteTables` (200 a call).
pub async fn read_many(cloud: &Cloud, ids: &[String]) -> Result<HashMap<String, Object>, ApiError> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(FILTER_VALUES) {
        let ids = || chunk.iter().cloned();
        let (subnets, rts) = tokio::try_join!(
            cloud.api.subnets(vec![filter("subnet-id", ids())]),
            cloud
                .api
                .route_tables(vec![filter("association.subnet-id", ids())]),
        )?;
        let assoc = associations(&rts);
        for s in &subnets {
            if let Some(id) = s.subnet_id() {
                out.insert(id.to_string(), object(s, assoc.get(id).map(String::as_str)));
            }
        }
    }
    Ok(out)
}

async fn read_back(cloud: &Cloud, id: &str) -> Result<Object, ApiError> {
    read_many(cloud, &[id.to_string()])
        .await?
        .remove(id)
        .ok_or_else(|| ApiError {
            op: "DescribeSubnets",
            code: None,
            message: format!("the subnet `{id}` is not listed yet"),
            class: Class::Transient,
        })
}

/// Create the subnet, map public addresses, associate it with the network's route
/// table. A retry after a transient error goes on from the step that failed.
pub async fn create(cloud: &Cloud, attrs: &Attrs, owner: &Ownership) -> Result<Object, ApiError> {
    let vpc = attr_str(attrs, "network")
        .ok_or_else(|| ApiError::other("CreateSubnet", "`network` is required"))?;
    let cidr = attr_str(attrs, "cidr")
        .ok_or_else(|| ApiError::other("CreateSubnet", "`cidr` is required"))?;
    let name = attr_str(attrs, "name");
    let tags = tags::object_tags("subnet", attrs, owner, name, None)
        .map_err(|m| ApiError::other("CreateSubnet", m))?;
    let parts = network::parts_for(cloud, vpc).await?;
    let route_table = parts.route_table.map(|(id, _)| id);
    cloud
        .resumable(&owner.op, |mut p| async move {
            let r = create_steps(
                cloud,
                attrs,
                owner,
                vpc,
                cidr,
                &tags,
                route_table.as_deref(),
                &mut p,
            )
            .await;
            (p, r)
        })
        .await
}

#[allow(clippy::too_many_arguments)]
async fn create_steps(
    cloud: &Cloud,
    attrs: &Attrs,
    owner: &Ownership,
    vpc: &str,
    cidr: &str,
    tags: &[(String, String)],
    route_table: Option<&str>,
    p: &mut Progress,
) -> Result<Object, ApiError> {
    let api = &cloud.api;
    let made = |s: &Subnet| {
        s.subnet_id()
            .map(|id| format!("{id} {}", s.availability_zone().unwrap_or_default()))
    };
    // The id and the zone EC2 put it in (when `zone` is left out), as "id zone".
    let id_zone = p
        .made(
            "subnet",
            || async {
                Ok(api
                    .subnets(vec![filter(&tags::op_key(), [owner.op.as_str()])])
                    .await?
                    .iter()
                    .find_map(made))
            },
            || async {
                let out = api
                    .client
                    .create_subnet()
                    .vpc_id(vpc)
                    .cidr_block(cidr)
                    .set_availability_zone(attr_str(attrs, "zone").map(str::to_string))
                    .tag_specifications(tag_spec(ResourceType::Subnet, tags))
                    .send()
                    .await
                    .op("CreateSubnet")?;
                out.subnet()
                    .and_then(made)
                    .ok_or_else(|| ApiError::other("CreateSubnet", "EC2 returned no id"))
            },
        )
        .await?;
    let (id, zone) = id_zone.split_once(' ').unwrap_or((id_zone.as_str(), ""));
    if cloud.settings.public_ip {
        p.once("public-ip", || async {
            api.client
                .modify_subnet_attribute()
                .subnet_id(id)
                .map_public_ip_on_launch(AttributeBooleanValue::builder().value(true).build())
                .send()
                .await
                .op("ModifySubnetAttribute")
                .map(|_| ())
        })
        .await?;
    }
    if let Some(rt) = route_table {
        p.once("associate", || async {
            network::done_already(
                api.client
                    .associate_route_table()
                    .route_table_id(rt)
                    .subnet_id(id)
                    .send()
                    .await
                    .op("AssociateRouteTable"),
            )
        })
        .await?;
    }
    // The object as a read would see it, without another describe.
    let subnet = Subnet::builder()
        .subnet_id(id)
        .vpc_id(vpc)
        .cidr_block(cidr)
        .set_availability_zone((!zone.is_empty()).then(|| zone.to_string()))
        .set_tags(Some(sdk_tags(tags)))
        .build();
    Ok(object(&subnet, route_table))
}

/// Change the name or tags.
pub async fn update(cloud: &Cloud, id: &str, attrs: &Attrs) -> Result<Object, ApiError> {
    let subnets = cloud.api.subnets(vec![filter("subnet-id", [id])]).await?;
    let Some(s) = subnets.first() else {
        return Err(ApiError {
            op: "DescribeSubnets",
            code: Some("InvalidSubnetID.NotFound".into()),
            message: format!("subnet `{id}` not found"),
            class: Class::NotFound,
        });
    };
    let mut want: Vec<(String, String)> = Vec::new();
    if let Some(n) = attr_str(attrs, "name") {
        want.push((tags::NAME.to_string(), n.to_string()));
    }
    want.extend(tags::tags_attr(attrs));
    cloud.api.sync_tags(id, s.tags(), &want).await?;
    read_back(cloud, id).await
}

/// Delete the subnet, waiting out `DependencyViolation` (interfaces of instances that
/// are still shutting down).
pub async fn delete(cloud: &Cloud, id: &str) -> Result<(), ApiError> {
    cloud
        .until_free(&format!("subnet `{id}`"), || async {
            cloud
                .api
                .client
                .delete_subnet()
                .subnet_id(id)
                .send()
                .await
                .op("DeleteSubnet")
                .map(|_| ())
        })
        .await
}
