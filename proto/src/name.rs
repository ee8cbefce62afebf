//! Asset names.
//!
//! A name is 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `.`, `_`,
//! `-` and `/`. The slash separates segments, so names read like paths
//! (`models/en/tokenizer.json`) and a prefix selects a subtree for listings
//! and access rules. A name does not start or end with a slash, has no empty
//! segment, and no segment is `.` or `..`: names are never file paths, but
//! tools that mirror them onto a file system must not be tricked into
//! leaving their directory.

use std::fmt;

/// The longest valid name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a name (or a prefix) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong { len: usize },
    BadChar { index: usize, byte: u8 },
    LeadingSlash,
    TrailingSlash,
    EmptySegment,
    DotSegment,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "the name is empty"),
            NameError::TooLong { len } => {
                write!(f, "the name is {len} bytes long; the limit is {MAX_NAME_LEN}")
            }
            NameError::BadChar { index, byte } => write!(
                f,
                "byte {index} (0x{byte:02x}) is not allowed; names use ASCII letters, digits, '.', '_', '-' and '/'"
            ),
            NameError::LeadingSlash => write!(f, "a name must not start with '/'"),
            NameError::TrailingSlash => write!(f, "a name must not end with '/'"),
            NameError::EmptySegment => write!(f, "a name must not contain '//'"),
            NameError::DotSegment => write!(f, "a name must not have a '.' or '..' segment"),
        }
    }
}

impl std::error::Error for NameError {}

fn allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b'/')
}

fn check_chars(text: &str) -> Result<(), NameError> {
    if text.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: text.len() });
    }
    match text.bytes().enumerate().find(|&(_, b)| !allowed(b)) {
        Some((index, byte)) => Err(NameError::BadChar { index, byte }),
        None => Ok(()),
    }
}

/// Check that `name` is a valid asset name.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    check_chars(name)?;
    if name.starts_with('/') {
        return Err(NameError::LeadingSlash);
    }
    if name.ends_with('/') {
        return Err(NameError::TrailingSlash);
    }
    for segment in name.split('/') {
        match segment {
            "" => return Err(NameError::EmptySegment),
            "." | ".." => return Err(NameError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

/// Check that `prefix` can select names in a listing: empty (everything), or
/// the start of some valid name, so the same charset and length apply and it
/// may end with '/'.
pub fn validate_prefix(prefix: &str) -> Result<(), NameError> {
    check_chars(prefix)?;
    if prefix.starts_with('/') {
        return Err(NameError::LeadingSlash);
    }
    if prefix.contains("//") {
        return Err(NameError::EmptySegment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_path_like_names() {
        for name in [
            "a",
            "models/en/tokenizer.json",
            "x-1_2.bin",
            "a/b.c/d",
            "..a",
            "a..",
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
        assert_eq!(validate_name(&"n".repeat(MAX_NAME_LEN)), Ok(()));
    }

    #[test]
    fn refuses_tricks() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("/etc/passwd"), Err(NameError::LeadingSlash));
        assert_eq!(validate_name("a/"), Err(NameError::TrailingSlash));
        assert_eq!(validate_name("a//b"), Err(NameError::EmptySegment));
        assert_eq!(validate_name("a/../b"), Err(NameError::DotSegment));
        assert_eq!(validate_name(".."), Err(NameError::DotSegment));
        assert_eq!(validate_name("./a"), Err(NameError::DotSegment));
        assert_eq!(
            validate_name("a b"),
            Err(NameError::BadChar {
                index: 1,
                byte: b' '
            })
        );
        assert!(matches!(
            validate_name("é"),
            Err(NameError::BadChar { index: 0, .. })
        ));
        assert!(matches!(
            validate_name("a\0"),
            Err(NameError::BadChar { index: 1, .. })
        ));
        assert_eq!(
            validate_name(&"n".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong {
                len: MAX_NAME_LEN + 1
            })
        );
    }

    #[test]
    fn prefixes() {
        for prefix in ["", "models/", "models/en", "a."] {
            assert_eq!(validate_prefix(prefix), Ok(()), "{prefix}");
        }
        assert!(validate_prefix("/").is_err());
        assert!(validate_prefix("a//").is_err());
        assert!(validate_prefix("a b").is_err());
    }
}
