//! Consumer groups (the classic protocol), committed offsets and
//! InitProducerId, spoken as a client speaks them: one connection per
//! member, since JoinGroup and SyncGroup hold their connection until the
//! group is ready (as librdkafka uses a coordinator connection per member).

use super::*;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;

const JOIN_V: i16 = 9;

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}

fn join_req(group: &str, member_id: &str, session_ms: i32) -> JoinGroupRequest {
    let mut p = JoinGroupRequestProtocol::default();
    p.name = s("range");
    p.metadata = Bytes::from(format!("meta-of-{member_id}"));
    let mut r = JoinGroupRequest::default();
    r.group_id = GroupId(s(group));
    r.session_timeout_ms = session_ms;
    r.rebalance_timeout_ms = 5_000;
    r.member_id = s(member_id);
    r.protocol_type = s("consumer");
    r.protocols = vec![p];
    r
}

fn sync_req(group: &str, member_id: &str, generation: i32) -> SyncGroupRequest {
    let mut r = SyncGroupRequest::default();
    r.group_id = GroupId(s(group));
    r.generation_id = generation;
    r.member_id = s(member_id);
    r.protocol_type = Some(s("consumer"));
    r.protocol_name = Some(s("range"));
    r
}

impl Client {
    /// JoinGroup v9 without a member id: MEMBER_ID_REQUIRED and the id.
    async fn member_id(&mut self, group: &str, session_ms: i32) -> String {
        let resp = self.call(JOIN_V, &join_req(group, "", session_ms)).await;
        assert_eq!(resp.error_code, 79, "MEMBER_ID_REQUIRED");
        assert!(!resp.member_id.is_empty());
        resp.member_id.to_string()
    }

    async fn heartbeat(&mut self, group: &str, member_id: &str, generation: i32) -> i16 {
        let mut r = HeartbeatRequest::default();
        r.group_id = GroupId(s(group));
        r.member_id = s(member_id);
        r.generation_id = generation;
        self.call(4, &r).await.error_code
    }

    async fn commit(
        &mut self,
        version: i16,
        group: &str,
        generation: i32,
        member_id: &str,
        topic: &str,
        offsets: &[(i32, i64)],
    ) -> Vec<i16> {
        let mut t = OffsetCommitRequestTopic::default();
        t.name = name(topic);
        t.partitions = offsets
            .iter()
            .map(|&(partition, offset)| {
                let mut p = OffsetCommitRequestPartition::default();
                p.partition_index = partition;
                p.committed_offset = offset;
                p.committed_metadata = Some(s(&format!("m{offset}")));
                p
            })
            .collect();
        let mut r = OffsetCommitRequest::default();
        r.group_id = GroupId(s(group));
        r.generation_id_or_member_epoch = generation;
        r.member_id = s(member_id);
        r.topics = vec![t];
        let resp = self.call(version, &r).await;
        resp.topics[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect()
    }
}

/// Members join (each on its own connection), in two rounds as v4+
/// clients do; returns (member id, JoinGroup answer) in joining order.
async fn join_all_members(
    members: &mut [Client],
    group: &str,
    ids: &[String],
) -> Vec<JoinGroupResponse> {
    let mut sent = vec![];
    for (c, id) in members.iter_mut().zip(ids) {
        sent.push(c.send(JOIN_V, &join_req(group, id, 10_000)).await);
    }
    let mut answers = vec![];
    for (c, id) in members.iter_mut().zip(sent) {
        answers.push(c.recv::<JoinGroupRequest>(JOIN_V, id).await);
    }
    answers
}

/// SyncGroup from everyone: followers first (they wait), then the leader
/// with an assignment per member; returns each member's assignment.
async fn sync_all_members(
    members: &mut [Client],
    group: &str,
    ids: &[String],
    leader: usize,
    generation: i32,
) -> Vec<Bytes> {
    let mut sent = vec![0; members.len()];
    for (i, (c, id)) in members.iter_mut().zip(ids).enumerate() {
        if i != leader {
            sent[i] = c.send(5, &sync_req(group, id, generation)).await;
        }
    }
    let mut req = sync_req(group, &ids[leader], generation);
    req.assignments = ids
        .iter()
        .map(|id| {
            let mut a = SyncGroupRequestAssignment::default();
            a.member_id = s(id);
            a.assignment = Bytes::from(format!("assignment-of-{id}"));
            a
        })
        .collect();
    sent[leader] = members[leader].send(5, &req).await;
    let mut out = vec![];
    for (c, id) in members.iter_mut().zip(sent) {
        let resp = c.recv::<SyncGroupRequest>(5, id).await;
        assert_eq!(resp.error_code, 0);
        assert_eq!(resp.protocol_name.as_deref(), Some("range"));
        out.push(resp.assignment);
    }
    out
}

#[tokio::test]
async fn find_coordinator_names_this_node_for_groups_only() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;

