//! `node`: the cluster's nodes (for now, the join tokens that admit new
//! ones).

use anyhow::Result;
use berth_api::v1::{Empty, JoinTokenCreateRequest, JoinTokenInfo, JoinTokenRevokeRequest};
use berth_client::ClientError;
use serde_json::{json, Value};

use crate::cli::{NodeCmd, NodeTokenCmd};
use crate::ctx::Ctx;
use crate::output::{format_time_secs, print_json, Align, Table};

fn token_json(t: &JoinTokenInfo) -> Value {
    json!({
        "id": t.id,
        "created_by": t.created_by,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "uses_left": t.uses_left,
        "revoked": t.revoked,
    })
}

/// What a token's state is, in a word.
fn state(t: &JoinTokenInfo, now_secs: i64) -> &'static str {
    if t.revoked {
        "revoked"
    } else if t.expires_at <= now_secs {
        "expired"
    } else if t.uses_left == 0 {
        "used up"
    } else {
        "valid"
    }
}

pub async fn node(ctx: &Ctx, cmd: NodeCmd) -> Result<()> {
    let client = ctx.client().await?;
    let mut cluster = client.cluster();
    let NodeCmd::Token(cmd) = cmd;
    match cmd {
        NodeTokenCmd::Create { ttl, uses } => {
            let t = cluster
                .create_join_token(JoinTokenCreateRequest {
                    ttl_secs: ttl.as_secs().max(1),
                    uses,
                })
                .await
                .map_err(ClientError::from_status)?
                .into_inner();
            if ctx.json() {
                let mut v = t.info.as_ref().map(token_json).unwrap_or(json!({}));
                v["token"] = json!(t.token);
                v["ca_fingerprint"] = json!(t.ca_fingerprint);
                print_json(&v);
            } else {
                // The token alone on stdout, so `$(berth node token create)`
                // captures it; what it is goes to stderr.
                println!("{}", t.token);
                if let Some(i) = &t.info {
                    eprintln!(
                        "join token {}: admits {} node(s) until {}; cluster CA {}",
                        i.id,
                        i.uses_left,
                        format_time_secs(i.expires_at),
                        t.ca_fingerprint
                    );
                }
            }
        }
        NodeTokenCmd::List => {
            let list = cluster
                .list_join_tokens(Empty {})
                .await
                .map_err(ClientError::from_status)?
                .into_inner();
            if ctx.json() {
                print_json(&Value::Array(list.tokens.iter().map(token_json).collect()));
                return Ok(());
            }
            let now = berth_security::now_secs() as i64;
            let mut t = Table::new(&[
                ("ID", Align::Left),
                ("STATE", Align::Left),
                ("USES LEFT", Align::Right),
                ("EXPIRES", Align::Left),
                ("BY", Align::Left),
            ]);
            for i in &list.tokens {
                t.row(vec![
                    i.id.clone(),
                    state(i, now).into(),
                    i.uses_left.to_string(),
                    format_time_secs(i.expires_at),
                    i.created_by.clone(),
                ]);
            }
            t.print();
        }
        NodeTokenCmd::Revoke { id } => {
            cluster
                .revoke_join_token(JoinTokenRevokeRequest { id: id.clone() })
                .await
                .map_err(ClientError::from_status)?;
            if !ctx.json() {
                println!("revoked join token {id}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_states() {
        let t = |revoked, expires_at, uses_left| JoinTokenInfo {
            revoked,
            expires_at,
            uses_left,
            ..Default::default()
        };
        assert_eq!(state(&t(false, 100, 1), 50), "valid");
        assert_eq!(state(&t(false, 100, 1), 100), "expired");
        assert_eq!(state(&t(false, 100, 0), 50), "used up");
        assert_eq!(state(&t(true, 100, 1), 50), "revoked");
    }
}
