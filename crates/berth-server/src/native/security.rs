//! `berth.v1.Security`: login, tickets, principals, groups, signing keys.

use std::sync::Arc;
use std::time::Instant;

use berth_api::v1::security_server::Security as SecurityApi;
use berth_api::v1::*;
use berth_meta::map::UserRecord;
use berth_meta::Error;
use berth_security::principal::PrincipalKind;
use berth_security::scope::{Scope, ScopeEntry};
use berth_security::ticket::TicketBody;
use tonic::{Request, Response, Status};

use super::Native;

pub struct SecurityService(pub Arc<Native>);

fn ticket_response(t: String, b: TicketBody) -> TicketResponse {
    TicketResponse {
        ticket: t,
        principal: b.principal,
        expires_at: b.expires_at as i64,
    }
}

fn kind_name(k: &PrincipalKind) -> &'static str {
    match k {
        PrincipalKind::User => "user",
        PrincipalKind::Service => "service",
        PrincipalKind::Node => "node",
    }
}

fn to_user(u: UserRecord) -> User {
    User {
        kind: kind_name(&u.kind).into(),
        name: u.name,
        uid: u.uid,
        groups: u.groups,
    }
}

fn parse_scope(entries: &[String]) -> Result<Option<Scope>, Error> {
    if entries.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for e in entries {
        out.push(ScopeEntry::parse(e).map_err(|e| Error::invalid(format!("invalid scope: {e}")))?);
    }
    Ok(Some(Scope(out)))
}

impl SecurityService {
    fn group(&self, name: &str) -> Result<Group, Error> {
        let map = self.0.meta.map();
        let g = map
            .groups
            .get(name)
            .ok_or_else(|| Error::not_found(format!("group {name:?}")))?;
        Ok(Group {
            name: g.name.clone(),
            gid: g.gid,
            members: self.0.meta.group_members(name),
        })
    }

