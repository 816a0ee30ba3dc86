//! Runs the model on a batch and owns the cache tensors it reads and writes: KV blocks,
//! recurrent-state slots, and the copies between slots and prefix-cache snapshots.

use candle_core::Tensor;

use crate::cache::prefix_cache::{PrefixCache, SnapshotId};
use crate::cache::{CacheCapacity, ModelCache};
use crate::engine::batch::Batch;
use crate::engine::scheduler::SnapshotJob;
use crate::error::{Error, Result};
use crate::models::Model;

/// A model with its cache storage.
pub struct ModelRunner {
    model: Box<dyn Model>,
    cache: ModelCache,
}

impl ModelRunner {
    /// Allocates cache storage for `model`.
    pub fn new(model: Box<dyn Model>, capacity: CacheCapacity) -> Self {
        let cache = ModelCache::new(model.cache_specs(), capacity);
        Self { model, cache }
    }

    /// The model.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// f32 values in one recurrent-state snapshot.
    pub fn state_len(&self) -> usize {
        self.cache.state_len()
    }

    /// Copies prefix-cache snapshots into the slots of sequences that resume from them.
    pub fn restore(
        &mut self,
        restores: &[(usize, SnapshotId)],
        prefix: &PrefixCache,
    ) -> Result<()> {
        for &(slot, snap) in restores {
            let data = prefix
                .snapshot(snap)
                .ok_or_else(|| Error::CacheExhausted(format!("snapshot {snap} vanished")))?;
            self.cache.restore_state(slot, data)?;
        }
        Ok(())
    }

    /// Copies slot states into snapshot buffers, publishing those that are meant to be shared.
    pub fn snapshot(&self, jobs: &[SnapshotJob], prefix: &mut PrefixCache) -> Result<()> {
        for job in jobs {
            if let Some(buf) = prefix.snapshot_mut(job.snapshot) {
                self.cache.save_state(job.slot, buf)?;
            }
            if let Some(hash) = job.publish {
                prefix.publish_snapshot(job.snapshot, hash);
            }
        }
        Ok(())
    }

    /// Runs one forward; returns the selected logits rows.
    pub fn run(&mut self, batch: &Batch) -> Result<Tensor> {
        let _span = tracing::debug_span!("forward", tokens = batch.tokens.len()).entered();
        // The whole forward runs on a pool thread, so each of its ~200 parallel loops per
        // token splits among the pool directly; called from outside, every loop was sent to
        // the pool and waited for with a sleep and a wake-up of the calling thread.
        let (model, cache) = (&self.model, &mut self.cache);
        rayon::scope(|_| model.forward(batch, cache))
    }
}
