//! The `network` kind: a VPC and its parts, made, read and removed together: an
//! internet gateway, a route table with the default route through it (every subnet is
//! associated with it), the cluster's security group (etcd 2379-2380 between its
//! members only, SSH from `ssh_cidrs`) and the Docker security group of `dev` machines
//! (2375 from `docker_cidrs`). Every part carries the network's ownership tags and a
//! `clusterform:part` tag; a create that was interrupted resumes from the parts it finds.

use std::collections::HashMap;

use aws_sdk_ec2::types::{
    AttributeBooleanValue, InternetGateway, IpPermission, IpRange, ResourceType, RouteTable,
    SecurityGroup, UserIdGroupPair, Vpc,
};
use clusterform_core::Attrs;
use clusterform_provider::{Object, Ownership, tags as owner_tags};
use serde_json::Value;

use crate::api::{FILTER_VALUES, filter, pairs, sdk_tags, tag, tag_spec};
use crate::cloud::{Cloud, Progress, attr_str};
use crate::errors::{ApiError, Class, Op};
use crate::settings::Ec2Settings;
use crate::tags::{self, PART};

/// `clusterform:part` of the internet gateway.
pub const PART_IGW: &str = "internet-gateway";
/// `clusterform:part` of the route table.
pub const PART_RT: &str = "route-table";
/// `clusterform:part` of the cluster's security group.
pub const PART_SG: &str = "security-group";
/// `clusterform:part` of the Docker security group.
pub const PART_DOCKER: &str = "docker-security-group";

/// etcd's client and peer ports.
const ETCD_PORTS: (i32, i32) = (2379, 2380);
const SSH_PORT: i32 = 22;
const DOCKER_PORT: i32 = 2375;

/// What a VPC has of its parts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parts {
    /// The internet gateway, and whether it is attached to the VPC.
    pub igw: Option<(String, bool)>,
    /// The route table, and whether it has the default route.
    pub route_table: Option<(String, bool)>,
    /// The cluster's security group.
    pub sg: Option<String>,
    /// The Docker security group.
    pub docker_sg: Option<String>,
    /// Where SSH is open from, sorted.
    pub ssh_cidrs: Vec<String>,
    /// Where tcp/2375 is open from, sorted.
    pub docker_cidrs: Vec<String>,
}

impl Parts {
    /// True when nothing is missing.
    pub fn complete(&self) -> bool {
        matches!(self.igw, Some((_, true)))
            && matches!(self.route_table, Some((_, true)))
            && self.sg.is_some()
            && self.docker_sg.is_some()
    }
}

fn part_of(tags: &[aws_sdk_ec2::types::Tag]) -> Option<&str> {
    tag(tags, PART)
}

