//! Cache storage (tensors) and its bookkeeping (ids, ref counts). Storage lives in
//! [`ModelCache`], one entry per layer; pools hand out the slot and block ids that index it.

pub mod block_pool;
pub mod kv_cache;
pub mod prefix_cache;
pub mod slot_pool;
pub mod state_cache;

pub use kv_cache::KvCache;
pub use state_cache::{StateCache, StateShape};

/// What one layer needs cached per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCacheSpec {
    /// A recurrent (Mamba2) layer: fixed-size state per sequence.
    Recurrent(StateShape),
    /// An attention layer: K and V per position.
    Attention {
        /// KV heads.
        n_kv_heads: usize,
        /// Dimension of each head.
        head_dim: usize,
    },
}

impl LayerCacheSpec {
    /// Bytes of recurrent state per sequence (0 for attention).
    pub fn state_bytes(&self) -> usize {
        match self {
            LayerCacheSpec::Recurrent(s) => s.bytes_per_slot(),
            LayerCacheSpec::Attention { .. } => 0,
        }
    }

    /// Bytes of K+V per cached position (0 for recurrent layers).
    pub fn kv_bytes_per_token(&self) -> usize {
        match self {
            LayerCacheSpec::Recurrent(_) => 0,
            LayerCacheSpec::Attention {
                n_kv_heads,
                head_dim,
            } => 2 * n_kv_heads * head_dim * std::mem::size_of::<f32>(),
        }
    }
}

/// One layer's cache storage.
pub enum LayerCache {
    /// Recurrent state slots.
    Recurrent(StateCache),
    /// Paged KV blocks.
    Attention(KvCache),
}

/// Sizes of a [`ModelCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheCapacity {
    /// Recurrent-state slots (concurrent sequences).
    pub state_slots: usize,
    /// KV blocks shared by all sequences.
    pub kv_blocks: usize,
    /// Positions per KV block.
    pub block_size: usize,
}

/// Cache storage of every layer of a model.
pub struct ModelCache {
    /// Per layer, in model order.
    pub layers: Vec<LayerCache>,
    /// The sizes it was built with.
    pub capacity: CacheCapacity,
}

impl ModelCache {
    /// Allocates storage for a model's layers.
    pub fn new(specs: &[LayerCacheSpec], capacity: CacheCapacity) -> Self {
        let layers = specs
            .iter()
            .map(|spec| match *spec {
                LayerCacheSpec::Recurrent(shape) => {
                    LayerCache::Recurrent(StateCache::new(shape, capacity.state_slots))
                }
                LayerCacheSpec::Attention {
                    n_kv_heads,
                    head_dim,
                } => LayerCache::Attention(KvCache::new(
                    capacity.kv_blocks,
                    capacity.block_size,
                    n_kv_heads,
                    head_dim,
                )),
            })
            .collect();
        Self { layers, capacity }
    }
}

/// Per-sequence and per-token cache costs of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheCosts {
    /// Recurrent state bytes per sequence (all layers).
    pub state_bytes_per_seq: usize,
    /// KV bytes per token (all layers).
    pub kv_bytes_per_token: usize,
}

impl CacheCosts {
    /// Sums the costs of a model's layers.
    pub fn of(specs: &[LayerCacheSpec]) -> Self {
        Self {
            state_bytes_per_seq: specs.iter().map(|s| s.state_bytes()).sum(),
            kv_bytes_per_token: specs.iter().map(|s| s.kv_bytes_per_token()).sum(),
        }
    }
}

impl ModelCache {
    /// f32 values of recurrent state per slot, over all layers (a snapshot's size).
    pub fn state_len(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Recurrent(s) => s.shape().conv_len() + s.shape().ssm_len(),
                LayerCache::Attention(_) => 0,
            })
            .sum()
    }

    /// Copies a slot's recurrent state (every layer, conv then SSM) into `out`.
    pub fn save_state(&self, slot: usize, out: &mut [f32]) -> crate::Result<()> {
        let mut off = 0;
        for layer in &self.layers {
            if let LayerCache::Recurrent(s) = layer {
                let (conv, ssm) = s.slot(slot)?;
                out[off..off + conv.len()].copy_from_slice(conv);
                off += conv.len();
                out[off..off + ssm.len()].copy_from_slice(ssm);
                off += ssm.len();
            }
        }
        Ok(())
    }

    /// Overwrites a slot's recurrent state with a snapshot taken by [`ModelCache::save_state`].
    pub fn restore_state(&mut self, slot: usize, src: &[f32]) -> crate::Result<()> {
        let mut off = 0;
        for layer in &mut self.layers {
            if let LayerCache::Recurrent(s) = layer {
                let (conv, ssm) = s.slot_mut(slot)?;
                conv.copy_from_slice(&src[off..off + conv.len()]);
                off += conv.len();
                ssm.copy_from_slice(&src[off..off + ssm.len()]);
                off += ssm.len();
            }
        }
        Ok(())
    }
}
