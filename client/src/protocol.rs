//! Every client operation, written once and without I/O.
//!
//! An operation is a small state machine: it says what to do next (send a
//! request frame, send the body of an upload, receive a response) and is
//! told how that went, until it is done with a result. It never touches a
//! socket, so the blocking [`Client`](crate::Client), the async client
//! (feature `tokio`) and any other driver only move frames for it: each
//! has one loop ([`Operation`] docs) and nothing else to decide. Every rule
//! of the conversation lives here once: which answer fits which request,
//! that a fetch answer carries a descriptor, that a listing cursor moves
//! forward, that a daemon which hangs up in the middle of a publish has
//! usually said why first.
//!
//! [`Session`] is the state both drivers keep between operations: whether
//! the stream's position is still known, and how many requests went out.

use crate::error::{Error, HandshakeError};
use memseal_proto::codec::{self, Decoded};
use memseal_proto::wire::RawFrame;
use memseal_proto::{
    AssetInfo, ErrorCode, ErrorReply, Event, FetchItem, FetchResult, FrameError, Limits,
    PublishSource, Request, Response, Selector, ServerStatus, SessionLimits, PROTOCOL_VERSION,
    PROTOCOL_VERSION_2,
};
use std::os::fd::{BorrowedFd, OwnedFd};

/// What an operation asks its driver to do next.
pub(crate) enum Action {
    /// Send this request frame; if its kind carries a descriptor, the
    /// operation's [`descriptor`](Operation::descriptor) rides on its
    /// first byte.
    Send(Request),
    /// Send the body of a streamed publish (the driver knows its source).
    SendBody,
    /// Receive the next response frame.
    Receive,
}

/// An operation's next action, or its result.
pub(crate) enum Step<T> {
    Next(Action),
    Done(Result<T, Error>),
}

/// A client operation as a state machine. A driver runs one like this:
///
/// ```text
/// step = op.start()
/// loop:
///     Done(result)        -> return result
///     Next(Send(request)) -> step = op.sent(send(request, op.descriptor()))
///     Next(SendBody)      -> step = op.sent(send_body())
///     Next(Receive)       -> step = op.received(receive())
/// ```
pub(crate) trait Operation {
    type Output;

    /// The first action.
    fn start(&mut self) -> Step<Self::Output>;

    /// A send (a request frame or a body) finished, or failed.
    fn sent(&mut self, outcome: Result<(), Error>) -> Step<Self::Output>;

    /// A response arrived (an `Error` response arrives as
    /// [`Error::Server`]), or receiving failed.
    fn received(&mut self, answer: Result<Decoded<Response>, Error>) -> Step<Self::Output>;

    /// The descriptor that rides on a request that carries one.
    fn descriptor(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// What a driver keeps about its connection between operations.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// Set once an error, or an operation abandoned half-way, left the
    /// stream at an unknown position.
    lost: bool,
    /// Set while an operation runs; still set when the next one begins
    /// means the last was abandoned (an async future dropped).
    in_flight: bool,
    /// Requests sent, the handshake not counted.
    requests: u64,
}

impl Session {
    /// Start an operation, refusing on a connection whose position is
    /// unknown. The error means the driver must shut its socket down.
    pub(crate) fn begin(&mut self) -> Result<(), Error> {
        if self.in_flight {
            self.lost = true;
            self.in_flight = false;
        }
        if self.lost {
            return Err(Error::ConnectionLost);
        }
        self.in_flight = true;
        Ok(())
    }

    /// End an operation. True when its error left the stream unusable, so
    /// the driver must shut the socket down now (telling the daemon at
    /// once that nothing more is coming, the rest of a publish say).
    pub(crate) fn end<T>(&mut self, result: &Result<T, Error>) -> bool {
        self.in_flight = false;
        let breaks = matches!(result, Err(e) if e.breaks_connection());
        if breaks {
            self.lost = true;
        }
        breaks
    }

    /// Give the connection up for good.
    pub(crate) fn abandon(&mut self) {
        self.lost = true;
        self.in_flight = false;
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost
    }

