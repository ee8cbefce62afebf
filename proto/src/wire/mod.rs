//! Moving frames and descriptors over a Unix stream socket.
//!
//! Descriptors ride as `SCM_RIGHTS` on the first byte of a frame. On a
//! stream socket the kernel may hand one `recvmsg` the tail of one frame and
//! the head of the next, but it ends the call right after the first chunk
//! that carries descriptors; the receiver uses that to tie descriptors to
//! the frame they started (see [`FrameBuffer`]), and refuses descriptors
//! that arrive in the middle of a frame.
//!
//! The module is in two parts, so that the rules live in code that never
//! touches a socket:
//!
//! - [`FrameBuffer`] (`buffer.rs`): the pure part. It offers room for the
//!   next receive ([`FrameBuffer::spare`]), is told what arrived
//!   ([`FrameBuffer::received`]), and hands out complete frames with their
//!   descriptors ([`FrameBuffer::next_frame`]). Every framing and
//!   descriptor rule is here.
//! - `socket.rs`: the system calls. [`receive`] does one `recvmsg` into a
//!   buffer's spare room, with a control buffer that has room for more
//!   descriptors than any frame may carry (so surplus ones are seen and
//!   closed rather than silently dropped by a plain `read`),
//!   `MSG_CMSG_CLOEXEC` so none leaks into a child, and a check of
//!   `MSG_CTRUNC`. [`FrameWriter`] sends a frame, its descriptor on the
//!   first byte. [`FrameReader`] puts a buffer and `receive` together for
//!   blocking sockets.
//!
//! The same buffer serves the blocking client and the tokio drivers of the
//! daemon and the async client (`tokio_io`, feature `tokio`).

mod buffer;
mod socket;

pub use buffer::FrameBuffer;
pub use socket::{receive, recv_raw, FrameReader, FrameWriter};

use std::os::fd::OwnedFd;

/// A complete frame as received: its payload (length prefix stripped) and
/// the descriptors that arrived with its first byte.
#[derive(Debug)]
pub struct RawFrame {
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

#[cfg(test)]
mod tests;
