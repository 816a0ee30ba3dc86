//! The engine thread: streamed requests complete, a dropped receiver aborts its request and
//! frees its cache, the queue limit is enforced, and shutdown aborts what is left.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanovllm::engine::engine_thread::{EngineThread, StreamEvent};
use nanovllm::llm::{build_engine, EngineConfig};
use nanovllm::sampling_params::SamplingParams;

fn engine_thread(max_in_flight: usize) -> EngineThread {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/granite_hybrid/hybrid_moe_nope");
    let model = nanovllm::models::load(&dir).unwrap();
    let cfg = EngineConfig {
        max_model_len: Some(256),
        kv_cache_memory: 4 << 20,
        prefix_cache_memory: 4 << 20,
        ..Default::default()
    };
    let (engine, _) = build_engine(model, None::<Arc<_>>, &cfg).unwrap();
    EngineThread::spawn(engine, max_in_flight)
}

fn wait_idle(handle: &nanovllm::engine::engine_thread::EngineHandle) {
    let start = Instant::now();
    while handle.in_flight() > 0 || handle.status().running + handle.status().waiting > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "engine did not go idle"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn streams_complete_and_dropped_clients_free_their_cache() {
    let thread = engine_thread(64);
    let h = thread.handle();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(40)
    };
    let mut keep = Vec::new();
    for i in 0..8u32 {
        let rx = h
            .submit(format!("r{i}"), vec![i + 1, 7, 9, 11], params.clone())
            .unwrap();
        keep.push(rx);
    }
    // Drop half the receivers straight away: those requests must be aborted.
    let kept: Vec<_> = keep
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, r)| r)
        .collect();
    for mut rx in kept {
        let mut tokens = 0;
        let mut finished = false;
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                StreamEvent::Update(u) => {
                    tokens += u.new_token_ids.len();
                    finished |= u.finish.is_some();
                }
                StreamEvent::Error(e) => panic!("{e}"),
            }
            if finished {
                break;
            }
        }
        assert_eq!(tokens, 40);
    }
    wait_idle(&h);
    let s = h.status();
    assert_eq!(s.kv_blocks.0, 0, "KV blocks still in use: {s:?}");
    assert_eq!(s.state_slots.0, 0, "state slots still in use: {s:?}");
    assert!(
        s.generation_tokens < 8 * 40,
        "dropped requests kept generating: {s:?}"
    );
    thread.shutdown();
}

#[test]
fn queue_limit_and_validation_errors() {
    let thread = engine_thread(2);
    let h = thread.handle();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(200)
    };
    let _a = h.submit("a".into(), vec![1, 2], params.clone()).unwrap();
    let _b = h.submit("b".into(), vec![1, 2], params.clone()).unwrap();
    let e = h
        .submit("c".into(), vec![1, 2], params.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("queue is full"), "{e}");
    let e = h
        .submit("d".into(), vec![1; 100], params)
        .unwrap_err()
        .to_string();
    assert!(e.contains("256") && e.contains("300"), "{e}");
    thread.shutdown();
}

#[test]
fn explicit_abort_publishes_freed_cache_when_the_engine_goes_idle() {
    let thread = engine_thread(4);
    let h = thread.handle();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(200)
    };
    let mut rx = h.submit("long".into(), vec![3, 4, 5], params).unwrap();
    // Wait until it is running and holds cache.
    match rx.blocking_recv() {
        Some(StreamEvent::Update(u)) => assert_eq!(u.new_token_ids.len(), 1),
        other => panic!("{other:?}"),
    }
    h.abort("long");
    // The abort's final update arrives; then the engine has nothing to do and blocks.
    let mut aborted = false;
    while let Some(ev) = rx.blocking_recv() {
        if let StreamEvent::Update(u) = ev {
            aborted |= u
                .finish
                .is_some_and(|(r, _)| r == nanovllm::FinishReason::Abort);
        }
    }
    assert!(aborted);
    // The published status must show the cache freed without any further engine step.
    wait_idle(&h);
    let s = h.status();
    assert_eq!((s.kv_blocks.0, s.state_slots.0), (0, 0), "{s:?}");
    thread.shutdown();
}
