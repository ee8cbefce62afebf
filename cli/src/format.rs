//! Turning assets into JSON, and the text shared with memseal-fleet
//! (sizes, durations, dates, tables: the `memseal-text` crate).

use memseal::proto::message::hash_to_hex;
use memseal::AssetInfo;
pub use memseal_text::{age, human_duration, human_size, pairs, table, utc_timestamp};
use serde_json::{json, Value};

/// How many hex digits of a hash a table shows: enough to tell versions
/// apart at a glance; `stat` shows all 64.
pub const HASH_PREFIX_LEN: usize = 12;

/// An asset as a JSON object; the hash as 64 lower-case hex digits.
pub fn asset_json(info: &AssetInfo) -> Value {
    json!({
        "name": info.name,
        "version": info.version,
        "size": info.size,
        "hash": hash_to_hex(&info.hash),
        "published_ms": info.published_ms,
        "publisher_uid": info.publisher_uid,
    })
}
