//! The admin thread's side of the control channels ([`crate::shard::control`]): one link per
//! shard, requests matched to replies by id, every call bounded by a timeout.
//!
//! Everything here runs on the admin thread's executor, so the bookkeeping is plain `Cell`s
//! and `RefCell`s. Per shard, a sender task moves queued requests into the shard's SPSC queue
//! (awaiting room), and a receiver task hands each reply to the caller waiting for its id.
//! Both first wait for the shard to connect its ends, which happens only once its log has
//! been recovered: until then [`Links::call`] answers [`CallError::NotConnected`] at once.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;

use crate::shard::control::{AdminEnds, Answer, Op, Request};
use crate::shard::wake::Signal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The shard has not connected its control channel yet (still recovering its log).
    NotConnected,
    /// The shard's control channel is closed (it has shut down).
    Gone,
    /// No answer within the timeout; the request may still take effect.
    Timeout,
}

#[derive(Default)]
struct Link {
    queue: RefCell<VecDeque<Request>>,
    kick: Signal,
    connected: Cell<bool>,
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
            links: ends.iter().map(|_| Link::default()).collect(),
            next_id: Cell::new(1),
            waiting: RefCell::default(),
        });
        for (shard, end) in ends.into_iter().enumerate() {
            let l = links.clone();
            glommio::spawn_local(async move {
                let sender = end.requests.connect().await;
                let link = &l.links[shard];
                link.connected.set(true);
                loop {
                    let next = link.queue.borrow_mut().pop_front();
                    match next {
                        Some(req) => {
                            if sender.send(req).await.is_err() {
                                link.gone.set(true);
                                return;
                            }
                        }
                        None => link.kick.wait().await,
                    }
                }
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
        if !link.connected.get() {
            return Err(CallError::NotConnected);
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let slot = Rc::new(Slot::default());
        self.waiting.borrow_mut().insert(id, slot.clone());
        link.queue.borrow_mut().push_back(Request { id, op });
        link.kick.notify();
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
