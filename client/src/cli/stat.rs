//! `memseal stat NAME [--version N | --hash HEX]`

use super::args::StatArgs;
use super::failure::Failure;
use super::format::{age, asset_json, human_size, pairs, utc_timestamp};
use super::output::Output;
use memseal::proto::message::hash_to_hex;
use memseal::Client;

/// Show every field of one version.
pub fn run(client: &mut Client, args: &StatArgs, out: &mut Output) -> Result<(), Failure> {
    let info = client.stat(&args.name, args.selector.selector())?;
    if out.json {
        return out.json(&asset_json(&info));
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
    ];
    out.text(&pairs(&rows))
}