    /// Count a request frame about to go out.
    pub(crate) fn count(&mut self, request: &Request) {
        if !matches!(request, Request::Hello { .. }) {
            self.requests += 1;
        }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests
    }
}

/// Decode a received frame into a response; a [`Response::Error`] becomes
/// [`Error::Server`].
pub(crate) fn decode(frame: RawFrame) -> Result<Decoded<Response>, Error> {
    let decoded = codec::decode_response(&frame.payload, frame.fds).map_err(Error::Protocol)?;
    match decoded.message {
        Response::Error(reply) => Err(Error::Server {
            code: reply.code,
            message: reply.message,
        }),
        _ => Ok(decoded),
    }
}

/// A response of the wrong kind.
fn unexpected(expected: &'static str, got: &Response) -> Error {
    Error::UnexpectedResponse {
        expected,
        got: got.kind(),
    }
}

// ---------------------------------------------------------------------------
// One request, one answer.

/// How a [`RoundTrip`] reads its answer.
type Answer<T> = fn(Result<Decoded<Response>, Error>) -> Result<T, Error>;

/// One request and one response: every operation but the listing and the
/// publishes.
pub(crate) struct RoundTrip<T> {
    request: Option<Request>,
    answer: Answer<T>,
}

impl<T> Operation for RoundTrip<T> {
    type Output = T;

    fn start(&mut self) -> Step<T> {
        let request = self.request.take().expect("a round trip starts once");
        Step::Next(Action::Send(request))
    }

    fn sent(&mut self, outcome: Result<(), Error>) -> Step<T> {
        match outcome {
            Ok(()) => Step::Next(Action::Receive),
            Err(e) => Step::Done(Err(e)),
        }
    }

    fn received(&mut self, answer: Result<Decoded<Response>, Error>) -> Step<T> {
        Step::Done((self.answer)(answer))
    }
}

fn round_trip<T>(request: Request, answer: Answer<T>) -> RoundTrip<T> {
    RoundTrip {
        request: Some(request),
        answer,
    }
}

/// What the daemon said when it accepted the handshake.
pub(crate) struct Welcome {
    pub(crate) server: String,
    pub(crate) limits: Limits,
    /// None from a daemon that speaks only protocol version 1.
    pub(crate) session: Option<SessionLimits>,
}

/// The greeting that opens every connection, asking for protocol
/// `version` (1 or 2; see [`memseal_proto::PROTOCOL_VERSION_2`]).
pub(crate) fn hello(client: String, version: u32) -> RoundTrip<Welcome> {
    let request = Request::Hello { version, client };
    round_trip(request, |answer| match answer.map(|a| a.message) {
        Ok(Response::Welcome {
            version: PROTOCOL_VERSION,
            server,
            limits,
        }) => Ok(Welcome {
            server,
            limits,
            session: None,
        }),
        Ok(Response::Greeting {
            version: PROTOCOL_VERSION_2,
            server,
            limits,
            session,
        }) => Ok(Welcome {
            server,
            limits,
            session: Some(session),
        }),
        Ok(Response::Welcome { version, .. } | Response::Greeting { version, .. }) => {
            Err(Error::Handshake(HandshakeError::Version {
                ours: PROTOCOL_VERSION_2,
                theirs: version,
            }))
        }
        Ok(other) => Err(Error::Handshake(HandshakeError::Unexpected {
            got: other.kind(),
        })),
        Err(Error::Server { code, message }) => {
            Err(Error::Handshake(HandshakeError::Refused { code, message }))
        }
        Err(e) => Err(e),
    })
}

/// An answer that must be the asset asked for: the name, and the version
/// or hash the selector named. A daemon that answers with another asset
/// breaks the protocol, however well sealed that asset is.
pub(crate) struct Picked<T> {
    name: String,
    selector: Selector,
    round_trip: RoundTrip<T>,
    info: fn(&T) -> &AssetInfo,
}

impl<T> Operation for Picked<T> {
    type Output = T;

    fn start(&mut self) -> Step<T> {
        self.round_trip.start()
    }

