//! The floor: the least work that can hand a sealed memfd from one process
//! to another and map it.
//!
//! Request: 8 bytes, two little-endian `u32`s: the index of the first
//! asset wanted and how many (one for a fetch, more for a batch of
//! consecutive assets). Reply: 8 bytes per asset, its size, with the memfds
//! riding on them as one `SCM_RIGHTS` message. The client then checks the
//! seals, takes the size and maps each file ([`SealedMap`]), and the fetch
//! ends when the mappings and the descriptors are dropped. There is no
//! framing, no names, no catalog, no async runtime: whatever memseal spends
//! above this is the price of its protocol and its checks.
//!
//! The server runs in its own process, like the daemon: the harness starts
//! its own binary again in server mode (`memseal-bench floor-server`).

use crate::data;
use crate::mapping::SealedMap;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Serve sealed memfds of `sizes` on `socket` until standard input closes.
/// Prints `ready` on standard output once it accepts connections.
pub fn serve(socket: &Path, sizes: &[usize]) -> io::Result<()> {
    let assets = sizes
        .iter()
        .map(|&size| {
            Ok((
                size as u64,
                data::sealed_memfd("floor", &data::content(size))?,
            ))
        })
        .collect::<io::Result<Vec<(u64, OwnedFd)>>>()?;
    let assets: &'static [(u64, OwnedFd)] = Box::leak(assets.into_boxed_slice());
    let listener = UnixListener::bind(socket)?;
    // The harness holds our stdin; when it closes it (or dies), stop.
    std::thread::spawn(|| {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        std::process::exit(0);
    });
    println!("ready");
    io::stdout().flush()?;
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            // A client that leaves ends its thread; nothing to report.
            let _ = serve_connection(stream, assets);
        });
    }
    Ok(())
}

/// The most assets one floor request may name: as many as memseal's
/// largest batch.
pub const MOST_PER_REQUEST: usize = 64;

fn serve_connection(mut stream: UnixStream, assets: &[(u64, OwnedFd)]) -> io::Result<()> {
    let mut request = [0u8; 8];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MOST_PER_REQUEST))];
    let mut reply = Vec::with_capacity(8 * MOST_PER_REQUEST);
    let mut fds = Vec::with_capacity(MOST_PER_REQUEST);
    loop {
        stream.read_exact(&mut request)?;
        let (first, count) = decode_request(request);
        let wanted = assets
            .get(first..first.saturating_add(count))
            .filter(|wanted| (1..=MOST_PER_REQUEST).contains(&wanted.len()))
            .ok_or_else(|| io::Error::other("no such floor assets"))?;
        reply.clear();
        fds.clear();
        for (size, fd) in wanted {
            reply.extend_from_slice(&size.to_le_bytes());
            fds.push(fd.as_fd());
        }
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let sent = sendmsg(
            &stream,
            &[IoSlice::new(&reply)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        if sent != reply.len() {
            return Err(io::Error::other("short send"));
        }
    }
}

fn encode_request(first: usize, count: usize) -> io::Result<[u8; 8]> {
    let first = u32::try_from(first).map_err(io::Error::other)?;
    let count = u32::try_from(count).map_err(io::Error::other)?;
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&first.to_le_bytes());
    request[4..].copy_from_slice(&count.to_le_bytes());
    Ok(request)
}

fn decode_request(request: [u8; 8]) -> (usize, usize) {
    let [a, b, c, d, e, f, g, h] = request;
    (
        u32::from_le_bytes([a, b, c, d]) as usize,
        u32::from_le_bytes([e, f, g, h]) as usize,
    )
}

/// A connection to the floor server.
pub struct FloorClient {
    stream: UnixStream,
}

impl FloorClient {
    /// Connect to a floor server.
    pub fn connect(socket: &Path) -> io::Result<FloorClient> {
        Ok(FloorClient {
            stream: UnixStream::connect(socket)?,
        })
    }

    /// Fetch the asset at `index` and map it.
    pub fn fetch(&mut self, index: usize) -> io::Result<SealedMap> {
        self.stream.write_all(&encode_request(index, 1)?)?;
        let mut reply = [0u8; 8];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut fds = self.receive(&mut reply, &mut space)?;
        let fd = fds
            .pop()
            .filter(|_| fds.is_empty())
            .ok_or_else(|| io::Error::other("the floor server sent no descriptor"))?;
        // `fd` closes here; the mapping keeps the file alive until dropped.
        map_checked(fd, reply)
    }

    /// Fetch the `count` assets from `first` on in one round trip, and map
    /// each: the floor of a batch.
    pub fn fetch_many(&mut self, first: usize, count: usize) -> io::Result<Vec<SealedMap>> {
        if !(1..=MOST_PER_REQUEST).contains(&count) {
            return Err(io::Error::other("a floor batch is 1 to 64 assets"));
        }
        self.stream.write_all(&encode_request(first, count)?)?;
        let mut reply = [0u8; 8 * MOST_PER_REQUEST];
        let reply = &mut reply[..8 * count];
        let mut space =
            [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MOST_PER_REQUEST))];
        let fds = self.receive(reply, &mut space)?;
        if fds.len() != count {
            return Err(io::Error::other(
                "the floor server sent too few descriptors",
            ));
        }
        fds.into_iter()
            .zip(reply.chunks_exact(8))
            .map(|(fd, size)| map_checked(fd, size.try_into().expect("8-byte chunks")))
            .collect()
    }

    /// Receive one whole reply into `reply` and the descriptors riding on it.
    fn receive(&self, reply: &mut [u8], space: &mut [MaybeUninit<u8>]) -> io::Result<Vec<OwnedFd>> {
        let mut control = RecvAncillaryBuffer::new(space);
        let msg = recvmsg(
            &self.stream,
            &mut [IoSliceMut::new(reply)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut received = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                received.extend(fds);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) || msg.bytes != reply.len() {
            return Err(io::Error::other("malformed reply from the floor server"));
        }
        Ok(received)
    }
}

/// Map `fd`, checking that its size is the `size` the reply announced.
fn map_checked(fd: OwnedFd, size: [u8; 8]) -> io::Result<SealedMap> {
    let map = SealedMap::new(fd.as_fd())?;
    if map.as_slice().len() as u64 != u64::from_le_bytes(size) {
        return Err(io::Error::other("the floor asset has the wrong size"));
    }
    Ok(map)
}
