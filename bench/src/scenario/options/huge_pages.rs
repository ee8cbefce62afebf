//! Borrowing transparent huge pages for shared memory from the host.
//!
//! Whether a memfd can be backed by huge pages is a host-wide setting,
//! `/sys/kernel/mm/transparent_hugepage/shmem_enabled`, and on many hosts
//! it selects `never`. The huge-page rows need `advise` (the daemon then
//! faults each new memfd in through a mapping marked `MADV_HUGEPAGE`, so
//! its pages are huge from the start). As root the harness selects it for
//! those rows only and puts the previous setting back when [`Borrowed`]
//! is dropped: on success, on an error returned with `?`, and on a panic
//! that unwinds. A host that already allows huge pages is left alone.

use memseal::{ShmemHugePages, SHMEM_ENABLED_PATH};
use std::fmt;

/// The setting the huge-page rows ask for.
const WANTED: &str = "advise";

/// Whether memfds filled from now on can get huge pages.
pub enum HostHugePages {
    /// The host allows them already; nothing was changed.
    AlreadyOn(ShmemHugePages),
    /// This run selected `advise`; the previous setting comes back when
    /// this is dropped.
    Borrowed(Borrowed),
    /// No huge pages: the reason, as the tables print it.
    Unavailable(String),
}

impl HostHugePages {
    /// Make huge pages available for shared memory if the host does not
    /// already, and if this process may (it must be root).
    pub fn borrow() -> HostHugePages {
        let current = match ShmemHugePages::read() {
            Ok(current) => current,
            Err(e) => return HostHugePages::Unavailable(format!("cannot read the setting: {e}")),
        };
        if current.usable() {
            return HostHugePages::AlreadyOn(current);
        }
        if !rustix::process::geteuid().is_root() {
            return HostHugePages::Unavailable(format!(
                "shmem_enabled={} and only root may select {WANTED}",
                current.setting
            ));
        }
        eprintln!(
            "  selecting {WANTED} in {SHMEM_ENABLED_PATH} (was {}) while the daemon fills \
             the huge-page copy",
            current.setting
        );
        if let Err(e) = std::fs::write(SHMEM_ENABLED_PATH, WANTED) {
            // A failed write to sysfs changes nothing: no guard needed.
            return HostHugePages::Unavailable(format!(
                "shmem_enabled={} and selecting {WANTED} failed: {e}",
                current.setting
            ));
        }
        // The setting changed: from here on every way out restores it.
        let borrowed = Borrowed {
            previous: current.setting.clone(),
        };
        match ShmemHugePages::read() {
            Ok(now) if now.setting == WANTED => HostHugePages::Borrowed(borrowed),
            Ok(now) => HostHugePages::Unavailable(format!(
                "shmem_enabled={} and the kernel kept {} when {WANTED} was written",
                current.setting, now.setting
            )),
            Err(e) => HostHugePages::Unavailable(format!("cannot read the setting back: {e}")),
        }
    }

    /// True when memfds filled now can get huge pages.
    pub fn available(&self) -> bool {
        !matches!(self, HostHugePages::Unavailable(_))
    }
}

impl fmt::Display for HostHugePages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostHugePages::AlreadyOn(setting) => {
                write!(f, "shmem_enabled={} on this host", setting.setting)
            }
            HostHugePages::Borrowed(borrowed) => write!(
                f,
                "shmem_enabled={WANTED} while the daemon filled the huge-page copy \
                 (the host's {} restored right after)",
                borrowed.previous
            ),
            HostHugePages::Unavailable(why) => f.write_str(why),
        }
    }
}

/// The host's previous `shmem_enabled` setting, written back on drop.
pub struct Borrowed {
    previous: String,
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        match std::fs::write(SHMEM_ENABLED_PATH, &self.previous) {
            Ok(()) => eprintln!("  restored {SHMEM_ENABLED_PATH} to {}", self.previous),
            // Nothing more can be done from a destructor; say exactly how
            // to undo the change by hand.
            Err(e) => eprintln!(
                "memseal-bench: could not restore {SHMEM_ENABLED_PATH} to {} ({e}); \
                 restore it with: echo {} > {SHMEM_ENABLED_PATH}",
                self.previous, self.previous
            ),
        }
    }
}
