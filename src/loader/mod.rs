//! Reading checkpoints from disk: safetensors weights and `config.json`.

pub mod config_json;
pub mod safetensors;
