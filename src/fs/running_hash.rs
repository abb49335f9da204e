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

/// Longest rewrite of hashed bytes that is checked for being the same bytes again. The
/// kernel writes a page back while the file ends inside it, and the whole page again once
/// more was written: the start of that write repeats at most a page already hashed.
const MAX_REPEAT: u64 = 64 << 10;

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

    /// The range of already hashed bytes that a write of `len` bytes at `offset` would
    /// write again, when short enough to check: the caller reads them before writing and
    /// passes them to [`RunningHash::write`].
    pub fn repeats(&self, offset: u64, len: usize) -> Option<(u64, usize)> {
        let end = offset + len as u64;
        (self.hasher.is_some()
            && offset < self.hashed
            && self.hashed - offset <= MAX_REPEAT
            && end > self.hashed)
            .then(|| (offset, (self.hashed - offset) as usize))
    }

    /// Takes note of `data` written at `offset`; `before` holds what the file had in the
    /// range that [`RunningHash::repeats`] named, if any.
    pub fn write(&mut self, mut offset: u64, mut data: &[u8], before: Option<&[u8]>) {
        if self.hasher.is_none() || data.is_empty() {
            return;
        }
        if offset < self.hashed {
            // Bytes written again: harmless if they are the same bytes.
            match before {
                Some(old)
                    if offset + old.len() as u64 == self.hashed
                        && data.len() > old.len()
                        && data.starts_with(old) =>
                {
                    offset = self.hashed;
                    data = &data[old.len()..];
                }
                _ => return self.give_up(),
            }
        }
        // The same for the end of a range waiting here.
        if let Some((&start, waiting)) = self.pending.range(..=offset).next_back() {
            let wend = start + waiting.len() as u64;
            if wend > offset {
                let same = (wend - offset) as usize;
                let tail = &waiting[waiting.len() - same..];
                if data.len() > same && data.starts_with(tail) {
                    offset = wend;
                    data = &data[same..];
                } else {
                    return self.give_up();
                }
            }
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
            h.write(off, c, None);
        }
        assert_eq!(h.finish(data.len() as u64), Some(sha(&data)));
    }

    #[test]
    fn a_gap_never_filled_or_a_rewrite_means_hashing_at_close() {
        let mut h = RunningHash::new();
        h.write(10, b"abc", None);
        assert_eq!(h.finish(13), None, "bytes 0..10 never written (a hole)");
        let mut h = RunningHash::new();
        h.write(0, b"abcdef", None);
        h.write(2, b"X", None);
        assert_eq!(h.finish(6), None, "rewritten after hashing");
        let mut h = RunningHash::new();
        h.write(4, b"efgh", None);
        h.write(6, b"X", None);
        assert_eq!(h.finish(8), None, "rewritten while waiting");
        let mut h = RunningHash::new();
        h.write(0, b"abcd", None);
        h.write(8, b"ijkl", None);
        h.truncate(10);
        assert_eq!(h.finish(10), None, "waiting data cut off");
        assert!(RunningHash::unknown().finish(0).is_none());
    }

    #[test]
    fn a_partial_page_written_again_with_more_keeps_the_hash() {
        // The kernel writes back a page the file ended in, then the whole page.
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        let mut h = RunningHash::new();
        h.write(0, &data[..5000], None);
        let (off, len) = h.repeats(4096, 8192).unwrap();
        assert_eq!((off, len), (4096, 904));
        h.write(4096, &data[4096..12288], Some(&data[4096..5000]));
        // Ahead of the hashed prefix: a waiting range ending mid-page, then its page again.
        h.write(16384, &data[16384..17000], None);
        h.write(16384, &data[16384..20000], None);
        h.write(12288, &data[12288..16384], None);
        assert_eq!(h.finish(20_000), Some(sha(&data)));

        let mut h = RunningHash::new();
        h.write(0, b"abcdef", None);
        h.write(4, b"XYgh", Some(b"ef"));
        assert_eq!(h.finish(8), None, "different bytes written again");
    }

    #[test]
    fn truncating_to_zero_starts_over() {
        let mut h = RunningHash::unknown();
        h.truncate(0);
        h.write(0, b"new", None);
        assert_eq!(h.finish(3), Some(sha(b"new")));
    }

    proptest! {
        /// Chunks written in any order within a window, some first in part: the hash is
        /// ready at the end and is the file's.
        #[test]
        fn reordered_chunks_hash_like_the_file(
            sizes in prop::collection::vec(1usize..5000, 1..40),
            swaps in prop::collection::vec((0usize..40, 0usize..4), 0..40),
            partials in prop::collection::vec(0usize..40, 0..10),
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
            // Some chunks are first written in part (a page written back while the file
            // ended inside it), as the kernel does; `file` is what the spool holds.
            let mut writes = Vec::new();
            for (k, (o, c)) in chunks.iter().enumerate() {
                if partials.contains(&k) && c.len() > 1 {
                    writes.push((*o, &c[..c.len() / 2]));
                }
                writes.push((*o, *c));
            }
            let mut file = vec![0u8; total];
            let mut h = RunningHash::new();
            for (o, c) in writes {
                let before = h
                    .repeats(o as u64, c.len())
                    .map(|(at, len)| file[at as usize..at as usize + len].to_vec());
                file[o..o + c.len()].copy_from_slice(c);
                h.write(o as u64, c, before.as_deref());
            }
            prop_assert_eq!(h.finish(total as u64), Some(sha(&data)));
        }
    }
}
