//! The floor: the least work that can hand a sealed memfd from one process
//! to another and map it.
//!
//! Request: 8 bytes, the index of the asset wanted. Reply: 8 bytes, its
//! size, with the memfd riding on them as `SCM_RIGHTS`. The client then
//! checks the seals, takes the size and maps the file ([`SealedMap`]), and
//! the fetch ends when the mapping and the descriptor are dropped. There
//! is no framing, no names, no catalog, no async runtime: whatever memseal
//! spends above this is the price of its protocol and its checks.
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

fn serve_connection(mut stream: UnixStream, assets: &[(u64, OwnedFd)]) -> io::Result<()> {
    let mut request = [0u8; 8];
    loop {
        stream.read_exact(&mut request)?;
        let index = u64::from_le_bytes(request) as usize;
        let (size, fd) = assets
            .get(index)
            .ok_or_else(|| io::Error::other("no such floor asset"))?;
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [fd.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let reply = size.to_le_bytes();
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
        self.stream.write_all(&(index as u64).to_le_bytes())?;
        let mut reply = [0u8; 8];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = recvmsg(
            &self.stream,
            &mut [IoSliceMut::new(&mut reply)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fd = None;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = message {
                fd = fds.next();
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) || msg.bytes != reply.len() {
            return Err(io::Error::other("malformed reply from the floor server"));
        }
        let fd = fd.ok_or_else(|| io::Error::other("the floor server sent no descriptor"))?;
        let map = SealedMap::new(fd.as_fd())?;
        if map.as_slice().len() as u64 != u64::from_le_bytes(reply) {
            return Err(io::Error::other("the floor asset has the wrong size"));
        }
        // `fd` closes here; the mapping keeps the file alive until dropped.
        Ok(map)
    }
}
