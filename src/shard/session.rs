//! The per-connection task on the owner shard: reads frames, hands them to the shard, and
//! waits for writability only when the kernel refused bytes. After `server.park_after` without
//! traffic the connection parks (see [`super::park`]): its task ends, and the shard's resumer
//! starts a new one ([`resume`]) when the epoll poller or anything else notifies it.
//!
//! A connection woken from parking that then reads nothing but Pings (an idle client's
//! heartbeat) parks again as soon as its Pongs are written, rather than after `park_after`.
//!
//! Between frames an active connection costs one pending readiness poll on the ring (the one
//! glommio arms when the stream is created) and this task's future: no read buffer, no write
//! buffer. The task waits in a 1-byte `read`, which glommio serves from that poll without
//! allocating, raced against its wake-up and the park timer; when the read returns, the task
//! drains the socket with non-blocking `recv` into the shard's shared read buffer
//! ([`super::read_buf`]) and parses in place; only a frame split across reads is copied into
//! the connection's own `rx`. Each read (on TLS, its plaintext) is handed out as a refcounted
//! chunk, so a body that leaves the shard is a slice of it, not a copy. (A `peek` would cost a
//! second ring op plus a 4 KiB-aligned buffer per idle connection.) The rarely used, large futures
//! (blocked writes, the closing linger) are boxed so that they do not inflate every idle
//! connection's task.
//!
//! The connection's framing (`conn.framing`: TCP or WebSocket) decodes what is read
//! ([`crate::wire::Framing::decode`]); on WebSocket it also hands out Pings (answered with a
//! Pong) and the client's Close (answered, then the connection closes). Its state lives in the
//! connection record, so a parked connection resumes mid-message.
//!
//! On TLS every read is decrypted first (`feed_tls`: the connection's TLS session, into the
//! shard's shared plaintext buffer, handed out like a read) and the flush seals what is queued
//! (see [`super::conn`]). On WebSocket a read is unmasked in place before it is frozen
//! (`feed_ws`), so on every transport a forwarded body is a slice of what was read.

use std::io::ErrorKind;
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::conn::{Conn, ConnState, ConnTls};
use super::envelope::Handoff;
use super::park;
use super::read_buf::ReadSource;
use super::state::Shard;
use crate::metrics::stages::now_ns;
use crate::protocol::{self, ClientMsg, Code, Flow, ServerMsg};
use crate::wire::ws::Inbound;
use crate::wire::DecodeError;

/// Reads per wake-up before yielding to other connections (fairness).
const READS_PER_WAKE: usize = 4;
/// How long a closing connection may take to accept its final frames.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long we keep reading (and discarding) after our final frame, so the kernel does not
/// answer the client's unread bytes with a reset that would destroy that frame.
const LINGER: Duration = Duration::from_millis(500);

/// How one active stretch of a session ended.
enum Stretch {
    /// The connection is closed and forgotten.
    Closed,
    /// The connection was idle and is parked (see [`super::park`]).
    Parked,
}

/// What woke an idle session.
enum Wake {
    Read(std::io::Result<usize>),
    Woken,
    Park,
}

/// Takes over a logged-in connection on its owner shard (from this shard's acceptor or a peer's
/// hand-off): registers it with the shard (LoginOk, replay) and starts its task.
pub fn start_handoff(shard: &Rc<Shard>, mut h: Handoff) {
    // The accepting shard dup'ed this fd for us and closed its own copy; take_fd makes us
    // its only owner.
    let registering_ns = now_ns();
    let fd = h.take_fd();
    let leftover = std::mem::take(&mut h.leftover);
    let stamps = h.stamps;
    let conn = shard.adopt(fd, h);
    // Refused in registering (TOO_MANY_DEVICES, shutting down): not a login to time.
    let logged_in = conn.is_open();
    // The LoginOk and any replay go out first, as they did while a spawned task ran later.
    shard.flush_dirty();
    if logged_in {
        let sent_ns = now_ns();
        shard
            .metrics
            .login_stages
            .record(stamps, registering_ns, sent_ns);
    }
    // A new connection with no input pending starts parked: its socket goes straight into the
    // epoll set without ever getting a task or a glommio stream, so a login storm leaves no
    // tasks and no readiness polls on the ring (each pending poll lengthens the hash chain
    // every io_uring cancel walks).
    let start_parked = leftover.is_empty()
        && !shard.cfg.server.park_after.is_zero()
        && shard.parking.watch(conn.fd.get(), conn.id).is_ok();
    if start_parked {
        sleep_parked(&conn);
    } else {
        glommio::spawn_local(run(shard.clone(), conn, leftover)).detach();
    }
}