    fn keys(&self) -> SigningKeyList {
        SigningKeyList {
            keys: self
                .0
                .meta
                .map()
                .keys
                .iter()
                .map(|k| SigningKey {
                    id: k.id,
                    active: k.active,
                    created_at: k.created_at as i64,
                    retire_after: k.retire_after as i64,
                })
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl SecurityApi for SecurityService {
    /// The one call without a ticket: exchanges a password for one.
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<TicketResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = self.0.wait_ready().await {
            return self.0.finish("Security/Login", started, Err(e));
        }
        let r = req.into_inner();
        let result = self.0.meta.login(&r.user, &r.password, r.ttl_secs).await;
        match &result {
            Ok(_) => tracing::info!(target: "audit", user = %r.user, "login"),
            Err(e) => {
                tracing::info!(target: "audit", user = %r.user, reason = %e.message, "login failed")
            }
        }
        self.0.finish(
            "Security/Login",
            started,
            result.map(|(t, b)| ticket_response(t, b)),
        )
    }

    async fn issue_ticket(
        &self,
        req: Request<IssueTicketRequest>,
    ) -> Result<Response<TicketResponse>, Status> {
        let n = &self.0;
        n.call("Security/IssueTicket", req, |p, r| async move {
            let scope = parse_scope(&r.scope)?;
            let (t, b) = n.meta.issue_ticket(&p, &r.principal, scope, r.ttl_secs)?;
            tracing::info!(target: "audit", by = %p.name, principal = %b.principal, "ticket issued");
            Ok(ticket_response(t, b))
        })
        .await
    }

    async fn who_am_i(&self, req: Request<Empty>) -> Result<Response<WhoAmIResponse>, Status> {
        let n = &self.0;
        let ticket = super::bearer(&req).ok().map(str::to_string);
        n.call("Security/WhoAmI", req, |p, _| async move {
            let body = ticket
                .as_deref()
                .and_then(|t| berth_security::ticket::decode_unverified(t).ok());
            Ok(WhoAmIResponse {
                kind: kind_name(&p.kind).into(),
                principal: p.name,
                uid: p.uid,
                gids: p.gids,
                groups: p.groups,
                scope: p
                    .scope
                    .map(|s| s.0.iter().map(|e| e.to_string()).collect())
                    .unwrap_or_default(),
                expires_at: body.as_ref().map(|b| b.expires_at as i64).unwrap_or(0),
                cluster: body.map(|b| b.cluster).unwrap_or_default(),
            })
        })
        .await
    }

    async fn user_add(&self, req: Request<UserAddRequest>) -> Result<Response<User>, Status> {
        let n = &self.0;
        n.call("Security/UserAdd", req, |p, r| async move {
            let pw = (!r.password.is_empty()).then_some(r.password.as_str());
            let u = n
                .meta
                .user_add(&p, &r.name, pw, r.uid, r.groups, r.service)
                .await?;
            tracing::info!(target: "audit", by = %p.name, user = %u.name, "principal added");
            Ok(to_user(u))
        })
        .await
    }

    async fn user_list(&self, req: Request<Empty>) -> Result<Response<Users>, Status> {
        let n = &self.0;
        n.call("Security/UserList", req, |p, _| async move {
            berth_meta::meta::require_admin(&p)?;
            Ok(Users {
                users: n.meta.map().users.values().cloned().map(to_user).collect(),
            })
        })
        .await
    }

    async fn user_remove(&self, req: Request<NameRequest>) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Security/UserRemove", req, |p, r| async move {
            n.meta.user_remove(&p, &r.name).await?;
            tracing::info!(target: "audit", by = %p.name, user = %r.name, "principal removed");
            Ok(Empty {})
        })
        .await
    }

    async fn user_password(
        &self,
        req: Request<UserPasswordRequest>,
    ) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Security/UserPassword", req, |p, r| async move {
            n.meta.user_password(&p, &r.name, &r.password).await?;
            tracing::info!(target: "audit", by = %p.name, user = %r.name, "password changed");
            Ok(Empty {})
        })
        .await
    }

    async fn group_add(&self, req: Request<GroupAddRequest>) -> Result<Response<Group>, Status> {
        let this = self;
        let n = &self.0;
        n.call("Security/GroupAdd", req, |p, r| async move {
            n.meta.group_add(&p, &r.name, r.gid).await?;
            this.group(&r.name)
        })
        .await
    }

    async fn group_list(&self, req: Request<Empty>) -> Result<Response<Groups>, Status> {
        let this = self;
        let n = &self.0;
        n.call("Security/GroupList", req, |p, _| async move {
            berth_meta::meta::require_admin(&p)?;
            let names: Vec<String> = n.meta.map().groups.keys().cloned().collect();
            Ok(Groups {
                groups: names
                    .iter()
                    .map(|g| this.group(g))
                    .collect::<Result<_, _>>()?,
            })
        })
        .await
    }

    async fn group_remove(&self, req: Request<NameRequest>) -> Result<Response<Empty>, Status> {
        let n = &self.0;
        n.call("Security/GroupRemove", req, |p, r| async move {
            n.meta.group_remove(&p, &r.name).await.map(|_| Empty {})
        })
        .await
    }

    async fn group_add_member(
        &self,
        req: Request<GroupMemberRequest>,
    ) -> Result<Response<Group>, Status> {
        let this = self;
        let n = &self.0;
        n.call("Security/GroupAddMember", req, |p, r| async move {
            n.meta.group_member(&p, &r.group, &r.user, true).await?;
            this.group(&r.group)
        })
        .await
    }

    async fn group_remove_member(
        &self,
        req: Request<GroupMemberRequest>,
    ) -> Result<Response<Group>, Status> {
        let this = self;
        let n = &self.0;
        n.call("Security/GroupRemoveMember", req, |p, r| async move {
            n.meta.group_member(&p, &r.group, &r.user, false).await?;
            this.group(&r.group)
        })
        .await
    }

    async fn key_rotate(&self, req: Request<Empty>) -> Result<Response<SigningKeyList>, Status> {
        let this = self;
        let n = &self.0;
        n.call("Security/KeyRotate", req, |p, _| async move {
            n.meta.rotate_key(&p).await?;
            tracing::info!(target: "audit", by = %p.name, "signing key rotated");
            Ok(this.keys())
        })
        .await
    }

    async fn key_list(&self, req: Request<Empty>) -> Result<Response<SigningKeyList>, Status> {
        let this = self;
        let n = &self.0;
        n.call("Security/KeyList", req, |p, _| async move {
            berth_meta::meta::require_admin(&p)?;
            Ok(this.keys())
        })
        .await
    }
}
