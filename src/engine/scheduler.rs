//! Continuous batching. Each step first advances running sequences (a decode token, or the
//! next chunk of a long prompt), then admits waiting ones first-come-first-served while the
//! token budget, sequence limit, state slots and KV blocks allow. Admission reuses the longest
//! cached prefix (KV blocks plus, for recurrent layers, a state snapshot). When blocks run out
//! the most recently admitted sequence is preempted and later recomputed.

use std::collections::{HashMap, VecDeque};

use crate::cache::block_pool::BlockPool;
use crate::cache::prefix_cache::{chain_hash, PrefixCache, SnapshotId};
use crate::cache::slot_pool::SlotPool;
use crate::engine::batch::{Batch, LogitsRows};
use crate::engine::sequence::{SeqId, SeqStatus, Sequence};
use crate::outputs::FinishReason;

/// Scheduling limits.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most sequences running at once (state slots).
    pub max_num_seqs: usize,
    /// Most tokens in one forward pass.
    pub max_num_batched_tokens: usize,
    /// Tokens per KV block (and prefix-cache granularity).
    pub block_size: usize,
    /// Reuse cached prefixes.
    pub enable_prefix_caching: bool,
    /// While prefilling, also snapshot recurrent state every this many tokens (a multiple of
    /// the block size; 0 = only at the prompt's last block boundary).
    pub snapshot_interval: usize,
}

/// A sequence's share of one step.
#[derive(Debug, Clone)]
pub struct ScheduledSeq {
    /// The sequence.
    pub seq_id: SeqId,
    /// New tokens it processes this step.
    pub num_tokens: usize,
}

/// One step's work.
#[derive(Debug, Default)]
pub struct Plan {
    /// Sequences and their token counts, in batch order.
    pub seqs: Vec<ScheduledSeq>,
    /// Snapshots to copy into state slots before the forward (prefix-cache hits).
    pub restores: Vec<(usize, SnapshotId)>,
}

impl Plan {
    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// A snapshot to take after the forward: copy `slot`'s state into `snapshot`.
#[derive(Debug, Clone)]
pub struct SnapshotJob {
    /// The state slot to copy.
    pub slot: usize,
    /// The buffer to fill.
    pub snapshot: SnapshotId,
    /// Publish under this chain hash once filled (None: kept private by the sequence).
    pub publish: Option<u64>,
}

/// Owner of every sequence and of the cache bookkeeping (blocks, slots, prefix cache).
pub struct Scheduler {
    cfg: SchedulerConfig,
    seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    running: Vec<SeqId>,
    blocks: BlockPool,
    slots: SlotPool,
    prefix: PrefixCache,
    num_preemptions: u64,
}

impl Scheduler {
    /// A scheduler over `num_blocks` KV blocks and `cfg.max_num_seqs` state slots.
    pub fn new(cfg: SchedulerConfig, num_blocks: usize, prefix: PrefixCache) -> Self {
        Self {
            blocks: BlockPool::new(num_blocks),
            slots: SlotPool::new(cfg.max_num_seqs),
            prefix,
            cfg,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            num_preemptions: 0,
        }
    }

    /// Queues a new sequence.
    pub fn add(&mut self, seq: Sequence) {
        self.waiting.push_back(seq.id);
        self.seqs.insert(seq.id, seq);
    }

