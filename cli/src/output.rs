//! Where a command's results go: standard output, as text or as JSON.

use crate::failure::Failure;
use serde_json::Value;
use std::io::{self, Write};

/// Standard output, and whether the user asked for JSON.
pub struct Output {
    /// True with `--json`.
    pub json: bool,
    stdout: io::StdoutLock<'static>,
}

impl Output {
    /// Standard output, locked for the whole command.
    pub fn new(json: bool) -> Output {
        Output {
            json,
            stdout: io::stdout().lock(),
        }
    }

    /// Print text as it is.
    pub fn text(&mut self, text: &str) -> Result<(), Failure> {
        self.bytes(text.as_bytes())
    }

    /// Print a JSON value, pretty, on its own lines.
    pub fn json(&mut self, value: &Value) -> Result<(), Failure> {
        let mut text = serde_json::to_string_pretty(value)
            .map_err(|e| Failure::io("cannot format JSON", e.into()))?;
        text.push('\n');
        self.text(&text)
    }

    /// Print raw bytes, as `get` does.
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stdout
            .write_all(bytes)
            .and_then(|()| self.stdout.flush())
            .map_err(Failure::output)
    }
}
