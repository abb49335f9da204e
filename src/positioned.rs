//! Reading an open file with positioned reads (`pread`): a spool file shared by several
//! readers (the parser, the archive, the delivery, a POST) is read from its start by each
//! without any of them moving the others' offset.

use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::os::unix::fs::FileExt;

/// Reads `file` from offset 0 up to `end` (or to its end).
#[derive(Debug)]
pub struct PositionedReader<F> {
    file: F,
    pos: u64,
    end: u64,
}

impl<F: Deref<Target = File>> PositionedReader<F> {
    /// The whole file.
    pub fn new(file: F) -> Self {
        Self::with_len(file, u64::MAX)
    }

    /// Its first `len` bytes.
    pub fn with_len(file: F, len: u64) -> Self {
        Self {
            file,
            pos: 0,
            end: len,
        }
    }
}

impl<F: Deref<Target = File>> Read for PositionedReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = (buf.len() as u64).min(left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