/// Cidrs opened on `port` in a security group, sorted.
fn open_from(sg: &SecurityGroup, port: i32) -> Vec<String> {
    let mut out: Vec<String> = sg
        .ip_permissions()
        .iter()
        .filter(|p| p.from_port() == Some(port) && p.to_port() == Some(port))
        .flat_map(|p| {
            p.ip_ranges()
                .iter()
                .filter_map(|r| r.cidr_ip().map(str::to_string))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Sort the parts found in one region's answers by VPC. `vpc_of_igw` names the VPC of an
/// unattached gateway (a resumed create); attached ones say theirs.
fn assemble(
    igws: &[InternetGateway],
    rts: &[RouteTable],
    sgs: &[SecurityGroup],
    unattached_vpc: Option<&str>,
) -> HashMap<String, Parts> {
    let mut out: HashMap<String, Parts> = HashMap::new();
    for g in igws {
        let Some(id) = g.internet_gateway_id() else {
            continue;
        };
        let attached = g
            .attachments()
            .iter()
            .find_map(|a| a.vpc_id().map(str::to_string));
        let ours = part_of(g.tags()) == Some(PART_IGW);
        match (attached, unattached_vpc) {
            (Some(vpc), _) => {
                let p = out.entry(vpc).or_default();
                if ours || p.igw.is_none() {
                    p.igw = Some((id.to_string(), true));
                }
            }
            (None, Some(vpc)) if ours => {
                let p = out.entry(vpc.to_string()).or_default();
                if p.igw.is_none() {
                    p.igw = Some((id.to_string(), false));
                }
            }
            _ => {}
        }
    }
    for rt in rts {
        let (Some(id), Some(vpc)) = (rt.route_table_id(), rt.vpc_id()) else {
            continue;
        };
        if part_of(rt.tags()) != Some(PART_RT) {
            continue;
        }
        let default_route = rt
            .routes()
            .iter()
            .any(|r| r.destination_cidr_block() == Some("0.0.0.0/0") && r.gateway_id().is_some());
        out.entry(vpc.to_string()).or_default().route_table = Some((id.to_string(), default_route));
    }
    for sg in sgs {
        let (Some(id), Some(vpc)) = (sg.group_id(), sg.vpc_id()) else {
            continue;
        };
        let p = out.entry(vpc.to_string()).or_default();
        match part_of(sg.tags()) {
            Some(PART_SG) => {
                p.sg = Some(id.to_string());
                p.ssh_cidrs = open_from(sg, SSH_PORT);
            }
            Some(PART_DOCKER) => {
                p.docker_sg = Some(id.to_string());
                p.docker_cidrs = open_from(sg, DOCKER_PORT);
            }
            _ => {}
        }
    }
    out
}

/// The parts of these VPCs: three describes (more past 200 VPCs).
pub async fn parts_of(cloud: &Cloud, vpcs: &[String]) -> Result<HashMap<String, Parts>, ApiError> {
    let mut out = HashMap::new();
    for chunk in vpcs.chunks(FILTER_VALUES) {
        let ids = || chunk.iter().cloned();
        let (igws, rts, sgs) = tokio::try_join!(
            cloud
                .api
                .internet_gateways(vec![filter("attachment.vpc-id", ids())]),
            cloud.api.route_tables(vec![filter("vpc-id", ids())]),
            cloud.api.security_groups(vec![filter("vpc-id", ids())]),
        )?;
        out.extend(assemble(&igws, &rts, &sgs, None));
    }
    Ok(out)
}

/// The parts made by operation `op` for `vpc`, attached or not (resuming a create).
async fn parts_by_op(cloud: &Cloud, vpc: &str, op: &str) -> Result<Parts, ApiError> {
    let by_op = || vec![filter(&tags::op_key(), [op])];
    let (igws, rts, sgs) = tokio::try_join!(
        cloud.api.internet_gateways(by_op()),
        cloud.api.route_tables(by_op()),
        cloud.api.security_groups(by_op()),
    )?;
    Ok(assemble(&igws, &rts, &sgs, Some(vpc))
        .remove(vpc)
        .unwrap_or_default())
}

/// The network object of a VPC with its parts. EC2 does not know `gateway` and `dns`:
/// they come from the inputs tag, else from `prior` (the state's record).
pub fn object(vpc: &Vpc, parts: &Parts, prior: &Attrs) -> Object {
    let t = pairs(vpc.tags());
    let mut attrs = Attrs::new();
    if let Some(n) = tag(vpc.tags(), tags::NAME) {
        attrs.insert("name".into(), Value::String(n.to_string()));
    }
    if let Some(c) = vpc.cidr_block() {
        attrs.insert("cidr".into(), Value::String(c.to_string()));
    }
    match tags::read_inputs(t.clone()) {
        Some(inputs) => attrs.extend(inputs),
        None => attrs.extend(tags::inputs_of("network", prior)),
    }
    let user = tags::user_tags(t.clone());
    if !user.is_empty() {
        attrs.insert("tags".into(), serde_json::json!(user));
    }
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            attrs.insert(k.into(), Value::String(v.clone()));
        }
    };
    put("internet_gateway", parts.igw.as_ref().map(|(id, _)| id));
    put("route_table", parts.route_table.as_ref().map(|(id, _)| id));
    put("security_group", parts.sg.as_ref());
    put("docker_security_group", parts.docker_sg.as_ref());
    attrs.insert("ssh_cidrs".into(), serde_json::json!(parts.ssh_cidrs));
    attrs.insert("docker_cidrs".into(), serde_json::json!(parts.docker_cidrs));
    Object {
        kind: "network".into(),
        id: vpc.vpc_id().unwrap_or_default().to_string(),
        attrs,
        owner: tags::ownership(t),
    }
}

/// Read networks by VPC id: one `DescribeVpcs` and the three part describes.
pub async fn read_many(
    cloud: &Cloud,
    ids: &[String],
) -> Result<HashMap<String, (Vpc, Parts)>, ApiError> {
    let mut vpcs = Vec::new();
    for chunk in ids.chunks(FILTER_VALUES) {
        vpcs.extend(
            cloud
                .api
                .vpcs(vec![filter("vpc-id", chunk.iter().cloned())])
                .await?,
        );
    }
    let found: Vec<String> = vpcs
        .iter()
        .filter_map(|v| v.vpc_id().map(str::to_string))
        .collect();
    let mut parts = if found.is_empty() {
        HashMap::new()
    } else {
        parts_of(cloud, &found).await?
    };
    Ok(vpcs
        .into_iter()
        .filter_map(|v| {
            let id = v.vpc_id()?.to_string();
            let p = parts.remove(&id).unwrap_or_default();
            Some((id, (v, p)))
        })
        .collect())
}

/// The permissions of the cluster's security group.
fn cluster_rules(sg: &str, settings: &Ec2Settings) -> Vec<IpPermission> {
    let mut rules = vec![
        IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(ETCD_PORTS.0)
            .to_port(ETCD_PORTS.1)
            .user_id_group_pairs(
                UserIdGroupPair::builder()
                    .group_id(sg)
                    .description("etcd between the cluster's machines")
                    .build(),
            )
            .build(),
    ];
    let ssh = Ec2Settings::cidrs(&settings.ssh_cidrs);
    if !ssh.is_empty() {
        rules.push(port_from(SSH_PORT, &ssh, "SSH"));
    }
    rules
}

fn port_from(port: i32, cidrs: &[String], what: &str) -> IpPermission {
    IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(port)
        .to_port(port)
        .set_ip_ranges(Some(
            cidrs
                .iter()
                .map(|c| IpRange::builder().cidr_ip(c).description(what).build())
                .collect(),
        ))
        .build()
}

/// Add rules one call each, a rule EC2 has already counting as done.
async fn authorize(cloud: &Cloud, sg: &str, rules: Vec<IpPermission>) -> Result<(), ApiError> {
    for rule in rules {
        let r = cloud
            .api
            .client
            .authorize_security_group_ingress()
            .group_id(sg)
            .ip_permissions(rule)
            .send()
            .await
            .op("AuthorizeSecurityGroupIngress");
        match r {
            Err(e) if e.class == Class::Duplicate => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// A step EC2 may answer "already done" to (attach, route, associate): that is success.
pub fn done_already<T>(r: Result<T, ApiError>) -> Result<(), ApiError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.class == Class::Duplicate => Ok(()),
        Err(e) => Err(e),
    }
}

/// The part of `part` made by operation `op` (a step whose answer was lost).
async fn find_part(cloud: &Cloud, op: &str, part: &str) -> Result<Option<String>, ApiError> {
    let f = || {
        vec![
            filter(&tags::op_key(), [op]),
            filter(&format!("tag:{PART}"), [part]),
        ]
    };
    Ok(match part {
        PART_IGW => cloud
            .api
            .internet_gateways(f())
            .await?
            .into_iter()
            .find_map(|g| g.internet_gateway_id),
        PART_RT => cloud
            .api
            .route_tables(f())
            .await?
            .into_iter()
            .find_map(|r| r.route_table_id),
        _ => cloud
            .api
            .security_groups(f())
            .await?
            .into_iter()
            .find_map(|g| g.group_id),
    })
}

/// Make the parts of `vpc` that `p` does not record yet: internet gateway (attached),
/// route table (default route), the two security groups (with their rules). Each step
/// is done once; a step whose answer was lost is looked up by its op and part tags.
pub async fn ensure_parts(
    cloud: &Cloud,
    vpc: &str,
    owner: &Ownership,
    name: &str,
    p: &mut Progress,
) -> Result<Parts, ApiError> {
    let attrs = Attrs::new();
    let tags_for = |part: &str, suffix: &str| {
        tags::object_tags(
            "network",
            &attrs,
            owner,
            Some(&format!("{name}{suffix}")),
            Some(part),
        )
        .map_err(|m| ApiError::other("CreateTags", m))
    };
    let api = &cloud.api.client;
    let op = owner.op.as_str();

    let igw = p
        .made(
            "igw",
            || find_part(cloud, op, PART_IGW),
            || async {
                api.create_internet_gateway()
                    .tag_specifications(tag_spec(
                        ResourceType::InternetGateway,
                        &tags_for(PART_IGW, "-igw")?,
                    ))
                    .send()
                    .await
                    .op("CreateInternetGateway")?
                    .internet_gateway
                    .and_then(|g| g.internet_gateway_id)
                    .ok_or_else(|| ApiError::other("CreateInternetGateway", "EC2 returned no id"))
            },
        )
        .await?;
    p.once("attach", || async {
        done_already(
            api.attach_internet_gateway()
                .internet_gateway_id(&igw)
                .vpc_id(vpc)
                .send()
                .await
                .op("AttachInternetGateway"),
        )
    })
    .await?;

    let rt = p
        .made(
            "rt",
            || find_part(cloud, op, PART_RT),
            || async {
                api.create_route_table()
                    .vpc_id(vpc)
                    .tag_specifications(tag_spec(
                        ResourceType::RouteTable,
                        &tags_for(PART_RT, "-rt")?,
                    ))
                    .send()
                    .await
                    .op("CreateRouteTable")?
                    .route_table
                    .and_then(|r| r.route_table_id)
                    .ok_or_else(|| ApiError::other("CreateRouteTable", "EC2 returned no id"))
            },
        )
        .await?;
    p.once("route", || async {
        done_already(
            api.create_route()
                .route_table_id(&rt)
                .destination_cidr_block("0.0.0.0/0")
                .gateway_id(&igw)
                .send()
                .await
                .op("CreateRoute"),
        )
    })
    .await?;

    let mut groups = Vec::new();
    for (key, rules_key, part, suffix, what) in [
        (
            "sg",
            "sg-rules",
            PART_SG,
            "",
            "etcd between members, SSH from ssh_cidrs",
        ),
        (
            "docker",
            "docker-rules",
            PART_DOCKER,
            "-docker",
            "Docker API of dev machines from docker_cidrs",
        ),
    ] {
        let id = p
            .made(
                key,
                || find_part(cloud, op, part),
                || async {
                    api.create_security_group()
                        .group_name(format!("{name}{suffix}"))
                        .description(format!("clusterform {}: {what}", owner.cluster))
                        .vpc_id(vpc)
                        .tag_specifications(tag_spec(
                            ResourceType::SecurityGroup,
                            &tags_for(part, suffix)?,
                        ))
                        .send()
                        .await
                        .op("CreateSecurityGroup")?
                        .group_id
                        .ok_or_else(|| ApiError::other("CreateSecurityGroup", "EC2 returned no id"))
                },
            )
            .await?;
        let rules = if part == PART_SG {
            cluster_rules(&id, &cloud.settings)
        } else {
            let docker = Ec2Settings::cidrs(&cloud.settings.docker_cidrs);
            if docker.is_empty() {
                Vec::new()
            } else {
                vec![port_from(DOCKER_PORT, &docker, "Docker API")]
            }
        };
        p.once(rules_key, || authorize(cloud, &id, rules)).await?;
        groups.push(id);
    }
    let mut docker = groups.pop();
    let sg = groups.pop();
    let sorted = |list: &[String]| {
        let mut v = Ec2Settings::cidrs(list);
        v.sort();
        v.dedup();
        v
    };
    let parts = Parts {
        igw: Some((igw, true)),
        route_table: Some((rt, true)),
        sg,
        docker_sg: docker.take(),
        ssh_cidrs: sorted(&cloud.settings.ssh_cidrs),
        docker_cidrs: sorted(&cloud.settings.docker_cidrs),
    };
    cloud.cache_parts(vpc, Some(parts.clone()));
    Ok(parts)
}

/// The parts of a VPC for a subnet or machine being created: cached, else looked up,
/// else (a network whose create was interrupted and then adopted) made.
pub async fn parts_for(cloud: &Cloud, vpc: &str) -> Result<Parts, ApiError> {
    if let Some(p) = cloud.cached_parts(vpc).filter(Parts::complete) {
        return Ok(p);
    }
    let _one_at_a_time = cloud.lookup.lock().await;
    if let Some(p) = cloud.cached_parts(vpc).filter(Parts::complete) {
        return Ok(p);
    }
    let found = parts_of(cloud, &[vpc.to_string()])
        .await?
        .remove(vpc)
        .unwrap_or_default();
    if found.complete() {
        cloud.cache_parts(vpc, Some(found.clone()));
        return Ok(found);
    }
    let v = cloud
        .api
        .vpcs(vec![filter("vpc-id", [vpc])])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError {
            op: "DescribeVpcs",
            code: None,
            message: format!("network (VPC) `{vpc}` not found"),
            class: Class::Permanent,
        })?;
    let owner = tags::ownership(pairs(v.tags())).ok_or_else(|| {
        ApiError::other(
            "DescribeVpcs",
            format!("VPC `{vpc}` has no clusterform tags and lacks the cluster's security group: use a network made by clusterform"),
        )
    })?;
    let name = tag(v.tags(), tags::NAME).unwrap_or(vpc).to_string();
    tracing::info!("network `{vpc}` lacks parts (its create was interrupted); making them");
    let found = parts_by_op(cloud, vpc, &owner.op).await?;
    let mut p = Progress::default();
    if let Some((id, attached)) = found.igw {
        p.set_id("igw", id);
        if attached {
            p.set_done("attach");
        }
    }
    if let Some((id, route)) = found.route_table {
        p.set_id("rt", id);
        if route {
            p.set_done("route");
        }
    }
    // Rules of found groups are added again: EC2 answers duplicates, which is fine.
    if let Some(id) = found.sg {
        p.set_id("sg", id);
    }
    if let Some(id) = found.docker_sg {
        p.set_id("docker", id);
    }
    ensure_parts(cloud, vpc, &owner, &name, &mut p).await
}

/// Create the network: the VPC, DNS host names, then its parts. A retry after a
/// transient error goes on from the step that failed.
pub async fn create(cloud: &Cloud, attrs: &Attrs, owner: &Ownership) -> Result<Object, ApiError> {
    let name = attr_str(attrs, "name").unwrap_or("clusterform").to_string();
    let cidr = attr_str(attrs, "cidr")
        .ok_or_else(|| ApiError::other("CreateVpc", "`cidr` is required"))?
        .to_string();
    let tags = tags::object_tags("network", attrs, owner, Some(&name), None)
        .map_err(|m| ApiError::other("CreateVpc", m))?;
    cloud
        .resumable(&owner.op, |mut p| async move {
            let r = create_steps(cloud, attrs, owner, &name, &cidr, &tags, &mut p).await;
            (p, r)
        })
        .await
}

async fn create_steps(
    cloud: &Cloud,
    attrs: &Attrs,
    owner: &Ownership,
    name: &str,
    cidr: &str,
    tags: &[(String, String)],
    p: &mut Progress,
) -> Result<Object, ApiError> {
    let api = &cloud.api;
    let vpc = p
        .made(
            "vpc",
            || async {
                Ok(api
                    .vpcs(vec![filter(&tags::op_key(), [owner.op.as_str()])])
                    .await?
                    .into_iter()
                    .find_map(|v| v.vpc_id))
            },
            || async {
                api.client
                    .create_vpc()
                    .cidr_block(cidr)
                    .tag_specifications(tag_spec(ResourceType::Vpc, tags))
                    .send()
                    .await
                    .op("CreateVpc")?
                    .vpc
                    .and_then(|v| v.vpc_id)
                    .ok_or_else(|| ApiError::other("CreateVpc", "EC2 returned no id"))
            },
        )
        .await?;
    // DNS names for the instances (public ones reachable by name).
    p.once("dns", || async {
        api.client
            .modify_vpc_attribute()
            .vpc_id(&vpc)
            .enable_dns_hostnames(AttributeBooleanValue::builder().value(true).build())
            .send()
            .await
            .op("ModifyVpcAttribute")
            .map(|_| ())
    })
    .await?;
    let parts = ensure_parts(cloud, &vpc, owner, name, p).await?;
    // The object as a read would see it, without another round of describes.
    let made = Vpc::builder()
        .vpc_id(&vpc)
        .cidr_block(cidr)
        .set_tags(Some(sdk_tags(tags)))
        .build();
    Ok(object(&made, &parts, attrs))
}

/// Read one network after a change; EC2 may not list a new VPC at once (transient).
async fn read_back(cloud: &Cloud, vpc: &str, prior: &Attrs) -> Result<Object, ApiError> {
    let mut found = read_many(cloud, &[vpc.to_string()]).await?;
    match found.remove(vpc) {
        Some((v, p)) => Ok(object(&v, &p, prior)),
        None => Err(ApiError {
            op: "DescribeVpcs",
            code: None,
            message: format!("the new VPC `{vpc}` is not listed yet"),
            class: Class::Transient,
        }),
    }
}

/// Change the name, tags, or the recorded gateway and DNS.
pub async fn update(cloud: &Cloud, id: &str, attrs: &Attrs) -> Result<Object, ApiError> {
    let mut found = read_many(cloud, &[id.to_string()]).await?;
    let Some((vpc, _)) = found.remove(id) else {
        return Err(ApiError {
            op: "DescribeVpcs",
            code: Some("InvalidVpcID.NotFound".into()),
            message: format!("VPC `{id}` not found"),
            class: Class::NotFound,
        });
    };
    let owner = tags::ownership(pairs(vpc.tags()));
    let mut want: Vec<(String, String)> = Vec::new();
    if let Some(n) = attr_str(attrs, "name") {
        want.push((tags::NAME.to_string(), n.to_string()));
    }
    want.extend(tags::inputs_tags(&tags::inputs_of("network", attrs)));
    want.extend(tags::tags_attr(attrs));
    if owner.is_none() {
        tracing::warn!("VPC `{id}` has no ownership tags");
    }
    cloud.api.sync_tags(id, vpc.tags(), &want).await?;
    read_back(cloud, id, attrs).await
}

/// One step of taking a network down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// Delete a security group.
    SecurityGroup(String),
    /// Take a subnet off the route table (an association left by an interrupted run).
    Disassociate(String),
    /// Delete the route table.
    RouteTable(String),
    /// Detach the internet gateway.
    Detach(String),
    /// Delete the internet gateway.
    Gateway(String),
    /// Delete the VPC.
    Vpc,
}