    let mut req = FindCoordinatorRequest::default();
    req.key = s("billing");
    let resp = c.call(0, &req).await;
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.node_id, BrokerId(7));
    assert_eq!((resp.host.as_str(), resp.port), ("kafka.test", 19092));

    let mut req = FindCoordinatorRequest::default();
    req.key_type = 0;
    req.coordinator_keys = vec![s("billing"), s("secret-group")];
    let resp = c.call(4, &req).await;
    assert_eq!(resp.coordinators.len(), 2);
    let ok = &resp.coordinators[0];
    assert_eq!((ok.key.as_str(), ok.error_code), ("billing", 0));
    assert_eq!(
        (ok.node_id, ok.host.as_str(), ok.port),
        (BrokerId(7), "kafka.test", 19092)
    );
    let denied = &resp.coordinators[1];
    assert_eq!((denied.error_code, denied.node_id), (30, BrokerId(-1)));

    // Transactions are not supported: no transaction coordinator.
    let mut req = FindCoordinatorRequest::default();
    req.key_type = 1;
    req.coordinator_keys = vec![s("tx-1")];
    let resp = c.call(4, &req).await;
    assert_eq!(resp.coordinators[0].error_code, 15);
    let mut req = FindCoordinatorRequest::default();
    req.key_type = 1;
    req.key = s("tx-1");
    assert_eq!(c.call(3, &req).await.error_code, 15);
}

