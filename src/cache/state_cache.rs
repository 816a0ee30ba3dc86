//! Recurrent state of one Mamba2 layer for every state slot: the last `K-1` raw conv inputs and
//! the f32 SSM state. Slots are rows of two flat buffers updated in place by the mixer; the
//! slot pool decides which sequence owns which row.

use crate::error::{Error, Result};

/// Geometry of a Mamba2 layer's recurrent state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateShape {
    /// Channels that pass through the causal conv (x, B and C).
    pub conv_dim: usize,
    /// Conv kernel width K; the state keeps K-1 rows.
    pub conv_kernel: usize,
    /// SSM heads.
    pub n_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// State size per channel.
    pub d_state: usize,
}

impl StateShape {
    /// f32 values of conv state per slot.
    pub fn conv_len(&self) -> usize {
        (self.conv_kernel - 1) * self.conv_dim
    }

    /// f32 values of SSM state per slot.
    pub fn ssm_len(&self) -> usize {
        self.n_heads * self.head_dim * self.d_state
    }

    /// Bytes of recurrent state per sequence for this layer.
    pub fn bytes_per_slot(&self) -> usize {
        (self.conv_len() + self.ssm_len()) * std::mem::size_of::<f32>()
    }
}

/// Conv and SSM state of one Mamba2 layer for `num_slots` sequences.
pub struct StateCache {
    shape: StateShape,
    num_slots: usize,
    conv: Vec<f32>,
    ssm: Vec<f32>,
}

impl StateCache {
    /// Allocates zeroed state for `num_slots` sequences.
    pub fn new(shape: StateShape, num_slots: usize) -> Self {
        Self {
            shape,
            num_slots,
            conv: vec![0.0; shape.conv_len() * num_slots],
            ssm: vec![0.0; shape.ssm_len() * num_slots],
        }
    }

    /// The state geometry.
    pub fn shape(&self) -> StateShape {
        self.shape
    }

    fn check(&self, slot: usize) -> Result<()> {
        if slot >= self.num_slots {
            return Err(Error::CacheExhausted(format!(
                "state slot {slot} out of range ({} slots)",
                self.num_slots
            )));
        }
        Ok(())
    }

    /// Mutable conv state `[K-1, conv_dim]` and SSM state `[nH, P, N]` of one slot.
    pub fn slot_mut(&mut self, slot: usize) -> Result<(&mut [f32], &mut [f32])> {
        self.check(slot)?;
        let (c, s) = (self.shape.conv_len(), self.shape.ssm_len());
        Ok((
            &mut self.conv[slot * c..(slot + 1) * c],
            &mut self.ssm[slot * s..(slot + 1) * s],
        ))
    }

    /// Read-only conv and SSM state of one slot.
    pub fn slot(&self, slot: usize) -> Result<(&[f32], &[f32])> {
        self.check(slot)?;
        let (c, s) = (self.shape.conv_len(), self.shape.ssm_len());
        Ok((
            &self.conv[slot * c..(slot + 1) * c],
            &self.ssm[slot * s..(slot + 1) * s],
        ))
    }

    /// Mutable state of several distinct slots at once (for parallel updates).
    pub fn slots_mut(&mut self, slots: &[usize]) -> Result<Vec<(&mut [f32], &mut [f32])>> {
        let mut sorted = slots.to_vec();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::request("batch", "two sequences share a state slot"));
        }
        for &s in slots {
            self.check(s)?;
        }
        let (c, s) = (self.shape.conv_len(), self.shape.ssm_len());
        let mut convs: Vec<Option<&mut [f32]>> = self.conv.chunks_mut(c.max(1)).map(Some).collect();
        let mut ssms: Vec<Option<&mut [f32]>> = self.ssm.chunks_mut(s.max(1)).map(Some).collect();
        slots
            .iter()
            .map(|&slot| {
                match (
                    convs.get_mut(slot).and_then(Option::take),
                    ssms.get_mut(slot).and_then(Option::take),
                ) {
                    (Some(conv), Some(ssm)) => Ok((conv, ssm)),
                    _ => Err(Error::CacheExhausted(format!(
                        "state slot {slot} unavailable"
                    ))),
                }
            })
            .collect()
    }
}
