//! `memseal exec --asset NAME[=VAR] ... -- COMMAND [ARGS]`
//!
//! Hands verified assets to a program written in any language. The
//! program needs no memseal library: it finds a descriptor number in
//! `MEMSEAL_FD_<VAR>` and maps it, or opens `/proc/self/fd/N` read-only.
//!
//! Each descriptor the program inherits is a fresh read-only open of the
//! sealed memfd rather than a duplicate of ours, so it has a file offset of
//! its own: a program that reads it with `read` starts at byte 0 whatever
//! anyone else did. Where `/proc` is not mounted, a duplicate with
//! close-on-exec cleared stands in.

use crate::args::{AssetSpec, ExecArgs};
use crate::failure::{Failure, Status};
use memseal::proto::message::hash_to_hex;
use memseal::{AssetInfo, Client};
use rustix::fs::{open, Mode, OFlags};
use rustix::io::{fcntl_setfd, FdFlags};
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Fetch and verify every asset, then replace this process with the
/// command. Returns only on failure.
pub fn run(mut client: Client, args: &ExecArgs) -> Result<(), Failure> {
    let mut seen = HashSet::new();
    for spec in &args.assets {
        if !seen.insert(spec.var.as_str()) {
            return Err(Failure::new(
                Status::Usage,
                format!(
                    "two assets would both be passed as MEMSEAL_FD_{}; give one of them \
                     another variable with --asset NAME=VAR",
                    spec.var
                ),
            ));
        }
    }

    let (program, arguments) = args
        .command
        .split_first()
        .ok_or_else(|| Failure::new(Status::Usage, "no command to run after `--`"))?;
    let mut command = Command::new(program);
    command.args(arguments);
    // Kept open until `exec`: they are what the command inherits.
    let mut inherited: Vec<OwnedFd> = Vec::with_capacity(args.assets.len());
    for spec in &args.assets {
        let asset = client.fetch(&spec.name)?;
        let info = asset.info().clone();
        // Verified by the fetch; the mapping itself is not needed here.
        let sealed = asset.into_fd();
        let fd = inheritable(sealed.as_fd())
            .map_err(|e| Failure::io(format!("cannot pass {} to the command", spec.name), e))?;
        export(&mut command, spec, &info, fd.as_raw_fd());
        inherited.push(fd);
    }
    // The daemon connection is close-on-exec; closing it now tells the
    // daemon at once.
    drop(client);

    let error = command.exec();
    let status = if error.kind() == io::ErrorKind::NotFound {
        Status::CommandNotFound
    } else {
        Status::CannotExec
    };
    Err(Failure::new(
        status,
        format!("cannot run {}: {error}", program.to_string_lossy()),
    ))
}

/// A descriptor of the same sealed file that survives `exec`.
fn inheritable(sealed: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", sealed.as_raw_fd());
    // No O_CLOEXEC: this one is meant for the command.
    match open(path.as_str(), OFlags::RDONLY, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(_) => {
            let fd = sealed.try_clone_to_owned()?;
            fcntl_setfd(&fd, FdFlags::empty())?;
            Ok(fd)
        }
    }
}

/// Set the variables that describe one passed asset.
fn export(command: &mut Command, spec: &AssetSpec, info: &AssetInfo, fd: i32) {
    let var = &spec.var;
    command
        .env(format!("MEMSEAL_FD_{var}"), fd.to_string())
        .env(format!("MEMSEAL_SIZE_{var}"), info.size.to_string())
        .env(format!("MEMSEAL_HASH_{var}"), hash_to_hex(&info.hash))
        .env(format!("MEMSEAL_VERSION_{var}"), info.version.to_string());
}
