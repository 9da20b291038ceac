//! Where a successful login's time goes inside the broker: a stamp when accept(2) returned,
//! when the Login frame was read, when the owner shard started registering the connection and
//! when its LoginOk was handed to the kernel; a histogram per stage
//! (`ringpost_login_stage_seconds{stage}`), recorded by the owner shard. Stamps are
//! [`super::stages::now_ns`]'s clock, comparable between the accepting and the owning shard.
//!
//! | stage | from → to |
//! |---|---|
//! | `login_read` | accept(2) returned on the accepting shard → Login frame read: the login task's wait for its turn on that shard, a TLS handshake, a WebSocket upgrade, and the client's own time to send the frame |
//! | `handoff` | Login frame read → the owner shard starts registering the connection: the token check, the fd's duplicate, the mesh crossing when another shard owns the user |
//! | `register` | → LoginOk handed to the kernel (`send(2)`): the device joins its user, the first slice of replay is queued, the flush |
//! | `total` | accept(2) returned → LoginOk handed to the kernel |
//!
//! What the broker cannot see — the connection's wait in the kernel's accept queue after its
//! handshake, and the LoginOk on its way to the client — is the rest of the login latency a
//! client measures (`ringpost-tools load connect` reports its split).

use super::stages::STAGE_NS_BOUNDS;
use super::Histogram;

/// The stages, in the order of a login (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginStage {
    Read,
    Handoff,
    Register,
    Total,
}

impl LoginStage {
    pub const ALL: [LoginStage; 4] = [
        LoginStage::Read,
        LoginStage::Handoff,
        LoginStage::Register,
        LoginStage::Total,
    ];

    /// The `stage` label.
    pub fn name(self) -> &'static str {
        match self {
            LoginStage::Read => "login_read",
            LoginStage::Handoff => "handoff",
            LoginStage::Register => "register",
            LoginStage::Total => "total",
        }
    }
}

/// The stamps a connection carries from its accept to its owner shard. Zeros: not stamped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoginStamps {
    pub accepted_ns: u64,
    pub read_ns: u64,
}

/// One histogram per [`LoginStage`], written by its shard only.
#[derive(Debug)]
pub struct LoginHistograms([Histogram; LoginStage::ALL.len()]);

impl Default for LoginHistograms {
    fn default() -> Self {
        LoginHistograms(std::array::from_fn(|_| Histogram::new(STAGE_NS_BOUNDS)))
    }
}

impl LoginHistograms {
    pub fn get(&self, stage: LoginStage) -> &Histogram {
        &self.0[stage as usize]
    }

    /// Records a login whose registering started at `registering_ns` and whose LoginOk went
    /// to the kernel at `sent_ns`. An unstamped or out-of-order pair records nothing.
    pub fn record(&self, stamps: LoginStamps, registering_ns: u64, sent_ns: u64) {
        let LoginStamps {
            accepted_ns,
            read_ns,
        } = stamps;
        let in_order =
            accepted_ns <= read_ns && read_ns <= registering_ns && registering_ns <= sent_ns;
        if accepted_ns == 0 || !in_order {
            return;
        }
        let stages = [
            (LoginStage::Read, accepted_ns, read_ns),
            (LoginStage::Handoff, read_ns, registering_ns),
            (LoginStage::Register, registering_ns, sent_ns),
            (LoginStage::Total, accepted_ns, sent_ns),
        ];
        for (stage, from, to) in stages {
            self.get(stage).observe(to - from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stages_add_up_to_the_total_and_bad_stamps_record_nothing() {
        let h = LoginHistograms::default();
        let stamps = LoginStamps {
            accepted_ns: 1_000,
            read_ns: 51_000,
        };
        h.record(stamps, 61_000, 2_061_000);
        let sum = |s: LoginStage| h.get(s).read().1;
        assert_eq!(sum(LoginStage::Read), 50_000);
        assert_eq!(sum(LoginStage::Handoff), 10_000);
        assert_eq!(sum(LoginStage::Register), 2_000_000);
        assert_eq!(sum(LoginStage::Total), 2_060_000);
        h.record(LoginStamps::default(), 10, 20);
        h.record(stamps, 40_000, 50_000); // registering before the read
        h.record(stamps, 61_000, 60_000); // sent before registering
        for stage in LoginStage::ALL {
            assert_eq!(h.get(stage).read().2, 1, "{}", stage.name());
        }
    }
}
