//! Memory accounting for training. [`CountingAlloc`] wraps the binary's global allocator and
//! keeps the bytes live and their high-water mark; [`MemoryTracker`] turns that into peak and
//! delta per phase (forward, backward, optimizer step). Where the counting allocator is not
//! installed (library tests) it falls back to the process's resident set size.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that counts live bytes and their peak.
pub struct CountingAlloc<A>(pub A);

// SAFETY: every call is forwarded unchanged to the wrapped allocator; the counters are only
// bookkeeping.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.0.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.0.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.0.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = self.0.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        p
    }
}

#[inline]
fn grow(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// Bytes in use now: heap bytes when the counting allocator is installed, else RSS.
pub fn current_bytes() -> usize {
    match LIVE.load(Ordering::Relaxed) {
        0 => rss_bytes(),
        n => n,
    }
}

/// Whether heap bytes are being counted (otherwise the numbers are RSS).
pub fn counting() -> bool {
    LIVE.load(Ordering::Relaxed) > 0
}

/// Peak and change of memory within one phase, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseMemory {
    /// Highest use seen during the phase.
    pub peak: usize,
    /// Use at the end minus use at the start.
    pub delta: i64,
}

/// Per-phase memory of a run: the latest step's numbers and the run's maxima.
#[derive(Debug, Default, Serialize)]
pub struct MemoryTracker {
    /// Phase → numbers of the most recent occurrence.
    pub last: BTreeMap<String, PhaseMemory>,
    /// Phase → highest peak over the run.
    pub max_peak: BTreeMap<String, usize>,
    #[serde(skip)]
    open: Option<(String, usize)>,
}

impl MemoryTracker {
    /// Starts a phase (ending any open one).
    pub fn begin(&mut self, phase: &str) {
        self.end();
        let now = current_bytes();
        PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
        self.open = Some((phase.to_string(), now));
    }

    /// Ends the open phase, if any.
    pub fn end(&mut self) {
        let Some((phase, start)) = self.open.take() else {
            return;
        };
        let now = current_bytes();
        let peak = if counting() {
            PEAK.load(Ordering::Relaxed)
        } else {
            now.max(start)
        };
        let m = PhaseMemory {
            peak,
            delta: now as i64 - start as i64,
        };
        let max = self.max_peak.entry(phase.clone()).or_insert(0);
        *max = (*max).max(peak);
        self.last.insert(phase, m);
    }
}
