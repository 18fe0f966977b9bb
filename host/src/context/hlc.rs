//! Hybrid logical clock (Kulkarni et al.): wall-clock milliseconds plus a logical counter, so
//! timestamps are monotonic, close to real time, and totally ordered (ties broken by agent id).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One HLC timestamp.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Hlc {
    /// Physical part: unix milliseconds.
    pub wall_ms: u64,
    /// Logical part: orders events within one millisecond.
    pub logical: u32,
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:013}.{:05}", self.wall_ms, self.logical)
    }
}

impl std::str::FromStr for Hlc {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (w, l) = s
            .split_once('.')
            .ok_or_else(|| format!("`{s}` is not an HLC timestamp (WALL_MS.LOGICAL)"))?;
        Ok(Hlc {
            wall_ms: w.parse().map_err(|_| format!("bad wall time in `{s}`"))?,
            logical: l
                .parse()
                .map_err(|_| format!("bad logical counter in `{s}`"))?,
        })
    }
}

/// Where physical time comes from; tests inject a manual one for determinism.
pub trait PhysicalClock: Send + Sync + 'static {
    /// Unix milliseconds now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at `ms`.
    pub fn new(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }
    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The host's HLC.
pub struct HybridClock {
    physical: Arc<dyn PhysicalClock>,
    last: Mutex<Hlc>,
}

impl fmt::Debug for HybridClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridClock")
            .field("last", &self.last)
            .finish()
    }
}

impl HybridClock {
    /// A clock over `physical`, never going below `floor` (the last timestamp persisted).
    pub fn new(physical: Arc<dyn PhysicalClock>, floor: Hlc) -> Self {
        HybridClock {
            physical,
            last: Mutex::new(floor),
        }
    }

    /// Physical time now, in unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.physical.now_ms()
    }

    /// A new local timestamp, greater than every one issued or observed before.
    pub fn tick(&self) -> Hlc {
        self.observe(None)
    }

    /// Merges a timestamp received from elsewhere and returns a new one after both.
    pub fn observe(&self, remote: Option<Hlc>) -> Hlc {
        let pt = self.physical.now_ms();
        let mut last = self.last.lock().expect("hlc lock poisoned");
        let old = *last;
        let wall = pt.max(old.wall_ms).max(remote.map_or(0, |r| r.wall_ms));
        let logical = match remote {
            Some(r) if wall == old.wall_ms && wall == r.wall_ms => old.logical.max(r.logical) + 1,
            _ if wall == old.wall_ms => old.logical + 1,
            Some(r) if wall == r.wall_ms => r.logical + 1,
            _ => 0,
        };
        let next = Hlc {
            wall_ms: wall,
            logical,
        };
        *last = next;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_even_when_physical_time_stands_still_or_goes_back() {
        let pc = Arc::new(ManualClock::new(1_000));
        let c = HybridClock::new(pc.clone(), Hlc::default());
        let a = c.tick();
        let b = c.tick();
        assert!(b > a);
        assert_eq!((a.wall_ms, a.logical, b.logical), (1_000, 0, 1));
        pc.advance(5);
        let d = c.tick();
        assert_eq!((d.wall_ms, d.logical), (1_005, 0));
        // A remote clock ahead of ours pulls us forward.
        let e = c.observe(Some(Hlc {
            wall_ms: 2_000,
            logical: 7,
        }));
        assert_eq!((e.wall_ms, e.logical), (2_000, 8));
        assert!(c.tick() > e);
    }

    #[test]
    fn text_form_round_trips_and_sorts() {
        let h = Hlc {
            wall_ms: 1_700_000_000_000,
            logical: 3,
        };
        let text = h.to_string();
        assert_eq!(text.parse::<Hlc>().unwrap(), h);
        let later = Hlc {
            wall_ms: 1_700_000_000_000,
            logical: 12,
        }
        .to_string();
        assert!(later > text);
    }
}
