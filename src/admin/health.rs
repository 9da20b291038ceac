//! The broker's phase as `/readyz` reports it, set by the thread that starts and stops the
//! shards and read by the admin thread.

use std::sync::atomic::{AtomicU8, Ordering};

/// Where the broker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Recovering logs and starting shards: not ready.
    Starting = 0,
    /// Every shard accepts connections.
    Ready = 1,
    /// A graceful shutdown has begun: not ready.
    ShuttingDown = 2,
}

/// The current [`Phase`]. Written a few times per process life, never on the message path.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

impl Health {
    /// Moves to `phase` unless the broker is already further along: phases only advance, so a
    /// late "ready" (start racing a shutdown signal) cannot undo "shutting down".
    pub fn set(&self, phase: Phase) {
        self.0.fetch_max(phase as u8, Ordering::AcqRel);
    }

    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            1 => Phase::Ready,
            2 => Phase::ShuttingDown,
            _ => Phase::Starting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutting_down_is_final() {
        let h = Health::default();
        assert_eq!(h.phase(), Phase::Starting);
        h.set(Phase::Ready);
        assert_eq!(h.phase(), Phase::Ready);
        h.set(Phase::ShuttingDown);
        h.set(Phase::Ready);
        assert_eq!(h.phase(), Phase::ShuttingDown);
    }
}
