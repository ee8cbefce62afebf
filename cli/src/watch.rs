//! `memseal watch [PREFIX]`

use crate::args::WatchArgs;
use crate::failure::Failure;
use crate::format::{asset_json, human_size, HASH_PREFIX_LEN};
use crate::output::Output;
use memseal::proto::message::hash_to_hex;
use memseal::{Client, Event};

/// Print one line per event, flushed at once so a pipe sees it live, until
/// the daemon goes away (an error) or the user interrupts.
pub fn run(client: Client, args: &WatchArgs, out: &mut Output) -> Result<(), Failure> {
    let watcher = client.into_watcher(&args.prefix)?;
    for event in watcher {
        let line = if out.json {
            event_json(&event?)
        } else {
            event_text(&event?)
        };
        out.text(&line)?;
    }
    Ok(())
}

/// `published models/en.bin version 3 (1.5 MiB, blake3 3f2a9c1b0d4e)`
fn event_text(event: &Event) -> String {
    match event {
        Event::Published(info) => format!(
            "published {} version {} ({}, blake3 {})\n",
            info.name,
            info.version,
            human_size(info.size),
            &hash_to_hex(&info.hash)[..HASH_PREFIX_LEN]
        ),
        Event::Removed(info) => format!("removed {} version {}\n", info.name, info.version),
    }
}

/// One JSON object per line: the asset's fields and `"event"`.
fn event_json(event: &Event) -> String {
    let (kind, info) = match event {
        Event::Published(info) => ("published", info),
        Event::Removed(info) => ("removed", info),
    };
    let mut value = asset_json(info);
    value["event"] = kind.into();
    format!("{value}\n")
}