    fn sent(&mut self, outcome: Result<(), Error>) -> Step<T> {
        self.round_trip.sent(outcome)
    }

    fn received(&mut self, answer: Result<Decoded<Response>, Error>) -> Step<T> {
        match self.round_trip.received(answer) {
            Step::Done(Ok(answered)) => {
                let checked = answers(&self.name, self.selector, (self.info)(&answered));
                Step::Done(checked.map(|()| answered))
            }
            step => step,
        }
    }
}

/// Whether `info` answers a request for `name` with `selector`.
fn answers(name: &str, selector: Selector, info: &AssetInfo) -> Result<(), Error> {
    let picked = match selector {
        Selector::Latest => true,
        Selector::Version(version) => info.version == version,
        Selector::Hash(hash) => info.hash == hash,
    };
    if info.name == name && picked {
        return Ok(());
    }
    Err(Error::Protocol(FrameError::Protocol(format!(
        "asked for '{name}' ({}), the daemon answered with '{}' version {}",
        selector_text(selector),
        info.name,
        info.version
    ))))
}

fn selector_text(selector: Selector) -> String {
    match selector {
        Selector::Latest => "latest".to_owned(),
        Selector::Version(version) => format!("version {version}"),
        Selector::Hash(hash) => format!("hash {}", memseal_proto::message::hash_to_hex(&hash)),
    }
}

/// A fetch: the metadata and the descriptor, not yet verified.
pub(crate) fn fetch(name: &str, selector: Selector) -> Picked<(AssetInfo, OwnedFd)> {
    let request = Request::Fetch {
        name: name.to_owned(),
        selector,
    };
    let round_trip = round_trip(request, |answer| {
        let answer = answer?;
        match answer.message {
            Response::Asset(info) => {
                // The codec lets an `Asset` through only with exactly one
                // descriptor; stay correct if that ever changed.
                let fd = answer
                    .fd
                    .ok_or(Error::Protocol(FrameError::DescriptorCount {
                        declared: 1,
                        received: 0,
                    }))?;
                Ok((info, fd))
            }
            other => Err(unexpected("asset", &other)),
        }
    });
    Picked {
        name: name.to_owned(),
        selector,
        round_trip,
        info: |(info, _)| info,
    }
}

/// A batch fetch: one result per item, each the metadata and the (not yet
/// verified) descriptor, or why that item failed.
pub(crate) fn fetch_many(items: Vec<FetchItem>) -> FetchMany {
    FetchMany {
        asked: items
            .iter()
            .map(|item| (item.name.clone(), item.selector))
            .collect(),
        round_trip: round_trip(Request::FetchMany { items }, |answer| {
            let answer = answer?;
            let Response::Assets { items } = answer.message else {
                return Err(unexpected("assets", &answer.message));
            };
            // The codec checked that one descriptor came per item found.
            let mut fds = answer.batch.into_iter();
            items
                .into_iter()
                .map(|item| match item {
                    FetchResult::Asset(info) => {
                        let fd =
                            fds.next()
                                .ok_or(Error::Protocol(FrameError::DescriptorCount {
                                    declared: 1,
                                    received: 0,
                                }))?;
                        Ok(Ok((info, fd)))
                    }
                    FetchResult::Error(reply) => Ok(Err(Error::Server {
                        code: reply.code,
                        message: reply.message,
                    })),
                })
                .collect()
        }),
    }
}

/// A batch fetch: a round trip whose answer must hold one result per item
/// asked, in order, each asset the one its item asked for; anything else
/// would pin results on the wrong names.
pub(crate) struct FetchMany {
    asked: Vec<(String, Selector)>,
    round_trip: RoundTrip<Vec<Result<(AssetInfo, OwnedFd), Error>>>,
}

impl Operation for FetchMany {
    type Output = Vec<Result<(AssetInfo, OwnedFd), Error>>;

    fn start(&mut self) -> Step<Self::Output> {
        self.round_trip.start()
    }