#[tokio::test]
async fn three_members_join_sync_heartbeat_then_one_leaves() {
    let server = start().await;
    let group = "billing";
    let mut members = vec![];
    let mut ids = vec![];
    for _ in 0..3 {
        let mut c = Client::authenticated(server.addr).await;
        ids.push(c.member_id(group, 10_000).await);
        members.push(c);
    }
    // The first two joins wait for the third member; meanwhile other
    // connections are served.
    let sent: Vec<i32> = {
        let mut sent = vec![];
        for (c, id) in members.iter_mut().zip(&ids).take(2) {
            sent.push(c.send(JOIN_V, &join_req(group, id, 10_000)).await);
        }
        sent
    };
    let mut other = Client::authenticated(server.addr).await;
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![GroupId(s(group))];
    let resp = other.call(5, &req).await;
    assert_eq!(resp.groups[0].group_state.as_str(), "PreparingRebalance");
    assert_eq!(
        other.metadata(12, &["events"], true).await.topics[0].error_code,
        0
    );

    let third = members[2]
        .send(JOIN_V, &join_req(group, &ids[2], 10_000))
        .await;
    let mut answers = vec![];
    for (i, id) in sent.into_iter().chain([third]).enumerate() {
        answers.push(members[i].recv::<JoinGroupRequest>(JOIN_V, id).await);
    }
    for (a, id) in answers.iter().zip(&ids) {
        assert_eq!(a.error_code, 0);
        assert_eq!(a.generation_id, 1);
        assert_eq!(a.member_id.as_str(), id);
        assert_eq!(a.leader.as_str(), ids[0], "the first to join leads");
        assert_eq!(a.protocol_type.as_deref(), Some("consumer"));
        assert_eq!(a.protocol_name.as_deref(), Some("range"));
    }
    let leader = &answers[0];
    assert_eq!(leader.members.len(), 3);
    for (m, id) in leader.members.iter().zip(&ids) {
        assert_eq!(m.member_id.as_str(), id);
        assert_eq!(m.metadata, Bytes::from(format!("meta-of-{id}")));
    }
    assert!(answers[1].members.is_empty() && answers[2].members.is_empty());

    let assignments = sync_all_members(&mut members, group, &ids, 0, 1).await;
    for (a, id) in assignments.iter().zip(&ids) {
        assert_eq!(*a, Bytes::from(format!("assignment-of-{id}")));
    }
    for (c, id) in members.iter_mut().zip(&ids) {
        assert_eq!(c.heartbeat(group, id, 1).await, 0);
    }
    assert_eq!(members[0].heartbeat(group, &ids[0], 0).await, 22);
    assert_eq!(members[0].heartbeat(group, "stranger", 1).await, 25);

    // Described and listed as Kafka does.
    let resp = other.call(5, &req).await;
    let d = &resp.groups[0];
    assert_eq!(d.error_code, 0);
    assert_eq!(d.group_id.as_str(), group);
    assert_eq!(d.group_state.as_str(), "Stable");
    assert_eq!(d.protocol_type.as_str(), "consumer");
    assert_eq!(d.protocol_data.as_str(), "range");
    assert_eq!(d.members.len(), 3);
    let m = &d.members[1];
    assert_eq!(m.member_id.as_str(), ids[1]);
    assert_eq!(m.client_id.as_str(), "gateway-test");
    assert_eq!(m.client_host.as_str(), "/127.0.0.1");
    assert_eq!(
        m.member_metadata,
        Bytes::from(format!("meta-of-{}", ids[1]))
    );
    assert_eq!(
        m.member_assignment,
        Bytes::from(format!("assignment-of-{}", ids[1]))
    );
    let resp = other.call(0, &req).await;
    assert_eq!(resp.groups[0].members.len(), 3);
    let mut unknown = DescribeGroupsRequest::default();
    unknown.groups = vec![GroupId(s("nobody-here")), GroupId(s("secret-group"))];
    let resp = other.call(5, &unknown).await;
    assert_eq!(resp.groups[0].group_state.as_str(), "Dead");
    assert_eq!(resp.groups[1].error_code, 30);

    let resp = other.call(4, &ListGroupsRequest::default()).await;
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.groups.len(), 1);
    assert_eq!(resp.groups[0].group_id.as_str(), group);
    assert_eq!(resp.groups[0].protocol_type.as_str(), "consumer");
    assert_eq!(resp.groups[0].group_state.as_str(), "Stable");
    let mut filtered = ListGroupsRequest::default();
    filtered.states_filter = vec![s("empty")];
    assert!(other.call(4, &filtered).await.groups.is_empty());
    assert_eq!(
        other
            .call(0, &ListGroupsRequest::default())
            .await
            .groups
            .len(),
        1
    );
    // Groups the principal may not use are not listed.
    server
        .backend
        .denied_groups
        .lock()
        .unwrap()
        .insert(group.to_string());
    assert!(other
        .call(4, &ListGroupsRequest::default())
        .await
        .groups
        .is_empty());
    assert_eq!(members[0].heartbeat(group, &ids[0], 1).await, 30);
    server.backend.denied_groups.lock().unwrap().clear();

    // The third member leaves (v5: a batch of one); the others are told
    // to rejoin and form generation 2.
    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(s(group));
    let mut who = MemberIdentity::default();
    who.member_id = s(&ids[2]);
    let mut stranger = MemberIdentity::default();
    stranger.member_id = s("stranger");
    leave.members = vec![who, stranger];
    let resp = members[2].call(5, &leave).await;
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.members[0].error_code, 0);
    assert_eq!(resp.members[1].error_code, 25);
    members.pop();
    ids.pop();
    for (c, id) in members.iter_mut().zip(&ids) {
        assert_eq!(c.heartbeat(group, id, 1).await, 27, "REBALANCE_IN_PROGRESS");
    }
    let answers = join_all_members(&mut members, group, &ids).await;
    for a in &answers {
        assert_eq!((a.error_code, a.generation_id), (0, 2));
        assert_eq!(a.leader.as_str(), ids[0]);
    }
    assert_eq!(answers[0].members.len(), 2);
    sync_all_members(&mut members, group, &ids, 0, 2).await;
    for (c, id) in members.iter_mut().zip(&ids) {
        assert_eq!(c.heartbeat(group, id, 2).await, 0);
    }

    // Leaving with v0 (one member), then the last one: the group is gone.
    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(s(group));
    leave.member_id = s(&ids[1]);
    assert_eq!(members[1].call(0, &leave).await.error_code, 0);
    assert_eq!(members[1].call(0, &leave).await.error_code, 25);
    leave.member_id = s(&ids[0]);
    assert_eq!(members[0].call(2, &leave).await.error_code, 0);
    let resp = other.call(5, &req).await;
    assert_eq!(resp.groups[0].group_state.as_str(), "Dead");
}

