//! Bounded capture of a guest's stdout and stderr.
//!
//! wasmtime-wasi's `MemoryOutputPipe` refuses a write past its capacity with a trap, so a guest
//! that prints too much would die, and the trap looked like a host failure. [`BoundedCapture`]
//! keeps the first [`STDIO_CAPTURE_BYTES`] and accepts and discards the rest, counting the
//! discarded bytes (`stdout_dropped` / `stderr_dropped` in the receipt). A guest can print as
//! much as its fuel allows; the host keeps at most 64 KiB per stream.
//!
//! Every write reaching the capture is also counted in
//! [`Counters::wasi_calls`](super::Counters::wasi_calls).

use super::AgentShared;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Bytes of guest stdout and of guest stderr the host keeps; later bytes are discarded and
/// counted.
pub const STDIO_CAPTURE_BYTES: usize = 64 << 10;

/// Which stream a capture is for (it picks the drop counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// `wasi:cli/stdout`.
    Stdout,
    /// `wasi:cli/stderr`.
    Stderr,
}

/// The kept bytes of both streams; one per agent, in [`AgentShared`].
#[derive(Debug, Default)]
pub struct StdioBuffers {
    stdout: Mutex<Vec<u8>>,
    stderr: Mutex<Vec<u8>>,
}

/// A guest output stream that keeps its first [`STDIO_CAPTURE_BYTES`] in memory and discards
/// (and counts) the rest. Never fails a write. Clones share the buffer (the agent's
/// [`StdioBuffers`]).
#[derive(Clone)]
pub struct BoundedCapture {
    stream: Stdio,
    shared: Arc<AgentShared>,
}

impl BoundedCapture {
    /// The capture of `stream`, keeping into and counting into the agent's state.
    pub fn new(stream: Stdio, shared: Arc<AgentShared>) -> Self {
        BoundedCapture { stream, shared }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        let buffers = &self.shared.stdio;
        match self.stream {
            Stdio::Stdout => &buffers.stdout,
            Stdio::Stderr => &buffers.stderr,
        }
        .lock()
        .expect("capture lock poisoned")
    }

    /// The bytes kept (at most [`STDIO_CAPTURE_BYTES`]).
    pub fn contents(&self) -> Vec<u8> {
        self.kept().clone()
    }

    /// How many bytes are kept.
    pub fn len(&self) -> usize {
        self.kept().len()
    }

    /// True when nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the bytes kept, leaving the capture empty.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.kept())
    }

    fn accept(&self, buf: &[u8]) {
        let counters = &self.shared.counters;
        counters.wasi_calls.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.kept();
        let room = STDIO_CAPTURE_BYTES.saturating_sub(kept.len());
        let take = buf.len().min(room);
        kept.extend_from_slice(&buf[..take]);
        let dropped = (buf.len() - take) as u64;
        if dropped > 0 {
            let counter = match self.stream {
                Stdio::Stdout => &counters.stdout_dropped,
                Stdio::Stderr => &counters.stderr_dropped,
            };
            counter.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

impl IsTerminal for BoundedCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedCapture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for BoundedCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
