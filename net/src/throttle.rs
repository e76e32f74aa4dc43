//! Rate-limited logging: say a thing once per key per period, and how many
//! times it was not said since.
//!
//! Owns the bookkeeping only (the caller logs). A peer that repeats a
//! refused request thousands of times a second costs one log line a
//! minute, not a line per attempt; the count keeps the rate visible.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The most keys remembered; past it the oldest half is forgotten (a
/// forgotten key is merely logged again).
const MAX_KEYS: usize = 4096;

/// Once per key per `every`.
#[derive(Debug)]
pub struct Throttle<K> {
    every: Duration,
    seen: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Eq + Hash + Clone> Throttle<K> {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Some(n) when `key` should be logged now, n being how many times it
    /// was suppressed since it was last logged; None to stay quiet.
    pub fn allow(&self, key: &K, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, suppressed)) = seen.get_mut(key) {
            if now.duration_since(*last) < self.every {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(n);
        }
        if seen.len() >= MAX_KEYS {
            let mut ages: Vec<Instant> = seen.values().map(|(t, _)| *t).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            seen.retain(|_, (t, _)| *t > cut);
        }
        seen.insert(key.clone(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_key_per_period_with_the_count_in_between() {
        let t = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(t.allow(&"a", t0), Some(0));
        assert_eq!(t.allow(&"b", t0), Some(0), "another key is its own");
        for s in 1..=3 {
            assert_eq!(t.allow(&"a", t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(t.allow(&"a", t0 + Duration::from_secs(60)), Some(3));
        assert_eq!(t.allow(&"a", t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn the_memory_is_bounded() {
        let t = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS * 3) {
            t.allow(&i, t0 + Duration::from_millis(i as u64));
        }
        assert!(t.seen.lock().unwrap().len() <= MAX_KEYS);
        // The newest are remembered.
        let last = MAX_KEYS * 3 - 1;
        assert_eq!(
            t.allow(&last, t0 + Duration::from_millis(last as u64)),
            None
        );
    }
}
