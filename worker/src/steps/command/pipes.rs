//! Reading a program's standard output and error without letting it decide how much memory the
//! worker uses: both are read in chunks as they come, and at most a fixed amount is ever kept.

use tokio::io::{AsyncRead, AsyncReadExt};

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
/// matters for its last lines, and a program may log a lot there before it fails.
pub(super) async fn read_tail(mut pipe: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut chunk = vec![0_u8; CHUNK];
    // A read error ends the reading: what was read so far is all the failure can report.
    while let Ok(n) = pipe.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > keep.saturating_mul(2) {
            tail.drain(..tail.len() - keep);
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
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
        let tail = read_tail(&data[..], 1000).await;
        assert_eq!(tail, data[data.len() - 1000..]);
    }
}
