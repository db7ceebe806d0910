//! The consumer-group APIs: decoded request in, response out, like
//! `handlers`. Every group API first resolves the group name and asks the
//! backend whether the principal may use the group and which broker
//! coordinates it ([`Backend::authorize_group`]; GROUP_AUTHORIZATION_FAILED
//! when denied). FindCoordinator names that broker; every other group API
//! is served only there: another broker answers NOT_COORDINATOR and drops
//! whatever it still held of the group. Membership goes to the shared
//! [`Coordinator`], offsets to the backend.

use std::time::Duration;

use futures_util::future::join_all;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as FoundCoordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backend::{self, Backend, Committed, GroupRef, StreamError};
use crate::codes::{self, Scope};
use crate::group::{self, Answer, Coordinator, JoinParams, SyncParams};
use crate::KafkaConfig;

/// Kafka's `offset.metadata.max.bytes`: a longer commit metadata string is
/// OFFSET_METADATA_TOO_LARGE.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Bound on a JoinGroup or SyncGroup wait, beyond the coordinator's own
/// deadlines (which end it first).
pub const GROUP_WAIT_MS_MAX: u64 = group::REBALANCE_TIMEOUT_MS_MAX + 10_000;

/// FindCoordinator key types.
const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

/// This broker's group coordinator and its broker id.
#[derive(Clone, Copy)]
pub struct Here<'a> {
    pub groups: &'a Coordinator,
    pub broker: backend::BrokerId,
}

/// Who sent the request (for DescribeGroups).
pub struct Client<'a> {
    pub client_id: &'a str,
    /// As Kafka reports it: `/` and the address.
    pub host: &'a str,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn opt(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string()).filter(|s| !s.is_empty())
}

/// Resolves a group name, checks the principal may use the group and that
/// this broker coordinates it: NOT_COORDINATOR when another does (and
/// whatever this broker held of the group is dropped, its waiting members
/// told the same).
async fn group<B: Backend>(
    b: &B,
    p: &B::Principal,
    here: Here<'_>,
    name: &str,
) -> Result<GroupRef, i16> {
    let (g, coordinator) = group_explained(b, p, name)
        .await
        .map_err(|(code, _)| code)?;
    if coordinator != here.broker {
        here.groups.unload(&g);
        return Err(codes::NOT_COORDINATOR);
    }
    Ok(g)
}

/// Resolves a group name and checks the principal may use the group: the
/// group and its coordinator, or the error with the backend's reason
/// (FindCoordinator sends it as the error message: a missing stream is
/// named there).
async fn group_explained<B: Backend>(
    b: &B,
    p: &B::Principal,
    name: &str,
) -> Result<(GroupRef, backend::BrokerId), (i16, Option<String>)> {
    if name.is_empty() {
        return Err((codes::INVALID_GROUP_ID, Some("empty group id".into())));
    }
    let explain = |e: StreamError| (codes::code(&e, Scope::Group), Some(e.to_string()));
    let g = b.resolve_group(p, name).map_err(explain)?;
    let coordinator = b.authorize_group(p, &g).await.map_err(explain)?;
    Ok((g, coordinator))
}

/// Waits for a coordinator answer; `lost` when the wait ends without one.
async fn answer<T>(a: Answer<T>, lost: impl FnOnce() -> T) -> T {
    match a {
        Answer::Now(t) => t,
        Answer::Wait(rx) => wait(rx).await.unwrap_or_else(lost),
    }
}

async fn wait<T>(rx: oneshot::Receiver<T>) -> Option<T> {
    let bound = Duration::from_millis(GROUP_WAIT_MS_MAX);
    tokio::time::timeout(bound, rx).await.ok()?.ok()
}

// --------------------------------------------------------- FindCoordinator

