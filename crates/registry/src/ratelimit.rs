//! Request-rate limits per client IP, so that one client cannot starve the others or guess
//! passwords at leisure.
//!
//! - [`RateLimiter`]: a token bucket per client IP (`[limits] requests_per_second` and
//!   `burst`); off by default.
//! - [`LoginLimiter`]: failed logins (bad Basic credentials at `/token` or on `/v2/`
//!   requests) per client IP; after `login_failures` within `login_window`, further login
//!   attempts from that IP are refused until the oldest failure leaves the window. Logins
//!   in flight count as failures until they end.
//!
//! - [`EgressLimiter`]: blob bytes sent per second to one client IP (`[limits]
//!   client_egress_bytes_per_second`); off by default. It does not refuse anything: a body
//!   over the rate is sent more slowly, so that a few clients downloading as fast as the
//!   link allows cannot take the server from everyone else.
//!
//! The first two answer 429 `TOOMANYREQUESTS` with `Retry-After` (see [`crate::api`]).
//! Clients are told apart by the TCP peer address: behind a proxy they share one bucket.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tracked clients above which idle entries are dropped.
const PRUNE_ABOVE: usize = 4096;
/// Least time between two prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per client IP, `burst` tokens each, refilled at `rate` a second; the
/// core of [`RateLimiter`] and [`EgressLimiter`].
#[derive(Debug)]
struct Buckets {
    rate: f64,
    burst: f64,
    state: Mutex<(HashMap<IpAddr, Bucket>, Option<Instant>)>,
}

impl Buckets {
    /// `None` when `rate` is 0 (no limit); a `burst` of 0 is one second's worth.
    fn new(rate: u64, burst: u64) -> Option<Buckets> {
        if rate == 0 {
            return None;
        }
        let burst = if burst == 0 { rate } else { burst };
        Some(Buckets {
            rate: rate as f64,
            burst: burst as f64,
            state: Mutex::new((HashMap::new(), None)),
        })
    }

    /// Runs `f` on `ip`'s tokens, refilled up to `now` (a bucket may be in debt: below 0).
    fn with_tokens<R>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut f64) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (buckets, last_prune) = &mut *guard;
        if buckets.len() > PRUNE_ABOVE
            && last_prune.is_none_or(|t| now.saturating_duration_since(t) >= PRUNE_EVERY)
        {
            // A bucket that has refilled completely is the same as no bucket; one in
            // debt is full only after the debt and a whole burst are refilled.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                let full_after = (burst - b.tokens) / rate;
                now.saturating_duration_since(b.last).as_secs_f64() < full_after
            });
            *last_prune = Some(now);
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        f(&mut bucket.tokens)
    }
}

/// A token bucket per client IP: `burst` requests at once, refilled at `rate` per second.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Buckets,
}

impl RateLimiter {
    /// A limiter of `requests_per_second` with bursts of `burst` (0: one second's worth);
    /// `None` when `requests_per_second` is 0 (no limit).
    pub fn new(requests_per_second: u32, burst: u32) -> Option<RateLimiter> {
        Buckets::new(u64::from(requests_per_second), u64::from(burst))
            .map(|buckets| RateLimiter { buckets })
    }

    /// Takes a token for a request from `ip` at `now`; when there is none, how long until
    /// there is.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = self.buckets.rate;
        self.buckets.with_tokens(ip, now, |tokens| {
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                Ok(())
            } else {
                Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
            }
        })
    }
}

/// A byte budget per client IP: `burst` bytes at once, refilled at `rate` bytes per second.
/// A client may run into debt (a body frame is sent whole); its next frames wait until
/// the debt is paid, so every stream of one client together gets at most `rate`.
#[derive(Debug)]
pub struct EgressLimiter {
    buckets: Buckets,
}

impl EgressLimiter {
    /// A limiter of `bytes_per_second` with bursts of `burst` bytes (0: one second's
    /// worth); `None` when `bytes_per_second` is 0 (no limit).
    pub fn new(bytes_per_second: u64, burst: u64) -> Option<EgressLimiter> {
        Buckets::new(bytes_per_second, burst).map(|buckets| EgressLimiter { buckets })
    }

    /// Charges `bytes` about to be sent to `ip` at `now`; how long to wait before sending
    /// them (zero while the client is within its budget).
    pub fn charge(&self, ip: IpAddr, bytes: u64, now: Instant) -> Duration {
        let rate = self.buckets.rate;
        self.buckets.with_tokens(ip, now, |tokens| {
            *tokens -= bytes as f64;
            if *tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-*tokens / rate)
            }
        })
    }
}