    /// A sequence by id.
    pub fn seq(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// A sequence by id, mutable.
    pub fn seq_mut(&mut self, id: SeqId) -> Option<&mut Sequence> {
        self.seqs.get_mut(&id)
    }

    /// Ids of the unfinished sequences of a request.
    pub fn seqs_of(&self, request_id: &str) -> Vec<SeqId> {
        self.seqs
            .values()
            .filter(|s| s.request_id == request_id)
            .map(|s| s.id)
            .collect()
    }

    /// Whether any sequence is waiting or running.
    pub fn has_unfinished(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// (running, waiting) sequence counts.
    pub fn counts(&self) -> (usize, usize) {
        (self.running.len(), self.waiting.len())
    }

    /// Free KV blocks and state slots, and their totals.
    pub fn free_resources(&self) -> ((usize, usize), (usize, usize)) {
        (
            (self.blocks.num_free(), self.blocks.capacity()),
            (self.slots.num_free(), self.slots.capacity()),
        )
    }

    /// The prefix cache (snapshot buffers, hit rate).
    pub fn prefix_cache(&self) -> &PrefixCache {
        &self.prefix
    }

    /// The prefix cache, mutable.
    pub fn prefix_cache_mut(&mut self) -> &mut PrefixCache {
        &mut self.prefix
    }

    /// Preemptions so far.
    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    fn caching(&self) -> bool {
        self.cfg.enable_prefix_caching
    }

    /// Caps a chunk of `n` tokens starting at `start` (of `total`) so that it ends at the next
    /// block boundary worth a recurrent-state snapshot.
    fn align_chunk(&self, total: usize, start: usize, n: usize) -> usize {
        if !(self.caching() && self.prefix.needs_snapshots()) || n <= 1 {
            return n;
        }
        let bs = self.cfg.block_size;
        let last_boundary = (total - 1) / bs * bs;
        let mut stop = usize::MAX;
        if last_boundary > start {
            stop = last_boundary;
        }
        if let Some(k) = start.checked_div(self.cfg.snapshot_interval) {
            stop = stop.min((k + 1) * self.cfg.snapshot_interval);
        }
        n.min(stop.saturating_sub(start)).max(1)
    }

    /// Blocks a sequence must add to cover `upto` positions.
    fn blocks_needed(&self, seq: &Sequence, upto: usize) -> usize {
        upto.div_ceil(self.cfg.block_size)
            .saturating_sub(seq.block_table.len())
    }

    /// Extends a sequence's block table to cover `upto` positions, if blocks are free.
    fn grow(&mut self, id: SeqId, upto: usize) -> bool {
        let Some(seq) = self.seqs.get(&id) else {
            return false;
        };
        let need = self.blocks_needed(seq, upto);
        let Ok(new) = self.blocks.allocate_n(need) else {
            return false;
        };
        for &b in &new {
            self.prefix.forget_block(b);
        }
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.block_table.extend(new);
        }
        true
    }

    /// Returns a sequence's blocks, slot and private snapshot.
    fn free_resources_of(&mut self, id: SeqId) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        for b in seq.block_table.drain(..) {
            self.blocks.release(b);
        }
        seq.block_hashes.clear();
        if let Some(slot) = seq.slot.take() {
            self.slots.release(slot);
        }
        if let Some((snap, _)) = seq.pending_snapshot.take() {
            self.prefix.release_snapshot(snap);
        }
    }

    fn preempt(&mut self, id: SeqId) {
        self.free_resources_of(id);
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.num_computed = 0;
            seq.status = SeqStatus::Waiting;
        }
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        self.num_preemptions += 1;
    }

    /// Decides this step's work.
    pub fn schedule(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut preempted = false;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(seq) = self.seqs.get(&id) else {
                i += 1;
                continue;
            };
            let n = self.align_chunk(
                seq.tokens.len(),
                seq.num_computed,
                seq.num_uncomputed().min(budget),
            );
            let upto = seq.num_computed + n;
            let mut scheduled = true;
            while !self.grow(id, upto) {
                let victim = *self.running.last().unwrap_or(&id);
                self.preempt(victim);
                preempted = true;
                if victim == id {
                    scheduled = false;
                    break;
                }
            }
            if !scheduled {
                break;
            }
            plan.seqs.push(ScheduledSeq {
                seq_id: id,
                num_tokens: n,
            });
            budget -= n;
            i += 1;
        }

