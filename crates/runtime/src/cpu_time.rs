//! CPU time from the operating system: this process's, for a task's report,
//! and on Windows any process's and the machine's, for the agent's
//! other-load sensor (counts in 100 ns units, summed over every core).

/// CPU time of this whole process (compile threads included), in ms.
pub fn this_process_ms() -> u64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes into the timespec we own.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
        }
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::System::Threading::GetCurrentProcess;
        // SAFETY: the pseudo-handle of this process needs no closing.
        if let Some(t) = windows::times_of(unsafe { GetCurrentProcess() }) {
            return t / 10_000;
        }
    }
    0
}

#[cfg(windows)]
pub use windows::{machine_100ns, process_100ns};

#[cfg(windows)]
mod windows {
    use windows_sys::Win32::Foundation::{CloseHandle, FILETIME, HANDLE};
    use windows_sys::Win32::System::Threading::{
        GetProcessTimes, GetSystemTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };

    fn ticks(t: &FILETIME) -> u64 {
        (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime)
    }

    fn zero() -> FILETIME {
        FILETIME { dwLowDateTime: 0, dwHighDateTime: 0 }
    }

    /// Kernel + user time of the process behind `handle`.
    pub(super) fn times_of(handle: HANDLE) -> Option<u64> {
        let (mut created, mut exited, mut kernel, mut user) = (zero(), zero(), zero(), zero());
        // SAFETY: the caller's handle is live; the FILETIMEs are ours to write.
        (unsafe { GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user) } != 0)
            .then(|| ticks(&kernel) + ticks(&user))
    }

    /// Kernel + user time of process `pid`, if it can be opened.
    pub fn process_100ns(pid: u32) -> Option<u64> {
        // SAFETY: the handle is checked and closed after the one call.
        unsafe {
            let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
            if handle.is_null() {
                return None;
            }
            let times = times_of(handle);
            CloseHandle(handle);
            times
        }
    }

    /// The machine's (idle, kernel + user); kernel time includes idle time.
    pub fn machine_100ns() -> Option<(u64, u64)> {
        let (mut idle, mut kernel, mut user) = (zero(), zero(), zero());
        // SAFETY: three FILETIMEs of ours to write.
        (unsafe { GetSystemTimes(&mut idle, &mut kernel, &mut user) } != 0)
            .then(|| (ticks(&idle), ticks(&kernel) + ticks(&user)))
    }
}
