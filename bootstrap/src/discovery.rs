//! Finding a role's instances in EC2: DescribeInstances filtered by the
//! cluster and role tags and by state (pending or running), every page of
//! it, then waiting under a deadline until the expected number is there.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;

use crate::retry::{retry, Attempt, Policy};
use crate::{aws, tags, Role};

/// Reservations per DescribeInstances page (EC2's maximum is 1000).
pub const PAGE_SIZE: i32 = 1000;
/// Polling while peers come up: every 1 s at first, at most every 10 s.
pub const POLL_INITIAL: Duration = Duration::from_secs(1);
pub const POLL_MAX: Duration = Duration::from_secs(10);

/// An instance of the cluster in the wanted role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Peer {
    pub instance_id: String,
    pub private_ip: String,
    pub private_dns: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("DescribeInstances for cluster {cluster} role {role} (page {page}): {source}")]
    Describe { cluster: String, role: Role, page: u32, source: aws::AwsError },
    #[error("found {found} of {expected} {role} instances of cluster {cluster} ({ids}) when the {seconds} s deadline passed")]
    TooFew { cluster: String, role: Role, found: usize, expected: usize, ids: String, seconds: u64 },
}

/// Counts DescribeInstances pages, for the status file and benchmarks.
#[derive(Debug, Default)]
pub struct Counter(AtomicU32);

impl Counter {
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every pending or running instance tagged with `cluster` and `role` that
/// has a private address, sorted by instance id.
pub async fn list(
    ec2: &aws_sdk_ec2::Client,
    cluster: &str,
    role: Role,
    pages: &Counter,
) -> Result<Vec<Peer>, DiscoveryError> {
    list_paged(ec2, cluster, role, PAGE_SIZE, pages).await
}

/// The instance states in which an instance still has its root volume,
/// and so may still hold etcd data (terminated ones do not).
pub const STATES_WITH_DATA: &[&str] = &["pending", "running", "stopping", "stopped"];

/// `list` over other instance states (e.g. `STATES_WITH_DATA`).
pub async fn list_in_states(
    ec2: &aws_sdk_ec2::Client,
    cluster: &str,
    role: Role,
    states: &[&str],
    pages: &Counter,
) -> Result<Vec<Peer>, DiscoveryError> {
    list_filtered(ec2, cluster, role, states, PAGE_SIZE, pages).await
}

/// `list` with `page_size` reservations a page (tests use small pages).
pub async fn list_paged(
    ec2: &aws_sdk_ec2::Client,
    cluster: &str,
    role: Role,
    page_size: i32,
    pages: &Counter,
) -> Result<Vec<Peer>, DiscoveryError> {
    list_filtered(ec2, cluster, role, &["pending", "running"], page_size, pages).await
}

async fn list_filtered(
    ec2: &aws_sdk_ec2::Client,
    cluster: &str,
    role: Role,
    states: &[&str],
    page_size: i32,
    pages: &Counter,
) -> Result<Vec<Peer>, DiscoveryError> {
    let filter = |name: String, values: &[&str]| {
        Filter::builder()
            .name(name)
            .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
            .build()
    };
    let mut stream = ec2
        .describe_instances()
        .filters(filter(tags::filter_name(tags::CLUSTER), &[cluster]))
        .filters(filter(tags::filter_name(tags::ROLE), &[role.as_str()]))
        .filters(filter("instance-state-name".into(), states))
        .max_results(page_size)
        .into_paginator()
        .send();
    let mut peers = Vec::new();
    let mut page = 0;
    while let Some(out) = stream.next().await {
        page += 1;
        pages.0.fetch_add(1, Ordering::Relaxed);
        let out = out.map_err(|e| DiscoveryError::Describe {
            cluster: cluster.to_string(),
            role,
            page,
            source: e.into(),
        })?;
        for inst in out.reservations().iter().flat_map(|r| r.instances()) {
            let (Some(id), Some(ip)) = (inst.instance_id(), inst.private_ip_address()) else {
                continue;
            };
            peers.push(Peer {
                instance_id: id.to_string(),
                private_ip: ip.to_string(),
                private_dns: inst.private_dns_name().unwrap_or_default().to_string(),
            });
        }
    }
    peers.sort();
    peers.dedup();
    Ok(peers)
}

/// Lists until at least `expected` instances are there or `deadline`
/// passes. An API error (throttling, a timeout, after the SDK's own
/// retries) is retried too, inside the same deadline.
pub async fn wait_for(
    ec2: &aws_sdk_ec2::Client,
    cluster: &str,
    role: Role,
    expected: usize,
    deadline: Duration,
    pages: &Counter,
) -> Result<Vec<Peer>, DiscoveryError> {
    let policy =
        Policy { initial: POLL_INITIAL, max_delay: POLL_MAX, deadline, max_attempts: u32::MAX };
    retry(&policy, |_| async {
        let peers = list(ec2, cluster, role, pages).await.map_err(Attempt::Retry)?;
        if peers.len() >= expected {
            Ok(peers)
        } else {
            Err(Attempt::Retry(DiscoveryError::TooFew {
                cluster: cluster.to_string(),
                role,
                found: peers.len(),
                expected,
                ids: peers.iter().map(|p| p.instance_id.as_str()).collect::<Vec<_>>().join(", "),
                seconds: deadline.as_secs(),
            }))
        }
    })
    .await
}
