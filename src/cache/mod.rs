//! Cache storage (tensors) and its bookkeeping (ids, ref counts). Storage lives in
//! [`ModelCache`], one entry per layer; pools hand out the slot and block ids that index it.

pub mod block_pool;
pub mod kv_cache;
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
