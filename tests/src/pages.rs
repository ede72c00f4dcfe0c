//! Page contents as a pure function of the key, so any node can produce the
//! exact bytes another node "computed" (as two SGLang nodes computing the same
//! prefix produce the same KV), and any reader can check a hit byte for byte.

/// Fills `out` with the content of page `key`.
pub fn fill(key: &str, out: &mut [u8]) {
    let mut x = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = x.to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// The content of page `key`, `len` bytes.
pub fn page(key: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(key, &mut v);
    v
}

/// Whether `got` is exactly the content of page `key`.
pub fn matches(key: &str, got: &[u8]) -> bool {
    let mut expected = vec![0u8; got.len()];
    fill(key, &mut expected);
    expected == got
}