/// How long a client whose logins are all in flight is told to wait.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

/// A client's recent failed logins and the logins it has in flight.
#[derive(Debug, Default)]
struct Client {
    failures: VecDeque<Instant>,
    in_flight: usize,
}

/// Clients by IP, and when the map was last swept.
type ClientLog = (HashMap<IpAddr, Client>, Option<Instant>);

/// Failed logins per client IP within a sliding window. A login in flight counts as a
/// failure until it ends, so that parallel attempts cannot get past the limit before any
/// of them has failed.
#[derive(Debug)]
pub struct LoginLimiter {
    max_failures: usize,
    window: Duration,
    state: Mutex<ClientLog>,
}

impl LoginLimiter {
    /// Refuses logins from an IP with `max_failures` failures within `window`; `None`
    /// when `max_failures` is 0 (no limit).
    pub fn new(max_failures: u32, window: Duration) -> Option<LoginLimiter> {
        if max_failures == 0 || window.is_zero() {
            return None;
        }
        Some(LoginLimiter {
            max_failures: max_failures as usize,
            window,
            state: Mutex::new((HashMap::new(), None)),
        })
    }

    fn expire(&self, failures: &mut VecDeque<Instant>, now: Instant) {
        while failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            failures.pop_front();
        }
    }

    /// Starts a login from `ip`: counted against the limit until [`LoginLimiter::finish`].
    /// When the recent failures plus the logins in flight reach the limit, how long to
    /// wait instead.
    pub fn begin(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (all, last_prune) = &mut *guard;
        if all.len() > PRUNE_ABOVE
            && last_prune.is_none_or(|t| now.saturating_duration_since(t) >= PRUNE_EVERY)
        {
            all.retain(|_, c| {
                c.in_flight > 0
                    || c.failures
                        .back()
                        .is_some_and(|t| now.saturating_duration_since(*t) < self.window)
            });
            *last_prune = Some(now);
        }
        let client = all.entry(ip).or_default();
        self.expire(&mut client.failures, now);
        let failures = client.failures.len();
        if failures + client.in_flight < self.max_failures {
            client.in_flight += 1;
            return Ok(());
        }
        if failures >= self.max_failures {
            // Allowed again once enough failures have left the window.
            let oldest_relevant = client.failures[failures - self.max_failures];
            return Err(self
                .window
                .saturating_sub(now.saturating_duration_since(oldest_relevant)));
        }
        // Refused for the logins in flight: they end within seconds.
        Err(IN_FLIGHT_RETRY)
    }

    /// Ends a login begun with [`LoginLimiter::begin`], recording a failure if it `failed`.
    pub fn finish(&self, ip: IpAddr, now: Instant, failed: bool) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(client) = guard.0.get_mut(&ip) else {
            return;
        };
        client.in_flight = client.in_flight.saturating_sub(1);
        if failed {
            self.expire(&mut client.failures, now);
            client.failures.push_back(now);
            // Only the newest `max_failures` matter.
            while client.failures.len() > self.max_failures {
                client.failures.pop_front();
            }
        }
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn egress_allows_a_burst_then_paces_every_stream_of_a_client_together() {
        assert!(EgressLimiter::new(0, 10).is_none());
        let l = EgressLimiter::new(1000, 2000).unwrap();
        let t0 = Instant::now();
        assert_eq!(l.charge(ip(1), 1500, t0), Duration::ZERO);
        assert_eq!(l.charge(ip(1), 500, t0), Duration::ZERO);
        // Two streams of one client: the second waits for the first one's debt too.
        assert_eq!(l.charge(ip(1), 500, t0), Duration::from_millis(500));
        assert_eq!(l.charge(ip(1), 500, t0), Duration::from_millis(1000));
        // Another client has its own budget.
        assert_eq!(l.charge(ip(2), 2000, t0), Duration::ZERO);
        // After the debt is paid and a second more, a second's worth is free again.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(l.charge(ip(1), 1000, later), Duration::ZERO);
        assert_eq!(l.charge(ip(1), 250, later), Duration::from_millis(250));
        // One frame larger than the burst is sent, then paid for.
        let l = EgressLimiter::new(1000, 0).unwrap();
        assert_eq!(l.charge(ip(3), 3000, t0), Duration::from_secs(2));
    }

    #[test]
    fn egress_buckets_of_idle_clients_are_pruned_but_debts_are_kept() {
        let l = EgressLimiter::new(1000, 1000).unwrap();
        let t0 = Instant::now();
        assert_eq!(l.charge(ip(0), 20_000, t0), Duration::from_secs(19));
        for i in 0..=PRUNE_ABOVE as u32 {
            l.charge(
                IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000u32 + i)),
                1,
                t0,
            );
        }
        let later = t0 + PRUNE_EVERY + Duration::from_secs(1);
        l.charge(ip(9), 1, later);
        let map = &l.buckets.state.lock().unwrap().0;
        assert!(map.len() < 10, "{} buckets kept", map.len());
        assert!(map.contains_key(&ip(0)), "a client in debt was forgotten");
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        assert!(RateLimiter::new(0, 10).is_none());
        let l = RateLimiter::new(2, 3).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(ip(1), t0), Ok(()));
        }
        let wait = l.check(ip(1), t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        // Another client has its own bucket.
        assert_eq!(l.check(ip(2), t0), Ok(()));
        // Half a second later one token is back, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check(ip(1), t1), Ok(()));
        assert!(l.check(ip(1), t1).is_err());
        // Long idle: back to a full burst, not more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.check(ip(1), t2), Ok(()));
        }
        assert!(l.check(ip(1), t2).is_err());
        // Burst 0 means one second's worth.
        let l = RateLimiter::new(5, 0).unwrap();
        for _ in 0..5 {
            assert_eq!(l.check(ip(1), t0), Ok(()));
        }
        assert!(l.check(ip(1), t0).is_err());
    }

    #[test]
    fn idle_buckets_are_pruned() {
        let l = RateLimiter::new(1000, 1).unwrap();
        let t0 = Instant::now();
        for i in 0..=(PRUNE_ABOVE as u32 + 1) {
            l.check(IpAddr::from(i.to_be_bytes()), t0).unwrap();
        }
        // The first prune (at t0) found nothing idle; the next may run 10 s later.
        l.check(ip(1), t0 + PRUNE_EVERY).unwrap();
        assert!(l.buckets.state.lock().unwrap().0.len() <= 2);
    }

    /// A login from `ip` at `t` that fails.
    fn fail(l: &LoginLimiter, ip: IpAddr, t: Instant) {
        l.begin(ip, t).unwrap();
        l.finish(ip, t, true);
    }

    #[test]
    fn logins_are_refused_after_n_failures_until_the_window_passes() {
        assert!(LoginLimiter::new(0, Duration::from_secs(60)).is_none());
        let l = LoginLimiter::new(3, Duration::from_secs(60)).unwrap();
        let t0 = Instant::now();
        fail(&l, ip(1), t0);
        fail(&l, ip(1), t0 + Duration::from_secs(10));
        // A success is not counted.
        l.begin(ip(1), t0 + Duration::from_secs(10)).unwrap();
        l.finish(ip(1), t0 + Duration::from_secs(10), false);
        fail(&l, ip(1), t0 + Duration::from_secs(20));
        assert_eq!(
            l.begin(ip(1), t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        fail(&l, ip(2), t0 + Duration::from_secs(20));
        // The first failure leaves the window at 60 s: one more attempt is allowed.
        assert!(l.begin(ip(1), t0 + Duration::from_secs(59)).is_err());
        fail(&l, ip(1), t0 + Duration::from_secs(61));
        assert_eq!(
            l.begin(ip(1), t0 + Duration::from_secs(61)),
            Err(Duration::from_secs(9))
        );
    }

    #[test]
    fn logins_in_flight_count_against_the_limit() {
        let l = LoginLimiter::new(3, Duration::from_secs(60)).unwrap();
        let t0 = Instant::now();
        fail(&l, ip(1), t0);
        l.begin(ip(1), t0).unwrap();
        l.begin(ip(1), t0).unwrap();
        assert_eq!(l.begin(ip(1), t0), Err(IN_FLIGHT_RETRY));
        // One in flight succeeds: room for another attempt.
        l.finish(ip(1), t0, false);
        l.begin(ip(1), t0).unwrap();
        l.finish(ip(1), t0, true);
        l.finish(ip(1), t0, true);
        assert_eq!(l.begin(ip(1), t0), Err(Duration::from_secs(60)));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(40)), 40);
    }
}