pub async fn find_coordinator<B: Backend>(
    b: &B,
    p: &B::Principal,
    cfg: &KafkaConfig,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let key_type = if version >= 1 {
        req.key_type
    } else {
        KEY_GROUP
    };
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys
    } else {
        vec![req.key]
    };
    let brokers = crate::handlers::brokers(b, cfg);
    let brokers = &brokers;
    let found = join_all(keys.iter().map(|key| async move {
        match key_type {
            KEY_GROUP => {
                let (_, id) = group_explained(b, p, key).await?;
                // The coordinator must be a broker clients can reach.
                brokers.iter().find(|x| x.id == id).ok_or_else(|| {
                    (
                        codes::COORDINATOR_NOT_AVAILABLE,
                        Some(format!("the coordinator, broker {id}, is not available")),
                    )
                })
            }
            // Transactions are not supported: there is no coordinator.
            KEY_TRANSACTION => Err((
                codes::COORDINATOR_NOT_AVAILABLE,
                Some("transactions are not supported".into()),
            )),
            _ => Err((codes::INVALID_REQUEST, None)),
        }
    }))
    .await;
    let mut resp = FindCoordinatorResponse::default();
    let mut coordinators = keys.into_iter().zip(found).map(|(key, found)| {
        let mut c = FoundCoordinator::default();
        c.key = key;
        match found {
            Ok(broker) => {
                c.node_id = BrokerId(broker.id);
                c.host = str_bytes(&broker.host);
                c.port = broker.port;
            }
            Err((code, message)) => {
                c.error_code = code;
                c.error_message = message.map(|m| str_bytes(&m));
                c.node_id = BrokerId(-1);
                c.host = StrBytes::default();
                c.port = -1;
            }
        }
        c
    });
    if version >= 4 {
        resp.coordinators = coordinators.collect();
    } else if let Some(c) = coordinators.next() {
        resp.error_code = c.error_code;
        resp.node_id = c.node_id;
        resp.host = c.host;
        resp.port = c.port;
        if version >= 1 {
            resp.error_message = c.error_message;
        }
    }
    resp
}

// --------------------------------------------------------------- JoinGroup

pub async fn join_group<B: Backend>(
    b: &B,
    p: &B::Principal,
    here: Here<'_>,
    client: &Client<'_>,
    req: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let member_id = req.member_id.to_string();
    let reply = match group(b, p, here, &req.group_id).await {
        Err(code) => group::JoinReply {
            error: code,
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id,
            members: vec![],
        },
        Ok(g) => {
            let params = JoinParams {
                name: req.group_id.to_string(),
                member_id: member_id.clone(),
                instance_id: if version >= 5 {
                    opt(&req.group_instance_id)
                } else {
                    None
                },
                require_known_member_id: version >= 4,
                client_id: client.client_id.to_string(),
                client_host: client.host.to_string(),
                session_timeout_ms: req.session_timeout_ms,
                // v0 has none: the session timeout serves (as in Kafka).
                rebalance_timeout_ms: if version >= 1 {
                    req.rebalance_timeout_ms
                } else {
                    req.session_timeout_ms
                },
                protocol_type: req.protocol_type.to_string(),
                protocols: req
                    .protocols
                    .into_iter()
                    .map(|p| (p.name.to_string(), p.metadata))
                    .collect(),
            };
            let a = here.groups.join(&g, params, Instant::now());
            answer(a, || group::JoinReply {
                error: codes::UNKNOWN_MEMBER_ID,
                generation: -1,
                protocol_type: None,
                protocol: None,
                leader: String::new(),
                member_id,
                members: vec![],
            })
            .await
        }
    };
    let mut resp = JoinGroupResponse::default();
    resp.error_code = reply.error;
    resp.generation_id = reply.generation;
    if version >= 7 {
        resp.protocol_type = reply.protocol_type.as_deref().map(str_bytes);
        resp.protocol_name = reply.protocol.as_deref().map(str_bytes);
    } else {
        // Not nullable before v7: Kafka sends "" when there is none.
        resp.protocol_name = Some(str_bytes(reply.protocol.as_deref().unwrap_or("")));
    }
    resp.leader = str_bytes(&reply.leader);
    resp.member_id = str_bytes(&reply.member_id);
    resp.members = reply
        .members
        .into_iter()
        .map(|m| {
            let mut out = JoinGroupResponseMember::default();
            out.member_id = StrBytes::from_string(m.member_id);
            if version >= 5 {
                out.group_instance_id = m.instance_id.map(StrBytes::from_string);
            }
            out.metadata = m.metadata;
            out
        })
        .collect();
    resp
}

// --------------------------------------------------------------- SyncGroup

