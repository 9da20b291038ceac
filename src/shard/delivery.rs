//! Delivery: from a user's durable messages in the log to each of their devices.
//!
//! Every device has `sent_seq`, the last seq queued to it. A device is refilled from the log,
//! in seq order, up to the user's durable seq, while its queue holds less than `max_outbound`
//! bytes ([`Shard::after_drain`]). Live delivery, replay at login and catch-up of a slow reader
//! are all this one refill, so they can neither gap nor reorder at a switch, and a slow reader
//! costs memory only up to `max_outbound`.
//!
//! Output is batched: whatever touches a connection marks it dirty, and the end of each batch
//! of work ([`Shard::flush_dirty`]) hands every dirty connection's bytes to the kernel with one
//! non-blocking `send(2)` each.
//!
//! Acks move the device's cursor; cursor records ride along with the next group commit.

use std::rc::Rc;

use super::conn::Conn;
use super::state::Shard;
use super::users::User;
use crate::log::Log;
use crate::protocol::{Code, ServerMsg};

impl Shard {
    /// A logged-in device joins its user: replaces an older connection with the same
    /// device_id, enforces `max_devices`, says LoginOk (with the gap signal) and queues the
    /// first slice of its replay.
    pub(super) fn register_device(&self, conn: &Rc<Conn>, last_seq: u64) {
        let mut users = self.users.borrow_mut();
        let user = users.of_conn(&conn.user);
        if !conn.device_id.is_empty() {
            if let Some(pos) = user
                .devices
                .iter()
                .position(|d| d.device_id == conn.device_id)
            {
                let old = user.devices.remove(pos);
                old.go_away(
                    Code::SESSION_REPLACED,
                    "another connection logged in with this device_id",
                );
                self.mark_dirty(&old);
            }
        }
        let max = self.cfg.limits.max_devices;
        if user.devices.len() >= max {
            let message = format!("user already has {max} devices connected (max_devices)");
            conn.close_with(&ServerMsg::Error {
                code: Code::TOO_MANY_DEVICES,
                message: &message,
            });
            return;
        }
        let oldest = user.oldest_seq();
        let first_retained = user.first_retained();
        // last_seq 0: resume from this device's stored cursor (a new device has none and gets
        // everything still retained).
        let last_seq = match last_seq {
            0 => user.cursors.get(&conn.device_id).unwrap_or(0),
            n => n,
        };
        // Replay starts after last_seq, or at the oldest retained message if that is later;
        // in the latter case part of what the device asked for is gone, and LoginOk says so.
        let start_after = last_seq.min(user.head_seq).max(first_retained - 1);
        let gap = last_seq > 0 && last_seq < user.head_seq && first_retained > last_seq + 1;
        conn.push(&ServerMsg::LoginOk {
            user_id: &conn.user,
            shard: self.id as u16,
            head_seq: user.head_seq,
            heartbeat_ms: self.cfg.heartbeat().as_millis() as u32,
            oldest_seq: oldest,
            gap,
        });
        conn.acked.set(start_after);
        conn.sent_seq.set(start_after);
        conn.behind.set(start_after < user.durable_seq);
        self.metrics
            .replayed
            .add(user.durable_seq.saturating_sub(start_after));
        self.remember_known(user, &conn.user, &conn.device_id);
        // Most users have one device: room for exactly one more, not the four a first push
        // would reserve.
        user.devices.reserve_exact(1);
        user.devices.push(conn.clone());
        let queued =
            Self::refill_from(user, conn, self.cfg.limits.max_outbound, &self.log.borrow());
        self.metrics.delivered.add(queued);
    }

    pub fn mark_dirty(&self, conn: &Rc<Conn>) {
        if !conn.dirty.replace(true) {
            self.dirty.borrow_mut().push(conn.clone());
        }
    }

    /// End of a batch of work: hand every touched connection's bytes to the kernel, refilling
    /// devices that are catching up; wake the committer if anything was appended.
    pub fn flush_dirty(&self) {
        self.poll_control(); // the admin thread's requests (see `control`)
        if self.has_uncommitted() {
            self.commit_due.notify();
        }
        let mut dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for conn in dirty.drain(..) {
            conn.dirty.set(false);
            conn.flush();
            self.after_drain(&conn);
        }
        // The emptied list goes back with its capacity (no allocation per batch), unless the
        // flush itself dirtied connections: those are in a new list, kept for the next flush.
        let mut slot = self.dirty.borrow_mut();
        if slot.is_empty() {
            *slot = dirty;
        }
        drop(slot);
        self.acks_written();
    }

