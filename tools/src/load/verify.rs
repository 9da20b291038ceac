//! What the scenarios check about every answer and every delivery, so that no loss can hide.
//!
//! **Stamps.** Every body `p2p`, `churn` and `soak` send starts with a [`Stamp`]: the intended
//! send time, the sender's message number (which is also its `client_msg_id`) and a tag of the
//! sender's name ([`sender_tag`]); the rest of the body is a pattern derived from the number and
//! the tag. A delivery counts only when the Deliver's `from_user` is the one the recipient
//! expects, its `client_msg_id` equals the stamped number, the stamp's tag is the sender's, the
//! number is one the sender has written, and the pattern is intact. Anything else is
//! **mismatched**: an error, never a delivery (and, as the intended recipient never got that
//! message, a loss there once its sender was told OK).
//!
//! **Streams.** A [`DeviceStream`] follows one device of a recipient across all its connections:
//! `Deliver.seq` strictly increasing and gap-free, each message number seen once, the numbers
//! in order.
//!
//! **Ledgers.** A [`Ledger`] holds how each of a sender's messages was answered. What was
//! written and never answered is **unanswered**; what was answered with a code other than OK is
//! an **error ack**, counted by code name.

use std::collections::{BTreeMap, BTreeSet};

use ringpost::protocol::{code_name, Code};

/// Bytes of the stamp at the start of every body: intended send time (ns after the run's
/// start), message number, sender tag; each u64 little-endian.
pub const STAMP: usize = 24;
/// Seq gaps larger than this are counted but not remembered one by one.
const MAX_REMEMBERED_GAP: u64 = 100_000;

/// The stamp of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub intended_ns: u64,
    /// The sender's message number, 1-based; also its `client_msg_id`.
    pub k: u64,
    pub tag: u64,
}

/// A stable tag of a sender's name (the broker's own stable hash).
pub fn sender_tag(name: &str) -> u64 {
    ringpost::shard::stable_hash(name)
}

/// Body byte `i` (at or after [`STAMP`]) of message `k` from the sender tagged `tag`.
fn pattern(k: u64, tag: u64, i: usize) -> u8 {
    (k ^ tag).to_le_bytes()[i % 8].wrapping_add(i as u8)
}

/// Writes `s` and the pattern into `body` (at least [`STAMP`] bytes).
pub fn write_stamp(body: &mut [u8], s: Stamp) {
    if body.len() < STAMP {
        return;
    }
    body[..8].copy_from_slice(&s.intended_ns.to_le_bytes());
    body[8..16].copy_from_slice(&s.k.to_le_bytes());
    body[16..24].copy_from_slice(&s.tag.to_le_bytes());
    for (i, b) in body.iter_mut().enumerate().skip(STAMP) {
        *b = pattern(s.k, s.tag, i);
    }
}

/// The stamp of `body`, or `None` when it is too short or its pattern was altered.
pub fn read_stamp(body: &[u8]) -> Option<Stamp> {
    let word = |at: usize| -> Option<u64> {
        body.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let s = Stamp {
        intended_ns: word(0)?,
        k: word(8)?,
        tag: word(16)?,
    };
    let intact = body
        .iter()
        .enumerate()
        .skip(STAMP)
        .all(|(i, b)| *b == pattern(s.k, s.tag, i));
    intact.then_some(s)
}

/// Counts over deliveries (one thread's, or summed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Every Deliver read, on every device.
    pub delivered: u64,
    /// (device, message) pairs seen for the first time and verified.
    pub unique: u64,
    /// The same Deliver.seq twice on a device, or the same message under another seq.
    pub duplicated: u64,
    /// A seq below one already processed (arriving after a gap), or message numbers out of
    /// order.
    pub out_of_order: u64,
    /// Seqs a device's stream skipped over (each inbox is gap-free).
    pub seq_gaps: u64,
    /// Deliveries that match nothing sent to this recipient.
    pub mismatched: u64,
    /// Own-send sync: echoes of the user's own sends taking their place in a device's stream.
    pub echoes: u64,
    /// Own-send sync: copies of a device's own sends that its SendAcks named (`own_seq`) and
    /// the broker passed over for it: holes in its stream, not gaps.
    pub own_copies: u64,
    /// Group events (created, members added/removed/left) taking their place in a stream.
    pub events: u64,
}

impl Tally {
    pub fn merge(&mut self, o: &Tally) {
        self.delivered += o.delivered;
        self.unique += o.unique;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.seq_gaps += o.seq_gaps;
        self.mismatched += o.mismatched;
        self.echoes += o.echoes;
        self.own_copies += o.own_copies;
        self.events += o.events;
    }
}