    fn sent(&mut self, outcome: Result<(), Error>) -> Step<Self::Output> {
        self.round_trip.sent(outcome)
    }

    fn received(&mut self, answer: Result<Decoded<Response>, Error>) -> Step<Self::Output> {
        match self.round_trip.received(answer) {
            Step::Done(Ok(results)) if results.len() != self.asked.len() => {
                Step::Done(Err(Error::Protocol(FrameError::Protocol(format!(
                    "a batch of {} items was answered with {} results",
                    self.asked.len(),
                    results.len()
                )))))
            }
            Step::Done(Ok(results)) => {
                let mismatch = results.iter().zip(&self.asked).find_map(|(result, asked)| {
                    let (info, _) = result.as_ref().ok()?;
                    answers(&asked.0, asked.1, info).err()
                });
                match mismatch {
                    // Every descriptor of the batch is closed with it.
                    Some(e) => Step::Done(Err(e)),
                    None => Step::Done(Ok(results)),
                }
            }
            step => step,
        }
    }
}

/// The items of a batch request.
pub(crate) fn fetch_items(items: &[(&str, Selector)]) -> Vec<FetchItem> {
    items
        .iter()
        .map(|(name, selector)| FetchItem {
            name: (*name).to_owned(),
            selector: *selector,
        })
        .collect()
}

/// A stat: the metadata of one version.
pub(crate) fn stat(name: &str, selector: Selector) -> Picked<AssetInfo> {
    let request = Request::Stat {
        name: name.to_owned(),
        selector,
    };
    Picked {
        name: name.to_owned(),
        selector,
        round_trip: round_trip(request, |answer| match answer?.message {
            Response::Info(info) => Ok(info),
            other => Err(unexpected("info", &other)),
        }),
        info: |info| info,
    }
}

/// A removal of one version of `name`, or of all of them: how many went.
pub(crate) fn remove(name: &str, version: Option<u64>) -> RoundTrip<u64> {
    let request = Request::Remove {
        name: name.to_owned(),
        version,
    };
    round_trip(request, |answer| match answer?.message {
        Response::Removed { versions } => Ok(versions),
        other => Err(unexpected("removed", &other)),
    })
}

/// The daemon's counters.
pub(crate) fn status() -> RoundTrip<ServerStatus> {
    round_trip(Request::Status, |answer| match answer?.message {
        Response::Status(status) => Ok(status),
        other => Err(unexpected("status", &other)),
    })
}

/// Turn the connection into a watch of `prefix`; events follow.
pub(crate) fn watch(prefix: &str) -> RoundTrip<()> {
    let request = Request::Watch {
        prefix: prefix.to_owned(),
    };
    round_trip(request, |answer| match answer?.message {
        Response::Watching => Ok(()),
        other => Err(unexpected("watching", &other)),
    })
}

/// Become the resolver of `prefixes`; `Wanted` announcements follow.
pub(crate) fn resolve(prefixes: &[&str]) -> RoundTrip<()> {
    let request = Request::Resolve {
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
    };
    round_trip(request, |answer| match answer?.message {
        Response::Resolving => Ok(()),
        other => Err(unexpected("resolving", &other)),
    })
}

/// One message on a resolving connection: a name a client waits for.
pub(crate) fn wanted(answer: Response) -> Result<(String, Selector), Error> {
    match answer {
        Response::Wanted { name, selector } => Ok((name, selector)),
        other => Err(unexpected("wanted", &other)),
    }
}

/// A request that has no answer (`Unresolved` on a resolving connection).
pub(crate) struct OneWay {
    request: Option<Request>,
}

/// Tell the daemon that the wanted `name` cannot be supplied, and why.
pub(crate) fn unresolved(name: &str, selector: Selector, code: ErrorCode, message: &str) -> OneWay {
    OneWay {
        request: Some(Request::Unresolved {
            name: name.to_owned(),
            selector,
            error: ErrorReply {
                code,
                message: message.to_owned(),
            },
        }),
    }
}

impl Operation for OneWay {
    type Output = ();

