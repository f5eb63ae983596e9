use wasmtime::ResourceLimiter;

/// Caps the total linear memory of a store and remembers its peak, so a run
/// that hit the cap can be told apart from other traps.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub max_bytes: usize,
    pub current_bytes: usize,
    pub peak_bytes: usize,
    pub refused: bool,
}

impl MemoryCap {
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, current_bytes: 0, peak_bytes: 0, refused: false }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.current_bytes - current.min(self.current_bytes) + desired;
        if total > self.max_bytes {
            self.refused = true;
            // Trap rather than hand the guest a failed grow: allocators abort
            // anyway, and a trap names the cause.
            return Err(wasmtime::format_err!("memory limit: {total} bytes wanted, {} allowed", self.max_bytes));
        }
        self.current_bytes = total;
        self.peak_bytes = self.peak_bytes.max(total);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables cost host memory too; a million elements is far past any real kernel.
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        32
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}