/// Serves a new connection's first stretch. [`Shard::adopt`] counted it in `live_sessions`;
/// [`Shard::forget`] uncounts it when a stretch ends with the connection closed.
///
/// A stretch that parks ends the task: a parked connection is its record alone, and its next
/// stretch is a new task ([`resume`]).
async fn run(shard: Rc<Shard>, conn: Rc<Conn>, leftover: Vec<u8>) {
    // SAFETY: `conn.fd` is the socket handed to this shard; the stream owns it now.
    let stream = unsafe { TcpStream::from_raw_fd(conn.fd.get()) };
    if let Stretch::Parked = serve(shard, conn.clone(), stream, leftover, false).await {
        sleep_parked(&conn);
    }
}

/// Serves a parked connection again: started by the shard's resumer task once the
/// connection was notified (input on its socket, bytes to send, a close, shutdown).
pub async fn resume(shard: Rc<Shard>, conn: Rc<Conn>) {
    // What the notify was for is re-checked by `serve` before it waits for anything.
    conn.wake.clear();
    let fd = conn.fd.get();
    shard.parking.unwatch(fd);
    // SAFETY: while parked, `fd` belongs to this connection alone (no stream owns it);
    // from here on the new stream does.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if let Stretch::Parked = serve(shard, conn.clone(), stream, Vec::new(), true).await {
        sleep_parked(&conn);
    }
}

/// Leaves a parked connection without a task (and without an output buffer): its next notify
/// queues it for the resumer.
fn sleep_parked(conn: &Conn) {
    conn.release_buffers();
    conn.wake.notify_to(park::resume_waker(conn.id));
}

