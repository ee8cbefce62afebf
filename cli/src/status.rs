//! `memseal status`

use crate::failure::Failure;
use crate::format::{human_duration, human_size, pairs};
use crate::output::Output;
use memseal::{Client, ShmemHugePages};
use serde_json::json;
use std::time::Duration;

/// Show the daemon's counters and the limits it announced.
pub fn run(client: &mut Client, out: &mut Output) -> Result<(), Failure> {
    let status = client.status()?;
    let limits = *client.limits();
    let socket = client.socket_path().display().to_string();
    let reached = client.socket_choice().describe();
    let huge_pages = match ShmemHugePages::read() {
        Ok(setting) => setting.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    if out.json {
        return out.json(&json!({
            "socket": socket,
            "socket_choice": reached,
            "server": status.server,
            "uptime_ms": status.uptime_ms,
            "names": status.names,
            "versions": status.versions,
            "blobs": status.blobs,
            "bytes": status.bytes,
            "connections": status.connections,
            "huge_pages": huge_pages,
            "limits": {
                "max_frame_len": limits.max_frame_len,
                "max_asset_size": limits.max_asset_size,
                "max_total_bytes": limits.max_total_bytes,
                "max_name_len": limits.max_name_len,
                "keep_versions": limits.keep_versions,
            },
        }));
    }
    let rows = [
        ("server", status.server.clone()),
        ("socket", format!("{socket} ({reached})")),
        (
            "uptime",
            human_duration(Duration::from_millis(status.uptime_ms)),
        ),
        ("names", status.names.to_string()),
        ("versions", status.versions.to_string()),
        ("blobs", status.blobs.to_string()),
        (
            "bytes",
            format!("{} ({} bytes)", human_size(status.bytes), status.bytes),
        ),
        ("connections", status.connections.to_string()),
        ("huge pages", huge_pages),
        ("max asset", human_size(limits.max_asset_size)),
        ("budget", human_size(limits.max_total_bytes)),
        (
            "keeps",
            format!("{} version(s) per name", limits.keep_versions),
        ),
    ];
    out.text(&pairs(&rows))
}
