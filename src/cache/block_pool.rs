//! KV block ids and their reference counts. Storage lives in [`super::KvCache`]; this pool
//! only decides which ids are free. Free blocks are reused least-recently-freed first, so a
//! released block that still holds a cached prefix survives as long as possible; a block
//! shared by several sequences (a cached prefix) is freed when its last holder releases it.

use std::collections::VecDeque;

use crate::error::{Error, Result};

/// Free queue and reference counts of KV blocks.
#[derive(Debug, Clone)]
pub struct BlockPool {
    free: VecDeque<u32>,
    ref_counts: Vec<u32>,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks.
    pub fn new(num_blocks: usize) -> Self {
        Self {
            free: (0..num_blocks as u32).collect(),
            ref_counts: vec![0; num_blocks],
        }
    }

    /// Number of free blocks.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Total blocks.
    pub fn capacity(&self) -> usize {
        self.ref_counts.len()
    }

    /// Takes the least recently freed block (ref count 1).
    pub fn allocate(&mut self) -> Result<u32> {
        let id = self
            .free
            .pop_front()
            .ok_or_else(|| Error::CacheExhausted("no free KV blocks".into()))?;
        self.ref_counts[id as usize] = 1;
        Ok(id)
    }

    /// Takes `n` free blocks, or none if fewer are free.
    pub fn allocate_n(&mut self, n: usize) -> Result<Vec<u32>> {
        if n > self.free.len() {
            return Err(Error::CacheExhausted(format!(
                "need {n} KV blocks, {} free",
                self.free.len()
            )));
        }
        (0..n).map(|_| self.allocate()).collect()
    }

    /// Adds a holder to a block; a free block (a cached prefix) is taken off the free queue.
    pub fn retain(&mut self, id: u32) {
        let Some(rc) = self.ref_counts.get_mut(id as usize) else {
            return;
        };
        if *rc == 0 {
            if let Some(pos) = self.free.iter().position(|&b| b == id) {
                self.free.remove(pos);
            }
        }
        *rc += 1;
    }

    /// Drops one holder; the block joins the back of the free queue when none remain.
    pub fn release(&mut self, id: u32) {
        if let Some(rc) = self.ref_counts.get_mut(id as usize) {
            if *rc > 0 {
                *rc -= 1;
                if *rc == 0 {
                    self.free.push_back(id);
                }
            }
        }
    }

    /// Current holders of a block.
    pub fn ref_count(&self, id: u32) -> u32 {
        self.ref_counts.get(id as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_block_is_freed_by_its_last_holder() {
        let mut pool = BlockPool::new(2);
        let a = pool.allocate().unwrap();
        pool.retain(a);
        pool.release(a);
        assert_eq!(pool.num_free(), 1);
        pool.release(a);
        assert_eq!(pool.num_free(), 2);
        assert!(pool.allocate_n(3).is_err());
        assert_eq!(pool.num_free(), 2);
    }

    #[test]
    fn least_recently_freed_is_reused_first_and_retain_revives() {
        let mut pool = BlockPool::new(3);
        let ids = pool.allocate_n(3).unwrap();
        pool.release(ids[2]);
        pool.release(ids[0]);
        pool.retain(ids[2]); // a prefix-cache hit on a free block
        assert_eq!(pool.num_free(), 1);
        assert_eq!(pool.allocate().unwrap(), ids[0]);
    }
}
