//! The fast lane: a client that keeps fetching is served by a thread that
//! waits for its requests itself, the way the minimal handoff server of
//! the benchmarks is: one `poll`, one `recvmsg` and one `sendmsg` per
//! fetch, no event loop between them.
//!
//! After the event loop has answered a fetch, a stat or a batch, the
//! connection takes a lane if one is free ([`Lanes`]: as many as the
//! machine has CPUs) and stays on its task's thread (`block_in_place`, so
//! the runtime carries on with its other tasks on another thread), its
//! socket switched to blocking, waiting for each request with `poll` for
//! at most [`LANE_IDLE`]. There it answers what it can answer at once:
//! fetches, stats and batches of versions the daemon holds, with room in the
//! client's queue for the descriptors. Anything else (a publish, a list,
//! a name it must pull or refuse, a client that sits on its replies), a
//! frame that did not arrive whole, an idle client, or the daemon stopping sends
//! the connection back to the event loop with whatever it had read, and
//! the event loop goes on from there with every rule it applies: the same
//! deadlines, the same bounds. The lane's sends block at most the I/O
//! timeout (`SO_SNDTIMEO`), as the event loop's do.

use super::{invalid_name, Connection, End};
use crate::blob::Blob;
use memseal_proto::codec::{decode_request, encode_response, Decoded};
use memseal_proto::tokio_io::Socket;
use memseal_proto::wire::{self, FrameWriter};
use memseal_proto::{AssetInfo, FrameError, Request, Response};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::OFlags;
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a lane waits for the client's next request before it gives
/// the connection back to the event loop (and how soon it notices that
/// the daemon is stopping).
pub const LANE_IDLE: Duration = Duration::from_millis(200);

/// The lanes all connections share.
#[derive(Debug)]
pub struct Lanes {
    free: AtomicUsize,
}

impl Lanes {
    /// `count` lanes.
    pub fn new(count: usize) -> Arc<Lanes> {
        Arc::new(Lanes {
            free: AtomicUsize::new(count),
        })
    }

    /// One lane per CPU: more threads serving at once than CPUs to run them
    /// would only take turns.
    pub fn per_cpu() -> Arc<Lanes> {
        Lanes::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    fn take(self: &Arc<Lanes>) -> Option<Lane> {
        self.free
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |free| {
                free.checked_sub(1)
            })
            .ok()
            .map(|_| Lane(self.clone()))
    }
}

/// A lane taken; given back when dropped.
struct Lane(Arc<Lanes>);

impl Drop for Lane {
    fn drop(&mut self) {
        self.0.free.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wait until the client's next bytes (or its hang-up) can be read, at
/// most [`LANE_IDLE`]; false if none came.
///
/// `poll`, not a receive that blocks: a thread asleep inside `recvmsg` is
/// woken whenever the client reads a reply, for the kernel tells everyone
/// waiting on the socket that its send space came back, and the thread
/// finds nothing and sleeps again: a second wake-up per fetch, often on
/// the other CPU. `poll` is woken only by what it waits for.
fn wait_for_request(socket: BorrowedFd<'_>) -> io::Result<bool> {
    let mut wanted = [PollFd::new(&socket, PollFlags::IN)];
    let idle = Timespec::try_from(LANE_IDLE).expect("the idle time fits a timespec");
    Ok(rustix::event::poll(&mut wanted, Some(&idle))? > 0)
}

/// Why a connection left its lane.
pub(super) enum Left {
    /// Idle, or in the middle of a frame: the event loop waits for what
    /// comes next (the buffer keeps what was read).
    Waiting,
    /// The daemon is stopping: the connection ends.
    Stopping,
    /// A request the lane does not answer, for the event loop.
    Request(Decoded<Request>),
    /// The stream broke: a framing error or the client's hang-up.
    Broken(FrameError),
}

/// What serving one request in the lane came to.
enum Served {
    Answered,
    NotHere(Decoded<Request>),
}

impl Connection {
    /// Serve in a lane while the client keeps asking for what the lane
    /// answers; `None` if no lane is free.
    pub(super) fn ride_lane(&mut self) -> Result<Option<Left>, End> {
        let Some(_lane) = self.lanes.take() else {
            return Ok(None);
        };
        let socket = self.stream.as_fd();
        let flags = rustix::fs::fcntl_getfl(socket).map_err(io::Error::from)?;
        set_socket_timeout(socket, Timeout::Send, Some(self.config.io_timeout))
            .map_err(io::Error::from)?;
        rustix::fs::fcntl_setfl(socket, flags - OFlags::NONBLOCK).map_err(io::Error::from)?;
        // Out of the event loop while the lane reads, or every request
        // would wake the loop's thread as well.
        self.stream.unregister();
        let left = tokio::task::block_in_place(|| self.lane());
        // Back to the event loop's terms whatever happened.
        let restored = rustix::fs::fcntl_setfl(self.stream.as_fd(), flags | OFlags::NONBLOCK)
            .map_err(io::Error::from)
            .and_then(|()| self.stream.register_again());
        let left = left?;
        restored?;
        Ok(Some(left))
    }

    fn lane(&mut self) -> Result<Left, End> {
        loop {
            // A daemon that is stopping answers nothing more, not even a
            // request that arrived while the lane waited (the event loop
            // ends idle connections at once; this one was idle too).
            if *self.shutdown.borrow() {
                return Ok(Left::Stopping);
            }
            match self.buffer.next_frame() {
                Ok(Some(frame)) => {
                    let request = match decode_request(&frame.payload, frame.fds) {
                        Ok(request) => request,
                        Err(e) => return Ok(Left::Broken(e)),
                    };
                    match self.serve_in_lane(request)? {
                        Served::Answered => continue,
                        Served::NotHere(request) => return Ok(Left::Request(request)),
                    }
                }
                Ok(None) => {}
                Err(e) => return Ok(Left::Broken(e)),
            }
            // Half a frame goes to the event loop, whose deadline for the
            // rest of it a client trickling bytes cannot stretch; requests
            // arrive whole in one receive nearly always.
            if self.buffer.in_frame() {
                return Ok(Left::Waiting);
            }
            match wait_for_request(self.stream.as_fd()) {
                Ok(true) => {}
                // The client is idle.
                Ok(false) => return Ok(Left::Waiting),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Ok(Left::Broken(FrameError::Io(e))),
            }
            match wire::receive(self.stream.as_fd(), &mut self.buffer) {
                Ok(()) => {}
                Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                // Not after `poll` said there is something to read; should
                // it happen, the event loop waits instead.
                Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Left::Waiting)
                }
                Err(e) => return Ok(Left::Broken(e)),
            }
        }
    }

