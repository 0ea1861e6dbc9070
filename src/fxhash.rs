//! Small types both halves use: a fast hash map for per-event lookups.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A small, fast hasher (FxHash's multiply-rotate) for the per-event
/// lookups; the keys are the trace's own strings or addresses, not an
/// attack surface worth SipHash's cost here.
#[derive(Default)]
pub struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n.into())
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64)
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(n.into())
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A HashMap with the `Fx` hasher.
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;
