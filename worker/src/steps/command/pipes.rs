//! Reading a program's standard output and error without letting it decide how much memory the
//! worker uses: both are read in chunks as they come, and at most a fixed amount is ever kept.
//! Standard error is also split into lines as it comes, for the run's log.

use tokio::io::{AsyncRead, AsyncReadExt};
use warren_shared::store::logs::{MAX_LINE_BYTES, line_from};

/// How much is read from a pipe at a time.
const CHUNK: usize = 64 * 1024;

/// Standard output went past its limit: the output would be cut, so there is no output.
#[derive(Debug)]
pub(super) struct TooLarge;

/// Everything `pipe` gives until it closes, or [`TooLarge`] as soon as that would be more
/// than `limit` bytes (the caller then stops the program rather than drain the rest).
pub(super) async fn read_all_within(
    mut pipe: impl AsyncRead + Unpin,
    limit: usize,
) -> std::io::Result<Result<Vec<u8>, TooLarge>> {
    let mut kept = Vec::new();
    let mut chunk = vec![0_u8; CHUNK];
    loop {
        let n = pipe.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Ok(kept));
        }
        if kept.len() + n > limit {
            return Ok(Err(TooLarge));
        }
        kept.extend_from_slice(&chunk[..n]);
    }
}

/// The last `keep` bytes (about) of everything `pipe` gives until it closes: standard error
/// matters for its last lines, and a program may log a lot there before it fails. Each line
/// that is not blank goes to `each_line` as it comes (see [`Lines`]).
pub(super) async fn read_tail(
    mut pipe: impl AsyncRead + Unpin,
    keep: usize,
    each_line: impl FnMut(String),
) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut chunk = vec![0_u8; CHUNK];
    let mut lines = Lines::new(each_line);
    // A read error ends the reading: what was read so far is all the failure can report.
    while let Ok(n) = pipe.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        lines.feed(&chunk[..n]);
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > keep.saturating_mul(2) {
            tail.drain(..tail.len() - keep);
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    lines.finish();
    tail
}

/// Splits bytes into lines as they come, holding at most [`MAX_LINE_BYTES`] of the line being
/// read: a longer line is cut, with a marker saying how long it was. Blank lines are skipped;
/// a line's `\r\n` ending counts as its end. Bytes that are not UTF-8 become U+FFFD.
pub(super) struct Lines<F: FnMut(String)> {
    /// The start of the line being read.
    start: Vec<u8>,
    /// Its length so far, of which `start` holds the first bytes.
    len: usize,
    each_line: F,
}

impl<F: FnMut(String)> Lines<F> {
    pub(super) fn new(each_line: F) -> Self {
        Lines {
            start: Vec::new(),
            len: 0,
            each_line,
        }
    }

    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.extend(&bytes[..end]);
            self.end_line();
            bytes = &bytes[end + 1..];
        }
        self.extend(bytes);
    }

    /// The last line, if it did not end with a newline.
    pub(super) fn finish(mut self) {
        if self.len > 0 {
            self.end_line();
        }
    }

    fn extend(&mut self, part: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.start.len());
        self.start.extend_from_slice(&part[..part.len().min(room)]);
        self.len += part.len();
    }

    fn end_line(&mut self) {
        let mut len = self.len;
        if self.start.len() == len && self.start.last() == Some(&b'\r') {
            self.start.pop();
            len -= 1;
        }
        if !self.start.trim_ascii().is_empty() {
            let text = String::from_utf8_lossy(&self.start).into_owned();
            (self.each_line)(line_from(text, len));
        }
        self.start.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn everything_within_the_limit_is_kept() {
        let data = vec![7_u8; 200_000];
        let read = read_all_within(&data[..], 200_000).await.unwrap();
        assert_eq!(read.unwrap(), data);
    }

    #[tokio::test]
    async fn one_byte_past_the_limit_is_too_large() {
        let data = vec![7_u8; 200_001];
        let read = read_all_within(&data[..], 200_000).await.unwrap();
        assert!(read.is_err());
    }

    #[tokio::test]
    async fn the_tail_is_the_last_bytes_written() {
        let data: Vec<u8> = (0..300_000_u32).map(|i| (i % 251) as u8).collect();
        let tail = read_tail(&data[..], 1000, |_| {}).await;
        assert_eq!(tail, data[data.len() - 1000..]);
    }

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut seen = Vec::new();
        let mut lines = Lines::new(|line| seen.push(line));
        for chunk in chunks {
            lines.feed(chunk);
        }
        lines.finish();
        seen
    }

    #[test]
    fn standard_error_is_split_into_lines_across_chunks_without_blank_ones() {
        assert_eq!(
            split(&[b"probing", b"...\r\n\n  \nfound 2 str", b"eams\nno newline"]),
            ["probing...", "found 2 streams", "no newline"]
        );
    }

    #[test]
    fn a_huge_line_is_held_cut_and_marked_with_its_length() {
        let huge = vec![b'x'; 100_000];
        let seen = split(&[&huge, &huge, b"\nnext\n"]);
        assert_eq!(seen.len(), 2);
        assert!(seen[0].len() <= MAX_LINE_BYTES, "{}", seen[0].len());
        assert!(
            seen[0].ends_with("… [truncated, 200000 bytes]"),
            "{}",
            &seen[0][4000..]
        );
        assert_eq!(seen[1], "next");
    }
}
