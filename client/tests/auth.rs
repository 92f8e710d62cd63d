//! Username/password auth with token refresh, against etcd and Cairn with auth enabled.

mod common;

use std::time::Duration;

use cairn_client::{Access, ConnectOptions, Error, GetOptions, PutOptions, WatchOptions};
use common::{Backend, Cluster};
use futures::StreamExt;

/// Simple tokens expire after this many idle seconds (`--auth-token-ttl`).
const TOKEN_TTL_SECS: u64 = 2;

async fn auth_with_token_refresh(backend: Backend) {
    let ttl = TOKEN_TTL_SECS.to_string();
    let flags: &[&str] = &["--auth-token", "simple", "--auth-token-ttl", &ttl];
    let Some(cluster) = Cluster::start_with(backend, 3, flags).await else {
        return;
    };
    let admin = cluster.client().await;
    let auth = admin.auth();
    assert!(auth.user_list().await.unwrap().is_empty());
    auth.user_add("root", "rootpw").await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.user_add("app", "apppw").await.unwrap();
    auth.role_add("app").await.unwrap();
    auth.role_grant_permission(
        "app",
        Access::ReadWrite,
        "app/",
        Some(cairn_client::prefix_end(b"app/")),
    )
    .await
    .unwrap();
    auth.user_grant_role("app", "app").await.unwrap();
    assert_eq!(auth.user_get("app").await.unwrap(), ["app"]);
    auth.enable().await.unwrap();

    let err = admin
        .kv()
        .put("app/x", "1", PutOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UserEmpty), "{err:?}");
    let wrong = cluster
        .client_with(ConnectOptions::new().with_user("app", "wrong"))
        .await;
    let err = wrong
        .kv()
        .get("app/x", GetOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AuthFailed), "{err:?}");

    let app = cluster
        .client_with(ConnectOptions::new().with_user("app", "apppw"))
        .await;
    let mut w = app
        .watch()
        .watch("app/", WatchOptions::new().with_prefix())
        .await
        .unwrap();
    app.kv().put("app/x", "1", PutOptions::new()).await.unwrap();
    let err = app
        .kv()
        .put("elsewhere", "1", PutOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied), "{err:?}");

    // Idle past the token's TTL: the next request gets `invalid auth token`, and the client
    // authenticates again by itself.
    tokio::time::sleep(Duration::from_secs(TOKEN_TTL_SECS + 2)).await;
    app.kv().put("app/y", "2", PutOptions::new()).await.unwrap();
    let r = app
        .kv()
        .get("app/", GetOptions::new().with_prefix())
        .await
        .unwrap();
    assert_eq!(r.count, 2);
    let mut keys = Vec::new();
    while keys.len() < 2 {
        let resp = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        keys.extend(resp.events.into_iter().map(|e| e.kv.key.to_vec()));
    }
    assert_eq!(keys, [b"app/x".to_vec(), b"app/y".to_vec()]);

    let root = cluster
        .client_with(ConnectOptions::new().with_user("root", "rootpw"))
        .await;
    root.auth().disable().await.unwrap();
    admin
        .kv()
        .put("elsewhere", "1", PutOptions::new())
        .await
        .unwrap();
}

per_backend!(
    cairn_auth_with_token_refresh,
    etcd_auth_with_token_refresh,
    auth_with_token_refresh
);