        while !preempted
            && budget > 0
            && self.running.len() < self.cfg.max_num_seqs
            && self.slots.num_free() > 0
        {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            if !self.try_admit(id, &mut budget, &mut plan) {
                break;
            }
        }
        plan
    }

    /// Admits the head of the queue if its first chunk fits; false leaves it waiting.
    fn try_admit(&mut self, id: SeqId, budget: &mut usize, plan: &mut Plan) -> bool {
        let Some(seq) = self.seqs.get(&id) else {
            self.waiting.pop_front();
            return true;
        };
        let cacheable = self.caching() && seq.params.prompt_logprobs.is_none();
        let hit = if cacheable {
            let tokens = seq.tokens.clone();
            self.prefix.lookup(&tokens, tokens.len() - 1)
        } else {
            Default::default()
        };
        let Some(seq) = self.seqs.get(&id) else {
            return false;
        };
        let cached = hit.blocks.len() * self.cfg.block_size;
        let total = seq.tokens.len();
        let n = self.align_chunk(total, cached, (total - cached).min(*budget));
        let revived = hit
            .blocks
            .iter()
            .filter(|&&b| self.blocks.ref_count(b) == 0)
            .count();
        let new_blocks = (cached + n).div_ceil(self.cfg.block_size) - hit.blocks.len();
        if self.blocks.num_free() < revived + new_blocks {
            return false;
        }
        let Ok(slot) = self.slots.allocate() else {
            return false;
        };
        for &b in &hit.blocks {
            self.blocks.retain(b);
        }
        self.waiting.pop_front();
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.block_table = hit.blocks.clone();
            seq.block_hashes = hit.hashes.clone();
            seq.num_computed = cached;
            seq.num_cached = cached;
            seq.slot = Some(slot);
            seq.status = SeqStatus::Running;
        }
        if let Some(snap) = hit.snapshot {
            plan.restores.push((slot, snap));
        }
        if !self.grow(id, cached + n) {
            // Cannot happen: the free count was checked above.
            self.preempt(id);
            return false;
        }
        self.running.push(id);
        plan.seqs.push(ScheduledSeq {
            seq_id: id,
            num_tokens: n,
        });
        *budget -= n;
        true
    }

    /// The model input for a plan: each sequence's next tokens, with logits rows for the
    /// sequences that will sample (and every prompt row of those that want prompt logprobs).
    pub fn batch(&self, plan: &Plan) -> Batch {
        let mut parts = Vec::with_capacity(plan.seqs.len());
        let mut rows = Vec::new();
        let mut offset = 0u32;
        for s in &plan.seqs {
            let Some(seq) = self.seqs.get(&s.seq_id) else {
                continue;
            };
            let start = seq.num_computed;
            let toks = seq.tokens[start..start + s.num_tokens].to_vec();
            let wants_prompt_lp = seq.params.prompt_logprobs.is_some() && start < seq.prompt_len;
            if wants_prompt_lp {
                rows.extend(offset..offset + s.num_tokens as u32);
            } else if start + s.num_tokens == seq.tokens.len() {
                rows.push(offset + s.num_tokens as u32 - 1);
            }
            offset += s.num_tokens as u32;
            parts.push((toks, start, seq.slot.unwrap_or(0), seq.block_table.clone()));
        }
        Batch::new(parts, LogitsRows::Selected(rows))
    }

    /// Advances the plan's sequences past their processed tokens, registers newly full blocks
    /// in the prefix cache, and lists the snapshots to take now.
    pub fn advance(&mut self, plan: &Plan) -> Vec<SnapshotJob> {
        let bs = self.cfg.block_size;
        let mut jobs = Vec::new();
        for s in &plan.seqs {
            let Some(seq) = self.seqs.get_mut(&s.seq_id) else {
                continue;
            };
            let was_prefill = seq.in_prefill();
            seq.num_computed += s.num_tokens;
            if !self.cfg.enable_prefix_caching {
                continue;
            }
            while seq.block_hashes.len() < seq.num_computed / bs {
                let i = seq.block_hashes.len();
                let parent = i.checked_sub(1).map_or(0, |p| seq.block_hashes[p]);
                let toks = &seq.tokens[i * bs..(i + 1) * bs];
                let hash = chain_hash(parent, toks);
                self.prefix.insert_block(hash, seq.block_table[i], toks);
                seq.block_hashes.push(hash);
            }
            let c = seq.num_computed;
            if !self.prefix.needs_snapshots() || c == 0 || c % bs != 0 {
                continue;
            }
            let Some(slot) = seq.slot else {
                continue;
            };
            let hash = seq.block_hashes[c / bs - 1];
            let last_boundary = (seq.tokens.len() - 1) / bs * bs;
            let interval_hit =
                self.cfg.snapshot_interval > 0 && c % self.cfg.snapshot_interval == 0;
            if c == seq.tokens.len() {
                // Caught up (decoding, or a prompt ending on a boundary): keep one rolling
                // snapshot, published when the sequence finishes (the next chat turn's prefix).
                let snap = match seq.pending_snapshot {
                    Some((snap, _)) => Some(snap),
                    None => self.prefix.acquire_snapshot(),
                };
                if let Some(snap) = snap {
                    seq.pending_snapshot = Some((snap, c));
                    jobs.push(SnapshotJob {
                        slot,
                        snapshot: snap,
                        publish: None,
                    });
                }
            } else if was_prefill && (c == last_boundary || interval_hit) {
                if let Some(snap) = self.prefix.acquire_snapshot() {
                    jobs.push(SnapshotJob {
                        slot,
                        snapshot: snap,
                        publish: Some(hash),
                    });
                }
            }
        }
        jobs
    }

    /// Ends a sequence: publishes its rolling snapshot and returns its resources.
    pub fn finish(&mut self, id: SeqId, reason: FinishReason) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        if seq.is_finished() {
            return;
        }
        seq.status = SeqStatus::Finished(reason);
        if let Some((snap, boundary)) = seq.pending_snapshot.take() {
            let bs = self.cfg.block_size;
            match seq.block_hashes.get(boundary / bs - 1) {
                Some(&hash) if reason != FinishReason::Abort => {
                    self.prefix.publish_snapshot(snap, hash)
                }
                _ => self.prefix.release_snapshot(snap),
            }
        }
        self.free_resources_of(id);
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
    }

    /// Removes a finished sequence from the table, returning it.
    pub fn take_finished(&mut self, id: SeqId) -> Option<Sequence> {
        if self.seqs.get(&id).is_some_and(|s| s.is_finished()) {
            self.seqs.remove(&id)
        } else {
            None
        }
    }
}
