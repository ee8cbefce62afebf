//! `memseal stat NAME [--version N | --hash HEX]`

use crate::args::StatArgs;
use crate::failure::Failure;
use crate::format::{age, asset_json, human_size, pairs, utc_timestamp};
use crate::output::Output;
use memseal::proto::message::hash_to_hex;
use memseal::{Client, ShmemHugePages};
use serde_json::json;

/// The smallest asset a huge page can back.
const HUGE_PAGE: u64 = 2 << 20;

/// Show every field of one version.
pub fn run(client: &mut Client, args: &StatArgs, out: &mut Output) -> Result<(), Failure> {
    let info = client.stat(&args.name, args.selector.selector())?;
    let huge = huge_pages(info.size);
    if out.json {
        let mut value = asset_json(&info);
        value["huge_pages"] = json!({ "usable": huge.0, "why": huge.1 });
        return out.json(&value);
    }
    let rows = [
        ("name", info.name.clone()),
        ("version", info.version.to_string()),
        (
            "size",
            format!("{} ({} bytes)", human_size(info.size), info.size),
        ),
        ("blake3", hash_to_hex(&info.hash)),
        (
            "published",
            format!(
                "{} ({} ago)",
                utc_timestamp(info.published_ms),
                age(info.published_ms)
            ),
        ),
        ("publisher", format!("uid {}", info.publisher_uid)),
        ("huge pages", huge.1),
    ];
    out.text(&pairs(&rows))
}

/// Whether readers can map an asset of `size` bytes with huge pages, and
/// why, as far as this host says. The daemon and this command normally run
/// on the same host, which owns the setting.
pub fn huge_pages(size: u64) -> (bool, String) {
    if size < HUGE_PAGE {
        return (false, "no (smaller than one 2 MiB huge page)".to_owned());
    }
    match ShmemHugePages::read() {
        Ok(setting) => (setting.usable(), setting.to_string()),
        Err(e) => (false, format!("unknown ({e})")),
    }
}