#[tokio::test]
async fn a_silent_member_expires_after_its_session_timeout() {
    let server = start().await;
    let group = "expiring";
    let mut members = vec![
        Client::authenticated(server.addr).await,
        Client::authenticated(server.addr).await,
    ];
    let mut ids = vec![];
    for c in &mut members {
        ids.push(c.member_id(group, 500).await);
    }
    let mut sent = vec![];
    for (c, id) in members.iter_mut().zip(&ids) {
        sent.push(c.send(JOIN_V, &join_req(group, id, 500)).await);
    }
    for (c, id) in members.iter_mut().zip(sent) {
        assert_eq!(
            c.recv::<JoinGroupRequest>(JOIN_V, id).await.generation_id,
            1
        );
    }
    sync_all_members(&mut members, group, &ids, 0, 1).await;

    // The first keeps heartbeating, the second goes silent.
    let started = Instant::now();
    let mut code = 0;
    while started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        code = members[0].heartbeat(group, &ids[0], 1).await;
        if code != 0 {
            break;
        }
    }
    assert_eq!(code, 27, "rebalance after the silent member expired");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    let resp = members[0]
        .call(JOIN_V, &join_req(group, &ids[0], 500))
        .await;
    assert_eq!((resp.error_code, resp.generation_id), (0, 2));
    assert_eq!(resp.members.len(), 1);
    assert_eq!(members[1].heartbeat(group, &ids[1], 1).await, 25);
}