    fn start(&mut self) -> Step<()> {
        Step::Next(Action::Send(self.request.take().expect("sent once")))
    }

    fn sent(&mut self, outcome: Result<(), Error>) -> Step<()> {
        Step::Done(outcome)
    }

    fn received(&mut self, _: Result<Decoded<Response>, Error>) -> Step<()> {
        unreachable!("a one-way request receives nothing")
    }
}

/// One message on a watching connection.
pub(crate) fn event(answer: Response) -> Result<Event, Error> {
    match answer {
        Response::Event(event) => Ok(event),
        other => Err(unexpected("event", &other)),
    }
}

// ---------------------------------------------------------------------------
// A listing, page by page.

/// Every name under a prefix: one request per page, following the cursor
/// the daemon gives until there is none.
pub(crate) struct Listing {
    prefix: String,
    start_after: Option<String>,
    assets: Vec<AssetInfo>,
}

/// The latest version of every name that starts with `prefix`.
pub(crate) fn list(prefix: &str) -> Listing {
    Listing {
        prefix: prefix.to_owned(),
        start_after: None,
        assets: Vec::new(),
    }
}

impl Listing {
    fn request_page(&self) -> Step<Vec<AssetInfo>> {
        Step::Next(Action::Send(Request::List {
            prefix: self.prefix.clone(),
            start_after: self.start_after.clone(),
        }))
    }
}

impl Operation for Listing {
    type Output = Vec<AssetInfo>;

    fn start(&mut self) -> Step<Self::Output> {
        self.request_page()
    }

    fn sent(&mut self, outcome: Result<(), Error>) -> Step<Self::Output> {
        match outcome {
            Ok(()) => Step::Next(Action::Receive),
            Err(e) => Step::Done(Err(e)),
        }
    }

    fn received(&mut self, answer: Result<Decoded<Response>, Error>) -> Step<Self::Output> {
        let (page, next) = match answer.map(|a| a.message) {
            Ok(Response::Listing { assets, next }) => (assets, next),
            Ok(other) => return Step::Done(Err(unexpected("listing", &other))),
            Err(e) => return Step::Done(Err(e)),
        };
        // Names come in order, so each cursor must pass the last; a daemon
        // that repeats one would keep the loop going forever.
        if let (Some(cursor), Some(last)) = (&next, &self.start_after) {
            if cursor <= last {
                return Step::Done(Err(Error::UnexpectedResponse {
                    expected: "a listing page that moves forward",
                    got: "a listing page that repeats an earlier one",
                }));
            }
        }
        self.assets.extend(page);
        match next {
            None => Step::Done(Ok(std::mem::take(&mut self.assets))),
            Some(cursor) => {
                self.start_after = Some(cursor);
                self.request_page()
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Publishing.

/// Where a publish stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The request frame is on its way.
    Requesting,
    /// Waiting for `Continue` (a streamed publish).
    AwaitingContinue,
    /// The body is on its way.
    SendingBody,
    /// Waiting for `Published`.
    AwaitingOutcome,
    /// A send failed because the daemon hung up: reading the reason it
    /// usually sends first.
    ReadingReason,
}

/// A publish: streamed (request, `Continue`, the body, `Published`) or
/// with the bytes as a descriptor on the request (request, `Published`).
pub(crate) struct Publish<'a> {
    request: Option<Request>,
    fd: Option<BorrowedFd<'a>>,
    stage: Stage,
    /// The send error to report if no reason arrives.
    hangup: Option<Error>,
}

/// A publish of `size` bytes that the driver streams after `Continue`.
pub(crate) fn publish_stream<'a>(name: &str, size: u64) -> Publish<'a> {
    Publish {
        request: Some(Request::Publish {
            name: name.to_owned(),
            size,
            source: PublishSource::Stream,
        }),
        fd: None,
        stage: Stage::Requesting,
        hangup: None,
    }
}

/// A publish whose `size` bytes travel as `fd` on the request.
pub(crate) fn publish_descriptor<'a>(name: &str, size: u64, fd: BorrowedFd<'a>) -> Publish<'a> {
    Publish {
        request: Some(Request::Publish {
            name: name.to_owned(),
            size,
            source: PublishSource::Descriptor,
        }),
        fd: Some(fd),
        stage: Stage::Requesting,
        hangup: None,
    }
}

/// True when sending failed because the daemon hung up, which it does in
/// the middle of a publish it refuses, after saying why.
fn is_hangup(error: &Error) -> bool {
    matches!(
        error,
        Error::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        )
    )
}

