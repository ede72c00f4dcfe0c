//! How long one remote exchange may take before it counts as failed.
//!
//! A control exchange (a directory request, a promote, a QP exchange) is a
//! few hundred bytes each way, so `request_timeout_ms` alone bounds it. A
//! read also moves its pages, and a fixed bound would fail every batch whose
//! bytes take longer than that to cross the link: a large batch on a slow or
//! shared link (many ranks reading one hot prefix from the node that wrote
//! it) would time out although it was progressing, and the peer would then
//! be skipped as unreachable for `member_ttl`. So a read gets the request
//! timeout plus the time its bytes take at [`TRANSFER_FLOOR_BYTES_PER_SEC`]:
//! a peer that is alive but slower than the floor, or that stopped
//! answering, still fails within a bound the caller can compute from its own
//! batch.

use std::time::Duration;

/// The slowest transfer rate an exchange is allowed, in bytes per second
/// (10^8, 0.8 Gbit/s). Below that a KV-cache read is slower than the prefill
/// it saves on any GPU SGLang runs on, and the batch is better a miss. A
/// 32-page batch of 128 KiB pages (4 MiB) gets 42 ms on top of the request
/// timeout; a 1 GiB batch, 10.7 s.
pub const TRANSFER_FLOOR_BYTES_PER_SEC: u64 = 100_000_000;

/// The bound of an exchange that moves `bulk_bytes` of pages, given the
/// node's request timeout.
pub fn for_transfer(request_timeout: Duration, bulk_bytes: u64) -> Duration {
    let transfer_ns =
        u128::from(bulk_bytes) * 1_000_000_000 / u128::from(TRANSFER_FLOOR_BYTES_PER_SEC);
    let transfer = Duration::from_nanos(u64::try_from(transfer_ns).unwrap_or(u64::MAX));
    request_timeout.saturating_add(transfer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_exchange_gets_the_request_timeout() {
        let base = Duration::from_millis(2000);
        assert_eq!(for_transfer(base, 0), base);
    }

    #[test]
    fn a_read_gets_the_time_its_bytes_take_at_the_floor_rate_on_top() {
        let base = Duration::from_millis(2000);
        assert_eq!(
            for_transfer(base, TRANSFER_FLOOR_BYTES_PER_SEC),
            base + Duration::from_secs(1)
        );
        // 32 pages of 128 KiB: 4,194,304 bytes = 41.94304 ms at the floor.
        assert_eq!(
            for_transfer(base, 32 << 17),
            base + Duration::from_nanos(41_943_040)
        );
    }

    #[test]
    fn absurd_sizes_saturate_instead_of_overflowing() {
        let long = for_transfer(Duration::from_secs(2), u64::MAX);
        assert!(long > Duration::from_secs(100 * 365 * 24 * 3600));
        assert_eq!(for_transfer(Duration::MAX, 1), Duration::MAX);
    }
}
