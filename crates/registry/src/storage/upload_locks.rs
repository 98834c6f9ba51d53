//! Per-upload locks, shared by the storage backends: one request at a time works on an
//! upload session, and what it learnt (the running hash of the bytes so far) is kept for
//! the next. An entry lives only while a request holds it or it keeps such state, so
//! requests naming sessions that do not exist leave nothing behind.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::{Mutex, OwnedMutexGuard};

/// What a backend keeps in memory per upload session between requests.
pub(crate) trait SessionState: Default + Send + 'static {
    /// Whether there is nothing worth keeping (the state is as new).
    fn is_empty(&self) -> bool;
}

/// The locks of the upload sessions, by id.
pub(crate) struct UploadLocks<T> {
    map: StdMutex<HashMap<String, Arc<Mutex<T>>>>,
}

impl<T: SessionState> UploadLocks<T> {
    /// No locks.
    pub(crate) fn new() -> Self {
        UploadLocks {
            map: StdMutex::new(HashMap::new()),
        }
    }

    /// Waits for upload `id`'s lock; its state is new when nothing was kept.
    pub(crate) async fn lock(&self, id: &str) -> UploadGuard<'_, T> {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.to_string()).or_default().clone()
        };
        // Declared before the wait, so dropped after it when the request is cancelled
        // while it waits (a client that hung up): it then removes the entry if nobody
        // else holds, waits for or keeps state in it.
        let waiting = Waiting {
            locks: self,
            id,
            mutex: Some(mutex.clone()),
        };
        let guard = mutex.lock_owned().await;
        waiting.done();
        UploadGuard {
            locks: self,
            id: id.to_string(),
            guard: Some(guard),
        }
    }

    /// How many sessions have an entry.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A request waiting for an upload session's lock; see [`UploadLocks::lock`].
struct Waiting<'a, T: SessionState> {
    locks: &'a UploadLocks<T>,
    id: &'a str,
    /// `None` once the lock was taken.
    mutex: Option<Arc<Mutex<T>>>,
}

impl<T: SessionState> Waiting<'_, T> {
    /// The lock was taken: the guard cleans up from now on.
    fn done(mut self) {
        self.mutex = None;
    }
}

impl<T: SessionState> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        let Some(mutex) = self.mutex.take() else {
            return;
        };
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get(self.id) {
            // Two: the map's and this waiter's. Clones are made under the map's lock,
            // so nobody can start waiting while this runs.
            let unused = Arc::ptr_eq(entry, &mutex)
                && Arc::strong_count(entry) == 2
                && mutex.try_lock().is_ok_and(|state| state.is_empty());
            if unused {
                map.remove(self.id);
            }
        }
    }
}

/// An upload session's lock, held. Dropping it removes the session's entry when no other
/// request holds or waits for it and its state is empty.
pub(crate) struct UploadGuard<'a, T: SessionState> {
    locks: &'a UploadLocks<T>,
    id: String,
    /// Always `Some` until dropped.
    guard: Option<OwnedMutexGuard<T>>,
}

impl<T: SessionState> UploadGuard<'_, T> {
    /// Releases the lock of a session that is gone (finished, cancelled, purged): its
    /// state is dropped with it.
    pub(crate) fn forget(mut self) {
        if let Some(g) = self.guard.as_mut() {
            **g = T::default();
        }
    }
}

impl<T: SessionState> Deref for UploadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl<T: SessionState> DerefMut for UploadGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<T: SessionState> Drop for UploadGuard<'_, T> {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get(&self.id) {
            // Clones are made under the map's lock: a count of two (the map and this
            // guard) means no other request holds or waits for this lock.
            if Arc::ptr_eq(entry, OwnedMutexGuard::mutex(&guard))
                && Arc::strong_count(entry) == 2
                && guard.is_empty()
            {
                map.remove(&self.id);
            }
        }
        drop(map);
        drop(guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct State(u32);

    impl SessionState for State {
        fn is_empty(&self) -> bool {
            self.0 == 0
        }
    }

    #[tokio::test]
    async fn entries_live_while_held_or_holding_state() {
        let locks = UploadLocks::<State>::new();
        drop(locks.lock("a").await);
        assert_eq!(locks.len(), 0, "nothing kept, nothing left");
        locks.lock("a").await.0 = 7;
        assert_eq!(locks.len(), 1, "state kept");
        assert_eq!(locks.lock("a").await.0, 7);
        locks.lock("a").await.forget();
        assert_eq!(locks.len(), 0, "forgotten");

        // A waiter keeps the entry (and the exclusion) alive.
        let locks = Arc::new(locks);
        let held = locks.lock("b").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                locks.lock("b").await.0 += 1;
            })
        };
        tokio::task::yield_now().await;
        held.forget();
        assert_eq!(locks.len(), 1);
        waiter.await.unwrap();
        assert_eq!(locks.lock("b").await.0, 1);
    }

    #[tokio::test]
    async fn a_waiter_cancelled_while_it_waits_leaves_nothing_behind() {
        let locks = Arc::new(UploadLocks::<State>::new());
        let held = locks.lock("c").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _never = locks.lock("c").await;
            })
        };
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        // The holder lets go while the waiter still waits: the entry must stay.
        drop(held);
        assert_eq!(locks.len(), 1);
        // The waiter's request is cancelled (its client hung up) before it runs again.
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(
            locks.len(),
            0,
            "the cancelled waiter removed the unused entry"
        );

        // A waiter cancelled while another request still holds the lock leaves the entry
        // to that holder, which removes it.
        let held = locks.lock("d").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _never = locks.lock("d").await;
            })
        };
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(locks.len(), 1);
        drop(held);
        assert_eq!(locks.len(), 0);
    }
}
