//! Recurrent-state slot ids. Storage lives in [`super::StateCache`]; a slot belongs to one
//! running sequence at a time and is returned when it finishes or is aborted.

use crate::error::{Error, Result};

/// Free list of recurrent-state slots.
#[derive(Debug, Clone)]
pub struct SlotPool {
    free: Vec<usize>,
    capacity: usize,
}

impl SlotPool {
    /// A pool of `capacity` free slots.
    pub fn new(capacity: usize) -> Self {
        Self {
            free: (0..capacity).rev().collect(),
            capacity,
        }
    }

    /// Takes a free slot.
    pub fn allocate(&mut self) -> Result<usize> {
        self.free
            .pop()
            .ok_or_else(|| Error::CacheExhausted("no free recurrent-state slots".into()))
    }

    /// Returns a slot to the pool.
    pub fn release(&mut self, slot: usize) {
        if slot < self.capacity && !self.free.contains(&slot) {
            self.free.push(slot);
        }
    }

    /// Number of free slots.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Total slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