pub async fn sync_group<B: Backend>(
    b: &B,
    p: &B::Principal,
    here: Here<'_>,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let reply = match group(b, p, here, &req.group_id).await {
        Err(code) => Err(code),
        Ok(g) => {
            let params = SyncParams {
                member_id: req.member_id.to_string(),
                instance_id: if version >= 3 {
                    opt(&req.group_instance_id)
                } else {
                    None
                },
                generation: req.generation_id,
                protocol_type: if version >= 5 {
                    opt(&req.protocol_type)
                } else {
                    None
                },
                protocol: if version >= 5 {
                    opt(&req.protocol_name)
                } else {
                    None
                },
                assignments: req
                    .assignments
                    .into_iter()
                    .map(|a| (a.member_id.to_string(), a.assignment))
                    .collect(),
            };
            let a = here.groups.sync(&g, params, Instant::now());
            Ok(answer(a, || group::SyncReply {
                error: codes::REBALANCE_IN_PROGRESS,
                protocol_type: None,
                protocol: None,
                assignment: Default::default(),
            })
            .await)
        }
    };
    let mut resp = SyncGroupResponse::default();
    match reply {
        Err(code) => resp.error_code = code,
        Ok(reply) => {
            resp.error_code = reply.error;
            resp.assignment = reply.assignment;
            if version >= 5 {
                resp.protocol_type = reply.protocol_type.as_deref().map(str_bytes);
                resp.protocol_name = reply.protocol.as_deref().map(str_bytes);
            }
        }
    }
    resp
}

// --------------------------------------------------------------- Heartbeat

pub async fn heartbeat<B: Backend>(
    b: &B,
    p: &B::Principal,
    here: Here<'_>,
    req: HeartbeatRequest,
    version: i16,
) -> HeartbeatResponse {
    let mut resp = HeartbeatResponse::default();
    resp.error_code = match group(b, p, here, &req.group_id).await {
        Err(code) => code,
        Ok(g) => {
            let instance = if version >= 3 {
                opt(&req.group_instance_id)
            } else {
                None
            };
            here.groups.heartbeat(
                &g,
                &req.member_id,
                instance.as_deref(),
                req.generation_id,
                Instant::now(),
            )
        }
    };
    resp
}

// -------------------------------------------------------------- LeaveGroup

pub async fn leave_group<B: Backend>(
    b: &B,
    p: &B::Principal,
    here: Here<'_>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    // v0-2 name one member; v3+ a batch (by member or instance id).
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), opt(&m.group_instance_id)))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let mut resp = LeaveGroupResponse::default();
    let codes = match group(b, p, here, &req.group_id).await {
        Err(code) => {
            resp.error_code = code;
            return resp;
        }
        Ok(g) => here.groups.leave(&g, &leaving, Instant::now()),
    };
    if version >= 3 {
        resp.members = leaving
            .into_iter()
            .zip(codes)
            .map(|((id, instance), code)| {
                let mut m = MemberResponse::default();
                m.member_id = StrBytes::from_string(id);
                m.group_instance_id = instance.map(StrBytes::from_string);
                m.error_code = code;
                m
            })
            .collect();
    } else {
        resp.error_code = codes.first().copied().unwrap_or(codes::NONE);
    }
    resp
}

// ------------------------------------------------------------ OffsetCommit

