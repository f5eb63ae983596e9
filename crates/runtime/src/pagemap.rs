//! Whether this system's kernel can say which pages of a memory were
//! written (`PAGEMAP_SCAN` on `/proc/self/pagemap`, Linux 6.7 and later).
//!
//! With it, wasmtime resets a used memory slot by zeroing only the pages
//! the task wrote and keeps them resident, so the next task's large input
//! lands in memory that is already there instead of faulting in page by
//! page (sandbox.rs). Without it, keeping pages resident means zeroing the
//! whole used memory after every task, which costs a small kernel more than
//! the faults it saves: the sandbox keeps only a little then.

use std::sync::OnceLock;

/// `_IOWR('f', 16, struct pm_scan_arg)`, the struct being 96 bytes.
#[cfg(target_os = "linux")]
pub(crate) const PAGEMAP_SCAN: u64 = 0xc060_6610;

/// Asked once per process, the first time an engine is configured: in a
/// worker that is before its lockdown, which would refuse the open.
pub(crate) fn scan_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(probe)
}

#[cfg(target_os = "linux")]
fn probe() -> bool {
    use std::os::fd::AsRawFd;

    /// `struct pm_scan_arg` of linux/fs.h.
    #[repr(C)]
    #[derive(Default)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);
    let Ok(file) = std::fs::File::open("/proc/self/pagemap") else { return false };
    // An empty range and no output: a kernel that knows the request answers
    // 0 regions; an older one refuses it (ENOTTY or EINVAL).
    let mut arg = PmScanArg { size: std::mem::size_of::<PmScanArg>() as u64, ..PmScanArg::default() };
    // SAFETY: the request's argument is a valid, writable pm_scan_arg that
    // outlives the call; the range it names is empty.
    unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn probe() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn the_probe_agrees_with_the_kernel_version() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(super::scan_supported(), version >= (6, 7), "kernel {release}");
    }
}
