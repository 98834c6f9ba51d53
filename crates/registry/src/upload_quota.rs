//! Limits on open upload sessions: how many one repository and one client (the
//! authenticated user, else the client address) may hold, and how many bytes those
//! sessions may hold (`[uploads]` in the config).
//!
//! Sessions are counted in memory, above the [`Storage`](crate::Storage) trait, so the same
//! accounting serves every backend. A session counts from its `POST` until it is completed,
//! cancelled, or idle for the upload `max_age` (when the purge removes it from storage).
//! Sessions of an earlier process are counted from the first append they receive.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::UploadConfig;

/// A limit on open upload sessions that was reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// Too many open sessions.
    #[error(
        "{scope} {name} has {current} open upload sessions, the limit is {limit} \
         ([uploads] {knob}); complete or cancel one, or wait for idle ones to expire"
    )]
    Sessions {
        /// `repository` or `client`.
        scope: &'static str,
        /// The repository or client.
        name: String,
        /// Sessions open now.
        current: usize,
        /// The limit.
        limit: usize,
        /// The configuration key.
        knob: &'static str,
    },
    /// Too many bytes in open sessions.
    #[error("{}", bytes_message(scope, name, *current, *wanted, *limit, knob))]
    Bytes {
        /// `repository` or `client`.
        scope: &'static str,
        /// The repository or client.
        name: String,
        /// Bytes held now.
        current: u64,
        /// Bytes asked for.
        wanted: u64,
        /// The limit.
        limit: u64,
        /// The configuration key.
        knob: &'static str,
    },
}

fn bytes_message(
    scope: &str,
    name: &str,
    current: u64,
    wanted: u64,
    limit: u64,
    knob: &str,
) -> String {
    let what = match wanted {
        0 => "no new session is opened".to_string(),
        n => format!("{n} more bytes would pass it"),
    };
    format!(
        "{scope} {name} holds {current} bytes in open upload sessions, the limit is {limit} \
         ([uploads] {knob}): {what}"
    )
}

#[derive(Debug)]
struct Session {
    repo: String,
    client: String,
    bytes: u64,
    touched: Instant,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    sessions: usize,
    bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, Session>,
    repos: HashMap<String, Usage>,
    clients: HashMap<String, Usage>,
}

impl State {
    fn usage(map: &HashMap<String, Usage>, key: &str) -> Usage {
        map.get(key).copied().unwrap_or_default()
    }

    /// Applies `sessions` and `bytes` changes to the totals of `repo` and `client`.
    fn adjust(&mut self, repo: &str, client: &str, sessions: isize, bytes: i128) {
        for (map, key) in [(&mut self.repos, repo), (&mut self.clients, client)] {
            let u = map.entry(key.to_string()).or_default();
            u.sessions = u.sessions.saturating_add_signed(sessions);
            u.bytes = (i128::from(u.bytes) + bytes).clamp(0, i128::from(u64::MAX)) as u64;
            if u.sessions == 0 && u.bytes == 0 {
                map.remove(key);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(s) = self.sessions.remove(id) {
            self.adjust(&s.repo, &s.client, -1, -i128::from(s.bytes));
        }
    }
}

/// The accounting of open upload sessions (see the module docs).
#[derive(Debug)]
pub struct UploadQuota {
    config: UploadConfig,
    state: Mutex<State>,
}

/// A session admitted by [`UploadQuota::open`] but not yet created in storage: dropping it
/// gives its place back; [`Slot::bind`] names the created session.
#[derive(Debug)]
pub struct Slot<'a> {
    quota: &'a UploadQuota,
    repo: String,
    client: String,
    bound: bool,
}

impl Slot<'_> {
    /// The session was created as `id`.
    pub fn bind(mut self, id: &str) {
        self.bound = true;
        let mut state = self.quota.lock();
        state.sessions.insert(
            id.to_string(),
            Session {
                repo: std::mem::take(&mut self.repo),
                client: std::mem::take(&mut self.client),
                bytes: 0,
                touched: Instant::now(),
            },
        );
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.bound {
            self.quota.lock().adjust(&self.repo, &self.client, -1, 0);
        }
    }
}