/// The steps that take a VPC and its parts down, in order: security groups, route
/// tables (associations first), gateways (detach, delete), the VPC. Only parts with the
/// VPC's cluster tag are clusterform's; anything else in the VPC makes its delete wait
/// (and fail after `teardown_timeout_s`, naming it).
async fn teardown_steps(cloud: &Cloud, vpc: &str) -> Result<Option<Vec<Teardown>>, ApiError> {
    let api = &cloud.api;
    let vpcs = api.vpcs(vec![filter("vpc-id", [vpc])]).await?;
    let Some(v) = vpcs.first() else {
        return Ok(None);
    };
    let cluster = tag(v.tags(), owner_tags::CLUSTER).map(str::to_string);
    let ours = |t: &[aws_sdk_ec2::types::Tag]| {
        part_of(t).is_some() && tag(t, owner_tags::CLUSTER).map(str::to_string) == cluster
    };
    let by_vpc = || vec![filter("vpc-id", [vpc])];
    // The gateway by its op tag, attached or not (a detach whose answer was lost leaves
    // it detached, and it must still go).
    let igw_filter = match tag(v.tags(), owner_tags::OP) {
        Some(op) => vec![
            filter(&tags::op_key(), [op]),
            filter(&format!("tag:{PART}"), [PART_IGW]),
        ],
        None => vec![filter("attachment.vpc-id", [vpc])],
    };
    let (igws, rts, sgs) = tokio::try_join!(
        api.internet_gateways(igw_filter),
        api.route_tables(by_vpc()),
        api.security_groups(by_vpc()),
    )?;
    let mut steps = Vec::new();
    for sg in sgs.iter().filter(|s| ours(s.tags())) {
        steps.extend(
            sg.group_id()
                .map(|id| Teardown::SecurityGroup(id.to_string())),
        );
    }
    for rt in rts.iter().filter(|r| ours(r.tags())) {
        let Some(id) = rt.route_table_id() else {
            continue;
        };
        for a in rt.associations().iter().filter(|a| a.main() != Some(true)) {
            steps.extend(
                a.route_table_association_id()
                    .map(|x| Teardown::Disassociate(x.to_string())),
            );
        }
        steps.push(Teardown::RouteTable(id.to_string()));
    }
    for g in igws.iter().filter(|g| ours(g.tags())) {
        if let Some(id) = g.internet_gateway_id() {
            steps.push(Teardown::Detach(id.to_string()));
            steps.push(Teardown::Gateway(id.to_string()));
        }
    }
    steps.push(Teardown::Vpc);
    Ok(Some(steps))
}