pub async fn offset_commit<B: Backend>(
    b: &B,
    p: &B::Principal,
    here: Here<'_>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let allowed = match group(b, p, here, &req.group_id).await {
        Err(code) => Err(code),
        Ok(g) => {
            let instance = if version >= 7 {
                opt(&req.group_instance_id)
            } else {
                None
            };
            match here.groups.check_commit(
                &g,
                req.generation_id_or_member_epoch,
                &req.member_id,
                instance.as_deref(),
                Instant::now(),
            ) {
                codes::NONE => Ok(g),
                code => Err(code),
            }
        }
    };
    let allowed = &allowed;
    let topics = req.topics.into_iter().map(|topic| async move {
        let resolved = b.resolve(p, &topic.name);
        let resolved = &resolved;
        let partitions = topic.partitions.into_iter().map(|part| async move {
            let mut out = OffsetCommitResponsePartition::default();
            out.partition_index = part.partition_index;
            let metadata = part
                .committed_metadata
                .map(|m| m.to_string())
                .unwrap_or_default();
            out.error_code = match (allowed, resolved) {
                (Err(code), _) => *code,
                (_, Err(e)) => codes::code(e, Scope::Partition),
                _ if metadata.len() > OFFSET_METADATA_BYTES_MAX => codes::OFFSET_METADATA_TOO_LARGE,
                (Ok(g), Ok(t)) => {
                    let committed = Committed {
                        offset: part.committed_offset,
                        metadata,
                    };
                    match b
                        .commit_offset(p, g, t, part.partition_index, committed)
                        .await
                    {
                        Ok(()) => codes::NONE,
                        Err(e) => codes::code(&e, Scope::Partition),
                    }
                }
            };
            out
        });
        let mut out = OffsetCommitResponseTopic::default();
        out.name = topic.name;
        out.partitions = join_all(partitions).await;
        out
    });
    let mut resp = OffsetCommitResponse::default();
    resp.topics = join_all(topics).await;
    resp
}

// ------------------------------------------------------------- OffsetFetch

/// One partition's committed offset or error.
type Fetched = (i32, Result<Option<Committed>, i16>);

/// The committed offsets of one group: for the listed topics, or (null)
/// every one the backend has.
async fn fetch_group<B: Backend>(
    b: &B,
    p: &B::Principal,
    here: Here<'_>,
    name: &str,
    topics: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Result<Vec<(TopicName, Vec<Fetched>)>, i16> {
    let g = group(b, p, here, name).await?;
    let g = &g;
    let Some(topics) = topics else {
        let all = b
            .group_offsets(p, g)
            .await
            .map_err(|e| codes::code(&e, Scope::Group))?;
        let mut out: Vec<(TopicName, Vec<Fetched>)> = vec![];
        for (topic, partition, committed) in all {
            let entry = (partition, Ok(Some(committed)));
            match out.iter_mut().find(|(t, _)| t.0.as_str() == topic) {
                Some((_, parts)) => parts.push(entry),
                None => out.push((TopicName(StrBytes::from_string(topic)), vec![entry])),
            }
        }
        return Ok(out);
    };
    let topics = topics.into_iter().map(|(name, partitions)| async move {
        let resolved = b.resolve(p, &name);
        let resolved = &resolved;
        let parts = partitions.into_iter().map(|partition| async move {
            let got = match resolved {
                Err(e) => Err(codes::code(e, Scope::Partition)),
                Ok(t) => b
                    .committed_offset(p, g, t, partition)
                    .await
                    .map_err(|e| codes::code(&e, Scope::Partition)),
            };
            (partition, got)
        });
        (name, join_all(parts).await)
    });
    Ok(join_all(topics).await)
}

/// (offset, metadata, error) as OffsetFetch reports a partition: offset -1
/// and empty metadata when nothing was committed.
fn offset_fields(got: Result<Option<Committed>, i16>) -> (i64, String, i16) {
    match got {
        Ok(Some(c)) => (c.offset, c.metadata, codes::NONE),
        Ok(None) => (-1, String::new(), codes::NONE),
        Err(code) => (-1, String::new(), code),
    }
}

pub async fn offset_fetch<B: Backend>(
    b: &B,
    p: &B::Principal,
    here: Here<'_>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    if version >= 8 {
        let groups = req.groups.into_iter().map(|g| async move {
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            });
            let mut out = OffsetFetchResponseGroup::default();
            match fetch_group(b, p, here, &g.group_id, topics).await {
                Err(code) => out.error_code = code,
                Ok(topics) => {
                    out.topics = topics
                        .into_iter()
                        .map(|(name, parts)| {
                            let mut t = OffsetFetchResponseTopics::default();
                            t.name = name;
                            t.partitions = parts
                                .into_iter()
                                .map(|(partition, got)| {
                                    let (offset, metadata, code) = offset_fields(got);
                                    let mut part = OffsetFetchResponsePartitions::default();
                                    part.partition_index = partition;
                                    part.committed_offset = offset;
                                    part.committed_leader_epoch = -1;
                                    part.metadata = Some(StrBytes::from_string(metadata));
                                    part.error_code = code;
                                    part
                                })
                                .collect();
                            t
                        })
                        .collect();
                }
            }
            out.group_id = g.group_id;
            out
        });
        resp.groups = join_all(groups).await;
        return resp;
    }
    let asked: Option<Vec<(TopicName, Vec<i32>)>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect()
    });
    let result = fetch_group(b, p, here, &req.group_id, asked.clone()).await;
    let topics = match result {
        Ok(topics) => topics,
        // v2+ has a group-level error; v1 only per partition.
        Err(code) if version >= 2 => {
            resp.error_code = code;
            return resp;
        }
        Err(code) => asked
            .unwrap_or_default()
            .into_iter()
            .map(|(name, parts)| (name, parts.into_iter().map(|i| (i, Err(code))).collect()))
            .collect(),
    };
    resp.topics = topics
        .into_iter()
        .map(|(name, parts)| {
            let mut t = OffsetFetchResponseTopic::default();
            t.name = name;
            t.partitions = parts
                .into_iter()
                .map(|(partition, got)| {
                    let (offset, metadata, code) = offset_fields(got);
                    let mut part = OffsetFetchResponsePartition::default();
                    part.partition_index = partition;
                    part.committed_offset = offset;
                    part.committed_leader_epoch = -1;
                    part.metadata = Some(StrBytes::from_string(metadata));
                    part.error_code = code;
                    part
                })
                .collect();
            t
        })
        .collect();
    resp
}

