//! Turning a stream (a pipe, a terminal) into a sealed memfd.
//!
//! A stream publish must announce its size first, and a pipe's size is
//! unknown until it ends. So the CLI collects the bytes in a memfd of its
//! own, seals it, and hands the daemon the descriptor, which the daemon
//! adopts without copying.
//!
//! The memfd is filled with `write`, never through a mapping: `F_SEAL_WRITE`
//! fails with `EBUSY` while any writable shared mapping of the file exists.

use crate::failure::Failure;
use rustix::fs::{fchmod, fcntl_add_seals, memfd_create, MemfdFlags, Mode, SealFlags};
use rustix::io::{write, Errno};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};

/// The name the memfd shows in `/proc/PID/fd` and in the daemon's maps.
const MEMFD_NAME: &str = "memseal-publish";

/// How much is read from the input at a time.
const CHUNK: usize = 256 * 1024;

/// Read `input` to its end into a new memfd and seal it against writing,
/// growing, shrinking and further sealing.
///
/// Stops with a refusal as soon as the input passes `max_size` (the daemon's
/// announced limit), rather than buffering gigabytes the daemon would refuse.
pub fn read_sealed(mut input: impl Read, max_size: u64) -> Result<OwnedFd, Failure> {
    let memfd = create().map_err(|e| Failure::io("cannot create a memfd", e.into()))?;
    let mut buffer = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        let got = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::io("cannot read the input", e)),
        };
        total += got as u64;
        if total > max_size {
            return Err(Failure::refused(format!(
                "the input is larger than the daemon's limit of {} ({max_size} bytes)",
                crate::format::human_size(max_size)
            )));
        }
        write_all(&memfd, &buffer[..got])
            .map_err(|e| Failure::io("cannot fill the memfd", e.into()))?;
    }
    // Read-only for everyone, as the daemon makes its own memfds: a holder
    // could otherwise reopen this one read-write through /proc/self/fd. The
    // seals already stop every write; this stops the attempt.
    fchmod(&memfd, Mode::RUSR | Mode::RGRP | Mode::ROTH)
        .map_err(|e| Failure::io("cannot make the memfd read-only", e.into()))?;
    fcntl_add_seals(
        &memfd,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )
    .map_err(|e| Failure::io("cannot seal the memfd", e.into()))?;
    Ok(memfd)
}

/// A close-on-exec memfd that allows sealing and, where the kernel knows
/// how (Linux 6.3 and later), can never be made executable.
fn create() -> rustix::io::Result<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    match memfd_create(MEMFD_NAME, flags | MemfdFlags::NOEXEC_SEAL) {
        // Older kernels do not know MFD_NOEXEC_SEAL.
        Err(Errno::INVAL) => memfd_create(MEMFD_NAME, flags),
        other => other,
    }
}

fn write_all(fd: impl AsFd, mut bytes: &[u8]) -> rustix::io::Result<()> {
    while !bytes.is_empty() {
        match write(&fd, bytes) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
