//! `memseal publish NAME [FILE|-]`

use crate::args::PublishArgs;
use crate::failure::Failure;
use crate::format::{asset_json, human_size};
use crate::memfd;
use crate::output::Output;
use crate::progress::Progress;
use memseal::proto::message::hash_to_hex;
use memseal::proto::name::validate_name;
use memseal::{AssetInfo, Client};
use rustix::fs::{fstat, FileType};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// Publish the file or standard input and print what was published.
pub fn run(client: &mut Client, args: &PublishArgs, out: &mut Output) -> Result<(), Failure> {
    // Checked here too, so a bad name is refused before a large input is
    // read; the daemon remains the authority.
    validate_name(&args.name)
        .map_err(|e| Failure::refused(format!("invalid asset name '{}': {e}", args.name)))?;

    let info = if args.file == Path::new("-") {
        let stdin = io::stdin();
        publish_input(
            client,
            &args.name,
            stdin.as_fd(),
            stdin.lock(),
            "standard input",
        )?
    } else {
        let file = File::open(&args.file)
            .map_err(|e| Failure::io(format!("cannot open {}", args.file.display()), e))?;
        let label = args.file.display().to_string();
        publish_input(client, &args.name, file.as_fd(), &file, &label)?
    };

    if out.json {
        return out.json(&asset_json(&info));
    }
    out.text(&format!(
        "published {} version {}: {} ({} bytes), blake3 {}\n",
        info.name,
        info.version,
        human_size(info.size),
        info.size,
        hash_to_hex(&info.hash)
    ))
}

/// Publish whatever `fd` is: a regular file by descriptor, anything else by
/// collecting `reader` (the same input) into a sealed memfd.
fn publish_input(
    client: &mut Client,
    name: &str,
    fd: BorrowedFd<'_>,
    reader: impl Read,
    label: &str,
) -> Result<AssetInfo, Failure> {
    let stat = fstat(fd).map_err(|e| Failure::io(format!("cannot inspect {label}"), e.into()))?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => {
            let file = File::from(
                fd.try_clone_to_owned()
                    .map_err(|e| Failure::io(format!("cannot duplicate {label}"), e))?,
            );
            // The daemon copies and hashes the file in one request: there
            // is no progress to show, only that it is working.
            let size = u64::try_from(stat.st_size).unwrap_or(0);
            let _spinner = Progress::waiting(
                size,
                &format!(
                    "publishing {name} ({}): memseald copies and hashes it",
                    human_size(size)
                ),
            );
            Ok(client.publish_file(name, &file)?)
        }
        FileType::Directory => Err(Failure::refused(format!(
            "{label} is a directory; publish one file at a time"
        ))),
        _ => {
            let memfd = memfd::read_sealed(reader, client.limits().max_asset_size)?;
            Ok(client.publish_sealed(name, memfd.as_fd())?)
        }
    }
}
