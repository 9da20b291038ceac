//! Per-user send rate limit: a token bucket refilled at `rate` tokens per second with a burst
//! of one second's worth.
//!
//! The bucket lives in the user's record on the owner shard ([`super::users::User::bucket`]),
//! not on the connection: every device of the user draws from the same budget, and a
//! reconnect finds the bucket as the last connection left it. Devices of one user are all
//! served by the user's owner shard, so the bucket needs no cross-core state. It is 16 bytes.
//!
//! A send without a token is refused with SendAck(RATE_LIMITED). A client that keeps sending
//! anyway — more refused sends within one second than `rate` itself, i.e. at over twice the
//! allowed rate — is abusive and gets GoAway(RATE_LIMITED). Refusals are counted as *strikes*
//! that drain at `rate` per second, so "more than `rate` refusals in one second" holds as a
//! sliding window, and a client that reconnects straight after its GoAway and keeps flooding
//! is cut off again at once.

/// Outcome of [`Bucket::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    Allowed,
    Limited,
    Abusive,
}

/// `milli_tokens` of a bucket nobody has drawn from yet: full, whatever the rate.
const FULL: u32 = u32::MAX;

/// Token bucket with integer milli-token arithmetic (no floats, no drift). `rate` is at most
/// 1,000,000 (config), so a full bucket (`rate × 1000` milli-tokens) fits in a u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Shard-monotonic milliseconds of the last draw.
    last_ms: u64,
    milli_tokens: u32,
    /// Refused sends × 1000, draining at `rate` per second.
    strikes: u32,
}

impl Default for Bucket {
    fn default() -> Bucket {
        Bucket {
            last_ms: 0,
            milli_tokens: FULL,
            strikes: 0,
        }
    }
}

impl Bucket {
    /// A full bucket (the state of a user that has not sent yet).
    pub fn new() -> Bucket {
        Bucket::default()
    }

    fn refill(&mut self, rate: u32, now_ms: u64) {
        let cap = u64::from(rate) * 1000;
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let refill = elapsed.saturating_mul(u64::from(rate));
        let tokens = match self.milli_tokens {
            FULL => cap,
            t => (u64::from(t).saturating_add(refill)).min(cap),
        };
        self.milli_tokens = tokens as u32;
        self.strikes = u64::from(self.strikes).saturating_sub(refill) as u32;
    }

    pub fn take(&mut self, rate: u32, now_ms: u64) -> RateVerdict {
        self.refill(rate, now_ms);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            return RateVerdict::Allowed;
        }
        self.strikes = self.strikes.saturating_add(1000);
        if u64::from(self.strikes) > u64::from(rate) * 1000 {
            RateVerdict::Abusive
        } else {
            RateVerdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut b = Bucket::new();
        for _ in 0..10 {
            assert_eq!(b.take(10, 0), RateVerdict::Allowed);
        }
        assert_eq!(b.take(10, 0), RateVerdict::Limited);
        assert_eq!(
            b.take(10, 100),
            RateVerdict::Allowed,
            "100 ms refills one token"
        );
        assert_eq!(b.take(10, 100), RateVerdict::Limited);
    }

    #[test]
    fn flooding_past_twice_the_rate_is_abusive() {
        let mut b = Bucket::new();
        let verdicts: Vec<_> = (0..11).map(|_| b.take(5, 0)).collect();
        assert_eq!(verdicts[..5], [RateVerdict::Allowed; 5]);
        assert_eq!(verdicts[5..10], [RateVerdict::Limited; 5]);
        assert_eq!(verdicts[10], RateVerdict::Abusive);
    }

    #[test]
    fn strikes_drain_at_the_rate() {
        let mut b = Bucket::new();
        // 5 allowed, 5 refused: 5 strikes, one short of abuse.
        for _ in 0..10 {
            assert_ne!(b.take(5, 1_000), RateVerdict::Abusive);
        }
        // 200 ms later one token is back and one strike has drained: allowed, then refused
        // (5 strikes again), and the next refusal is the sixth within a second: abusive.
        assert_eq!(b.take(5, 1_200), RateVerdict::Allowed);
        assert_eq!(b.take(5, 1_200), RateVerdict::Limited);
        assert_eq!(b.take(5, 1_200), RateVerdict::Abusive);
        // Sending at exactly twice the rate for a long time is never abusive.
        let mut b = Bucket::new();
        for ms in (0..10_000).step_by(100) {
            assert_ne!(b.take(5, ms), RateVerdict::Abusive, "at {ms} ms");
        }
    }

    #[test]
    fn the_bucket_is_small() {
        assert_eq!(std::mem::size_of::<Bucket>(), 16);
    }
}
