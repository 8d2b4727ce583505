//! The injection registry: active faults with their leases, checked at the
//! injection points. Time is passed in (`now`) so leases are testable.

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use parking_lot::RwLock;

use serde::Serialize;

use crate::{ChaosError, FaultKind, FaultSpec, InjectionPoint};

/// What the registry accepts at most.
#[derive(Debug, Clone)]
pub struct RegistryLimits {
    /// Longest lease one injection may ask for.
    pub max_lease: Duration,
    /// Largest share of accounts one fault may hit.
    pub max_account_share: f64,
    /// Most faults active at once.
    pub max_faults: usize,
}

/// Names one injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct FaultId(pub u64);

/// A fault as listed: its spec and the time left on its lease.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveFault {
    pub id: FaultId,
    pub spec: FaultSpec,
    pub expires_in: Duration,
    /// Events the fault has hit so far.
    pub hits: u64,
}

/// The faults of one process.
#[derive(Debug)]
pub struct Registry {
    limits: RegistryLimits,
    faults: RwLock<Vec<Entry>>,
    /// Lets the hot path skip the lock while nothing is injected.
    active: AtomicUsize,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    id: FaultId,
    spec: FaultSpec,
    expires: Instant,
    /// Counted under the read lock, so `max_hits` holds across threads.
    hits: AtomicU64,
}

