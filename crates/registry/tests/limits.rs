//! Request-rate limits per client IP (`[limits] requests_per_second`, `burst`) and the
//! failed-login limit (`login_failures` within `login_window`): 429 `TOOMANYREQUESTS`
//! with `Retry-After`; the limits on open upload sessions per repository and client
//! (`[uploads]`); the per-client egress limit (`client_egress_bytes_per_second`).

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use futures::FutureExt;
use gantry_registry::{add_user, AccessRule, AuthConfig, TokenAuth};
use reqwest::StatusCode;

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("retry-after")
        .expect("Retry-After on a 429")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn over_the_rate_a_client_gets_429_with_retry_after() {
    let reg = TestRegistry::with_config(|c| {
        c.limits.requests_per_second = 2;
        c.limits.burst = 3;
    })
    .await;
    for i in 0..3 {
        let r = reg.client.get(reg.url("/v2/")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "request {i} of the burst");
    }
    let r = reg.client.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&r);
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert_eq!(
        error_of(r).await,
        (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS".into())
    );
    // Every route is limited, blobs included.
    let r = reg
        .client
        .get(reg.url(&format!("/v2/r/blobs/{}", gantry_oci::Digest::of(b"x"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = reg.client.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "allowed again after Retry-After"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let text = reg.metrics_text().await;
    assert!(
        text.contains("gantry_registry_rate_limited_total{reason=\"requests\"} 2"),
        "{text}"
    );
    assert!(text.contains("route=\"rate_limited\",method=\"GET\",status=\"429\""));
}

/// GETs `path` from `client`; the body's length and how long the whole answer took.
async fn timed_get(client: &reqwest::Client, url: String) -> (usize, Duration) {
    let started = std::time::Instant::now();
    let r = client.get(url).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let n = r.bytes().await.unwrap().len();
    (n, started.elapsed())
}

#[tokio::test]
async fn downloads_of_one_client_are_paced_together_and_others_keep_their_own_budget() {
    const MIB: usize = 1 << 20;
    let reg = TestRegistry::with_config(|c| {
        c.limits.client_egress_bytes_per_second = 4 * MIB as u64;
        c.limits.client_egress_burst_bytes = MIB as u64;
    })
    .await;
    let blob = bytes(7, 4 * MIB);
    let digest = reg.push_blob("r", &blob).await;
    let url = reg.url(&format!("/v2/r/blobs/{digest}"));
    // Client A (127.0.0.1) downloads the blob twice at once, whole and as a range: 8 MiB
    // against a budget of 1 MiB plus 4 MiB/s takes at least 1.75 s.
    let a = client();
    let whole = timed_get(&a, url.clone());
    let range = async {
        let started = std::time::Instant::now();
        let r = a
            .get(url.clone())
            .header("Range", "bytes=0-")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        let body = r.bytes().await.unwrap();
        assert_eq!(&body[..], &blob[..], "a paced range body is exact");
        (body.len(), started.elapsed())
    };
    // Client B (127.0.0.2), meanwhile, has its own budget: 4 MiB in about 0.75 s, where
    // sharing A's bucket would take at least 2.75 s.
    let b = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let other = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        timed_get(&b, url.clone()).await
    };
    let (whole, range, other) = tokio::join!(whole, range, other);
    assert_eq!(whole.0 + range.0, 8 * MIB);
    let slowest = whole.1.max(range.1);
    assert!(
        slowest >= Duration::from_millis(1700),
        "client A got 8 MiB in {slowest:?}, over its 4 MiB/s"
    );
    assert_eq!(other.0, 4 * MIB);
    assert!(
        other.1 < Duration::from_millis(2500),
        "client B took {:?}: it was charged for client A's downloads",
        other.1
    );
    let text = reg.metrics_text().await;
    let paced: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("gantry_registry_egress_paced_seconds_total "))
        .expect("the paced-seconds metric")
        .parse()
        .unwrap();
    assert!(paced > 1.0, "paced {paced} s");
}

#[tokio::test]
async fn no_rate_limit_by_default() {
    let reg = TestRegistry::start().await;
    let digest = reg.push_blob("r", b"blob").await;
    for _ in 0..300 {
        let r = reg
            .client
            .head(reg.url(&format!("/v2/r/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

async fn with_login_limit(failures: u32, window: Duration) -> TestRegistry {
    TestRegistry::with_config(|c| {
        c.limits.login_failures = failures;
        c.limits.login_window = window;
        let users = TokenAuth::default_users_path(&c.root);
        add_user(&users, "ci", "cipw").unwrap();
        c.auth = Some(AuthConfig {
            access: vec![AccessRule {
                repository: "game/*".into(),
                users: vec!["ci".into()],
                actions: vec!["pull".into(), "push".into()],
                anonymous_pull: false,
            }],
            ..AuthConfig::default()
        });
    })
    .await
}

async fn token_status(reg: &TestRegistry, user: &str, password: &str) -> reqwest::Response {
    reg.client
        .get(format!(
            "{}?service=gantry&scope=repository:game/a:pull",
            reg.url("/token")
        ))
        .header("authorization", basic(user, password))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn failed_logins_at_token_lock_the_address_out_until_the_window_passes() {
    let reg = with_login_limit(3, Duration::from_secs(3)).await;
    // A token obtained before keeps working during the lockout.
    let r = token_status(&reg, "ci", "cipw").await;
    assert_eq!(r.status(), StatusCode::OK);
    let token = json_of(r).await["token"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let r = token_status(&reg, "ci", "wrong").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Even the right password is refused now, at /token and as Basic on /v2/.
    let r = token_status(&reg, "ci", "cipw").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&r);
    assert!((1..=3).contains(&wait), "Retry-After {wait}");
    assert_eq!(error_of(r).await.1, "TOOMANYREQUESTS");
    let r = reg
        .client
        .get(reg.url("/v2/game/a/tags/list"))
        .header("authorization", basic("ci", "cipw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = reg
        .client
        .get(reg.url("/v2/game/a/tags/list"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "token still accepted");
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(200)).await;
    let r = token_status(&reg, "ci", "cipw").await;
    assert_eq!(r.status(), StatusCode::OK, "allowed after the window");
}

#[tokio::test]
async fn failed_basic_logins_on_v2_count_but_denials_do_not() {
    let reg = with_login_limit(2, Duration::from_secs(60)).await;
    let get = |auth: String, path: &str| {
        reg.client
            .get(reg.url(path))
            .header("authorization", auth)
            .send()
    };
    // Authenticated but not allowed (403): not a failed login.
    for _ in 0..5 {
        let r = get(basic("ci", "cipw"), "/v2/other/tags/list")
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    for _ in 0..2 {
        let r = get(basic("ci", "nope"), "/v2/").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = get(basic("ci", "cipw"), "/v2/").await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&r) > 50);
    let r = token_status(&reg, "ci", "cipw").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Requests without a password are not logins.
    let r = reg.client.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Finding (abuse bench): a password-guessing loop that retried as soon as it got its 429
/// had thousands of refusals a second answered, and the CPU they took slowed everyone's
/// pulls. A refused login is now answered after a delay (1 s), so such a loop gets about
/// one answer a second per connection.
#[tokio::test]
async fn refused_logins_are_answered_slowly() {
    let reg = with_login_limit(2, Duration::from_secs(60)).await;
    for _ in 0..2 {
        let r = token_status(&reg, "ci", "wrong").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let r = token_status(&reg, "ci", "wrong").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "three refused logins were answered in {took:?}"
    );
    // A request without a password is not a login and is not delayed.
    let started = std::time::Instant::now();
    let r = reg.client.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(started.elapsed() < Duration::from_millis(900));
}

/// The process's resident set size in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Sends `n` requests at once (made by `request(i)`), sampling the resident set size
/// meanwhile; the statuses and the largest growth of the RSS.
async fn burst<F, Fut>(n: usize, request: F) -> (Vec<StatusCode>, u64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::Response> + Send + 'static,
{
    let base = rss_bytes();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = base;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes());
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(request(i))).collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    (statuses, peak.saturating_sub(base))
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Parallel bad passwords: argon2 runs a few at a time (memory bound), and no more than
/// the failed-login limit of them are checked. One test, as the allocator keeps what a
/// burst took: a second burst in the same process would hardly grow the RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_bad_logins_are_bounded_in_memory_and_by_the_limit() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    // Argon2 takes 19 MiB per check; allow for the checks of the other tests.
    let bound = (cores + 6) * 19 * 1024 * 1024;

    // No failed-login limit to speak of: only the bound on argon2 work applies.
    let reg = with_login_limit(100_000, Duration::from_secs(60)).await;
    let (statuses, growth) = burst(64, |i| {
        reg.client
            .get(reg.url("/v2/"))
            .header("authorization", basic("ci", &format!("wrong{i}")))
            .send()
            .map(Result::unwrap)
    })
    .await;
    eprintln!("RSS growth {growth} B for 64 parallel checks, bound {bound} B");
    assert!(
        growth <= bound,
        "64 parallel password checks grew the RSS by {growth} B (bound {bound} B)"
    );
    // Every check either ran (401) or was refused for load (503 with Retry-After).
    assert_eq!(
        count(&statuses, StatusCode::UNAUTHORIZED)
            + count(&statuses, StatusCode::SERVICE_UNAVAILABLE),
        64,
        "{statuses:?}"
    );

    let reg = with_login_limit(10, Duration::from_secs(60)).await;
    let url = format!(
        "{}?service=gantry&scope=repository:game/a:pull",
        reg.url("/token")
    );
    let (statuses, growth) = burst(100, |i| {
        reg.client
            .get(&url)
            .header("authorization", basic("ci", &format!("wrong{i}")))
            .send()
            .map(Result::unwrap)
    })
    .await;
    let unauthorized = count(&statuses, StatusCode::UNAUTHORIZED);
    let refused = count(&statuses, StatusCode::TOO_MANY_REQUESTS);
    eprintln!("401: {unauthorized}, 429: {refused}, RSS growth {growth} B");
    assert!(
        unauthorized <= 10,
        "{unauthorized} of 100 parallel bad logins were checked, the limit is 10"
    );
    assert_eq!(unauthorized + refused, 100, "{statuses:?}");
    assert!(growth <= bound, "RSS growth {growth} B (bound {bound} B)");
    // Now locked out for the window, right password or not.
    let r = token_status(&reg, "ci", "cipw").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn unknown_users_take_as_long_to_refuse_as_known_ones() {
    let reg = with_login_limit(100_000, Duration::from_secs(60)).await;
    // Known and unknown in turn, so that both see the same load (other tests of this
    // binary run password checks at the same time); the fastest of each counts.
    let (mut known, mut unknown) = (Duration::MAX, Duration::MAX);
    for i in 0..5 {
        for (user, best) in [("ci", &mut known), ("nobody", &mut unknown)] {
            let t = std::time::Instant::now();
            let r = token_status(&reg, user, &format!("wrong{i}")).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            *best = (*best).min(t.elapsed());
        }
    }
    eprintln!("bad password: known user {known:?}, unknown user {unknown:?}");
    assert!(
        unknown * 4 >= known,
        "an unknown user is refused in {unknown:?}, a known one in {known:?}"
    );
}

#[tokio::test]
async fn open_upload_sessions_are_limited_per_repository_and_client() {
    let reg = TestRegistry::with_config(small_session_limits).await;
    check_upload_session_limits(&reg).await;
}

#[tokio::test]
async fn idle_upload_sessions_stop_counting_when_they_expire() {
    let reg = TestRegistry::with_config(|c| {
        c.uploads.max_sessions_per_client = 1;
        c.uploads.max_age = Duration::from_secs(1);
        c.uploads.purge_interval = Duration::from_secs(1);
    })
    .await;
    let first = open_upload(&reg, "r").await;
    assert_limited(post_upload(&reg, "r").await, &["max_sessions_per_client"]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    open_upload(&reg, "r").await;
    // The expired session was purged from storage too.
    let r = reg.client.get(reg.url(&first)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
