//! The requests the client makes and how it reads their answers, apart from
//! how the bytes travel.
//!
//! The blocking [`Client`](crate::Client) and the async client (feature
//! `tokio`) move frames differently, one with blocking system calls, the
//! other driven by readiness, but they ask the same questions and must
//! accept exactly the same answers. Both build their requests and check
//! their responses here, so a rule (a fetch answer carries one descriptor,
//! a listing cursor must move forward) is written once.

use crate::error::{Error, HandshakeError};
use memseal_proto::codec::{self, Decoded};
use memseal_proto::wire::RawFrame;
use memseal_proto::{
    AssetInfo, Event, FrameError, Limits, Request, Response, Selector, ServerStatus,
    PROTOCOL_VERSION,
};
use std::os::fd::OwnedFd;

/// The greeting that opens every connection.
pub(crate) fn hello(client: String) -> Request {
    Request::Hello {
        version: PROTOCOL_VERSION,
        client,
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

/// The answer to [`hello`]: the daemon's name and limits, or why the
/// handshake failed.
pub(crate) fn welcome(answer: Result<Response, Error>) -> Result<(String, Limits), Error> {
    match answer {
        Ok(Response::Welcome {
            version,
            server,
            limits,
        }) if version == PROTOCOL_VERSION => Ok((server, limits)),
        Ok(Response::Welcome { version, .. }) => Err(Error::Handshake(HandshakeError::Version {
            ours: PROTOCOL_VERSION,
            theirs: version,
        })),
        Ok(other) => Err(Error::Handshake(HandshakeError::Unexpected {
            got: other.kind(),
        })),
        Err(Error::Server { code, message }) => {
            Err(Error::Handshake(HandshakeError::Refused { code, message }))
        }
        Err(e) => Err(e),
    }
}

/// A fetch of `name`.
pub(crate) fn fetch(name: &str, selector: Selector) -> Request {
    Request::Fetch {
        name: name.to_owned(),
        selector,
    }
}

/// The answer to a fetch: the metadata and the (not yet verified)
/// descriptor.
pub(crate) fn asset(answer: Decoded<Response>) -> Result<(AssetInfo, OwnedFd), Error> {
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
}

/// A stat of `name`.
pub(crate) fn stat(name: &str, selector: Selector) -> Request {
    Request::Stat {
        name: name.to_owned(),
        selector,
    }
}

/// The answer to a stat.
pub(crate) fn info(answer: Response) -> Result<AssetInfo, Error> {
    match answer {
        Response::Info(info) => Ok(info),
        other => Err(unexpected("info", &other)),
    }
}

/// One page of a listing of `prefix`.
pub(crate) fn list(prefix: &str, start_after: Option<String>) -> Request {
    Request::List {
        prefix: prefix.to_owned(),
        start_after,
    }
}

/// The answer to one listing request: the page, and the cursor of the next
/// page if there is one. `start_after` is the cursor this page was asked
/// with.
pub(crate) fn listing(
    answer: Response,
    start_after: Option<&String>,
) -> Result<(Vec<AssetInfo>, Option<String>), Error> {
    let (assets, next) = match answer {
        Response::Listing { assets, next } => (assets, next),
        other => return Err(unexpected("listing", &other)),
    };
    // Names come in order, so each cursor must pass the last; a daemon that
    // repeats one would keep the caller's loop going forever.
    if let (Some(cursor), Some(last)) = (&next, start_after) {
        if cursor <= last {
            return Err(Error::UnexpectedResponse {
                expected: "a listing page that moves forward",
                got: "a listing page that repeats an earlier one",
            });
        }
    }
    Ok((assets, next))
}

/// A removal of one version of `name`, or of all of them.
pub(crate) fn remove(name: &str, version: Option<u64>) -> Request {
    Request::Remove {
        name: name.to_owned(),
        version,
    }
}

/// The answer to a removal: how many versions went.
pub(crate) fn removed(answer: Response) -> Result<u64, Error> {
    match answer {
        Response::Removed { versions } => Ok(versions),
        other => Err(unexpected("removed", &other)),
    }
}

/// The answer to a status request.
pub(crate) fn status(answer: Response) -> Result<ServerStatus, Error> {
    match answer {
        Response::Status(status) => Ok(status),
        other => Err(unexpected("status", &other)),
    }
}

/// The go-ahead for a streamed publish.
pub(crate) fn proceed(answer: Response) -> Result<(), Error> {
    match answer {
        Response::Continue => Ok(()),
        other => Err(unexpected("continue", &other)),
    }
}

/// The final answer to a publish.
pub(crate) fn published(answer: Response) -> Result<AssetInfo, Error> {
    match answer {
        Response::Published(info) => Ok(info),
        other => Err(unexpected("published", &other)),
    }
}

/// A watch of `prefix`.
pub(crate) fn watch(prefix: &str) -> Request {
    Request::Watch {
        prefix: prefix.to_owned(),
    }
}

/// The answer to a watch request.
pub(crate) fn watching(answer: Response) -> Result<(), Error> {
    match answer {
        Response::Watching => Ok(()),
        other => Err(unexpected("watching", &other)),
    }
}

/// One message on a watching connection.
pub(crate) fn event(answer: Response) -> Result<Event, Error> {
    match answer {
        Response::Event(event) => Ok(event),
        other => Err(unexpected("event", &other)),
    }
}

/// True when sending failed because the daemon hung up, which it does in
/// the middle of a publish it refuses, after saying why: the caller should
/// read that reason and report it instead.
pub(crate) fn is_hangup(error: &Error) -> bool {
    matches!(
        error,
        Error::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        )
    )
}

/// A response of the wrong kind.
pub(crate) fn unexpected(expected: &'static str, got: &Response) -> Error {
    Error::UnexpectedResponse {
        expected,
        got: got.kind(),
    }
}

/// How many bytes of a reader go out per `send` in a streamed publish.
pub(crate) const STREAM_CHUNK: usize = 256 * 1024;

/// The buffer for streaming `size` bytes: a chunk, or less for a small upload.
pub(crate) fn stream_buffer(size: u64) -> Vec<u8> {
    vec![0u8; STREAM_CHUNK.min(usize::try_from(size).unwrap_or(usize::MAX))]
}

/// The caller's data ended after `sent` of the `size` bytes it promised.
pub(crate) fn upload_ended(sent: u64, size: u64) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the data to publish ended after {sent} of {size} bytes"),
    ))
}

/// The caller's data could not be read.
pub(crate) fn upload_unreadable(e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("cannot read the data to publish: {e}"),
    ))
}