/// One Deliver, as the checks need it.
pub struct Delivered<'a> {
    pub seq: u64,
    pub from: &'a str,
    pub client_msg_id: u64,
    pub body: &'a [u8],
}

/// What a device expects a delivery to be.
pub struct Expect<'a> {
    /// The only sender this recipient hears from.
    pub from: &'a str,
    pub tag: u64,
    /// Highest message number that sender has written so far.
    pub written: u64,
}

/// One device's view of its inbox across all its connections.
#[derive(Debug)]
pub struct DeviceStream {
    last_seq: u64,
    /// Seqs skipped over by a gap, still expected (a late one is out of order, not a dup).
    missing: BTreeSet<u64>,
    /// Own-send sync: seqs after `last_seq` holding copies of this device's own sends, which
    /// the broker does not send to it (their SendAcks named them): holes, not gaps.
    own: BTreeSet<u64>,
    /// The one sender's messages this device has seen.
    messages: Seen,
}

impl DeviceStream {
    /// A device expecting at most `messages` message numbers.
    pub fn new(messages: usize) -> DeviceStream {
        DeviceStream {
            last_seq: 0,
            missing: BTreeSet::new(),
            own: BTreeSet::new(),
            messages: Seen::new(messages),
        }
    }

    /// Highest seq processed: what this device acks and what a login resumes after.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// A new connection of this device logs in after [`DeviceStream::last_seq`]: the copies
    /// the old connection was told it would not get are replayed to this one, as echoes.
    pub fn resume(&mut self) -> u64 {
        self.own.clear();
        self.last_seq
    }

    pub fn seen(&self) -> &[bool] {
        self.messages.seen()
    }

    /// Own-send sync: the echo of one of this user's own sends takes its place in the stream
    /// (its seq is checked like any other; its content is not a delivery to this device).
    pub fn echo(&mut self, t: &mut Tally, seq: u64) {
        if self.track_seq(t, seq) {
            t.echoes += 1;
        }
    }

    /// Own-send sync: the copy of a send this device made sits at `seq` and is not sent to it
    /// (the SendAck's `own_seq`; 0, no copy passed over, is nothing); it takes its place in the
    /// stream as a hole. The broker promises the SendAck before any entry after the copy, so a
    /// `seq` the stream has already passed (or named twice) is out of order.
    pub fn own_copy(&mut self, t: &mut Tally, seq: u64) {
        if seq == 0 {
            return;
        }
        if seq <= self.last_seq || !self.own.insert(seq) {
            t.out_of_order += 1;
            return;
        }
        t.own_copies += 1;
    }

    /// Moves the stream to `seq`; false for a seq already processed (a duplicate). Scenarios
    /// whose messages come from several senders (`fanout`) check the seq here and the message
    /// with [`check_stamp`] and their own per-sender [`Seen`].
    pub fn track_seq(&mut self, t: &mut Tally, seq: u64) -> bool {
        let last = self.last_seq;
        if seq <= last {
            // A seq already processed (the same Deliver again), or one a gap skipped, late.
            if self.missing.remove(&seq) {
                t.out_of_order += 1;
            } else {
                t.duplicated += 1;
                return false;
            }
        } else {
            // The device's own copies up to here are holes it was told of, not gaps.
            let mut holes = {
                let after = self.own.split_off(&(seq + 1));
                std::mem::replace(&mut self.own, after)
            };
            if holes.remove(&seq) {
                // The copy came although its SendAck said it would not.
                t.duplicated += 1;
                self.last_seq = seq;
                return false;
            }
            if seq > last + 1 {
                let gap = seq - last - 1 - holes.len() as u64;
                t.seq_gaps += gap;
                if gap <= MAX_REMEMBERED_GAP {
                    self.missing
                        .extend((last + 1..seq).filter(|s| !holes.contains(s)));
                }
            }
            self.last_seq = seq;
        }
        true
    }

    /// Checks and records one delivery (it is processed either way: `last_seq` moves). Returns
    /// the stamp of a message seen here for the first time and verified, for its latency.
    pub fn deliver(&mut self, t: &mut Tally, d: &Delivered<'_>, e: &Expect<'_>) -> Option<Stamp> {
        t.delivered += 1;
        if !self.track_seq(t, d.seq) {
            return None; // counted as its message the first time
        }
        let Some(stamp) = check_stamp(d, e) else {
            t.mismatched += 1;
            return None;
        };
        self.messages.see(t, stamp).then_some(stamp)
    }
}

