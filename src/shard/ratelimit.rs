//! Per-connection send rate limit: a token bucket refilled at `rate` tokens per second with a
//! burst of one second's worth.
//!
//! A send without a token is refused with SendAck(RATE_LIMITED). A client that keeps sending
//! anyway — more refused sends inside one second than `rate` itself, i.e. at over twice the
//! allowed rate — is abusive and gets GoAway(RATE_LIMITED).

/// Outcome of [`Bucket::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    Allowed,
    Limited,
    Abusive,
}

/// Token bucket with integer milli-token arithmetic (no floats, no drift).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    milli_tokens: u64,
    last_ms: u64,
    window_start_ms: u64,
    refused_in_window: u32,
}

impl Bucket {
    pub fn new(rate: u32, now_ms: u64) -> Bucket {
        Bucket {
            milli_tokens: u64::from(rate) * 1000,
            last_ms: now_ms,
            window_start_ms: now_ms,
            refused_in_window: 0,
        }
    }

    pub fn take(&mut self, rate: u32, now_ms: u64) -> RateVerdict {
        let cap = u64::from(rate) * 1000;
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms;
        self.milli_tokens = (self.milli_tokens + elapsed * u64::from(rate)).min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            return RateVerdict::Allowed;
        }
        if now_ms.saturating_sub(self.window_start_ms) >= 1000 {
            self.window_start_ms = now_ms;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if self.refused_in_window > rate {
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
        let mut b = Bucket::new(10, 0);
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
        let mut b = Bucket::new(5, 0);
        let verdicts: Vec<_> = (0..11).map(|_| b.take(5, 0)).collect();
        assert_eq!(verdicts[..5], [RateVerdict::Allowed; 5]);
        assert_eq!(verdicts[5..10], [RateVerdict::Limited; 5]);
        assert_eq!(verdicts[10], RateVerdict::Abusive);
    }
}
