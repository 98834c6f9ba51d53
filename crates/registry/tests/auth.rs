//! Users, access rules and Docker token auth: the refusal matrix over HTTP, the `/token`
//! endpoint, and real clients (skopeo, buildah, containerd) logging in.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use gantry_oci::Digest;
use gantry_registry::token::{now_secs, Claims, ResourceActions, TokenKey};
use gantry_registry::{add_user, AccessRule, AuthConfig, TokenAuth};
use gantry_test_support::{
    assert_success, command, output_with_timeout, require_tool, tempdir, write_busybox_oci_layout,
    Containerd,
};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

fn rule(repository: &str, users: &[&str], actions: &[&str], anonymous_pull: bool) -> AccessRule {
    AccessRule {
        repository: repository.into(),
        users: users.iter().map(|s| s.to_string()).collect(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        anonymous_pull,
    }
}

/// root: admin; alice: everything on `team/*`, push on `public/**`; bob: pull and push on
/// `bob/**`; anyone: pull on `public/**`.
async fn start() -> TestRegistry {
    TestRegistry::with_config(|c| {
        let users = TokenAuth::default_users_path(&c.root);
        for (u, p) in [("root", "rootpw"), ("alice", "alicepw"), ("bob", "bobpw")] {
            add_user(&users, u, p).unwrap();
        }
        c.auth = Some(AuthConfig {
            admins: vec!["root".into()],
            access: vec![
                rule("team/*", &["alice"], &["pull", "push", "delete"], false),
                rule("bob/**", &["bob"], &["pull", "push"], false),
                rule("public/**", &["alice"], &["push"], true),
            ],
            ..AuthConfig::default()
        });
    })
    .await
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// A client that sends Basic credentials on every request.
fn client_as(user: &str, password: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        basic(user, password).parse().expect("header value"),
    );
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .unwrap()
}

fn bearer(rb: RequestBuilder, token: &str) -> RequestBuilder {
    rb.header("authorization", format!("Bearer {token}"))
}

/// A token from `/token` for `scopes`, as `user` (or anonymously).
async fn token(reg: &TestRegistry, user: Option<(&str, &str)>, scopes: &[&str]) -> String {
    let mut url = format!("{}?service=gantry", reg.url("/token"));
    for s in scopes {
        url.push_str(&format!("&scope={s}"));
    }
    let mut rb = reg.client.get(url);
    if let Some((u, p)) = user {
        rb = rb.header("authorization", basic(u, p));
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = json_of(r).await;
    assert_eq!(body["token"], body["access_token"]);
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    body["token"].as_str().unwrap().to_string()
}

/// The claims of a token, unverified.
fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn challenge(r: &reqwest::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn manifest_status(reg: &TestRegistry, rb: RequestBuilder) -> StatusCode {
    let _ = reg;
    rb.header("accept", gantry_oci::media_types::OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn anonymous_push_is_refused_with_a_bearer_challenge() {
    let reg = start().await;
    let realm = format!("{}/token", reg.server.url());
    // /v2/ asks for credentials, so that clients learn the realm.
    let r = reg.client.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&r),
        format!("Bearer realm=\"{realm}\",service=\"gantry\"")
    );
    let r = reg
        .client
        .post(reg.url("/v2/team/game/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&r),
        format!(
            "Bearer realm=\"{realm}\",service=\"gantry\",scope=\"repository:team/game:pull,push\""
        )
    );
    assert_eq!(
        error_of(r).await,
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED".into())
    );
    // Even where anonymous pull is allowed.
    let r = reg
        .client
        .put(reg.url("/v2/public/x/manifests/v1"))
        .header("content-type", gantry_oci::media_types::OCI_MANIFEST)
        .body(image_manifest(b"{}", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // An anonymous token does not grant push either.
    let t = token(&reg, None, &["repository:public/x:pull,push"]).await;
    assert_eq!(claims_of(&t).access[0].actions, ["pull"]);
    let r = bearer(reg.client.post(reg.url("/v2/public/x/blobs/uploads/")), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&r).contains("error=\"insufficient_scope\""));
    // Nothing was written.
    assert!(reg
        .registry()
        .storage()
        .list_repositories()
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn pull_of_a_private_repository_is_refused() {
    let reg = start().await;
    let root = client_as("root", "rootpw");
    let base = reg.server.url();
    let (digest, _) = push_image(&root, &base, "team/game", "v1", &[b"layer"]).await;
    let path = format!("/v2/team/game/manifests/{digest}");
    // Anonymous: 401 with a pull challenge.
    let r = reg.client.get(reg.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&r).ends_with("scope=\"repository:team/game:pull\""));
    let layer = Digest::of(b"layer");
    let r = reg
        .client
        .get(reg.url(&format!("/v2/team/game/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Another user, with Basic: authenticated but denied.
    let bob = client_as("bob", "bobpw");
    assert_eq!(
        error_of(bob.get(reg.url(&path)).send().await.unwrap()).await,
        (StatusCode::FORBIDDEN, "DENIED".into())
    );
    // Wrong password: 401.
    let r = client_as("alice", "nope")
        .get(reg.url(&path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // bob's token request for it is granted nothing.
    let t = token(&reg, Some(("bob", "bobpw")), &["repository:team/game:pull"]).await;
    assert!(claims_of(&t).access.is_empty());
    assert_eq!(claims_of(&t).sub, "bob");
    let status = manifest_status(&reg, bearer(reg.client.get(reg.url(&path)), &t)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The catalog is for admins.
    let r = client_as("alice", "alicepw")
        .get(reg.url("/v2/_catalog"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = root.get(reg.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // alice may, with Basic or with a token.
    let alice = client_as("alice", "alicepw");
    assert_eq!(
        manifest_status(&reg, alice.get(reg.url(&path))).await,
        StatusCode::OK
    );
    let t = token(
        &reg,
        Some(("alice", "alicepw")),
        &["repository:team/game:pull"],
    )
    .await;
    assert_eq!(
        manifest_status(&reg, bearer(reg.client.get(reg.url(&path)), &t)).await,
        StatusCode::OK
    );
    // The egress metric names the user.
    let data = bearer(
        reg.client
            .get(reg.url(&format!("/v2/team/game/blobs/{layer}"))),
        &t,
    )
    .send()
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    assert_eq!(&data[..], b"layer");
    let metrics = root
        .get(reg.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "gantry_registry_bytes_sent_total{repository=\"team/game\",client=\"alice\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_need_an_admin_or_a_metrics_user() {
    let reg = TestRegistry::with_config(|c| {
        let users = TokenAuth::default_users_path(&c.root);
        for (u, p) in [("root", "rootpw"), ("alice", "alicepw"), ("prom", "prompw")] {
            add_user(&users, u, p).unwrap();
        }
        c.auth = Some(AuthConfig {
            admins: vec!["root".into()],
            metrics_users: vec!["prom".into()],
            access: vec![rule("secret/*", &["alice"], &["pull", "push"], false)],
            ..AuthConfig::default()
        });
        c.metrics_address = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let base = reg.server.url();
    let alice = client_as("alice", "alicepw");
    push_image(&alice, &base, "secret/game", "v1", &[b"layer"]).await;
    let layer = Digest::of(b"layer");
    let r = alice
        .get(reg.url(&format!("/v2/secret/game/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Anonymous: 401 with a Basic challenge, naming nothing.
    let r = reg.client.get(reg.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&r), "Basic realm=\"gantry\"");
    let text = r.text().await.unwrap();
    for leak in ["secret", "alice", "gantry_registry"] {
        assert!(!text.contains(leak), "{leak:?} in {text}");
    }
    assert!(text.contains("UNAUTHORIZED"), "{text}");
    // A wrong password: 401; a user who is neither admin nor metrics user: 403.
    let r = client_as("prom", "nope")
        .get(reg.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = alice.get(reg.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!r.text().await.unwrap().contains("secret"));
    // The metrics user and the admin read them, with Basic or a token.
    let series = "gantry_registry_bytes_sent_total{repository=\"secret/game\",client=\"alice\"}";
    for (user, password) in [("prom", "prompw"), ("root", "rootpw")] {
        let r = client_as(user, password)
            .get(reg.url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{user}");
        assert!(r.text().await.unwrap().contains(series), "{user}");
    }
    let t = token(&reg, Some(("prom", "prompw")), &[]).await;
    let r = bearer(reg.client.get(reg.url("/metrics")), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = bearer(reg.client.get(reg.url("/metrics")), "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The separate metrics listener (a private address) serves them without credentials,
    // and nothing else.
    let addr = reg.server.metrics_addr().expect("metrics listener");
    let r = reg
        .client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains(series));
    let r = reg
        .client
        .get(format!("http://{addr}/v2/secret/game/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_token_for_one_repository_is_refused_on_another() {
    let reg = start().await;
    let root = client_as("root", "rootpw");
    let base = reg.server.url();
    push_image(&root, &base, "team/a", "v1", &[b"a"]).await;
    push_image(&root, &base, "team/b", "v1", &[b"b"]).await;
    let t = token(
        &reg,
        Some(("alice", "alicepw")),
        &["repository:team/a:pull,push"],
    )
    .await;
    let get = |repo: &str| {
        bearer(
            reg.client.get(reg.url(&format!("/v2/{repo}/manifests/v1"))),
            &t,
        )
    };
    assert_eq!(manifest_status(&reg, get("team/a")).await, StatusCode::OK);
    let r = get("team/b").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&r).contains("scope=\"repository:team/b:pull\""));
    assert!(challenge(&r).contains("error=\"insufficient_scope\""));
    let r = bearer(reg.client.post(reg.url("/v2/team/b/blobs/uploads/")), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Delete was not asked for, so not granted.
    let r = bearer(reg.client.delete(reg.url("/v2/team/a/manifests/v1")), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Several scopes in one request.
    let t = token(
        &reg,
        Some(("alice", "alicepw")),
        &[
            "repository:team/a:pull",
            "repository:team/b:pull%20repository:bob/x:pull",
        ],
    )
    .await;
    let scopes: Vec<String> = claims_of(&t)
        .access
        .iter()
        .map(ResourceActions::scope)
        .collect();
    assert_eq!(scopes, ["repository:team/a:pull", "repository:team/b:pull"]);
}

#[tokio::test]
async fn expired_and_forged_tokens_are_refused() {
    let reg = start().await;
    let root = client_as("root", "rootpw");
    push_image(&root, &reg.server.url(), "team/a", "v1", &[b"a"]).await;
    let url = reg.url("/v2/team/a/manifests/v1");
    let good = token(
        &reg,
        Some(("alice", "alicepw")),
        &["repository:team/a:pull"],
    )
    .await;
    assert_eq!(
        manifest_status(&reg, bearer(reg.client.get(&url), &good)).await,
        StatusCode::OK
    );
    let auth = reg.registry().token_auth().unwrap().clone();
    // Expired: signed with the right key, but past `exp`.
    let mut claims = claims_of(&good);
    claims.iat = now_secs() - 600;
    claims.nbf = claims.iat;
    claims.exp = now_secs() - 1;
    let expired = auth.key().sign(&claims);
    let r = bearer(reg.client.get(&url), &expired).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&r).contains("error=\"invalid_token\""));
    // Tampered: the claims of bob's empty token rewritten to grant team/a, old signature.
    let bobs = token(&reg, Some(("bob", "bobpw")), &["repository:team/a:pull"]).await;
    let parts: Vec<&str> = bobs.split('.').collect();
    let mut forged = claims_of(&bobs);
    forged.access = claims_of(&good).access;
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()),
        parts[2]
    );
    // Signed with another key; for another service; unsigned; garbage.
    let other_key = TokenKey::generate().sign(&claims_of(&good));
    let mut other_service = claims_of(&good);
    other_service.aud = "elsewhere".into();
    let other_service = auth.key().sign(&other_service);
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        good.split('.').nth(1).unwrap()
    );
    for (what, t) in [
        ("tampered", tampered.as_str()),
        ("other key", &other_key),
        ("other service", &other_service),
        ("alg none", &unsigned),
        ("garbage", "not-a-token"),
        ("empty", ""),
    ] {
        let r = bearer(reg.client.get(&url), t).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
    // A token made for one service is not usable as a password either.
    let r = reg
        .client
        .get(&url)
        .header("authorization", basic("alice", &good))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn anonymous_pull_is_allowed_where_configured() {
    let reg = start().await;
    let alice = client_as("alice", "alicepw");
    let (digest, _) = push_image(&alice, &reg.server.url(), "public/game", "v1", &[b"open"]).await;
    // Without any credentials.
    let r = reg
        .client
        .get(reg.url("/v2/public/game/manifests/v1"))
        .header("accept", gantry_oci::media_types::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-content-digest"],
        digest.to_string().as_str()
    );
    let r = reg
        .client
        .get(reg.url(&format!("/v2/public/game/blobs/{}", Digest::of(b"open"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"open");
    let r = reg
        .client
        .get(reg.url("/v2/public/game/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(r).await["tags"], serde_json::json!(["v1"]));
    // And with an anonymous token, as token clients do.
    let t = token(&reg, None, &["repository:public/game:pull"]).await;
    assert_eq!(claims_of(&t).sub, "");
    let r = bearer(reg.client.get(reg.url("/v2/")), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        manifest_status(
            &reg,
            bearer(reg.client.get(reg.url("/v2/public/game/manifests/v1")), &t)
        )
        .await,
        StatusCode::OK
    );
    // Only there: alice's push right on public/** gives bob nothing, and anonymous pull
    // does not extend to team/*.
    let bob = client_as("bob", "bobpw");
    let r = bob
        .post(reg.url("/v2/public/game/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = reg
        .client
        .get(reg.url("/v2/team/game/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_mount_from_a_repository_the_caller_may_not_read_does_not_mount() {
    let reg = start().await;
    let root = client_as("root", "rootpw");
    let base = reg.server.url();
    let secret = b"secret layer bytes".to_vec();
    let digest = push_blob(&root, &base, "team/secret", &secret).await;
    let mount = |repo: &str| {
        reg.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={digest}&from=team/secret"
        ))
    };
    // bob with Basic: a normal upload session starts instead (202), nothing is linked.
    let bob = client_as("bob", "bobpw");
    let r = bob.post(mount("bob/app")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = bob
        .head(reg.url(&format!("/v2/bob/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // bob with a token for both repositories (granted only his own).
    let t = token(
        &reg,
        Some(("bob", "bobpw")),
        &[
            "repository:bob/app:pull,push",
            "repository:team/secret:pull",
        ],
    )
    .await;
    assert_eq!(claims_of(&t).access.len(), 1);
    let r = bearer(reg.client.post(mount("bob/app")), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = bearer(
        reg.client
            .head(reg.url(&format!("/v2/bob/app/blobs/{digest}"))),
        &t,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // alice may read team/secret: her mount works.
    let t = token(
        &reg,
        Some(("alice", "alicepw")),
        &[
            "repository:team/copy:pull,push",
            "repository:team/secret:pull",
        ],
    )
    .await;
    let r = bearer(reg.client.post(mount("team/copy")), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn token_endpoint_forms_and_errors() {
    let reg = start().await;
    let url = reg.url("/token");
    // OAuth2 password grant, as containerd sends it.
    let form = "grant_type=password&username=alice&password=alicepw&client_id=test\
                &service=gantry&scope=repository%3Ateam%2Fa%3Apull%2Cpush";
    let r = reg
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = json_of(r).await;
    let t = body["access_token"].as_str().unwrap();
    assert_eq!(
        claims_of(t).access[0].scope(),
        "repository:team/a:pull,push"
    );
    let r = bearer(reg.client.post(reg.url("/v2/team/a/blobs/uploads/")), t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Bad password: 401, by GET and by POST.
    let r = reg
        .client
        .get(format!("{url}?service=gantry&scope=repository:team/a:pull"))
        .header("authorization", basic("alice", "wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = reg
        .client
        .post(&url)
        .body("grant_type=password&username=alice&password=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = reg
        .client
        .get(format!("{url}?service=gantry"))
        .header("authorization", basic("mallory", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Unsupported grant, unknown service.
    let r = reg
        .client
        .post(&url)
        .body("grant_type=refresh_token&refresh_token=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(r).await["error"], "unsupported_grant_type");
    let r = reg
        .client
        .get(format!("{url}?service=other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Catalog scope for admins only.
    let t = token(&reg, Some(("root", "rootpw")), &["registry:catalog:*"]).await;
    let r = bearer(reg.client.get(reg.url("/v2/_catalog")), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t = token(&reg, Some(("alice", "alicepw")), &["registry:catalog:*"]).await;
    assert!(claims_of(&t).access.is_empty());
}

#[tokio::test]
async fn users_added_while_running_can_log_in() {
    let reg = start().await;
    let users = TokenAuth::default_users_path(reg.root());
    let r = client_as("carol", "c")
        .get(reg.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    add_user(&users, "carol", "c").unwrap();
    let r = client_as("carol", "c")
        .get(reg.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A changed password takes effect (the cache of checked passwords is dropped).
    add_user(&users, "carol", "d").unwrap();
    let r = client_as("carol", "c")
        .get(reg.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_an_auth_section_everything_is_allowed() {
    let reg = TestRegistry::start().await;
    let r = reg.client.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    push_image(&reg.client, &reg.server.url(), "any/repo", "v1", &[b"x"]).await;
    let r = reg.client.get(reg.url("/token")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

// ----- real clients -----

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn skopeo(args: &[&str]) -> std::process::Output {
    output_with_timeout(&mut command(require_tool("skopeo"), args), TOOL_TIMEOUT)
}

/// Asserts that a client failed because the registry refused it.
fn assert_refused(what: &str, out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    eprintln!("{what}: {stderr}");
    assert!(!out.status.success(), "{what} succeeded");
    assert!(
        [
            "unauthorized",
            "authentication required",
            "denied",
            "401",
            "403"
        ]
        .iter()
        .any(|w| stderr.contains(w)),
        "{what} failed for another reason: {stderr}"
    );
}

#[test]
fn skopeo_pushes_and_pulls_with_credentials_and_is_refused_without() {
    let rt = runtime();
    let reg = rt.block_on(start());
    let layout = tempdir();
    let img = write_busybox_oci_layout(layout.path(), "latest");
    let src = format!("oci:{}:latest", layout.path().display());
    let dest = format!("docker://{}/team/busybox:v1", reg.host());
    // No credentials: refused.
    let out = skopeo(&["copy", "--dest-tls-verify=false", &src, &dest]);
    assert_refused("anonymous push", &out);
    // Wrong user for the repository: refused.
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "bob:bobpw",
        &src,
        &dest,
    ]);
    assert_refused("bob's push to team/*", &out);
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:alicepw",
        &src,
        &dest,
    ]);
    assert_success("skopeo copy --dest-creds", &out);
    let pulled = tempdir();
    let pulled_ref = format!("oci:{}:v1", pulled.path().display());
    let out = skopeo(&["copy", "--src-tls-verify=false", &dest, &pulled_ref]);
    assert_refused("anonymous pull of a private repository", &out);
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        "alice:alicepw",
        &dest,
        &pulled_ref,
    ]);
    assert_success("skopeo copy --src-creds", &out);
    let out = skopeo(&["inspect", "--raw", &pulled_ref]);
    assert_success("skopeo inspect --raw", &out);
    assert_eq!(Digest::of(&out.stdout).to_string(), img.manifest_digest);
    // Registry to registry with mount: alice may read team/busybox and write team/copy.
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        "alice:alicepw",
        "--dest-creds",
        "alice:alicepw",
        &dest,
        &format!("docker://{}/team/copy:v1", reg.host()),
    ]);
    assert_success("skopeo copy between repositories", &out);
}

#[test]
fn containerd_pulls_with_credentials_and_runs_and_is_refused_without() {
    let rt = runtime();
    let reg = rt.block_on(start());
    let layout = tempdir();
    let img = write_busybox_oci_layout(layout.path(), "latest");
    let reference = format!("{}/team/game:v1", reg.host());
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:alicepw",
        &format!("oci:{}:latest", layout.path().display()),
        &format!("docker://{reference}"),
    ]);
    assert_success("skopeo push", &out);

    let ctd = Containerd::start();
    let out = ctd.pull(&reference, None, true, None);
    assert_refused("anonymous ctr pull", &out);
    let out = ctd.pull(&reference, None, true, Some("alice:wrong"));
    assert_refused("ctr pull with a wrong password", &out);
    let out = ctd.pull(&reference, None, true, Some("alice:alicepw"));
    assert_success("ctr images pull --user", &out);
    assert_eq!(ctd.image_digest(&reference), img.manifest_digest);
    let out = ctd.run_sh(&reference, &[], "echo hello-with-auth");
    assert_success("ctr run", &out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-with-auth\n");
    let text = rt.block_on(async {
        client_as("root", "rootpw")
            .get(reg.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let sent: u64 = text
        .lines()
        .find(|l| {
            l.starts_with(
                "gantry_registry_bytes_sent_total{repository=\"team/game\",client=\"alice\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no egress series for alice in:\n{text}"));
    assert!(sent > 100_000, "sent {sent} bytes");
}

#[test]
fn buildah_pushes_with_credentials_and_is_refused_without() {
    let rt = runtime();
    let reg = rt.block_on(start());
    // buildah names an image pulled from `oci:PATH` after PATH, which must be lowercase.
    let parent =
        std::path::Path::new("/tmp").join(format!("gantry-buildah-auth-{}", std::process::id()));
    std::fs::create_dir_all(&parent).unwrap();
    let store = tempfile::Builder::new()
        .prefix("store")
        .rand_bytes(0)
        .tempdir_in(&parent)
        .unwrap();
    let layout = store.path().join("layout");
    write_busybox_oci_layout(&layout, "latest");
    // An empty auth file, so that credentials stored for the user do not leak in.
    let authfile = store.path().join("auth.json");
    std::fs::write(&authfile, "{\"auths\":{}}").unwrap();
    let buildah = require_tool("buildah");
    let root = store.path().join("root");
    let runroot = store.path().join("runroot");
    let run = |rest: &[&str]| {
        let mut args = vec![
            "--root".to_string(),
            root.display().to_string(),
            "--runroot".to_string(),
            runroot.display().to_string(),
            "--storage-driver".to_string(),
            "vfs".to_string(),
        ];
        args.extend(rest.iter().map(|s| s.to_string()));
        output_with_timeout(&mut command(&buildah, &args), TOOL_TIMEOUT)
    };
    let out = run(&[
        "pull",
        "--quiet",
        &format!("oci:{}:latest", layout.display()),
    ]);
    assert_success("buildah pull", &out);
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(!id.is_empty(), "buildah pull printed no image id");
    let dest = format!("docker://{}/bob/busybox:v1", reg.host());
    let auth = authfile.display().to_string();
    let push = |creds: Option<&str>| {
        let mut args = vec!["push", "--tls-verify=false", "--authfile", &auth];
        if let Some(c) = creds {
            args.extend(["--creds", c]);
        }
        args.extend([id.as_str(), dest.as_str()]);
        run(&args)
    };

    let out = push(Some("bob:bobpw"));
    assert_success("buildah push --creds", &out);
    // The pushed image, read back as bob: every blob present and matching its digest.
    let bob = client_as("bob", "bobpw");
    rt.block_on(async {
        let r = bob
            .get(reg.url("/v2/bob/busybox/manifests/v1"))
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let m: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let mut blobs = vec![m["config"].clone()];
        blobs.extend(m["layers"].as_array().unwrap().iter().cloned());
        for b in blobs {
            let d: Digest = b["digest"].as_str().unwrap().parse().unwrap();
            let data = bob
                .get(reg.url(&format!("/v2/bob/busybox/blobs/{d}")))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(Digest::of(&data), d);
        }
    });

    // Without credentials, with a wrong password, and as a user without push there.
    let out = push(None);
    assert_refused("anonymous buildah push", &out);
    let out = push(Some("bob:wrong"));
    assert_refused("buildah push with a wrong password", &out);
    let dest_team = format!("docker://{}/team/busybox:v1", reg.host());
    let out = run(&[
        "push",
        "--tls-verify=false",
        "--authfile",
        &auth,
        "--creds",
        "bob:bobpw",
        &id,
        &dest_team,
    ]);
    assert_refused("bob's buildah push to team/*", &out);
    rt.block_on(async {
        let r = client_as("root", "rootpw")
            .get(reg.url("/v2/team/busybox/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing was pushed");
    });

    // Clean buildah's vfs storage (layers are plain directories; some are read-only).
    let _ = run(&["rmi", "--all", "--force"]);
    drop(store);
    let _ = std::fs::remove_dir(parent);
}
