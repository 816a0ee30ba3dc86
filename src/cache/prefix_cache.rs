//! Prefix caching for attention *and* recurrent layers. Full KV blocks are keyed by a hash
//! chain (parent hash + the block's tokens, verified on hit). Recurrent state cannot be cut
//! back to a shorter prefix, so it is snapshotted at chosen block boundaries and keyed by the
//! same chain hash; a new sequence resumes at the longest boundary that has both its blocks
//! and (for models with recurrent layers) a snapshot. Snapshot memory is a fixed budget with
//! LRU eviction. Block ids and ref counts stay with the block pool; this owns only the maps
//! and the snapshot buffers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Hash of a block chain: the parent's hash and this block's tokens.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// Identifier of a snapshot buffer.
pub type SnapshotId = usize;

struct CachedBlock {
    hash: u64,
    tokens: Vec<u32>,
}

/// The longest reusable prefix of a token sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixHit {
    /// Cached blocks covering the prefix, in order.
    pub blocks: Vec<u32>,
    /// Chain hash of each of those blocks.
    pub hashes: Vec<u64>,
    /// Snapshot holding the recurrent state at the end of the prefix (hybrid models).
    pub snapshot: Option<SnapshotId>,
}

/// Hash → block map plus recurrent-state snapshots.
pub struct PrefixCache {
    block_size: usize,
    by_hash: HashMap<u64, u32>,
    by_block: HashMap<u32, CachedBlock>,
    snapshot_len: usize,
    snapshots: Vec<Vec<f32>>,
    snapshot_hash: Vec<Option<u64>>,
    snapshot_by_hash: HashMap<u64, SnapshotId>,
    last_used: Vec<u64>,
    pinned: Vec<bool>,
    clock: u64,
    max_snapshots: usize,
    hits: u64,
    queries: u64,
}

impl PrefixCache {
    /// A cache for blocks of `block_size` tokens and up to `max_snapshots` snapshots of
    /// `snapshot_len` f32 values each (0 for models without recurrent layers).
    pub fn new(block_size: usize, snapshot_len: usize, max_snapshots: usize) -> Self {
        Self {
            block_size,
            by_hash: HashMap::new(),
            by_block: HashMap::new(),
            snapshot_len,
            snapshots: Vec::new(),
            snapshot_hash: Vec::new(),
            snapshot_by_hash: HashMap::new(),
            last_used: Vec::new(),
            pinned: Vec::new(),
            clock: 0,
            max_snapshots,
            hits: 0,
            queries: 0,
        }
    }

    /// Whether the model has recurrent state that needs snapshots.
    pub fn needs_snapshots(&self) -> bool {
        self.snapshot_len > 0
    }

    /// Records that `block` now holds the full block `tokens` whose chain hash is `hash`.
    pub fn insert_block(&mut self, hash: u64, block: u32, tokens: &[u32]) {
        if self.by_hash.contains_key(&hash) {
            return;
        }
        self.forget_block(block);
        self.by_hash.insert(hash, block);
        self.by_block.insert(
            block,
            CachedBlock {
                hash,
                tokens: tokens.to_vec(),
            },
        );
    }

    /// Drops what `block` was cached as (it is being reused for other tokens).
    pub fn forget_block(&mut self, block: u32) {
        if let Some(old) = self.by_block.remove(&block) {
            self.by_hash.remove(&old.hash);
        }
    }

    /// Finds the longest cached prefix of `tokens` covering at most `max_tokens` tokens.
    pub fn lookup(&mut self, tokens: &[u32], max_tokens: usize) -> PrefixHit {
        self.queries += 1;
        let bs = self.block_size;
        let mut hit = PrefixHit::default();
        let mut parent = 0u64;
        let mut best = PrefixHit::default();
        for (i, chunk) in tokens.chunks_exact(bs).enumerate() {
            if (i + 1) * bs > max_tokens {
                break;
            }
            let hash = chain_hash(parent, chunk);
            let Some(&block) = self.by_hash.get(&hash) else {
                break;
            };
            let verified = self.by_block.get(&block).is_some_and(|c| c.tokens == chunk);
            if !verified {
                break;
            }
            hit.blocks.push(block);
            hit.hashes.push(hash);
            parent = hash;
            if !self.needs_snapshots() {
                best = hit.clone();
            } else if let Some(&snap) = self.snapshot_by_hash.get(&hash) {
                best = PrefixHit {
                    snapshot: Some(snap),
                    ..hit.clone()
                };
            }
        }
        if let Some(s) = best.snapshot {
            self.touch(s);
        }
        if !best.blocks.is_empty() {
            self.hits += 1;
        }
        best
    }

    /// Fraction of lookups that reused at least one block.
    pub fn hit_rate(&self) -> f64 {
        if self.queries == 0 {
            0.0
        } else {
            self.hits as f64 / self.queries as f64
        }
    }

    fn touch(&mut self, id: SnapshotId) {
        self.clock += 1;
        if let Some(t) = self.last_used.get_mut(id) {
            *t = self.clock;
        }
    }

