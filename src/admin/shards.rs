//! The admin thread's side of the control channels ([`crate::shard::control`]): one link per
//! shard, requests matched to replies by id, every call bounded by a timeout.
//!
//! Everything here runs on the admin thread's executor, so the bookkeeping is plain `Cell`s
//! and `RefCell`s. A call pushes its request into the shard's queue and rings the shard's
//! doorbell; a receiver task per shard hands each reply to the caller waiting for its id. The
//! doorbell connects only once the shard runs (its log recovered): until then
//! [`Links::call`] answers [`CallError::NotConnected`] at once.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::sync::Arc;

use futures_lite::future;
use glommio::channels::shared_channel::ConnectedSender;

use crate::shard::control::{AdminEnds, Answer, ControlInbox, Op, Request};
use crate::shard::wake::Signal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The shard has not connected its control channel yet (still recovering its log).
    NotConnected,
    /// The shard's control channel is closed (it has shut down).
    Gone,
    /// No answer within the timeout; the request may still take effect.
    Timeout,
    /// The shard's request queue is full (it is not taking requests).
    Busy,
}

struct Link {
    requests: Arc<ControlInbox>,
    /// Connected once the shard's `control` task runs.
    doorbell: RefCell<Option<ConnectedSender<()>>>,
    gone: Cell<bool>,
}

/// Where a caller waits for its reply.
#[derive(Default)]
struct Slot {
    answer: RefCell<Option<Answer>>,
    ready: Signal,
}

/// Every shard's control link.
pub struct Links {
    links: Vec<Link>,
    next_id: Cell<u64>,
    waiting: RefCell<HashMap<u64, Rc<Slot>>>,
}

impl Links {
    /// Starts the sender and receiver task of every shard's link on the current executor.
    pub fn start(ends: Vec<AdminEnds>) -> Rc<Links> {
        let links = Rc::new(Links {
            links: ends
                .iter()
                .map(|e| Link {
                    requests: e.requests.clone(),
                    doorbell: RefCell::default(),
                    gone: Cell::new(false),
                })
                .collect(),
            next_id: Cell::new(1),
            waiting: RefCell::default(),
        });
        for (shard, end) in ends.into_iter().enumerate() {
            let l = links.clone();
            glommio::spawn_local(async move {
                let bell = end.doorbell.connect().await;
                *l.links[shard].doorbell.borrow_mut() = Some(bell);
            })
            .detach();
            let l = links.clone();
            glommio::spawn_local(async move {
                let replies = end.replies.connect().await;
                while let Some(reply) = replies.recv().await {
                    if let Some(slot) = l.waiting.borrow_mut().remove(&reply.id) {
                        *slot.answer.borrow_mut() = Some(reply.answer);
                        slot.ready.notify();
                    }
                }
                l.links[shard].gone.set(true);
            })
            .detach();
        }
        links
    }

    pub fn count(&self) -> usize {
        self.links.len()
    }

    /// Queues `op` for `shard`; returns where its answer will land.
    fn submit(&self, shard: usize, op: Op) -> Result<(u64, Rc<Slot>), CallError> {
        let link = self.links.get(shard).ok_or(CallError::Gone)?;
        if link.gone.get() {
            return Err(CallError::Gone);
        }
        let doorbell = link.doorbell.borrow();
        let Some(bell) = doorbell.as_ref() else {
            return Err(CallError::NotConnected);
        };
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        if link.requests.push(Request { id, op }).is_err() {
            return Err(CallError::Busy);
        }
        // A full doorbell already has a ring pending; a closed one means the shard is gone,
        // which the reply receiver notices.
        let _ = bell.try_send(());
        let slot = Rc::new(Slot::default());
        self.waiting.borrow_mut().insert(id, slot.clone());
        Ok((id, slot))
    }

    /// Waits for the answer in `slot` until `deadline`.
    async fn wait(&self, id: u64, slot: Rc<Slot>, deadline: Instant) -> Result<Answer, CallError> {
        let got = future::or(
            async {
                loop {
                    if let Some(a) = slot.answer.borrow_mut().take() {
                        return Some(a);
                    }
                    slot.ready.wait().await;
                }
            },
            async {
                glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
                None
            },
        )
        .await;
        got.ok_or_else(|| {
            self.waiting.borrow_mut().remove(&id);
            CallError::Timeout
        })
    }

    /// Asks `shard` and waits for its answer at most `timeout`.
    pub async fn call(&self, shard: usize, op: Op, timeout: Duration) -> Result<Answer, CallError> {
        let (id, slot) = self.submit(shard, op)?;
        self.wait(id, slot, Instant::now() + timeout).await
    }

    /// Asks every shard at once (`op(shard)`) and waits for all answers, at most `timeout` in
    /// total; a shard that does not answer gets its error in its place.
    pub async fn call_all(
        &self,
        op: impl Fn(usize) -> Op,
        timeout: Duration,
    ) -> Vec<Result<Answer, CallError>> {
        let deadline = Instant::now() + timeout;
        let submitted: Vec<_> = (0..self.links.len())
            .map(|s| self.submit(s, op(s)))
            .collect();
        let mut out = Vec::with_capacity(submitted.len());
        for s in submitted {
            out.push(match s {
                Ok((id, slot)) => self.wait(id, slot, deadline).await,
                Err(e) => Err(e),
            });
        }
        out
    }
}