impl Entry {
    /// Takes one hit if the fault has any left.
    fn take_hit(&self) -> bool {
        let before = self.hits.fetch_add(1, Ordering::Relaxed);
        if self.spec.max_hits > 0 && before >= self.spec.max_hits {
            self.hits.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

impl Default for RegistryLimits {
    fn default() -> Self {
        Self {
            max_lease: Duration::from_secs(3600),
            max_account_share: 0.5,
            max_faults: 32,
        }
    }
}

impl Registry {
    pub fn new(limits: RegistryLimits) -> Self {
        Self {
            limits,
            faults: RwLock::new(Vec::new()),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// Injects `spec` until `now + spec.duration`.
    ///
    /// # Errors
    /// When the spec is malformed or beyond the limits (lease, blast
    /// radius, number of faults).
    pub fn inject(&self, spec: FaultSpec, now: Instant) -> Result<FaultId, ChaosError> {
        if !(0.0..=1.0).contains(&spec.rate) {
            return Err(ChaosError::BadRate(spec.rate));
        }
        if !(0.0..=1.0).contains(&spec.account_share) {
            return Err(ChaosError::BadShare(spec.account_share));
        }
        if spec.duration.is_zero() {
            return Err(ChaosError::NoLease);
        }
        if spec.duration > self.limits.max_lease {
            return Err(ChaosError::LeaseTooLong {
                asked: spec.duration,
                limit: self.limits.max_lease,
            });
        }
        if spec.kind.hits_accounts() && spec.account_share > self.limits.max_account_share {
            return Err(ChaosError::BlastRadius {
                asked: spec.account_share,
                limit: self.limits.max_account_share,
            });
        }
        let mut faults = self.faults.write();
        faults.retain(|f| f.expires > now);
        if faults.len() >= self.limits.max_faults {
            return Err(ChaosError::TooMany(self.limits.max_faults));
        }
        let id = FaultId(self.next_id.fetch_add(1, Ordering::Relaxed));
        tracing::warn!(fault = id.0, ?spec, "fault injected");
        faults.push(Entry {
            id,
            expires: now + spec.duration,
            spec,
            hits: AtomicU64::new(0),
        });
        self.active.store(faults.len(), Ordering::Release);
        Ok(id)
    }

    /// Removes one fault; false if it was not (or no longer) active.
    pub fn clear(&self, id: FaultId) -> bool {
        let mut faults = self.faults.write();
        let before = faults.len();
        faults.retain(|f| f.id != id);
        self.active.store(faults.len(), Ordering::Release);
        before != faults.len()
    }

    /// Removes every fault (a rollback); returns how many were still
    /// active at `now`.
    pub fn clear_all(&self, now: Instant) -> usize {
        let mut faults = self.faults.write();
        let active = faults.iter().filter(|f| f.expires > now).count();
        faults.clear();
        self.active.store(0, Ordering::Release);
        active
    }

    /// Whether any fault may be active (expired ones count until pruned).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    /// The faults whose lease runs at `now`.
    pub fn list(&self, now: Instant) -> Vec<ActiveFault> {
        let mut faults = self.faults.write();
        faults.retain(|f| f.expires > now);
        self.active.store(faults.len(), Ordering::Release);
        faults
            .iter()
            .map(|f| ActiveFault {
                id: f.id,
                spec: f.spec.clone(),
                expires_in: f.expires.saturating_duration_since(now),
                hits: f.hits.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The fault to apply at `point` for an event of the account hashed to
    /// `account_hash` (any value for points not about accounts; see
    /// [`shard_hash`] for shards), with `draw` giving each eligible fault
    /// its own uniform draw in 0..1 (so two faults at one point apply at
    /// their own rates). Expired faults and faults out of hits never apply.
    pub fn decide(
        &self,
        point: InjectionPoint,
        account_hash: u64,
        now: Instant,
        mut draw: impl FnMut() -> f64,
    ) -> Option<FaultKind> {
        if !self.is_active() {
            return None;
        }
        let faults = self.faults.read();
        faults
            .iter()
            .filter(|f| f.expires > now && f.spec.kind.point() == point)
            .filter(|f| {
                !f.spec.kind.hits_accounts() || in_share(account_hash, f.spec.account_share)
            })
            .find(|f| draw() < f.spec.rate && f.take_hit())
            .map(|f| f.spec.kind)
    }

    /// [`Self::decide`] now, with a random draw.
    pub fn decide_now(&self, point: InjectionPoint, account_hash: u64) -> Option<FaultKind> {
        if !self.is_active() {
            return None;
        }
        self.decide(point, account_hash, Instant::now(), rand::random::<f64>)
    }
}

/// The hash that places shard `index` of `count` in the blast radius:
/// shard i is inside a share s exactly when i / count < s.
pub fn shard_hash(index: usize, count: usize) -> u64 {
    let step = u64::MAX / count.max(1) as u64;
    step.saturating_mul(index as u64)
}

/// Whether an account hash falls in the first `share` of the hash space.
fn in_share(hash: u64, share: f64) -> bool {
    (hash as f64) < share * (u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_spec(rate: f64, share: f64, secs: u64) -> FaultSpec {
        FaultSpec {
            kind: FaultKind::PanicInEvaluation,
            rate,
            account_share: share,
            duration: Duration::from_secs(secs),
            max_hits: 0,
        }
    }

    #[test]
    fn a_fault_expires_by_its_lease_without_anyone_clearing_it() {
        let r = Registry::new(RegistryLimits::default());
        let t0 = Instant::now();
        r.inject(panic_spec(1.0, 0.5, 10), t0).expect("inject");
        let point = InjectionPoint::AccountEvaluation;
        assert!(r
            .decide(point, 0, t0 + Duration::from_secs(9), || 0.0)
            .is_some());
        assert!(r
            .decide(point, 0, t0 + Duration::from_secs(10), || 0.0)
            .is_none());
        assert!(r.list(t0 + Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn the_blast_radius_and_the_lease_are_bounded_at_injection() {
        let r = Registry::new(RegistryLimits::default());
        let t0 = Instant::now();
        assert!(matches!(
            r.inject(panic_spec(1.0, 0.9, 10), t0),
            Err(ChaosError::BlastRadius { .. })
        ));
        assert!(matches!(
            r.inject(panic_spec(1.0, 0.1, 0), t0),
            Err(ChaosError::NoLease)
        ));
        assert!(matches!(
            r.inject(panic_spec(1.0, 0.1, 7200), t0),
            Err(ChaosError::LeaseTooLong { .. })
        ));
        assert!(matches!(
            r.inject(panic_spec(1.5, 0.1, 10), t0),
            Err(ChaosError::BadRate(_))
        ));
        // Only accounts inside the share are hit.
        r.inject(panic_spec(1.0, 0.25, 10), t0).expect("inject");
        let point = InjectionPoint::AccountEvaluation;
        assert!(r.decide(point, u64::MAX / 8, t0, || 0.0).is_some());
        assert!(r.decide(point, u64::MAX / 2, t0, || 0.0).is_none());
    }

    #[test]
    fn the_rate_applies_and_clearing_rolls_back() {
        let r = Registry::new(RegistryLimits::default());
        let t0 = Instant::now();
        let id = r.inject(panic_spec(0.1, 0.5, 10), t0).expect("inject");
        let point = InjectionPoint::AccountEvaluation;
        assert!(r.decide(point, 0, t0, || 0.05).is_some());
        assert!(r.decide(point, 0, t0, || 0.5).is_none());
        assert!(r
            .decide(InjectionPoint::PublisherSend, 0, t0, || 0.0)
            .is_none());
        assert!(r.clear(id));
        assert!(r.decide(point, 0, t0, || 0.0).is_none());
        assert!(!r.clear(id));
    }

    #[test]
    fn a_counted_fault_hits_at_most_max_hits_events() {
        let r = Registry::new(RegistryLimits::default());
        let t0 = Instant::now();
        let spec = FaultSpec {
            kind: FaultKind::KillAccountActor,
            max_hits: 3,
            ..panic_spec(1.0, 0.5, 10)
        };
        r.inject(spec, t0).expect("inject");
        let point = InjectionPoint::AccountEvaluation;
        let hits = (0..10)
            .filter(|_| r.decide(point, 0, t0, || 0.0).is_some())
            .count();
        assert_eq!(hits, 3);
        assert_eq!(r.list(t0)[0].hits, 3);
    }

    #[test]
    fn shards_are_placed_in_the_blast_radius_by_index() {
        let r = Registry::new(RegistryLimits::default());
        let t0 = Instant::now();
        let spec = FaultSpec {
            kind: FaultKind::KillShard,
            ..panic_spec(1.0, 0.5, 10)
        };
        r.inject(spec, t0).expect("inject");
        let point = InjectionPoint::ShardDelivery;
        let hit: Vec<bool> = (0..4)
            .map(|i| r.decide(point, shard_hash(i, 4), t0, || 0.0).is_some())
            .collect();
        assert_eq!(hit, [true, true, false, false]);
    }
}