/// Moves an idle connection's socket into the shard's epoll set. On success the connection's
/// fd is a duplicate, and the caller drops its stream (closing the original).
fn park(shard: &Shard, conn: &Conn) -> std::io::Result<()> {
    let dup = park::dup_fd(conn.fd.get())?;
    if let Err(e) = shard.parking.watch(dup, conn.id) {
        // SAFETY: `dup` was made above and is not shared.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    conn.fd.set(dup);
    conn.own_sends.release_if_empty();
    Ok(())
}

thread_local! {
    /// Frames other than Ping handled on this thread (a shard is one thread): tells `serve`
    /// whether a read brought anything but keep-alives.
    static BUSY_FRAMES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn busy_frames() -> u64 {
    BUSY_FRAMES.with(|c| c.get())
}

/// One active stretch: serves `conn` until it closes or parks. `resumed`: the stretch began
/// with a parked connection waking up. A resumed stretch that has read nothing but Pings parks
/// again as soon as the Pongs are out, instead of holding its stream, ring poll and task state
/// for `park_after`: an idle client's heartbeat must not make it an active connection.
async fn serve(
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    mut stream: TcpStream,
    mut leftover: Vec<u8>,
    resumed: bool,
) -> Stretch {
    let mut only_pings = resumed;
    let park_after = shard.cfg.server.park_after;
    // One park timer per stretch, not one per pass of the loop (a glommio timer allocates, and
    // an active connection passes many times a second): when it fires early — the wait it was
    // armed for ended with traffic — it is reset to what is left of `park_after` since the
    // current quiet spell began. `quiet_since` survives such a reset: the spell goes on.
    let mut park_timer: Option<glommio::timer::Timer> = None;
    let mut quiet_since: Option<std::time::Instant> = None;
    if !leftover.is_empty() && conn.is_open() {
        conn.last_seen_ms.set(shard.mono_ms());
        feed(&shard, &conn, &mut leftover);
        shard.flush_dirty();
    }
    loop {
        if conn.state.get() == ConnState::Broken {
            break;
        }
        if conn.has_output() {
            if !Box::pin(write_pending(&shard, &conn, &mut stream)).await {
                conn.state.set(ConnState::Broken);
                break;
            }
            shard.after_drain(&conn);
            continue;
        }
        if conn.state.get() == ConnState::Closing {
            break;
        }
        if shard.draining.get() {
            conn.wake.wait().await;
            continue;
        }
        if shard.mesh.congested() {
            future::or(conn.wake.wait(), shard.mesh.wait_for_space()).await;
            continue;
        }
        let mut probe = [0u8; 1];
        let waiting_since = *quiet_since.get_or_insert_with(std::time::Instant::now);
        let timer = park_timer.get_or_insert_with(|| glommio::timer::Timer::new(park_after));
        let woke = future::or(
            async { Wake::Read(stream.read(&mut probe).await) },
            future::or(
                async {
                    conn.wake.wait().await;
                    Wake::Woken
                },
                async {
                    if park_after.is_zero() {
                        std::future::pending::<()>().await;
                    }
                    timer.await;
                    Wake::Park
                },
            ),
        )
        .await;
        quiet_since = None;
        match woke {
            Wake::Woken => continue,
            Wake::Read(Ok(0)) => peer_closed(&conn),
            Wake::Read(Err(_)) => {
                conn.state.set(ConnState::Broken);
                break;
            }
            Wake::Read(Ok(_)) => {
                let busy = busy_frames();
                read_ready(&shard, &conn, Some(probe[0]));
                shard.flush_dirty();
                only_pings &= busy_frames() == busy;
                // No partial frame held either: a large frame arriving in pieces stays active.
                if only_pings
                    && conn.is_open()
                    && conn.queued_bytes() == 0
                    && conn.rx.borrow().is_empty()
                    && park(&shard, &conn).is_ok()
                {
                    return Stretch::Parked; // dropping `stream` closes the original fd
                }
                // A read of a socket that already holds data completes without yielding, so a
                // client that never pauses would keep this task running: let the committer
                // (whose sync releases this batch's acks) and other connections go first.
                future::yield_now().await;
            }
            Wake::Park => {
                let quiet = waiting_since.elapsed();
                if let (Some(timer), true) = (park_timer.as_mut(), quiet < park_after) {
                    timer.reset(park_after - quiet);
                    quiet_since = Some(waiting_since);
                    continue;
                }
                park_timer = None;
                if conn.is_open() && conn.queued_bytes() == 0 && park(&shard, &conn).is_ok() {
                    return Stretch::Parked; // dropping `stream` closes the original fd
                }
            }
        }
    }
    shard.detach(&conn);
    if conn.state.get() == ConnState::Closing {
        Box::pin(linger_close(&mut stream)).await;
    }
    drop(stream);
    shard.forget(&conn);
    Stretch::Closed
}

/// One step of [`write_pending`].
enum WriteStep {
    Wrote(std::io::Result<usize>),
    /// The connection's wake-up fired (it is closing, or shutdown began).
    Woken,
    /// No byte went out for `slow_consumer_timeout`.
    Stalled,
    /// A closing connection did not take its last bytes in time.
    TimedOut,
}

/// Writes what the non-blocking flush could not, waiting for writability. Returns false if the
/// connection is dead (or a closing connection would not take its last bytes in time).
async fn write_pending(shard: &Shard, conn: &Conn, stream: &mut TcpStream) -> bool {
    let buf = conn.take_output();
    conn.writing
        .set(u32::try_from(buf.len()).unwrap_or(u32::MAX));
    let mut off = 0;
    let mut ok = true;
    let stall_limit = shard.cfg.limits.slow_consumer_timeout;
    let mut stall_deadline = std::time::Instant::now() + stall_limit;
    while off < buf.len() {
        let write = async { WriteStep::Wrote(stream.write(&buf[off..]).await) };
        let step = if conn.state.get() != ConnState::Open || shard.draining.get() {
            let timeout = async {
                glommio::timer::sleep(CLOSE_WRITE_TIMEOUT).await;
                WriteStep::TimedOut
            };
            future::or(write, timeout).await
        } else {
            // A client that stopped reading can hold this write for ever; a close (idle
            // sweep, shutdown) must still get through, so its wake-up interrupts the wait.
            // `write` is readiness-based: an interrupted call has written nothing.
            let woken = async {
                conn.wake.wait().await;
                WriteStep::Woken
            };
            let stalled = async {
                glommio::timer::sleep(
                    stall_deadline.saturating_duration_since(std::time::Instant::now()),
                )
                .await;
                WriteStep::Stalled
            };
            future::or(write, future::or(woken, stalled)).await
        };
        match step {
            WriteStep::Wrote(Ok(0)) | WriteStep::TimedOut => ok = false,
            WriteStep::Wrote(Ok(n)) => {
                off += n;
                stall_deadline = std::time::Instant::now() + stall_limit;
            }
            WriteStep::Woken => {}
            WriteStep::Stalled => {
                tracing::info!(user = %conn.user, device = %conn.device_id, "closing a slow consumer");
                shard.detach(conn);
                conn.go_away(
                    Code::SLOW_CONSUMER,
                    "the client read nothing for slow_consumer_timeout; undelivered messages wait in the log",
                );
                // The GoAway queues behind `buf`; the loop goes on under the close timeout.
                ok = true;
            }
            WriteStep::Wrote(Err(e)) => ok = e.kind() == ErrorKind::Interrupted,
        }
        if !ok {
            break;
        }
    }
    conn.writing.set(0);
    if ok && conn.state.get() != ConnState::Broken {
        // Frames queued meanwhile go out now, in order, behind what we just wrote.
        conn.flush();
    }
    ok
}

/// Shutdown, before the shard stops reading: takes in what every open connection has already
/// sent (bytes waiting in its socket, parked or not), so that every send that reached the
/// broker before the signal is answered rather than left unread.
pub fn read_pending_input(shard: &Rc<Shard>) {
    for conn in shard.connections() {
        read_ready(shard, &conn, None);
    }
    shard.flush_dirty();
}

/// Drains the socket into the shard's read buffer and feeds complete frames to the shard,
/// all on one reading of the clock. `first` is the byte the session task's wake-up read
/// already took, if any.
fn read_ready(shard: &Rc<Shard>, conn: &Rc<Conn>, first: Option<u8>) {
    shard.clock.batch(|| read_socket(shard, conn, first));
}

fn read_socket(shard: &Rc<Shard>, conn: &Rc<Conn>, first: Option<u8>) {
    let mut rb = shard.read_buf.borrow_mut();
    rb.start();
    if let Some(b) = first {
        rb.push(b);
        conn.last_seen_ms.set(shard.mono_ms());
    }
    for _ in 0..READS_PER_WAKE {
        if !conn.is_open() {
            return;
        }
        let room = rb.room();
        match rb.recv(conn.fd.get()) {
            Ok(0) => {
                if rb.held() > 0 {
                    feed_read(shard, conn, rb.take());
                }
                peer_closed(conn);
                return;
            }
            Ok(n) => {
                conn.last_seen_ms.set(shard.mono_ms());
                feed_read(shard, conn, rb.take());
                if n < room {
                    return; // the socket is drained
                }
                rb.make_room();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                conn.state.set(ConnState::Broken);
                return;
            }
        }
    }
    if rb.held() > 0 {
        feed_read(shard, conn, rb.take());
    }
}

/// One read's bytes: decrypted first on TLS ([`feed_tls`]), then handed out as a frozen read
/// so that a body leaving the shard is kept as a slice of it ([`super::read_buf`]).
fn feed_read(shard: &Rc<Shard>, conn: &Rc<Conn>, chunk: bytes::BytesMut) {
    match &conn.tls {
        Some(tls) => feed_tls(shard, conn, tls, chunk),
        None => feed_chunk(shard, conn, chunk),
    }
}

/// Bytes of the connection's stream (a read, or the plaintext of one), by its framing.
fn feed_chunk(shard: &Shard, conn: &Rc<Conn>, chunk: bytes::BytesMut) {
    if conn.framing.get().is_websocket() {
        feed_ws(shard, conn, chunk);
    } else {
        feed_frozen(shard, conn, chunk.freeze());
    }
}

/// Hands the complete frames in the connection's partial frame plus `chunk` (TCP framing) to
/// the shard, as slices of `chunk` ([`ReadSource::of`]); keeps a trailing partial frame in
/// `conn.rx`.
fn feed_frozen(shard: &Shard, conn: &Rc<Conn>, chunk: bytes::Bytes) {
    let mut rx = conn.rx.borrow_mut();
    let fed = protocol::reader::feed(&mut rx, &chunk, shard.cfg.limits.max_frame, |payload| {
        on_inbound(
            shard,
            conn,
            Inbound::Message(payload),
            ReadSource::of(&chunk),
        )
    });
    drop(rx);
    if let Err(e) = fed {
        reject(shard, conn, &DecodeError::from(e));
    }
}

/// The client closed its sending side: nothing more will be read, but what is already queued
/// for it (a GoAway after Logout, say) is still written before we close.
fn peer_closed(conn: &Conn) {
    if conn.is_open() {
        conn.state.set(ConnState::Closing);
    }
}

/// Bytes read from a TLS connection: through its TLS session (any TLS output that produces,
/// e.g. a KeyUpdate answer, goes out with the next flush), then to the framing. The plaintext
/// is decrypted into the shard's second read buffer (`gate.plain`) and handed out like a read
/// ([`feed_chunk`]).
fn feed_tls(shard: &Rc<Shard>, conn: &Rc<Conn>, tls: &ConnTls, mut data: bytes::BytesMut) {
    let mut plain = shard.gate.plain.borrow_mut();
    plain.start();
    let opened = tls.open(&mut data, plain.sink());
    let chunk = plain.take();
    drop(plain);
    match opened {
        Ok((progress, wrote)) => {
            if wrote {
                shard.mark_dirty(conn);
            }
            if !chunk.is_empty() {
                feed_chunk(shard, conn, chunk);
            }
            if progress.peer_closed {
                peer_closed(conn);
            }
        }
        Err(e) => {
            tracing::debug!(user = %conn.user, error = %e, "tls: closing the connection");
            conn.state.set(ConnState::Broken);
            conn.wake.notify();
        }
    }
}

/// What [`feed_ws`]'s first pass found: where a message lies in the read (offset, length);
/// a Ping's payload itself (≤ 125 bytes), because a Ping between two frames of a message lies
/// where the rest of that message is assembled, over it, before the second pass.
#[derive(Clone, Copy)]
enum WsFound {
    Message(usize, usize),
    Ping([u8; crate::wire::ws::MAX_CONTROL_PAYLOAD], u8),
    Close(Option<u16>),
}

thread_local! {
    /// What [`feed_ws`] found in one read, reused from read to read (a shard is one thread).
    static WS_FOUND: std::cell::Cell<Vec<WsFound>> = const { std::cell::Cell::new(Vec::new()) };
}

/// WebSocket frames of one read, in two passes: the decoder unmasks (and assembles) every
/// complete message in place and notes where it lies (and copies each Ping's payload, see
/// [`WsFound`]); then the read is frozen and the messages are handed to the shard in order as
/// slices of it, so a body leaving the shard is not copied, as on TCP. A read that continues a
/// message or frame carried from earlier reads is decoded from the carry instead ([`feed`]:
/// copied, as before).
///
/// The first pass reads on past a message that will close the connection (the second pass
/// stops there): it only unmasks, and a decode error past that point is not reported, as the
/// one-pass decoder would never have reached it.
fn feed_ws(shard: &Shard, conn: &Rc<Conn>, mut chunk: bytes::BytesMut) {
    if !conn.rx.borrow().is_empty() {
        return feed(shard, conn, &mut chunk);
    }
    let mut found = WS_FOUND.take();
    found.clear();
    let base = chunk.as_ptr() as usize;
    let at = |p: &[u8]| (p.as_ptr() as usize - base, p.len());
    let mut framing = conn.framing.get();
    let fed = framing.decode(
        &mut conn.rx.borrow_mut(),
        &mut chunk,
        shard.cfg.limits.max_frame,
        |inbound| {
            found.push(match inbound {
                Inbound::Message(p) => {
                    let (off, len) = at(p);
                    WsFound::Message(off, len)
                }
                Inbound::Ping(p) => {
                    let mut copy = [0; crate::wire::ws::MAX_CONTROL_PAYLOAD];
                    let len = p.len().min(copy.len());
                    copy[..len].copy_from_slice(&p[..len]);
                    WsFound::Ping(copy, len as u8)
                }
                Inbound::Close(code) => WsFound::Close(code),
            });
            Flow::More
        },
    );
    conn.framing.set(framing);
    let chunk = chunk.freeze();
    let mut flow = Flow::More;
    for f in &found {
        let inbound = match f {
            &WsFound::Message(off, len) => Inbound::Message(&chunk[off..off + len]),
            WsFound::Ping(payload, len) => Inbound::Ping(&payload[..*len as usize]),
            &WsFound::Close(code) => Inbound::Close(code),
        };
        flow = on_inbound(shard, conn, inbound, ReadSource::of(&chunk));
        if flow == Flow::Stop {
            break;
        }
    }
    WS_FOUND.set(found);
    if flow == Flow::More {
        if let Err(e) = fed {
            reject(shard, conn, &e);
        }
    }
}

/// Hands the complete frames in the connection's partial frame plus `data` to the shard
/// (through the connection's framing: the shared frame reader on TCP, the WebSocket decoder,
/// which also answers Pings and Closes); keeps a trailing partial frame in `conn.rx`.
/// `data` is mutable because WebSocket payloads are unmasked where they lie.
fn feed(shard: &Shard, conn: &Rc<Conn>, data: &mut [u8]) {
    let mut rx = conn.rx.borrow_mut();
    let mut framing = conn.framing.get();
    let fed = framing.decode(&mut rx, data, shard.cfg.limits.max_frame, |inbound| {
        on_inbound(shard, conn, inbound, ReadSource::ELSEWHERE)
    });
    conn.framing.set(framing);
    if let Err(e) = fed {
        reject(shard, conn, &e);
    }
}

/// One decoded frame (or WebSocket Ping/Close) of `conn`; `src` says where its bytes lie.
fn on_inbound(shard: &Shard, conn: &Rc<Conn>, inbound: Inbound<'_>, src: ReadSource<'_>) -> Flow {
    match inbound {
        Inbound::Message(payload) => match protocol::decode_client(payload) {
            Ok(msg) => {
                if !matches!(msg, ClientMsg::Ping { .. }) {
                    BUSY_FRAMES.with(|c| c.set(c.get() + 1));
                }
                shard.on_frame(conn, msg, src)
            }
            Err(e) => reject(shard, conn, &DecodeError::from(e)),
        },
        Inbound::Ping(payload) => {
            conn.pong(payload);
            shard.mark_dirty(conn);
        }
        Inbound::Close(code) => {
            conn.closed_by_peer(code);
            shard.mark_dirty(conn);
        }
    }
    if conn.is_open() {
        Flow::More
    } else {
        Flow::Stop
    }
}

fn reject(shard: &Shard, conn: &Rc<Conn>, e: &DecodeError) {
    let message = e.to_string();
    tracing::info!(shard = shard.id, user = %conn.user, device = %conn.device_id, code = protocol::code_name(e.code()), reason = %message, "frame refused");
    conn.close_as(
        &ServerMsg::Error {
            code: e.code(),
            message: &message,
        },
        Some(e.close_code()),
    );
    shard.mark_dirty(conn);
}

/// Half-closes after the final frame and discards input briefly, so the final frame is not
/// destroyed by a reset, then lets the caller drop (close) the socket.
pub async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let drain = async {
        let mut sink = [0u8; 4096];
        loop {
            match futures_lite::io::AsyncReadExt::read(stream, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    future::or(drain, glommio::timer::sleep(LINGER)).await;
}