#[tokio::test]
async fn offsets_commit_and_fetch_round_trip() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    c.metadata(12, &["events"], true).await;

    // A simple consumer (generation -1, no members) commits.
    let codes = c
        .commit(8, "readers", -1, "", "events", &[(0, 42), (1, 7), (9, 1)])
        .await;
    assert_eq!(codes, vec![0, 0, 3]);
    assert_eq!(
        c.commit(2, "readers", -1, "", "events", &[(0, 43)]).await,
        vec![0]
    );

    // v1-7: one group.
    let mut t = OffsetFetchRequestTopic::default();
    t.name = name("events");
    t.partition_indexes = vec![0, 1];
    let mut missing = OffsetFetchRequestTopic::default();
    missing.name = name("nope");
    missing.partition_indexes = vec![0];
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s("readers"));
    req.topics = Some(vec![t.clone(), missing]);
    let resp = c.call(7, &req).await;
    assert_eq!(resp.error_code, 0);
    let parts = &resp.topics[0].partitions;
    assert_eq!(
        (parts[0].committed_offset, parts[0].metadata.as_deref()),
        (43, Some("m43"))
    );
    assert_eq!((parts[1].committed_offset, parts[1].error_code), (7, 0));
    assert_eq!(resp.topics[1].partitions[0].error_code, 3);
    let resp = c.call(1, &req).await;
    assert_eq!(resp.topics[0].partitions[0].committed_offset, 43);

    // Nothing committed: -1 and empty metadata.
    req.group_id = GroupId(s("other-readers"));
    req.topics = Some(vec![t.clone()]);
    let resp = c.call(5, &req).await;
    let p = &resp.topics[0].partitions[0];
    assert_eq!(
        (p.committed_offset, p.metadata.as_deref(), p.error_code),
        (-1, Some(""), 0)
    );

    // A null topic list: every committed offset of the group.
    req.group_id = GroupId(s("readers"));
    req.topics = None;
    let resp = c.call(6, &req).await;
    assert_eq!(resp.topics.len(), 1);
    let got: Vec<(i32, i64)> = resp.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.committed_offset))
        .collect();
    assert_eq!(got, vec![(0, 43), (1, 7)]);

    // v8: several groups at once, one of them denied.
    let mut topics = OffsetFetchRequestTopics::default();
    topics.name = name("events");
    topics.partition_indexes = vec![1];
    let mut g1 = OffsetFetchRequestGroup::default();
    g1.group_id = GroupId(s("readers"));
    g1.topics = Some(vec![topics]);
    let mut g2 = OffsetFetchRequestGroup::default();
    g2.group_id = GroupId(s("secret-group"));
    g2.topics = None;
    let mut g3 = g1.clone();
    g3.topics = None;
    let mut req = OffsetFetchRequest::default();
    req.groups = vec![g1, g2, g3];
    let resp = c.call(8, &req).await;
    assert_eq!(resp.groups.len(), 3);
    assert_eq!(resp.groups[0].error_code, 0);
    assert_eq!(resp.groups[0].topics[0].partitions[0].committed_offset, 7);
    assert_eq!(resp.groups[1].error_code, 30);
    assert_eq!(resp.groups[2].topics[0].partitions.len(), 2);

    // Metadata larger than Kafka's limit is refused per partition.
    let mut big = OffsetCommitRequest::default();
    big.group_id = GroupId(s("readers"));
    big.generation_id_or_member_epoch = -1;
    let mut part = OffsetCommitRequestPartition::default();
    part.committed_offset = 1;
    part.committed_metadata = Some(s(&"x".repeat(5000)));
    let mut topic = OffsetCommitRequestTopic::default();
    topic.name = name("events");
    topic.partitions = vec![part];
    big.topics = vec![topic];
    let resp = c.call(8, &big).await;
    assert_eq!(resp.topics[0].partitions[0].error_code, 12);
}

#[tokio::test]
async fn commits_are_checked_against_the_group_generation() {
    let server = start().await;
    let group = "checked";
    let mut c = Client::authenticated(server.addr).await;
    c.metadata(12, &["events"], true).await;

    // No such generation: the member must rejoin (also what members see
    // after a gateway restart).
    assert_eq!(
        c.commit(8, group, 3, "old-member", "events", &[(0, 1)])
            .await,
        vec![22]
    );

    let id = c.member_id(group, 10_000).await;
    let resp = c.call(JOIN_V, &join_req(group, &id, 10_000)).await;
    assert_eq!((resp.error_code, resp.generation_id), (0, 1));
    // Joined but not synced yet: Kafka answers REBALANCE_IN_PROGRESS.
    assert_eq!(
        c.commit(8, group, 1, &id, "events", &[(0, 1)]).await,
        vec![27]
    );
    let mut req = sync_req(group, &id, 1);
    let mut a = SyncGroupRequestAssignment::default();
    a.member_id = s(&id);
    a.assignment = Bytes::from_static(b"all");
    req.assignments = vec![a];
    let resp = c.call(5, &req).await;
    assert_eq!(
        (resp.error_code, resp.assignment.as_ref()),
        (0, &b"all"[..])
    );

    assert_eq!(
        c.commit(8, group, 1, &id, "events", &[(0, 5)]).await,
        vec![0]
    );
    assert_eq!(
        c.commit(8, group, 0, &id, "events", &[(0, 6)]).await,
        vec![22]
    );
    assert_eq!(
        c.commit(8, group, 1, "stranger", "events", &[(0, 6)]).await,
        vec![25]
    );
    assert_eq!(
        c.commit(8, group, -1, "", "events", &[(0, 6)]).await,
        vec![25]
    );
    // A wrong generation in SyncGroup and Heartbeat too.
    assert_eq!(c.call(5, &sync_req(group, &id, 7)).await.error_code, 22);

    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s(group));
    req.topics = None;
    let resp = c.call(7, &req).await;
    assert_eq!(resp.topics[0].partitions[0].committed_offset, 5);
}