    /// The SendAcks queued since the last flush are with the kernel now (stage stamps).
    fn acks_written(&self) {
        let mut acks = self.ack_stamps.borrow_mut();
        if acks.is_empty() {
            return;
        }
        let now = crate::metrics::stages::now_ns();
        let stages = &self.metrics.stages;
        for a in acks.drain(..) {
            stages.between(crate::metrics::stages::Stage::AckWrite, a.prev_ns, now);
            stages.between(crate::metrics::stages::Stage::Total, a.read_ns, now);
        }
    }

    /// If `conn`'s queue is empty and it is behind, queue the next slice of its messages.
    pub fn after_drain(&self, conn: &Rc<Conn>) {
        while conn.behind.get()
            && conn.is_open()
            && conn.writing.get() == 0
            && conn.tx.borrow().is_empty()
        {
            {
                let users = self.users.borrow();
                let Some(user) = users.get(&conn.user) else {
                    return;
                };
                let queued =
                    Self::refill_from(user, conn, self.cfg.limits.max_outbound, &self.log.borrow());
                self.metrics.delivered.add(queued);
            }
            conn.flush();
        }
        if !conn.own_sends.is_empty() {
            // The refill may have passed over copies right after the device's last ack.
            self.on_ack(conn, conn.acked.get());
        }
    }

    /// Queues durable messages after `conn.sent_seq`, read from the log, until `max_outbound`
    /// bytes are queued or the device has caught up. Returns how many Deliver frames it queued.
    fn refill_from(user: &User, conn: &Conn, max_outbound: usize, log: &Log) -> u64 {
        let mut queued = 0;
        while conn.behind.get() {
            let next = conn.sent_seq.get() + 1;
            if next > user.durable_seq {
                conn.behind.set(false);
                break;
            }
            if conn.queued_bytes() >= max_outbound || !conn.is_open() {
                break;
            }
            if conn.own_sends.passes_over(next) {
                // This connection sent it: it has the message, and its SendAck named the seq.
                conn.sent_seq.set(next);
                continue;
            }
            let Some(pos) = user.position(next) else {
                // Removed by retention while the device was behind: continue with what is
                // retained (the device learns of the gap at its next login).
                let resume = if user.index.is_empty() {
                    user.durable_seq
                } else {
                    user.first_retained().max(next) - 1
                };
                conn.sent_seq.set(resume.max(next));
                continue;
            };
            let framed = log.with_entry(pos, |e| {
                e.encode_deliver(
                    next,
                    &conn.user,
                    &conn.framing.get(),
                    &mut conn.tx.borrow_mut(),
                )
            });
            match framed {
                Ok(_) => queued += 1,
                Err(e) => {
                    tracing::error!(user = %conn.user, seq = next, error = %e, "cannot read a logged message; skipping it")
                }
            }
            conn.sent_seq.set(next);
        }
        queued
    }

    /// Marks the user's devices behind after their durable seq moved, so the end-of-batch
    /// flush refills them.
    pub(super) fn wake_devices(&self, user: &User) {
        for dev in &user.devices {
            dev.behind.set(true);
            self.mark_dirty(dev);
        }
    }

    /// A device processed everything up to `up_to_seq`: move its cursor (logged with the next
    /// group commit), over the copies of its own sends right after it too.
    pub(super) fn on_ack(&self, conn: &Conn, up_to_seq: u64) {
        // A device cannot ack what it was never sent.
        let sent = conn.sent_seq.get();
        let acked = conn
            .own_sends
            .cover(up_to_seq.min(sent).max(conn.acked.get()), sent);
        self.store_cursor(conn, acked);
    }

    /// A closing connection is sent nothing more: the copies of its own sends right after its
    /// ack are covered now, passed over yet or not (a copy still on its way to the disk comes
    /// before the cursor record in this shard's log, so the record is never durable without
    /// it). Otherwise a device that sends and logs out before its copy is durable would get the
    /// copy at its next login from the stored cursor.
    pub(super) fn cover_own_sends_at_close(&self, conn: &Conn) {
        if !conn.own_sends.is_empty() {
            let acked = conn.own_sends.cover(conn.acked.get(), u64::MAX);
            self.store_cursor(conn, acked);
        }
    }

