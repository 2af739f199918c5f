//! Reading back what the code logged.
//!
//! One global subscriber for the whole test binary, writing JSON lines into the buffer of
//! whichever thread is capturing. Each test setting its own thread-local default
//! (`tracing::subscriber::set_default`) is racy when tests run in parallel: once only one such
//! subscriber is alive, tracing-core caches each callsite's interest as seen from whatever
//! thread hits it first, and a thread without a subscriber caches "never" for everyone (the log
//! test then missed its own `request done` lines). A global subscriber whose filter is decided
//! per event, per thread, has no such cache to get wrong.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

/// Where the code's log lines go while a test captures them on its thread.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURING: RefCell<Option<LogCapture>> = const { RefCell::new(None) };
}

/// Stops the capture on this thread when dropped.
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURING.with(|c| c.borrow_mut().take());
    }
}

impl LogCapture {
    /// Captures, as JSON lines with the current span and span list, every event up to DEBUG
    /// logged on this thread (a `current_thread` test runtime: the test's own tasks) until the
    /// guard drops.
    pub fn on_this_thread() -> (LogCapture, CaptureGuard) {
        install_global_subscriber();
        let capture = LogCapture::default();
        CAPTURING.with(|c| *c.borrow_mut() = Some(capture.clone()));
        (capture, CaptureGuard(()))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("logs are UTF-8")
    }
}

fn install_global_subscriber() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let capturing = tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
            *meta.level() <= tracing::Level::DEBUG && CAPTURING.with(|c| c.borrow().is_some())
        });
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(ThreadWriter::current)
            .with_filter(capturing);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other global subscriber in the test binary");
    });
}

/// Writes into this thread's capture, or nowhere (the filter already keeps other threads out).
struct ThreadWriter(Option<LogCapture>);

impl ThreadWriter {
    fn current() -> Self {
        ThreadWriter(CAPTURING.with(|c| c.borrow().clone()))
    }
}

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(capture) = &self.0 {
            capture.0.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
