//! Training of DynamicHybridModel (`nanovllm train`): corpus packing, AdamW with warm-up and
//! cosine decay, checkpoints that resume exactly, and a per-phase memory tracker. One job per
//! file; the loop that ties them together is [`trainer`].

pub mod checkpoint;
pub mod data;
pub mod memory;
pub mod optim;
pub mod trainer;