/// Run one teardown step, waiting out `DependencyViolation`; gone is done.
async fn teardown_step(cloud: &Cloud, vpc: &str, step: &Teardown) -> Result<(), ApiError> {
    let c = &cloud.api.client;
    match step {
        Teardown::SecurityGroup(id) => {
            cloud
                .until_free(&format!("security group `{id}`"), || async {
                    c.delete_security_group()
                        .group_id(id)
                        .send()
                        .await
                        .op("DeleteSecurityGroup")
                        .map(|_| ())
                })
                .await
        }
        Teardown::Disassociate(id) => {
            match c
                .disassociate_route_table()
                .association_id(id)
                .send()
                .await
                .op("DisassociateRouteTable")
            {
                Err(e) if e.is_not_found() => Ok(()),
                other => other.map(|_| ()),
            }
        }
        Teardown::RouteTable(id) => {
            cloud
                .until_free(&format!("route table `{id}`"), || async {
                    c.delete_route_table()
                        .route_table_id(id)
                        .send()
                        .await
                        .op("DeleteRouteTable")
                        .map(|_| ())
                })
                .await
        }
        Teardown::Detach(id) => {
            cloud
                .until_free(&format!("internet gateway `{id}`"), || async {
                    c.detach_internet_gateway()
                        .internet_gateway_id(id)
                        .vpc_id(vpc)
                        .send()
                        .await
                        .op("DetachInternetGateway")
                        .map(|_| ())
                })
                .await
        }
        Teardown::Gateway(id) => {
            cloud
                .until_free(&format!("internet gateway `{id}`"), || async {
                    c.delete_internet_gateway()
                        .internet_gateway_id(id)
                        .send()
                        .await
                        .op("DeleteInternetGateway")
                        .map(|_| ())
                })
                .await
        }
        Teardown::Vpc => {
            cloud
                .until_free(&format!("VPC `{vpc}`"), || async {
                    c.delete_vpc()
                        .vpc_id(vpc)
                        .send()
                        .await
                        .op("DeleteVpc")
                        .map(|_| ())
                })
                .await
        }
    }
}