/// The stamp of a delivery that is what `e` expects: from that sender, `client_msg_id` equal
/// to the stamped number, the sender's tag, a number already written, the pattern intact.
/// `None` is a mismatch.
pub fn check_stamp(d: &Delivered<'_>, e: &Expect<'_>) -> Option<Stamp> {
    read_stamp(d.body).filter(|s| {
        d.from == e.from
            && s.tag == e.tag
            && d.client_msg_id == s.k
            && (1..=e.written).contains(&s.k)
    })
}

/// Which of one sender's message numbers a device has seen, and whether they came in order.
#[derive(Debug)]
pub struct Seen {
    /// `seen[k-1]`: message k was delivered here.
    seen: Vec<bool>,
    max_seen: u64,
}

impl Seen {
    /// Room for message numbers 1..=messages.
    pub fn new(messages: usize) -> Seen {
        Seen {
            seen: vec![false; messages],
            max_seen: 0,
        }
    }

    pub fn seen(&self) -> &[bool] {
        &self.seen
    }

    /// Records a checked message; true when it is new here (counted `unique`), false for a
    /// duplicate or a number out of range (counted). A number below one already seen is also
    /// out of order.
    pub fn see(&mut self, t: &mut Tally, s: Stamp) -> bool {
        let Some(slot) = self.seen.get_mut((s.k as usize).wrapping_sub(1)) else {
            t.mismatched += 1;
            return false;
        };
        if *slot {
            t.duplicated += 1;
            return false;
        }
        *slot = true;
        t.unique += 1;
        if s.k < self.max_seen {
            t.out_of_order += 1;
        }
        self.max_seen = self.max_seen.max(s.k);
        true
    }
}

/// How one message number was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    None,
    Ok,
    Refused,
}

/// Counts over SendAcks (one thread's, or summed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckTally {
    /// Messages answered OK (first answer).
    pub acked: u64,
    /// Messages answered with another code (first answer), by code name.
    pub error_acks: BTreeMap<String, u64>,
    /// Answers after the first for the same number (a resend whose original was answered too).
    pub duplicate_acks: u64,
    /// Answers for numbers never written.
    pub mismatched: u64,
}

impl AckTally {
    pub fn error_acks_total(&self) -> u64 {
        self.error_acks.values().sum()
    }

    /// Messages answered so far (first answers).
    pub fn answered(&self) -> u64 {
        self.acked + self.error_acks_total()
    }

    pub fn merge(&mut self, o: &AckTally) {
        self.acked += o.acked;
        merge_counts(&mut self.error_acks, &o.error_acks);
        self.duplicate_acks += o.duplicate_acks;
        self.mismatched += o.mismatched;
    }
}

/// What became of a SendAck.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// The first answer for its number: OK.
    Ok,
    /// The first answer: a refusal.
    Refused,
    /// Not the first answer, or for a number never written.
    Ignored,
}

/// How each of one sender's messages was answered.
#[derive(Debug)]
pub struct Ledger {
    answers: Vec<Answer>,
    written: u64,
}

impl Ledger {
    /// A sender of at most `messages` numbered messages.
    pub fn new(messages: usize) -> Ledger {
        Ledger {
            answers: vec![Answer::None; messages],
            written: 0,
        }
    }

    /// Message `k` is being written (it may be answered from now on).
    pub fn wrote(&mut self, k: u64) {
        self.written = self.written.max(k);
    }

    /// Highest message number written.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn answers(&self) -> &[Answer] {
        &self.answers
    }

    pub fn on_ack(&mut self, t: &mut AckTally, k: u64, status: Code) -> AckOutcome {
        let slot = match self.answers.get_mut((k as usize).wrapping_sub(1)) {
            Some(slot) if k <= self.written => slot,
            _ => {
                t.mismatched += 1;
                return AckOutcome::Ignored;
            }
        };
        if *slot != Answer::None {
            t.duplicate_acks += 1;
            return AckOutcome::Ignored;
        }
        if status == Code::OK {
            *slot = Answer::Ok;
            t.acked += 1;
            AckOutcome::Ok
        } else {
            *slot = Answer::Refused;
            *t.error_acks
                .entry(code_name(status).to_string())
                .or_default() += 1;
            AckOutcome::Refused
        }
    }

    /// Messages written and never answered.
    pub fn unanswered(&self) -> u64 {
        let written = (self.written as usize).min(self.answers.len());
        self.answers[..written]
            .iter()
            .filter(|a| **a == Answer::None)
            .count() as u64
    }
}

/// Messages answered OK that a device never saw.
pub fn count_lost(answers: &[Answer], device_seen: &[bool]) -> u64 {
    answers
        .iter()
        .zip(device_seen)
        .filter(|(a, s)| **a == Answer::Ok && !**s)
        .count() as u64
}