    /// Answer `request` now if the lane can; give it back otherwise,
    /// untouched, for the event loop to answer with its full rules.
    fn serve_in_lane(&mut self, request: Decoded<Request>) -> Result<Served, End> {
        let found = match &request.message {
            Request::Fetch { name, selector } | Request::Stat { name, selector } => {
                self.held(name, *selector).map(|found| vec![found])
            }
            Request::FetchMany { items } if items.len() <= self.max_fetch_many() => items
                .iter()
                .map(|item| self.held(&item.name, item.selector))
                .collect(),
            _ => None,
        };
        let Some(found) = found else {
            return Ok(Served::NotHere(request));
        };
        if let Request::Stat { .. } = request.message {
            let [(info, _)] = <[_; 1]>::try_from(found).expect("one version for a stat");
            self.send_now(&Response::Info(info), &[])?;
            return Ok(Served::Answered);
        }
        if !self.try_make_room(found.len())? {
            return Ok(Served::NotHere(request));
        }
        let (response, blobs) = match &request.message {
            Request::Fetch { .. } => {
                let [(info, blob)] = <[_; 1]>::try_from(found).expect("one version for a fetch");
                (Response::Asset(info), vec![blob])
            }
            _ => self.assets_answer(found.into_iter().map(Ok).collect()),
        };
        // The event loop answers the rare failure (out of descriptors).
        let Ok(handout) = self.descriptions.handout(&blobs) else {
            return Ok(Served::NotHere(request));
        };
        self.send_now(&response, &handout.fds())?;
        Ok(Served::Answered)
    }

    /// The version `selector` picks of a valid name, if the daemon holds
    /// it (a missing name may need its resolver: the event loop's work).
    fn held(
        &self,
        name: &str,
        selector: memseal_proto::Selector,
    ) -> Option<(AssetInfo, Arc<Blob>)> {
        invalid_name(name).ok()?;
        self.state.fetch(name, selector).ok()
    }

    /// Send `response` on the blocking socket, within the I/O timeout.
    fn send_now(&self, response: &Response, fds: &[BorrowedFd<'_>]) -> Result<(), End> {
        let frame = encode_response(response)?;
        match FrameWriter::with_fds(frame, fds.to_vec()).write_all(self.stream.sender()) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETOOMANYREFS) => {
                let busy = encode_response(&self.too_many_in_flight())?;
                FrameWriter::new(busy, None)
                    .write_all(self.stream.sender())
                    .map_err(|e| End::Peer(FrameError::Io(e)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(End::Timeout("client does not read its replies"))
            }
            Err(e) => Err(End::Peer(FrameError::Io(e))),
        }
    }
}