#[tokio::test]
async fn a_denied_group_gets_group_authorization_failed_everywhere() {
    let server = start().await;
    let group = "secret-group";
    let mut c = Client::authenticated(server.addr).await;
    c.metadata(12, &["events"], true).await;

    let resp = c.call(JOIN_V, &join_req(group, "", 10_000)).await;
    assert_eq!(resp.error_code, 30);
    let resp = c.call(0, &join_req(group, "", 10_000)).await;
    assert_eq!(resp.error_code, 30);
    assert_eq!(c.call(5, &sync_req(group, "m", 1)).await.error_code, 30);
    assert_eq!(c.heartbeat(group, "m", 1).await, 30);
    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(s(group));
    leave.member_id = s("m");
    assert_eq!(c.call(1, &leave).await.error_code, 30);
    assert_eq!(
        c.commit(8, group, -1, "", "events", &[(0, 1), (1, 1)])
            .await,
        vec![30, 30]
    );
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s(group));
    req.topics = None;
    assert_eq!(c.call(7, &req).await.error_code, 30);
    let mut req = FindCoordinatorRequest::default();
    req.key = s(group);
    assert_eq!(c.call(1, &req).await.error_code, 30);
    // An invalid name.
    let resp = c.call(JOIN_V, &join_req("", "", 10_000)).await;
    assert_eq!(resp.error_code, 24);
}

/// A group coordinated by another broker: FindCoordinator names that
/// broker (from the backend's broker list), every other group API gets
/// NOT_COORDINATOR here; a coordinator that is not a listed broker is
/// COORDINATOR_NOT_AVAILABLE.
#[tokio::test]
async fn a_group_coordinated_elsewhere_gets_not_coordinator_here() {
    let server = start().await;
    let group = "remote";
    *server.backend.brokers.lock().unwrap() = vec![Broker {
        id: 8,
        host: "n8.test".into(),
        port: 9092,
        rack: None,
    }];
    server
        .backend
        .coordinators
        .lock()
        .unwrap()
        .insert(group.into(), 8);
    let mut c = Client::authenticated(server.addr).await;
    c.metadata(12, &["events"], true).await;

    let mut req = FindCoordinatorRequest::default();
    req.key = s(group);
    let resp = c.call(0, &req).await;
    assert_eq!(resp.error_code, 0);
    assert_eq!(
        (resp.node_id, resp.host.as_str(), resp.port),
        (BrokerId(8), "n8.test", 9092)
    );
    let mut req = FindCoordinatorRequest::default();
    req.coordinator_keys = vec![s(group), s("local")];
    let resp = c.call(4, &req).await;
    let found: Vec<(i16, i32)> = resp
        .coordinators
        .iter()
        .map(|x| (x.error_code, x.node_id.0))
        .collect();
    assert_eq!(found, [(0, 8), (0, 7)]);

    let resp = c.call(JOIN_V, &join_req(group, "", 10_000)).await;
    assert_eq!(resp.error_code, 16);
    assert_eq!(c.call(5, &sync_req(group, "m", 1)).await.error_code, 16);
    assert_eq!(c.heartbeat(group, "m", 1).await, 16);
    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(s(group));
    leave.member_id = s("m");
    assert_eq!(c.call(1, &leave).await.error_code, 16);
    assert_eq!(
        c.commit(8, group, -1, "", "events", &[(0, 1), (1, 1)])
            .await,
        vec![16, 16]
    );
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s(group));
    req.topics = None;
    assert_eq!(c.call(7, &req).await.error_code, 16);
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![GroupId(s(group))];
    assert_eq!(c.call(5, &req).await.groups[0].error_code, 16);

    // A coordinator clients cannot reach (not a listed broker).
    server
        .backend
        .coordinators
        .lock()
        .unwrap()
        .insert(group.into(), 9);
    let mut req = FindCoordinatorRequest::default();
    req.key = s(group);
    let resp = c.call(1, &req).await;
    assert_eq!((resp.error_code, resp.node_id), (15, BrokerId(-1)));
    assert!(resp.error_message.is_some_and(|m| m.contains("broker 9")));
}