    /// A snapshot buffer to fill, evicting the least recently used unpinned one if the budget
    /// is spent; None when every snapshot is pinned or the budget is zero.
    pub fn acquire_snapshot(&mut self) -> Option<SnapshotId> {
        if !self.needs_snapshots() || self.max_snapshots == 0 {
            return None;
        }
        let id = if self.snapshots.len() < self.max_snapshots {
            self.snapshots.push(vec![0.0; self.snapshot_len]);
            self.snapshot_hash.push(None);
            self.last_used.push(0);
            self.pinned.push(false);
            self.snapshots.len() - 1
        } else {
            let victim = (0..self.snapshots.len())
                .filter(|&i| !self.pinned[i])
                .min_by_key(|&i| self.last_used[i])?;
            if let Some(h) = self.snapshot_hash[victim].take() {
                self.snapshot_by_hash.remove(&h);
            }
            victim
        };
        self.pinned[id] = true;
        self.touch(id);
        Some(id)
    }

    /// Publishes a filled snapshot under the chain hash of its boundary and unpins it.
    pub fn publish_snapshot(&mut self, id: SnapshotId, hash: u64) {
        if id >= self.snapshots.len() {
            return;
        }
        if let Some(old) = self.snapshot_hash[id].take() {
            self.snapshot_by_hash.remove(&old);
        }
        if let Some(prev) = self.snapshot_by_hash.insert(hash, id) {
            if prev != id {
                self.snapshot_hash[prev] = None;
            }
        }
        self.snapshot_hash[id] = Some(hash);
        self.pinned[id] = false;
        self.touch(id);
    }

    /// Returns an unpublished snapshot buffer to the pool.
    pub fn release_snapshot(&mut self, id: SnapshotId) {
        if id < self.snapshots.len() {
            self.pinned[id] = false;
            self.last_used[id] = 0;
            if let Some(h) = self.snapshot_hash[id].take() {
                self.snapshot_by_hash.remove(&h);
            }
        }
    }

    /// The buffer of a snapshot.
    pub fn snapshot(&self, id: SnapshotId) -> Option<&[f32]> {
        self.snapshots.get(id).map(|v| v.as_slice())
    }

    /// The buffer of a snapshot, to fill.
    pub fn snapshot_mut(&mut self, id: SnapshotId) -> Option<&mut [f32]> {
        self.snapshots.get_mut(id).map(|v| v.as_mut_slice())
    }

    /// Snapshots allocated so far and the budget.
    pub fn snapshot_usage(&self) -> (usize, usize) {
        (self.snapshots.len(), self.max_snapshots)
    }

    /// Snapshots currently pinned by running sequences.
    pub fn pinned_snapshots(&self) -> usize {
        self.pinned.iter().filter(|p| **p).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_only_hits_the_longest_verified_chain() {
        let mut pc = PrefixCache::new(2, 0, 0);
        let toks = [1, 2, 3, 4, 5, 6, 7];
        let h0 = chain_hash(0, &toks[0..2]);
        let h1 = chain_hash(h0, &toks[2..4]);
        pc.insert_block(h0, 10, &toks[0..2]);
        pc.insert_block(h1, 11, &toks[2..4]);
        let hit = pc.lookup(&toks, 6);
        assert_eq!(hit.blocks, vec![10, 11]);
        // The limit keeps at least the last token to compute.
        assert_eq!(pc.lookup(&toks, 3).blocks, vec![10]);
        // A different second block breaks the chain there.
        assert_eq!(pc.lookup(&[1, 2, 3, 9, 5], 4).blocks, vec![10]);
        pc.forget_block(10);
        assert!(pc.lookup(&toks, 6).blocks.is_empty());
    }

    #[test]
    fn hybrid_hits_only_where_a_snapshot_exists_and_evicts_lru() {
        let mut pc = PrefixCache::new(2, 3, 2);
        let toks = [1, 2, 3, 4, 5, 6];
        let h0 = chain_hash(0, &toks[0..2]);
        let h1 = chain_hash(h0, &toks[2..4]);
        let h2 = chain_hash(h1, &toks[4..6]);
        pc.insert_block(h0, 0, &toks[0..2]);
        pc.insert_block(h1, 1, &toks[2..4]);
        pc.insert_block(h2, 2, &toks[4..6]);
        assert!(pc.lookup(&toks, 6).blocks.is_empty());
        let s = pc.acquire_snapshot().unwrap();
        pc.snapshot_mut(s)
            .unwrap()
            .copy_from_slice(&[1.0, 2.0, 3.0]);
        pc.publish_snapshot(s, h0);
        let hit = pc.lookup(&toks, 6);
        assert_eq!((hit.blocks.len(), hit.snapshot), (1, Some(s)));
        let s2 = pc.acquire_snapshot().unwrap();
        pc.publish_snapshot(s2, h1);
        assert_eq!(pc.lookup(&toks, 6).blocks.len(), 2);
        // Budget of two: a third evicts the least recently used (s, at h0).
        let s3 = pc.acquire_snapshot().unwrap();
        assert_eq!(s3, s);
        pc.publish_snapshot(s3, h2);
        let hit = pc.lookup(&toks, 6);
        assert_eq!((hit.blocks.len(), hit.snapshot), (3, Some(s3)));
        // Pinned snapshots are never evicted.
        let a = pc.acquire_snapshot().unwrap();
        let b = pc.acquire_snapshot().unwrap();
        assert_ne!(a, b);
        assert!(pc.acquire_snapshot().is_none());
    }
}