/// Delete the parts in reverse order of making, then the VPC; each step waits out
/// `DependencyViolation` (instances still shutting down, their interfaces). A retry
/// after a transient error goes on from the step that failed, without describing the
/// VPC again.
pub async fn delete(cloud: &Cloud, vpc: &str) -> Result<(), ApiError> {
    let steps = match cloud.take_teardown(vpc) {
        Some(steps) => steps,
        None => match teardown_steps(cloud, vpc).await? {
            Some(steps) => steps,
            None => return Ok(()),
        },
    };
    for (i, step) in steps.iter().enumerate() {
        if let Err(e) = teardown_step(cloud, vpc, step).await {
            if e.class == Class::Transient {
                cloud.keep_teardown(vpc, steps[i..].to_vec());
            }
            return Err(e);
        }
    }
    cloud.cache_parts(vpc, None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{InternetGatewayAttachment, Route, Tag};

    fn t(k: &str, v: &str) -> Tag {
        Tag::builder().key(k).value(v).build()
    }

    #[test]
    fn parts_are_sorted_by_vpc_and_part_tag() {
        let igw = InternetGateway::builder()
            .internet_gateway_id("igw-1")
            .attachments(InternetGatewayAttachment::builder().vpc_id("vpc-1").build())
            .tags(t(PART, PART_IGW))
            .build();
        let rt = RouteTable::builder()
            .route_table_id("rtb-1")
            .vpc_id("vpc-1")
            .tags(t(PART, PART_RT))
            .routes(
                Route::builder()
                    .destination_cidr_block("0.0.0.0/0")
                    .gateway_id("igw-1")
                    .build(),
            )
            .build();
        let main_rt = RouteTable::builder()
            .route_table_id("rtb-main")
            .vpc_id("vpc-1")
            .build();
        let sg = SecurityGroup::builder()
            .group_id("sg-1")
            .vpc_id("vpc-1")
            .tags(t(PART, PART_SG))
            .ip_permissions(port_from(22, &["203.0.113.0/24".into()], "SSH"))
            .build();
        let docker = SecurityGroup::builder()
            .group_id("sg-2")
            .vpc_id("vpc-1")
            .tags(t(PART, PART_DOCKER))
            .build();
        let default_sg = SecurityGroup::builder()
            .group_id("sg-default")
            .vpc_id("vpc-1")
            .build();
        let parts = assemble(&[igw], &[main_rt, rt], &[default_sg, sg, docker], None);
        let p = &parts["vpc-1"];
        assert!(p.complete(), "{p:?}");
        assert_eq!(p.route_table, Some(("rtb-1".into(), true)));
        assert_eq!(p.ssh_cidrs, vec!["203.0.113.0/24".to_string()]);
        assert!(p.docker_cidrs.is_empty());
    }

    #[test]
    fn an_unattached_gateway_is_found_when_resuming() {
        let igw = InternetGateway::builder()
            .internet_gateway_id("igw-1")
            .tags(t(PART, PART_IGW))
            .build();
        let parts = assemble(&[igw], &[], &[], Some("vpc-9"));
        assert_eq!(parts["vpc-9"].igw, Some(("igw-1".into(), false)));
        assert!(!parts["vpc-9"].complete());
    }
}
