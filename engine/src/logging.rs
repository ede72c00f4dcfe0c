//! Operator logging: `tracing` with the level taken from `PEERCACHE_LOG`
//! (falling back to `RUST_LOG`, then `info`), and a rate limiter so data-path
//! errors cannot flood SGLang's log.

use std::time::{Duration, Instant};

/// Installs a global `tracing` subscriber writing to stderr. Safe to call more
/// than once (later calls do nothing), so every entry point may call it.
pub fn init() {
    let filter = std::env::var("PEERCACHE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    // Colour only for a terminal: SGLang and the node processes usually log
    // to files, where escape codes are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Lets one message through per `interval` and counts the ones it held back,
/// so the next message can say how many were suppressed. Owned by one thread
/// (a shard), so it needs no atomics.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter letting one message through per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed_since_last)` when a message may be logged now.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_counts_suppressed() {
        let mut rl = RateLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(rl.check(t0), Some(0));
        assert_eq!(rl.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(rl.check(t0 + Duration::from_secs(2)), None);
        assert_eq!(rl.check(t0 + Duration::from_secs(11)), Some(2));
    }
}
