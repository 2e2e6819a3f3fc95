//! A bounded, buffered cursor over positioned reads, used to parse GGUF headers.
//!
//! The cursor stores the length of the file, so every length or count read from the
//! file can be checked against the bytes that remain before anything is allocated for it.
//! Files are read with positioned reads (`pread`), not memory maps: a header is parsed once
//! and tensor data is copied in bounded buffers, so a map would save little and would bring
//! `unsafe` and the risk of a file truncated under a live map.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::error::GgufErrorKind;

/// Something that can fill a buffer from an absolute offset.
pub trait ReadAt {
    /// Fills `buf` with the bytes at `offset`, failing if they do not all exist.
    ///
    /// # Errors
    ///
    /// The I/O error from the read; `UnexpectedEof` when the range passes the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&end| end <= self.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

/// Bytes fetched per refill. Headers of real models are 1 to 20 MB, mostly vocabulary
/// strings; 64 KiB keeps the number of reads low without holding much memory.
const BUFFER_BYTES: usize = 64 << 10;

/// A read position in a source of known length.
pub(crate) struct Cursor<'a, S: ReadAt + ?Sized> {
    source: &'a S,
    len: u64,
    position: u64,
    buffer: Vec<u8>,
    /// File offset of `buffer[0]`.
    buffer_start: u64,
}

impl<'a, S: ReadAt + ?Sized> Cursor<'a, S> {
    /// A cursor at offset 0 of a source of `len` bytes.
    pub(crate) fn new(source: &'a S, len: u64) -> Cursor<'a, S> {
        Cursor {
            source,
            len,
            position: 0,
            buffer: Vec::new(),
            buffer_start: 0,
        }
    }

    /// The current offset.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Bytes from the current offset to the end.
    pub(crate) fn remaining(&self) -> u64 {
        self.len - self.position
    }

    /// Checks that `needed` bytes remain, naming `field` in the error.
    pub(crate) fn ensure(
        &self,
        needed: u128,
        field: impl FnOnce() -> String,
    ) -> Result<(), GgufErrorKind> {
        if needed > u128::from(self.remaining()) {
            return Err(GgufErrorKind::Truncated {
                field: field(),
                offset: self.position,
                needed,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }

    /// Reads `N` bytes after checking that they exist.
    pub(crate) fn read_array<const N: usize>(
        &mut self,
        field: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufErrorKind> {
        self.ensure(N as u128, field)?;
        let mut bytes = [0u8; N];
        self.fill(&mut bytes)?;
        Ok(bytes)
    }

    /// Reads a little-endian u32.
    pub(crate) fn read_u32(
        &mut self,
        field: impl FnOnce() -> String,
    ) -> Result<u32, GgufErrorKind> {
        self.read_array(field).map(u32::from_le_bytes)
    }

    /// Reads a little-endian u64.
    pub(crate) fn read_u64(
        &mut self,
        field: impl FnOnce() -> String,
    ) -> Result<u64, GgufErrorKind> {
        self.read_array(field).map(u64::from_le_bytes)
    }

    /// Reads `len` bytes into a new vector, after checking that they exist, so the
    /// allocation is never larger than the rest of the file.
    pub(crate) fn read_vec(
        &mut self,
        len: u64,
        field: impl FnOnce() -> String,
    ) -> Result<Vec<u8>, GgufErrorKind> {
        self.ensure(len.into(), field)?;
        let mut bytes = vec![0u8; len as usize];
        self.fill(&mut bytes)?;
        Ok(bytes)
    }

    /// Copies the next `out.len()` bytes; the caller has checked they exist.
    fn fill(&mut self, out: &mut [u8]) -> Result<(), GgufErrorKind> {
        let mut done = 0;
        while done < out.len() {
            let buffered = self.buffered();
            if buffered.is_empty() {
                let requested = out.len() - done;
                if requested >= BUFFER_BYTES {
                    // Large strings go straight into their destination.
                    self.source.read_exact_at(&mut out[done..], self.position)?;
                    self.position += requested as u64;
                    return Ok(());
                }
                self.refill()?;
                continue;
            }
            let take = buffered.len().min(out.len() - done);
            out[done..done + take].copy_from_slice(&buffered[..take]);
            done += take;
            self.position += take as u64;
        }
        Ok(())
    }

    /// The buffered bytes from the current position on.
    fn buffered(&self) -> &[u8] {
        let buffer_end = self.buffer_start + self.buffer.len() as u64;
        if self.position < self.buffer_start || self.position >= buffer_end {
            return &[];
        }
        &self.buffer[(self.position - self.buffer_start) as usize..]
    }

    fn refill(&mut self) -> Result<(), GgufErrorKind> {
        let size = (BUFFER_BYTES as u64).min(self.remaining()) as usize;
        self.buffer.resize(size, 0);
        self.source.read_exact_at(&mut self.buffer, self.position)?;
        self.buffer_start = self.position;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_across_buffer_boundaries() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut cursor = Cursor::new(data.as_slice(), data.len() as u64);
        let head = cursor
            .read_vec(BUFFER_BYTES as u64 - 3, String::new)
            .unwrap();
        assert_eq!(head[..], data[..BUFFER_BYTES - 3]);
        let word = cursor.read_u64(String::new).unwrap();
        let start = BUFFER_BYTES - 3;
        assert_eq!(
            word,
            u64::from_le_bytes(data[start..start + 8].try_into().unwrap())
        );
        let big = cursor.read_vec(100_000, String::new).unwrap();
        assert_eq!(big[..], data[start + 8..start + 8 + 100_000]);
        assert_eq!(cursor.position(), (start + 8 + 100_000) as u64);
    }

    #[test]
    fn length_past_the_end_fails_before_allocating() {
        let data = [0u8; 16];
        let mut cursor = Cursor::new(&data[..], 16);
        let error = cursor.read_vec(1 << 60, || "string".into()).unwrap_err();
        assert!(matches!(
            error,
            GgufErrorKind::Truncated {
                needed,
                remaining: 16,
                ..
            } if needed == 1 << 60
        ));
    }
}