impl Operation for Publish<'_> {
    type Output = AssetInfo;

    fn start(&mut self) -> Step<AssetInfo> {
        let request = self.request.take().expect("a publish starts once");
        Step::Next(Action::Send(request))
    }

    fn descriptor(&self) -> Option<BorrowedFd<'_>> {
        self.fd
    }

    fn sent(&mut self, outcome: Result<(), Error>) -> Step<AssetInfo> {
        if let Err(e) = outcome {
            if !is_hangup(&e) {
                return Step::Done(Err(e));
            }
            self.hangup = Some(e);
            self.stage = Stage::ReadingReason;
            return Step::Next(Action::Receive);
        }
        self.stage = match (self.stage, self.fd) {
            (Stage::Requesting, None) => Stage::AwaitingContinue,
            _ => Stage::AwaitingOutcome,
        };
        Step::Next(Action::Receive)
    }

    fn received(&mut self, answer: Result<Decoded<Response>, Error>) -> Step<AssetInfo> {
        let answer = answer.map(|a| a.message);
        match self.stage {
            Stage::AwaitingContinue => match answer {
                Ok(Response::Continue) => {
                    self.stage = Stage::SendingBody;
                    Step::Next(Action::SendBody)
                }
                Ok(other) => Step::Done(Err(unexpected("continue", &other))),
                Err(e) => Step::Done(Err(e)),
            },
            Stage::AwaitingOutcome => match answer {
                Ok(Response::Published(info)) => Step::Done(Ok(info)),
                Ok(other) => Step::Done(Err(unexpected("published", &other))),
                Err(e) => Step::Done(Err(e)),
            },
            Stage::ReadingReason => {
                // The reason says more than "broken pipe".
                let hangup = self.hangup.take().expect("a hang-up to explain");
                match answer {
                    Err(reason @ Error::Server { .. }) => Step::Done(Err(reason)),
                    _ => Step::Done(Err(hangup)),
                }
            }
            Stage::Requesting | Stage::SendingBody => {
                unreachable!("a publish receives only after a send")
            }
        }
    }
}

/// The body of a streamed publish read from a source of the caller's, a
/// chunk at a time: what both drivers' readers share. The driver reads
/// into [`Upload::room`] and sends what [`Upload::filled`] gives back.
pub(crate) struct Upload {
    size: u64,
    left: u64,
    buffer: Vec<u8>,
}

/// How many bytes of a reader go out per `send` in a streamed publish.
const STREAM_CHUNK: usize = 256 * 1024;

impl Upload {
    pub(crate) fn new(size: u64) -> Upload {
        Upload {
            size,
            left: size,
            buffer: vec![0u8; STREAM_CHUNK.min(usize::try_from(size).unwrap_or(usize::MAX))],
        }
    }

    /// Where the next read goes, or None once every byte was read.
    pub(crate) fn room(&mut self) -> Option<&mut [u8]> {
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(self.buffer.len());
        (self.left > 0).then(|| &mut self.buffer[..want])
    }

    /// A read into the room returned `read`: the bytes to send now, or why
    /// the upload cannot go on (the source ended early, or failed).
    pub(crate) fn filled(&mut self, read: std::io::Result<usize>) -> Result<&[u8], Error> {
        match read {
            Ok(0) => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the data to publish ended after {} of {} bytes",
                    self.size - self.left,
                    self.size
                ),
            ))),
            Ok(got) => {
                self.left -= got as u64;
                Ok(&self.buffer[..got])
            }
            Err(e) => Err(Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read the data to publish: {e}"),
            ))),
        }
    }
}