impl UploadQuota {
    /// Accounting with the limits of `config` (0: no limit).
    pub fn new(config: UploadConfig) -> Self {
        UploadQuota {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets sessions idle for longer than the upload `max_age` (the purge removes them
    /// from storage).
    fn expire(&self, state: &mut State) {
        let max_age = self.config.max_age;
        let stale: Vec<String> = state
            .sessions
            .iter()
            .filter(|(_, s)| s.touched.elapsed() > max_age)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            state.remove(&id);
        }
    }

    /// Admits a new session of `repo` for `client`, or says which limit it would pass.
    pub fn open(&self, repo: &str, client: &str) -> Result<Slot<'_>, QuotaError> {
        let c = &self.config;
        let mut state = self.lock();
        self.expire(&mut state);
        let r = State::usage(&state.repos, repo);
        let u = State::usage(&state.clients, client);
        let checks = [
            (
                "repository",
                repo,
                r,
                c.max_sessions_per_repository,
                "max_sessions_per_repository",
                c.max_open_bytes_per_repository,
                "max_open_bytes_per_repository",
            ),
            (
                "client",
                client,
                u,
                c.max_sessions_per_client,
                "max_sessions_per_client",
                c.max_open_bytes_per_client,
                "max_open_bytes_per_client",
            ),
        ];
        for (scope, name, usage, max_sessions, sessions_knob, max_bytes, bytes_knob) in checks {
            if max_sessions > 0 && usage.sessions >= max_sessions {
                return Err(QuotaError::Sessions {
                    scope,
                    name: name.to_string(),
                    current: usage.sessions,
                    limit: max_sessions,
                    knob: sessions_knob,
                });
            }
            if max_bytes > 0 && usage.bytes >= max_bytes {
                return Err(QuotaError::Bytes {
                    scope,
                    name: name.to_string(),
                    current: usage.bytes,
                    wanted: 0,
                    limit: max_bytes,
                    knob: bytes_knob,
                });
            }
        }
        state.adjust(repo, client, 1, 0);
        Ok(Slot {
            quota: self,
            repo: repo.to_string(),
            client: client.to_string(),
            bound: false,
        })
    }

    /// Makes sure session `id` of `repo` is counted, at `offset` bytes (what storage holds).
    /// A session this process did not open (one of an earlier process) is counted from here
    /// for `client`, without a check against the session limits.
    pub fn track(&self, repo: &str, id: &str, client: &str, offset: u64) {
        let mut state = self.lock();
        if !state.sessions.contains_key(id) {
            state.sessions.insert(
                id.to_string(),
                Session {
                    repo: repo.to_string(),
                    client: client.to_string(),
                    bytes: 0,
                    touched: Instant::now(),
                },
            );
            state.adjust(repo, client, 1, 0);
        }
        drop(state);
        self.settle(id, offset);
    }

    /// Whether session `id` may take `bytes` more; which byte limit they would pass if not.
    pub fn check(&self, id: &str, bytes: u64) -> Result<(), QuotaError> {
        self.add(id, bytes, false)
    }

    /// Counts `bytes` more for session `id` before they are appended, or says which byte
    /// limit they would pass (then nothing is counted). A session not counted (see
    /// [`UploadQuota::track`]) is not limited.
    pub fn charge(&self, id: &str, bytes: u64) -> Result<(), QuotaError> {
        self.add(id, bytes, true)
    }

    fn add(&self, id: &str, bytes: u64, commit: bool) -> Result<(), QuotaError> {
        let c = &self.config;
        let mut state = self.lock();
        let Some(s) = state.sessions.get(id) else {
            return Ok(());
        };
        let (repo, client) = (s.repo.clone(), s.client.clone());
        let r = State::usage(&state.repos, &repo);
        let u = State::usage(&state.clients, &client);
        for (scope, name, usage, limit, knob) in [
            (
                "repository",
                &repo,
                r,
                c.max_open_bytes_per_repository,
                "max_open_bytes_per_repository",
            ),
            (
                "client",
                &client,
                u,
                c.max_open_bytes_per_client,
                "max_open_bytes_per_client",
            ),
        ] {
            if limit > 0 && usage.bytes.saturating_add(bytes) > limit {
                return Err(QuotaError::Bytes {
                    scope,
                    name: name.clone(),
                    current: usage.bytes,
                    wanted: bytes,
                    limit,
                    knob,
                });
            }
        }
        if commit {
            if let Some(s) = state.sessions.get_mut(id) {
                s.bytes = s.bytes.saturating_add(bytes);
                s.touched = Instant::now();
            }
            state.adjust(&repo, &client, 0, i128::from(bytes));
        }
        Ok(())
    }

    /// Sets the bytes of session `id` to what storage holds (`offset`) after an append.
    pub fn settle(&self, id: &str, offset: u64) {
        let mut state = self.lock();
        let Some(s) = state.sessions.get_mut(id) else {
            return;
        };
        let delta = i128::from(offset) - i128::from(s.bytes);
        s.bytes = offset;
        s.touched = Instant::now();
        let (repo, client) = (s.repo.clone(), s.client.clone());
        state.adjust(&repo, &client, 0, delta);
    }

    /// Session `id` is gone (completed, cancelled, purged): it no longer counts.
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Forgets sessions idle for longer than the upload `max_age`.
    pub fn expire_idle(&self) {
        let mut state = self.lock();
        self.expire(&mut state);
    }

    /// Open sessions and their bytes counted for repository `repo`.
    pub fn repository_usage(&self, repo: &str) -> (usize, u64) {
        let u = State::usage(&self.lock().repos, repo);
        (u.sessions, u.bytes)
    }

    /// How long a client refused for a limit should wait before trying again.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(sessions: usize, bytes: u64) -> UploadQuota {
        UploadQuota::new(UploadConfig {
            max_sessions_per_repository: sessions,
            max_sessions_per_client: sessions,
            max_open_bytes_per_repository: bytes,
            max_open_bytes_per_client: bytes,
            ..UploadConfig::default()
        })
    }

