//! What `/proc/self/smaps` says about one mapping of this process: the
//! proof that an option did what it claims (huge pages really mapped,
//! copy-on-write pages really private), not just that the call succeeded.

use std::io;

/// The fields of one mapping that the options change, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MappingUsage {
    /// Resident pages of the mapping.
    pub rss_kib: u64,
    /// Shared-memory (memfd) pages mapped by PMD entries: huge pages.
    pub shmem_pmd_mapped_kib: u64,
    /// Pages private to this process: the copies copy-on-write made.
    pub anonymous_kib: u64,
}

/// The usage of the mapping of this process that contains `addr`.
pub fn usage_at(addr: *const u8) -> io::Result<MappingUsage> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    parse(&smaps, addr as usize).ok_or_else(|| {
        io::Error::other(format!("no mapping contains {addr:p} in /proc/self/smaps"))
    })
}

/// The usage of the mapping containing `addr`, from the text of an smaps
/// file; `None` when no mapping contains it.
fn parse(smaps: &str, addr: usize) -> Option<MappingUsage> {
    let mut usage: Option<MappingUsage> = None;
    for line in smaps.lines() {
        if let Some((start, end)) = header_range(line) {
            if usage.is_some() {
                // The next mapping starts: the one wanted is complete.
                break;
            }
            if (start..end).contains(&addr) {
                usage = Some(MappingUsage::default());
            }
            continue;
        }
        let Some(usage) = usage.as_mut() else {
            continue;
        };
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kib = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok());
        match (key, kib) {
            ("Rss", Some(kib)) => usage.rss_kib = kib,
            ("ShmemPmdMapped", Some(kib)) => usage.shmem_pmd_mapped_kib = kib,
            ("Anonymous", Some(kib)) => usage.anonymous_kib = kib,
            _ => {}
        }
    }
    usage
}

/// The address range of a mapping's header line ("start-end perms ..."),
/// or `None` for a field line ("Rss:   4 kB").
fn header_range(line: &str) -> Option<(usize, usize)> {
    let first = line.split_whitespace().next()?;
    let (start, end) = first.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
7f0000000000-7f0000200000 r--p 00000000 00:01 5 /memfd:memseal (deleted)
Size:               2048 kB
Rss:                2048 kB
Anonymous:             0 kB
ShmemPmdMapped:     2048 kB
7f0000200000-7f0000201000 rw-p 00000000 00:00 0
Size:                  4 kB
Rss:                   4 kB
Anonymous:             4 kB
ShmemPmdMapped:        0 kB
";

    #[test]
    fn the_mapping_containing_the_address_is_read() {
        let first = parse(SAMPLE, 0x7f00_0010_0000).unwrap();
        assert_eq!(first.shmem_pmd_mapped_kib, 2048);
        assert_eq!(first.anonymous_kib, 0);
        let second = parse(SAMPLE, 0x7f00_0020_0000).unwrap();
        assert_eq!(second.rss_kib, 4);
        assert_eq!(second.anonymous_kib, 4);
        assert_eq!(parse(SAMPLE, 0x1000), None);
    }

    #[test]
    fn a_live_heap_buffer_is_found() {
        let buffer = vec![1u8; 1 << 20];
        let usage = usage_at(buffer.as_ptr()).unwrap();
        assert!(usage.rss_kib > 0);
    }
}
