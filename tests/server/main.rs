//! `nanovllm serve` end to end over HTTP on loopback: response shapes, streaming, tool calls,
//! every error case with its status and message, client disconnects, shutdown on SIGTERM,
//! prefix caching across requests, and a bounded load test that checks the cache pools are
//! empty afterwards.

mod api;
mod errors;
mod harness;
mod lifecycle;
mod load;