/// Adds `from`'s counts into `into`.
pub fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// `CODE=n CODE=n`, or `-` when empty.
pub fn counts_text(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: u64 = 0xfeed;

    fn body(k: u64, tag: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        write_stamp(
            &mut b,
            Stamp {
                intended_ns: 7,
                k,
                tag,
            },
        );
        b
    }

    /// Delivers (seq, k) from "a" with id = k; returns [duplicated, out_of_order, seq_gaps,
    /// mismatched].
    fn deliver(t: &mut Tally, s: &mut DeviceStream, seq: u64, k: u64) -> [u64; 4] {
        let b = body(k, TAG, 64);
        let d = Delivered {
            seq,
            from: "a",
            client_msg_id: k,
            body: &b,
        };
        s.deliver(t, &d, &expect(10));
        [t.duplicated, t.out_of_order, t.seq_gaps, t.mismatched]
    }

    fn expect(written: u64) -> Expect<'static> {
        Expect {
            from: "a",
            tag: TAG,
            written,
        }
    }

    #[test]
    fn stamps_round_trip_and_a_changed_byte_is_caught() {
        let b = body(42, TAG, 100);
        let s = read_stamp(&b).unwrap();
        assert_eq!((s.k, s.tag, s.intended_ns), (42, TAG, 7));
        for i in [STAMP, 50, 99] {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert_eq!(read_stamp(&bad), None, "byte {i}");
        }
        assert_eq!(read_stamp(&b[..STAMP - 1]), None);
        assert!(read_stamp(&b[..STAMP]).is_some());
        // Another sender's message with the same number has another pattern.
        assert_ne!(body(42, TAG + 1, 100)[STAMP..], b[STAMP..]);
    }

    #[test]
    fn a_clean_stream_counts_nothing() {
        let (mut t, mut s) = (Tally::default(), DeviceStream::new(10));
        for k in 1..=5 {
            assert_eq!(deliver(&mut t, &mut s, k, k), [0; 4]);
        }
        assert_eq!(s.last_seq(), 5);
        assert_eq!((t.delivered, t.unique), (5, 5));
    }

    #[test]
    fn the_same_seq_twice_is_a_duplicate() {
        let (mut t, mut s) = (Tally::default(), DeviceStream::new(10));
        deliver(&mut t, &mut s, 1, 1);
        deliver(&mut t, &mut s, 2, 2);
        assert_eq!(deliver(&mut t, &mut s, 2, 2), [1, 0, 0, 0]);
        assert_eq!(deliver(&mut t, &mut s, 1, 1), [2, 0, 0, 0]);
        assert_eq!(t.unique, 2);
    }

    #[test]
    fn the_same_message_under_a_new_seq_is_a_duplicate() {
        // What a dedup window lost in a restart looks like: the resend got a new seq.
        let (mut t, mut s) = (Tally::default(), DeviceStream::new(10));
        deliver(&mut t, &mut s, 1, 1);
        deliver(&mut t, &mut s, 2, 2);
        assert_eq!(deliver(&mut t, &mut s, 3, 2), [1, 0, 0, 0]);
    }

    #[test]
    fn a_skipped_seq_is_a_gap_and_its_late_arrival_out_of_order() {
        let (mut t, mut s) = (Tally::default(), DeviceStream::new(10));
        deliver(&mut t, &mut s, 1, 1);
        assert_eq!(deliver(&mut t, &mut s, 3, 3), [0, 0, 1, 0]);
        assert_eq!(deliver(&mut t, &mut s, 2, 2), [0, 2, 1, 0]); // seq late, and k=2 after k=3
        assert_eq!(s.last_seq(), 3);
    }

    #[test]
    fn holes_at_own_copies_named_by_their_send_acks_are_not_gaps() {
        let (mut t, mut s) = (Tally::default(), DeviceStream::new(10));
        deliver(&mut t, &mut s, 1, 1);
        s.own_copy(&mut t, 2); // before seq 1's successor arrives, as the broker promises
        s.own_copy(&mut t, 4);
        s.own_copy(&mut t, 0); // none passed over
        assert_eq!((t.own_copies, t.echoes, t.out_of_order), (2, 0, 0));
        assert_eq!(deliver(&mut t, &mut s, 3, 3), [0; 4]);
        assert_eq!(deliver(&mut t, &mut s, 5, 5), [0; 4]);
        // A real gap next to a hole is still one.
        s.own_copy(&mut t, 6);
        assert_eq!(deliver(&mut t, &mut s, 8, 8), [0, 0, 1, 0]);
        assert_eq!(s.last_seq(), 8);
    }

    #[test]
    fn an_own_copy_named_late_or_delivered_anyway_is_caught() {
        let (mut t, mut s) = (Tally::default(), DeviceStream::new(10));
        deliver(&mut t, &mut s, 1, 1);
        deliver(&mut t, &mut s, 2, 2);
        s.own_copy(&mut t, 2); // the stream is past it: the SendAck came too late
        assert_eq!([t.out_of_order, t.own_copies], [1, 0]);
        s.own_copy(&mut t, 3);
        s.own_copy(&mut t, 3); // named twice
        assert_eq!([t.out_of_order, t.own_copies], [2, 1]);
        // Sent although its SendAck said it would not be.
        assert_eq!(deliver(&mut t, &mut s, 3, 3), [1, 2, 0, 0]);
    }

    #[test]
    fn numbers_reordered_under_increasing_seqs_are_out_of_order() {
        let (mut t, mut s) = (Tally::default(), DeviceStream::new(10));
        deliver(&mut t, &mut s, 1, 2);
        assert_eq!(deliver(&mut t, &mut s, 2, 1), [0, 1, 0, 0]);
    }

    #[test]
    fn misrouted_or_mislabelled_deliveries_are_mismatched_not_delivered() {
        let (mut t, mut s) = (Tally::default(), DeviceStream::new(10));
        let ok = body(1, TAG, 64);
        let cases: [(&str, u64, Vec<u8>); 6] = [
            ("zed", 1, ok.clone()),             // from someone else (misrouted to us)
            ("a", 2, ok.clone()),               // the id disagrees with the stamp
            ("a", 1, body(1, TAG + 1, 64)),     // another sender's body under a's name
            ("a", 11, body(11, TAG, 64)),       // a number never written
            ("a", 1, ok[..STAMP - 2].to_vec()), // no stamp
            ("a", 1, {
                let mut b = ok.clone();
                b[40] ^= 0x80; // the body was altered
                b
            }),
        ];
        for (i, (from, id, b)) in cases.iter().enumerate() {
            let d = Delivered {
                seq: i as u64 + 1,
                from,
                client_msg_id: *id,
                body: b,
            };
            assert_eq!(s.deliver(&mut t, &d, &expect(10)), None, "case {i}");
        }
        assert_eq!(t.mismatched, 6);
        assert_eq!(t.unique, 0);
        // Message 1 itself was never seen: acked OK, it counts as lost here.
        assert_eq!(count_lost(&[Answer::Ok], s.seen()), 1);
        // Written so far bounds the numbers: 3 is not yet written.
        let b = body(3, TAG, 64);
        let d = Delivered {
            seq: 7,
            from: "a",
            client_msg_id: 3,
            body: &b,
        };
        assert_eq!(s.deliver(&mut t, &d, &expect(2)), None);
        assert_eq!(t.mismatched, 7);
        assert!(s
            .deliver(&mut t, &Delivered { seq: 8, ..d }, &expect(3))
            .is_some());
    }

    #[test]
    fn acks_settle_each_number_once_and_count_refusals_by_code() {
        let (mut t, mut l) = (AckTally::default(), Ledger::new(4));
        for k in 1..=3 {
            l.wrote(k);
        }
        assert_eq!(l.on_ack(&mut t, 1, Code::OK), AckOutcome::Ok);
        assert_eq!(l.on_ack(&mut t, 1, Code::OK), AckOutcome::Ignored);
        assert_eq!(l.on_ack(&mut t, 2, Code::INBOX_FULL), AckOutcome::Refused);
        assert_eq!(l.on_ack(&mut t, 4, Code::OK), AckOutcome::Ignored); // never written
        assert_eq!(l.on_ack(&mut t, 9, Code::OK), AckOutcome::Ignored); // out of range
        assert_eq!(t.acked, 1);
        assert_eq!(t.duplicate_acks, 1);
        assert_eq!(t.mismatched, 2);
        assert_eq!(t.error_acks.get("INBOX_FULL"), Some(&1));
        assert_eq!(t.answered(), 2);
        // 3 was written and never answered.
        assert_eq!(l.unanswered(), 1);
    }

    #[test]
    fn lost_counts_only_acked_messages_a_device_never_saw() {
        let answers = [
            Answer::Ok,
            Answer::Ok,
            Answer::Refused,
            Answer::None,
            Answer::Ok,
        ];
        assert_eq!(count_lost(&answers, &[true, false, false, false, true]), 1);
    }
}