/// When a group's coordinator moves to another broker, this broker drops
/// the group within a coordination check: a member waiting in a rebalance
/// is answered NOT_COORDINATOR (so it looks for the new coordinator), and
/// the group is no longer listed here.
#[tokio::test]
async fn a_group_whose_coordinator_moves_is_dropped_and_its_waiters_told() {
    let server = start().await;
    let group = "moving";
    let mut a = Client::authenticated(server.addr).await;
    let mut b = Client::authenticated(server.addr).await;
    let id_a = a.member_id(group, 10_000).await;
    let resp = a.call(JOIN_V, &join_req(group, &id_a, 10_000)).await;
    assert_eq!((resp.error_code, resp.generation_id), (0, 1));
    // b's join starts a rebalance and waits for a to rejoin.
    let id_b = b.member_id(group, 10_000).await;
    let waiting = b.send(JOIN_V, &join_req(group, &id_b, 10_000)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .backend
        .coordinators
        .lock()
        .unwrap()
        .insert(group.into(), 8);
    let started = Instant::now();
    let resp = b.recv::<JoinGroupRequest>(JOIN_V, waiting).await;
    assert_eq!(resp.error_code, 16, "NOT_COORDINATOR");
    assert!(
        started.elapsed() < Duration::from_millis(3 * berth_kafka::COORDINATION_CHECK_MS),
        "dropped within a coordination check"
    );
    let resp = a.call(3, &ListGroupsRequest::default()).await;
    assert!(resp.groups.is_empty(), "{:?}", resp.groups);

    // Back here: the group starts over (the members rejoin from scratch).
    server.backend.coordinators.lock().unwrap().clear();
    assert_eq!(a.heartbeat(group, &id_a, 1).await, 25, "UNKNOWN_MEMBER_ID");
}

#[tokio::test]
async fn joins_with_bad_parameters_are_refused() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    // Outside the configured session timeouts (100..=60000 ms here).
    let resp = c.call(JOIN_V, &join_req("g", "", 50)).await;
    assert_eq!(resp.error_code, 26);
    let mut req = join_req("g", "", 10_000);
    req.protocols.clear();
    assert_eq!(c.call(JOIN_V, &req).await.error_code, 23);
    assert_eq!(
        c.call(JOIN_V, &join_req("g", "unknown", 10_000))
            .await
            .error_code,
        25
    );

    // v0 (no member id round, no rebalance timeout) still joins.
    let mut req = join_req("old-clients", "", 10_000);
    req.rebalance_timeout_ms = -1;
    let resp = c.call(0, &req).await;
    assert_eq!((resp.error_code, resp.generation_id), (0, 1));
    assert_eq!(resp.leader, resp.member_id);
    assert_eq!(resp.protocol_name.as_deref(), Some("range"));
    assert_eq!(resp.members.len(), 1);
}

#[tokio::test]
async fn init_producer_id_comes_from_the_backend() {
    let server = start().await;
    let mut c = Client::authenticated(server.addr).await;
    let mut req = InitProducerIdRequest::default();
    req.transactional_id = None; // an idempotent producer
    req.transaction_timeout_ms = 60_000;
    let resp = c.call(4, &req).await;
    let id = |n| kafka_protocol::messages::ProducerId(n);
    assert_eq!(
        (resp.error_code, resp.producer_id, resp.producer_epoch),
        (0, id(1000), 0)
    );
    let resp = c.call(0, &req).await;
    assert_eq!((resp.error_code, resp.producer_id), (0, id(1001)));

    req.transactional_id = Some(TransactionalId(s("tx")));
    let resp = c.call(4, &req).await;
    assert_eq!(resp.error_code, 53);
    assert_eq!(resp.producer_id, id(-1));
}
