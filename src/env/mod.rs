//! The environment seam: everything the engine needs from the world.
//!
//! Engine code never touches the disk, the clock or randomness directly. It
//! reaches them through [`Env`], which bundles a file system ([`Fs`]), a
//! [`Clock`] and a seed. Production builds use [`RealFs`] and [`RealClock`];
//! the simulator uses [`SimFs`] (an in-memory disk with a fault model) and
//! [`SimClock`] (a clock that can jump). Because the same engine code runs on
//! both, a failure found in simulation replays exactly from its seed.
//!
//! `clippy.toml` bans the direct calls (`std::fs`, `SystemTime::now`,
//! `Instant::now`, `std::thread::spawn`, …) everywhere except in `real.rs` and
//! the simulated clock, each with a local `#[allow]` that says why.

mod clock;
mod command;
mod faults;
mod overlay;
mod real;
mod seam;
#[cfg(not(madsim))]
mod sessions;
mod sim_fs;

pub use clock::{Clock, SimClock};
pub use command::{substitute, CommandOutput, CommandRunner, NoCommands};
pub use faults::{FaultConfig, FaultKind, LedgerEntry};
pub use overlay::Overlay;
#[cfg(not(madsim))]
pub use real::ShellCommands;
pub use real::{RealClock, RealFs};
pub use seam::{all_zeroes, write_atomically, zero_runs, AtomicWriteError, Env, File, Fs, HOLE_BLOCK};
#[cfg(not(madsim))]
pub use sessions::SessionThread;
pub use sim_fs::{AtRestLoss, DiskTrace, SimDisk, SimFs, CRASH_MESSAGE, SECTOR_SIZE};

/// Runs `work`, a blocking call that other tasks should not wait for (the
/// WAL's group-commit `fdatasync`), on a blocking thread, and waits for it
/// without holding this thread: sessions share their thread
/// ([`SessionThread`]), and while one of them syncs the others run. If
/// the caller stops waiting, `work` still runs to its end. Callers
/// offload only real I/O ([`Fs::syncs_block`]); in the madsim build it
/// simply runs `work`, since a thread outside madsim's scheduler would
/// break determinism.
pub async fn offload<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    #[cfg(not(madsim))]
    {
        #[allow(clippy::disallowed_methods)] // production only; see above
        let task = tokio::task::spawn_blocking(work);
        match task.await {
            Ok(value) => value,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    #[cfg(madsim)]
    {
        work()
    }
}

/// Runs `work`, a long blocking call (a checkpoint's data-file `fdatasync`,
/// which can take tens of milliseconds), handing the worker thread's other
/// tasks to another thread meanwhile (`tokio::task::block_in_place`), so
/// that sessions scheduled on this thread do not wait for it. On a
/// current-thread runtime, and in simulation, there is no other thread: it
/// simply runs `work`.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    #[cfg(not(madsim))]
    {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if Handle::try_current().is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread) {
            return tokio::task::block_in_place(work);
        }
    }
    work()
}
