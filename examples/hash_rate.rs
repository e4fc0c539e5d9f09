//! How many argon2id verifications per second this machine does at the configured cost, on as
//! many threads as the gateway's hashing pool uses: the ceiling for login throughput.
//!
//! `cargo run --release --example hash_rate -- [seconds] [threads]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_gateway::credentials::password::{verify, HashPolicy};

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let policy = HashPolicy::OWASP_MINIMUM;
    let Ok(hash) = policy.hash("bench-password-123") else {
        eprintln!("hashing failed");
        std::process::exit(1);
    };
    let hash = Arc::new(hash);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (hash, done) = (Arc::clone(&hash), Arc::clone(&done));
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    if matches!(verify("bench-password-123", &hash), Ok(true)) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / seconds as f64;
    println!("{rate:.1}");
}
