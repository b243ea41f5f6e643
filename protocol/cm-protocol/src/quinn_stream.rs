//! The thin driver both ends use: [`read_frame`] feeds a [`FrameDecoder`]
//! from a quinn receive stream (feature `quinn`).

use crate::decoder::FrameDecoder;
use crate::error::DecodeError;
use crate::frame::Frame;

/// Most bytes taken from the stream per read.
const READ_CHUNK: usize = 64 * 1024;

/// Why reading a frame from a QUIC stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The stream failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The bytes were not a valid frame.
    #[error("protocol: {0}")]
    Decode(#[from] DecodeError),
}

/// Reads the next frame from a QUIC stream (the thin driver around
/// [`FrameDecoder`] both ends use); `Ok(None)` when the stream ended.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, ReadFrameError> {
    loop {
        if let Some(f) = decoder.next_frame()? {
            return Ok(Some(f));
        }
        match recv.read_chunk(READ_CHUNK, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes),
            None => return Ok(None),
        }
    }
}