// ---------------------------------------------------------- DescribeGroups

pub async fn describe_groups<B: Backend>(
    b: &B,
    p: &B::Principal,
    here: Here<'_>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let groups = req.groups.into_iter().map(|name| async move {
        let mut out = DescribedGroup::default();
        match group(b, p, here, &name).await {
            Err(code) => out.error_code = code,
            Ok(g) => match here.groups.describe(&g) {
                // Kafka describes a group it does not know as Dead.
                None => out.group_state = StrBytes::from_static_str(group::State::Dead.name()),
                Some(s) => {
                    out.group_state = StrBytes::from_static_str(s.state.name());
                    out.protocol_type = StrBytes::from_string(s.protocol_type);
                    out.protocol_data = StrBytes::from_string(s.protocol);
                    out.members = s
                        .members
                        .into_iter()
                        .map(|m| {
                            let mut d = DescribedGroupMember::default();
                            d.member_id = StrBytes::from_string(m.member_id);
                            if version >= 4 {
                                d.group_instance_id = m.instance_id.map(StrBytes::from_string);
                            }
                            d.client_id = StrBytes::from_string(m.client_id);
                            d.client_host = StrBytes::from_string(m.client_host);
                            d.member_metadata = m.metadata;
                            d.member_assignment = m.assignment;
                            d
                        })
                        .collect();
                }
            },
        }
        out.group_id = name;
        out
    });
    let mut resp = DescribeGroupsResponse::default();
    resp.groups = join_all(groups).await;
    resp
}

// -------------------------------------------------------------- ListGroups

pub async fn list_groups<B: Backend>(
    b: &B,
    p: &B::Principal,
    here: Here<'_>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let states: Vec<String> = if version >= 4 {
        req.states_filter
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect()
    } else {
        vec![]
    };
    let listed = here
        .groups
        .list()
        .into_iter()
        .filter(|l| states.is_empty() || states.contains(&l.state.name().to_ascii_lowercase()));
    // Only the groups the principal may use, and still coordinated here
    // (one that moved is dropped, as any group request would).
    let checked = join_all(listed.map(|l| async move {
        match b.authorize_group(p, &l.group).await {
            Ok(id) if id == here.broker => Some(l),
            Ok(_) => {
                here.groups.unload(&l.group);
                None
            }
            Err(_) => None,
        }
    }))
    .await;
    let mut resp = ListGroupsResponse::default();
    resp.groups = checked
        .into_iter()
        .flatten()
        .map(|l| {
            let mut g = ListedGroup::default();
            g.group_id = GroupId(StrBytes::from_string(l.name));
            g.protocol_type = StrBytes::from_string(l.protocol_type);
            if version >= 4 {
                g.group_state = StrBytes::from_static_str(l.state.name());
            }
            g
        })
        .collect();
    resp
}
