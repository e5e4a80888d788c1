//! Where SQL sessions run: one thread of their own, with a single-threaded
//! runtime.
//!
//! A session spends most of its life waiting for its client, and a
//! select-only transaction is a few tens of microseconds of work, taken
//! under the store's one lock. On tokio's work-stealing runtime each
//! wake-up of a session could land on either worker, an idle worker was
//! woken to steal it, and a session waiting for the store was handed it
//! across threads: with two workers on two cores, a third of the server's
//! CPU under `pgbench -S` was the kernel's scheduler. On one thread a
//! wake-up and a hand-over of the store are that thread's own business.
//! Measured on this project's 2-core machine (docs/performance.md):
//! `pgbench -S` went from about 37,000 to 70,000 tps, TPC-B stayed within
//! its run-to-run noise, and two such threads (each session on one of
//! them) did worse than either, because sessions then wait for the store
//! across threads.
//!
//! What must not hold the thread is kept off it: the WAL's group-commit
//! sync runs on a blocking thread ([`super::offload`]), so the other
//! sessions run and append the next group meanwhile; a long scan yields
//! between its batches. The rest of the server (the admin API, the
//! checkpointer, the archiver, a cluster's node) stays on the main
//! runtime. The server is not built for simulation, and neither is this.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::future::Future;

use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The session thread; dropping it stops the thread, ending any session
/// still on it.
pub struct SessionThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SessionThread {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("sessions".into()).spawn(move || {
            // Runs the sessions until told to stop; dropping the runtime
            // then ends what is left.
            let _ = runtime.block_on(stopped);
        })?;
        Ok(SessionThread { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Runs `serve(socket)` on the session thread as a task of `set`, with
    /// the socket moved to that thread's I/O driver.
    pub fn spawn<F, Fut>(&self, set: &mut JoinSet<()>, socket: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let socket = match socket.into_std() {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%error, "handing a connection to the session thread failed");
                return;
            }
        };
        // The task's first poll runs on the session thread, so the socket
        // registers with that thread's driver.
        set.spawn_on(
            async move {
                match TcpStream::from_std(socket) {
                    Ok(socket) => serve(socket).await,
                    Err(error) => tracing::warn!(%error, "registering a connection on the session thread failed"),
                }
            },
            &self.handle,
        );
    }
}

impl Drop for SessionThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
