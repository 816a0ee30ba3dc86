//! Paged key/value storage of one attention layer: `num_blocks` blocks of `block_size`
//! positions, each `[block_size, n_kv_heads, head_dim]` for K and for V. Sequences address it
//! through block tables; the block pool decides ownership.

use crate::error::{Error, Result};

/// Paged K and V of one attention layer.
pub struct KvCache {
    block_size: usize,
    n_kv_heads: usize,
    head_dim: usize,
    num_blocks: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    /// Allocates `num_blocks` zeroed blocks.
    pub fn new(num_blocks: usize, block_size: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        let len = num_blocks * block_size * n_kv_heads * head_dim;
        Self {
            block_size,
            n_kv_heads,
            head_dim,
            num_blocks,
            k: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// f32 values per position (all KV heads).
    pub fn row_len(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Offset of position `pos` of a sequence with this block table, checked.
    pub fn offset(&self, block_table: &[u32], pos: usize) -> Result<usize> {
        let block = *block_table.get(pos / self.block_size).ok_or_else(|| {
            Error::CacheExhausted(format!(
                "position {pos} is beyond the sequence's {} KV blocks",
                block_table.len()
            ))
        })? as usize;
        if block >= self.num_blocks {
            return Err(Error::CacheExhausted(format!(
                "KV block {block} out of range ({} blocks)",
                self.num_blocks
            )));
        }
        Ok((block * self.block_size + pos % self.block_size) * self.row_len())
    }

    /// Writes one position's K and V rows (`[n_kv_heads * head_dim]` each).
    pub fn write(&mut self, block_table: &[u32], pos: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let off = self.offset(block_table, pos)?;
        let n = self.row_len();
        self.k[off..off + n].copy_from_slice(&k[..n]);
        self.v[off..off + n].copy_from_slice(&v[..n]);
        Ok(())
    }

    /// All K and V storage, for readers that resolved offsets with [`KvCache::offset`].
    pub fn storage(&self) -> (&[f32], &[f32]) {
        (&self.k, &self.v)
    }
}