    #[test]
    fn sessions_are_admitted_up_to_the_limit_and_released() {
        let q = quota(2, 0);
        q.open("r", "alice").unwrap().bind("a");
        q.open("r", "bob").unwrap().bind("b");
        assert!(matches!(
            q.open("r", "carol"),
            Err(QuotaError::Sessions {
                scope: "repository",
                ..
            })
        ));
        // A slot dropped unbound (storage failed) gives its place back.
        drop(q.open("s", "carol").unwrap());
        q.open("s", "alice").unwrap().bind("c");
        assert!(matches!(
            q.open("t", "alice"),
            Err(QuotaError::Sessions {
                scope: "client",
                ..
            })
        ));
        q.close("a");
        q.open("t", "alice").unwrap().bind("d");
        assert_eq!(q.repository_usage("r"), (1, 0));
    }

    #[test]
    fn bytes_are_charged_settled_and_limited() {
        let q = quota(0, 100);
        q.open("r", "alice").unwrap().bind("a");
        q.charge("a", 60).unwrap();
        let err = q.charge("a", 50).unwrap_err();
        assert!(
            err.to_string().contains("max_open_bytes_per_repository"),
            "{err}"
        );
        q.check("a", 40).unwrap();
        assert_eq!(q.repository_usage("r"), (1, 60), "a check counts nothing");
        q.settle("a", 40);
        q.charge("a", 50).unwrap();
        assert_eq!(q.repository_usage("r"), (1, 90));
        q.charge("a", 10).unwrap();
        let err = q.open("r", "bob").unwrap_err();
        assert!(err.to_string().contains("no new session"), "{err}");
        q.close("a");
        assert_eq!(q.repository_usage("r"), (0, 0));
        // A session opened by an earlier process counts once it is used.
        q.track("r", "old", "bob", 5);
        assert_eq!(q.repository_usage("r"), (1, 5));
        // One not counted is not limited.
        q.charge("unknown", 1000).unwrap();
    }
}