    /// Moves `conn`'s cursor to `acked` (logged with the next group commit).
    fn store_cursor(&self, conn: &Conn, acked: u64) {
        if acked == conn.acked.get() {
            return;
        }
        conn.acked.set(acked);
        let mut users = self.users.borrow_mut();
        let Some(user) = users.get_mut(&conn.user) else {
            return;
        };
        // Raised, as recovery does: an older connection of the same device (replaced, still
        // closing) must not move the cursor back.
        user.cursors.raise(&conn.device_id, acked);
        // Losing the newest cursor records in a crash only means re-delivering a few messages
        // (at-least-once), never losing one.
        if let Some(pos) = self.append_cursor(&conn.user, &conn.device_id, acked) {
            user.last_pos = pos;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Replay's per-message work allocates nothing: a Deliver is encoded from the record
    //! archived in the log straight into the connection's buffer. Shown with the lib tests'
    //! allocator, which counts each thread's allocations ([`crate::alloc_count`]).

    use crate::alloc_count::allocations;
    use crate::log::record::{MessageRecord, Record, NO_POSITION};
    use crate::log::Log;
    use crate::protocol::{decode_server, ServerMsg, LEN_PREFIX};
    use crate::wire::Framing;

    /// An empty log with `segment_size`-byte segments in a fresh directory named for `test`.
    fn fresh_log(test: &str, segment_size: usize) -> (std::path::PathBuf, Log) {
        let dir = std::env::temp_dir().join(format!("ringpost-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (log, _) = Log::open(&dir, segment_size, |_, _| {}).unwrap();
        (dir, log)
    }

    #[test]
    fn replay_encodes_deliver_from_the_log_without_allocating() {
        let (dir, mut log) = fresh_log("replay-alloc", 1 << 20);
        let positions: Vec<u64> = (1..=1000u64)
            .map(|seq| {
                let rec = Record::Message(MessageRecord {
                    to: "bob".into(),
                    seq,
                    from: "alice".into(),
                    client_msg_id: seq * 10,
                    sent_at_ms: 1_700_000_000_000 + seq,
                    body: vec![seq as u8; 64],
                    prev: NO_POSITION,
                });
                log.append(&rec).unwrap()
            })
            .collect();
        let mut out = Vec::with_capacity(1 << 20);
        let framing = Framing::Tcp;
        let before = allocations();
        for (seq, &pos) in (1u64..).zip(&positions) {
            log.with_entry(pos, |e| e.encode_deliver(seq, "bob", &framing, &mut out))
                .unwrap();
        }
        let per_message = allocations() - before;
        assert_eq!(
            per_message, 0,
            "allocations while encoding 1,000 replayed Delivers"
        );

        // And they are the messages that were logged, in order.
        let mut at = 0;
        for seq in 1..=1000u64 {
            let len = u32::from_le_bytes(out[at..at + LEN_PREFIX].try_into().unwrap()) as usize;
            let payload = &out[at + LEN_PREFIX..at + LEN_PREFIX + len];
            let ServerMsg::Deliver(d) = decode_server(payload).unwrap() else {
                panic!("not a Deliver");
            };
            assert_eq!(
                (d.seq, d.from_user, d.client_msg_id, d.body),
                (seq, "alice", seq * 10, &vec![seq as u8; 64][..])
            );
            at += LEN_PREFIX + len;
        }
        assert_eq!(at, out.len());
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The send path's half: a message and its own-send copy go from the frame's bytes into the
    /// log (archived from borrowed fields into the log's reused buffer, framed in place in the
    /// segment) with no allocation per message once the buffer has grown.
    #[test]
    fn appending_sent_messages_allocates_nothing_per_message() {
        use crate::log::record::{Append, MessageRef, OutgoingRef};
        let (dir, mut log) = fresh_log("append-alloc", 4 << 20);
        let body = [7u8; 64];
        let message = |seq: u64| {
            Append::Message(MessageRef {
                to: "bob",
                seq,
                from: "alice",
                client_msg_id: seq * 10,
                sent_at_ms: 1_700_000_000_000 + seq,
                body: &body,
                prev: NO_POSITION,
            })
        };
        let outgoing = |seq: u64| {
            Append::Outgoing(OutgoingRef {
                user: "alice",
                seq,
                to: "bob",
                client_msg_id: seq * 10,
                sent_at_ms: 1_700_000_000_000 + seq,
                body: &body,
            })
        };
        log.append(message(1)).unwrap(); // the reused buffer grows once
        log.append(outgoing(1)).unwrap();
        let mut positions = Vec::with_capacity(1000);
        let before = allocations();
        for seq in 2..=1001u64 {
            positions.push(log.append(message(seq)).unwrap());
            log.append(outgoing(seq)).unwrap();
        }
        assert_eq!(
            allocations() - before,
            0,
            "allocations while appending 1,000 messages and their own-send copies"
        );
        for (seq, &pos) in (2u64..).zip(&positions) {
            assert_eq!(
                log.read(pos).unwrap(),
                Record::Message(MessageRecord {
                    to: "bob".into(),
                    seq,
                    from: "alice".into(),
                    client_msg_id: seq * 10,
                    sent_at_ms: 1_700_000_000_000 + seq,
                    body: body.to_vec(),
                    prev: NO_POSITION,
                })
            );
        }
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
