//! Talking to a running etcd cluster, for day-2 changes of its members: the etcd v3 API
//! over etcd's own JSON gateway (`/v3/cluster/member/*`, `/v3/maintenance/*`, `/v3/kv/range`;
//! plain HTTP/1.1 + JSON, so no gRPC stack or `protoc` is needed to build), the health
//! gate every membership step passes first, an SSH tunnel for workstations outside the
//! cluster network, and an in-memory fake cluster for tests.
//!
//! Reads and changes are split like the providers' `Reader`/`Provider`: [`EtcdReader`]
//! has no method that changes the cluster, so `drift` and `etcd status`, which get only
//! a reader, cannot change the member list by construction.

pub mod client;
pub mod fake;
pub mod health;
pub mod kv;
pub mod tunnel;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use client::{ClientConfig, ClientTls, EtcdClient, TlsError};
pub use fake::{FakeEtcd, FakeMethod};
pub use health::{Health, Unhealthy, check_health, describe_member};
pub use kv::{Compare, KeyValue, KvClient, KvConfig, Op, Range, TxnAnswer};
pub use tunnel::{SshVia, Tunnel, TunnelError, TunnelOptions};

/// One member of the cluster, as the member list reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member id (etcd's 64-bit id).
    pub id: u64,
    /// `--name`; empty while a member that was added has not started yet.
    pub name: String,
    /// Peer URLs (`http://10.0.1.101:2380`).
    pub peer_urls: Vec<String>,
    /// Client URLs (`http://10.0.1.101:2379`); empty until the member has started.
    pub client_urls: Vec<String>,
    /// A learner: receives the log but does not vote (not part of the quorum).
    pub is_learner: bool,
}

impl Member {
    /// True once the member process has started and joined (it has a name).
    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }

    /// True when `peer_url` is one of its peer URLs.
    pub fn has_peer_url(&self, peer_url: &str) -> bool {
        self.peer_urls
            .iter()
            .any(|u| u.trim_end_matches('/') == peer_url.trim_end_matches('/'))
    }

    /// The member id as etcd prints it (16 hex digits).
    pub fn hex_id(&self) -> String {
        format!("{:016x}", self.id)
    }
}

/// One member's view of itself and the cluster (`/v3/maintenance/status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The client URL asked.
    pub endpoint: String,
    /// The id of the member that answered.
    pub member_id: u64,
    /// The etcd version it runs (`3.4.23`).
    pub version: String,
    /// Its database size in bytes.
    pub db_size: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Its raft index.
    pub raft_index: u64,
    /// Its raft term.
    pub raft_term: u64,
    /// The raft index it has applied.
    pub raft_applied_index: u64,
    /// True when it is a learner.
    pub is_learner: bool,
    /// Errors it reports (e.g. "NOSPACE" alarm text), empty when none.
    pub errors: Vec<String>,
}

/// An active alarm (`NOSPACE`, `CORRUPT`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    /// The member that raised it.
    pub member_id: u64,
    /// `NOSPACE`, `CORRUPT`.
    pub alarm: String,
}

/// Why a call to etcd failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connection refused, timeout, DNS).
    #[error("cannot reach etcd at {}: {detail}", .endpoints.join(", "))]
    Unreachable {
        /// The client URLs tried.
        endpoints: Vec<String>,
        /// What the last attempt said.
        detail: String,
    },
    /// etcd answered with an error (gRPC code and message from the gateway).
    #[error("etcd at {endpoint} refused the call: {message} (code {code})")]
    Api {
        /// The client URL that answered.
        endpoint: String,
        /// The gRPC status code (9: failed precondition, 5: not found...).
        code: i64,
        /// etcd's message (`etcdserver: ...`).
        message: String,
    },
    /// A learner that is not yet in sync with the leader cannot be promoted (retry).
    #[error("the learner is not yet in sync with the leader: {0}")]
    NotReady(String),
    /// The answer could not be understood.
    #[error("unexpected answer from etcd at {endpoint}: {detail}")]
    Protocol {
        /// The client URL that answered.
        endpoint: String,
        /// What was wrong.
        detail: String,
    },
}

/// What can be read from an etcd cluster without changing it.
#[async_trait]
pub trait EtcdReader: Send + Sync {
    /// The client URLs this handle talks to, as configured (before any tunnel), for
    /// messages.
    fn endpoints(&self) -> Vec<String>;

    /// The member list (linearizable: answered through the leader), from the first
    /// endpoint that answers.
    async fn members(&self) -> Result<Vec<Member>, EtcdError>;

    /// The status of the member at `client_url` (asked directly at that URL, through
    /// the tunnel when there is one).
    async fn status(&self, client_url: &str) -> Result<MemberStatus, EtcdError>;

    /// The active alarms of the cluster.
    async fn alarms(&self) -> Result<Vec<Alarm>, EtcdError>;

    /// A linearizable read through any endpoint: succeeds only when the cluster has a
    /// quorum and a leader.
    async fn quorum_read(&self) -> Result<(), EtcdError>;
}

/// What changes the member list. Every method is safe to call again after a lost
/// answer: callers look the member up by peer URL first.
#[async_trait]
pub trait EtcdAdmin: EtcdReader {
    /// `MemberAdd`: add a member with this peer URL (as a learner when `learner`).
    /// Returns the new member and the member list after.
    async fn add_member(
        &self,
        peer_url: &str,
        learner: bool,
    ) -> Result<(Member, Vec<Member>), EtcdError>;

    /// `MemberRemove`: returns the member list after.
    async fn remove_member(&self, id: u64) -> Result<Vec<Member>, EtcdError>;

    /// `MemberPromote` of a learner; [`EtcdError::NotReady`] until it has caught up.
    /// Returns the member list after.
    async fn promote_member(&self, id: u64) -> Result<Vec<Member>, EtcdError>;

    /// `MoveLeader`: hand leadership to member `to` (asked at the current leader).
    async fn move_leader(&self, to: u64) -> Result<(), EtcdError>;

    /// The same cluster, restricted to reads.
    fn reader(&self) -> &dyn EtcdReader;
}

/// How long calls wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// To open a connection to one endpoint.
    pub connect: Duration,
    /// For one request, once connected.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
        }
    }
}
