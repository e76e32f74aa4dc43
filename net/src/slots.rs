//! Places for connections or streams, capped per peer address and in all.
//!
//! Owns the counting only: [`PeerSlots::admit`] gives a [`Slot`] that is
//! given back when dropped, or says which cap is full. The agent link
//! (streams before their Hello) and [`crate::serve`] (plain-HTTP
//! connections) each hold one, with caps of their own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The caps, and how many are taken, by peer (None: an unknown address).
pub struct PeerSlots {
    per_peer: usize,
    total: usize,
    taken: Mutex<(HashMap<Option<IpAddr>, usize>, usize)>,
    /// Told the total after every change (a gauge, say).
    on_change: Option<Box<dyn Fn(usize) + Send + Sync>>,
}

impl std::fmt::Debug for PeerSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSlots")
            .field("per_peer", &self.per_peer)
            .field("total", &self.total)
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

/// Which cap refused a slot, and how many were taken under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// This peer holds `taken` of its `cap`.
    Peer { taken: usize, cap: usize },
    /// Everyone together holds `taken` of the `cap`.
    All { taken: usize, cap: usize },
}

/// One slot, given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<PeerSlots>,
    peer: Option<IpAddr>,
}

impl PeerSlots {
    pub fn new(per_peer: usize, total: usize) -> PeerSlots {
        PeerSlots {
            per_peer,
            total,
            taken: Mutex::new((HashMap::new(), 0)),
            on_change: None,
        }
    }

    /// The same, telling `f` the total taken after every change.
    pub fn on_change(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> PeerSlots {
        self.on_change = Some(Box::new(f));
        self
    }

    /// A slot for `peer`, unless its cap or the total is full.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Slot, Full> {
        let mut t = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let (by_peer, total) = &mut *t;
        let mine = by_peer.get(&peer).copied().unwrap_or(0);
        if mine >= self.per_peer {
            return Err(Full::Peer {
                taken: mine,
                cap: self.per_peer,
            });
        }
        if *total >= self.total {
            return Err(Full::All {
                taken: *total,
                cap: self.total,
            });
        }
        by_peer.insert(peer, mine + 1);
        *total += 1;
        if let Some(f) = &self.on_change {
            f(*total);
        }
        Ok(Slot {
            slots: self.clone(),
            peer,
        })
    }

    /// How many slots are taken, in all and by how many peers.
    pub fn taken(&self) -> (usize, usize) {
        let t = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        (t.1, t.0.len())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.slots.taken.lock().unwrap_or_else(|p| p.into_inner());
        let (by_peer, total) = &mut *t;
        *total = total.saturating_sub(1);
        if let Some(n) = by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                by_peer.remove(&self.peer);
            }
        }
        if let Some(f) = &self.slots.on_change {
            f(*total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_peer_and_in_all_and_come_back() {
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s = {
            let seen = seen.clone();
            Arc::new(PeerSlots::new(2, 3).on_change(move |n| {
                seen.store(n, std::sync::atomic::Ordering::Relaxed);
            }))
        };
        let a = Some(IpAddr::from([127, 0, 0, 2]));
        let b = Some(IpAddr::from([127, 0, 0, 3]));
        let mut held = vec![s.admit(a).unwrap(), s.admit(a).unwrap()];
        assert_eq!(s.admit(a).unwrap_err(), Full::Peer { taken: 2, cap: 2 });
        held.push(s.admit(b).unwrap());
        assert_eq!(s.admit(None).unwrap_err(), Full::All { taken: 3, cap: 3 });
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 3);
        held.remove(0);
        held.push(s.admit(a).expect("a slot given back is free"));
        drop(held);
        assert_eq!(s.taken(), (0, 0), "nothing is left behind");
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}
