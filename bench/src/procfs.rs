//! What /proc says about memory and about the machine.

use serde::Serialize;
use std::io;

/// The value in kB of the first line `key: N kB` of a /proc file.
fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident set size of a process (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    field_kib(&status, "VmRSS").ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
}

/// Proportional set size of a process (`Pss` of /proc/PID/smaps_rollup), in
/// KiB: each page it maps counts divided by the number of processes that
/// map it, so summing over processes counts shared pages once.
pub fn pss_kib(pid: u32) -> io::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    field_kib(&rollup, "Pss").ok_or_else(|| io::Error::other("no Pss in smaps_rollup"))
}

/// Pss of the mappings of a process whose path contains `needle` (for a
/// memfd, `memfd:NAME`), in KiB.
pub fn mapping_pss_kib(pid: u32, needle: &str) -> io::Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        // Mapping headers start with an address range "start-end perms ...".
        let is_header = line
            .split_whitespace()
            .next()
            .is_some_and(|first| first.contains('-') && !first.ends_with(':'));
        if is_header {
            inside = line.contains(needle);
        } else if inside {
            if let Some(kib) = field_kib(line, "Pss") {
                total += kib;
            }
        }
    }
    Ok(total)
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name from /proc/cpuinfo.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Total RAM in GiB.
    pub ram_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Describe this machine.
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, name)| name.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_gib = field_kib(&meminfo, "MemTotal").unwrap_or(0) as f64 / (1 << 20) as f64;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        Machine {
            cpu,
            cpus: crate::affinity::online_cpus(),
            ram_gib,
            kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_in_kib() {
        let text = "Rss:  100 kB\nPss:   42 kB\nPss_Anon: 7 kB\n";
        assert_eq!(field_kib(text, "Pss"), Some(42));
        assert_eq!(field_kib(text, "Pss_Anon"), Some(7));
        assert_eq!(field_kib(text, "Swap"), None);
    }

    #[test]
    fn own_memory_is_visible() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(pss_kib(pid).unwrap() > 0);
    }
}
