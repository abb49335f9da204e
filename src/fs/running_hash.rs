//! The sha256 of an upload, computed while it is written.
//!
//! With the kernel's write-back cache, writes reach the mount as several large requests in
//! flight at once, served by several threads: they arrive roughly, not strictly, in order.
//! Data that arrives ahead of the hashed prefix waits here (a bounded amount) until the gap
//! before it is filled, so that the hash is ready at close instead of being computed then
//! by reading the whole file again.

use std::collections::BTreeMap;

use openssl::sha::Sha256;

/// Out-of-order data kept at most; beyond it the hash is computed at close instead. The
/// kernel keeps a few megabytes of writes in flight per file.
const MAX_PENDING: usize = 64 << 20;

/// The running hash of bytes `0..hashed` of a file, plus data written beyond that.
pub struct RunningHash {
    /// `None`: the content is no longer known from the writes (overwritten, truncated, or
    /// too far out of order); the file is hashed at close.
    hasher: Option<Sha256>,
    hashed: u64,
    /// Written ranges beyond `hashed`, by offset; they never overlap.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
}

impl RunningHash {
    /// The hash of an empty file.
    pub fn new() -> RunningHash {
        RunningHash {
            hasher: Some(Sha256::new()),
            hashed: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
        }
    }

    /// A file whose content did not come from writes (a resumed upload): hashed at close.
    pub fn unknown() -> RunningHash {
        let mut h = RunningHash::new();
        h.give_up();
        h
    }

    fn give_up(&mut self) {
        self.hasher = None;
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// Takes note of `data` written at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if self.hasher.is_none() || data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        let overlaps_pending = self
            .pending
            .range(..end)
            .next_back()
            .is_some_and(|(start, d)| start + d.len() as u64 > offset);
        if offset < self.hashed || overlaps_pending {
            // Rewriting bytes already hashed or waiting: hash the result at close.
            return self.give_up();
        }
        if offset > self.hashed {
            if self.pending_bytes + data.len() > MAX_PENDING {
                return self.give_up();
            }
            self.pending.insert(offset, data.to_vec());
            self.pending_bytes += data.len();
            return;
        }
        let Some(h) = self.hasher.as_mut() else {
            return;
        };
        h.update(data);
        self.hashed = end;
        while let Some(e) = self.pending.first_entry() {
            if *e.key() != self.hashed {
                break;
            }
            let d = e.remove();
            h.update(&d);
            self.hashed += d.len() as u64;
            self.pending_bytes -= d.len();
        }
    }

    /// Takes note of a truncation (or extension with zeros) to `size`.
    pub fn truncate(&mut self, size: u64) {
        if size == 0 {
            *self = RunningHash::new();
            return;
        }
        let pending_end = self
            .pending
            .last_key_value()
            .map_or(0, |(start, d)| start + d.len() as u64);
        if size < self.hashed || size < pending_end {
            self.give_up();
        }
    }

    /// The sha256 of a file of `size` bytes, if every byte of it was hashed in order;
    /// `None` when the file must be read to hash it.
    pub fn finish(self, size: u64) -> Option<[u8; 32]> {
        let h = self.hasher?;
        (self.hashed == size && self.pending.is_empty()).then(|| h.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sha(data: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(data);
        h.finish()
    }

    #[test]
    fn in_order_writes_hash_the_file() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut h = RunningHash::new();
        for c in data.chunks(4096) {
            let off = (c.as_ptr() as usize - data.as_ptr() as usize) as u64;
            h.write(off, c);
        }
        assert_eq!(h.finish(data.len() as u64), Some(sha(&data)));
    }

    #[test]
    fn a_gap_never_filled_or_a_rewrite_means_hashing_at_close() {
        let mut h = RunningHash::new();
        h.write(10, b"abc");
        assert_eq!(h.finish(13), None, "bytes 0..10 never written (a hole)");
        let mut h = RunningHash::new();
        h.write(0, b"abcdef");
        h.write(2, b"X");
        assert_eq!(h.finish(6), None, "rewritten after hashing");
        let mut h = RunningHash::new();
        h.write(4, b"efgh");
        h.write(6, b"X");
        assert_eq!(h.finish(8), None, "rewritten while waiting");
        let mut h = RunningHash::new();
        h.write(0, b"abcd");
        h.write(8, b"ijkl");
        h.truncate(10);
        assert_eq!(h.finish(10), None, "waiting data cut off");
        assert!(RunningHash::unknown().finish(0).is_none());
    }

    #[test]
    fn truncating_to_zero_starts_over() {
        let mut h = RunningHash::unknown();
        h.truncate(0);
        h.write(0, b"new");
        assert_eq!(h.finish(3), Some(sha(b"new")));
    }

    proptest! {
        /// Chunks written in any order within a window: the hash is the file's whenever
        /// `finish` gives one, and it gives one when every chunk was written once.
        #[test]
        fn reordered_chunks_hash_like_the_file(
            sizes in prop::collection::vec(1usize..5000, 1..40),
            swaps in prop::collection::vec((0usize..40, 0usize..4), 0..40),
        ) {
            let total: usize = sizes.iter().sum();
            let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
            let mut chunks = Vec::new();
            let mut off = 0;
            for s in &sizes {
                chunks.push((off, &data[off..off + s]));
                off += s;
            }
            for (i, d) in swaps {
                let (i, j) = (i % chunks.len(), (i + d) % chunks.len());
                chunks.swap(i, j);
            }
            let mut h = RunningHash::new();
            for (o, c) in &chunks {
                h.write(*o as u64, c);
            }
            prop_assert_eq!(h.finish(total as u64), Some(sha(&data)));
        }
    }
}
