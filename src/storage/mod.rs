//! The storage engine: pages, the buffer pool, the control file and B+tree
//! tables with logged changes and undo.

mod buffer;
mod control;
mod error;
pub mod node;
mod op;
mod page;
mod tree;

pub use buffer::{BufferError, BufferPool, BufferStats};
pub use control::{ControlFile, ControlState, CONTROL_FILE_NAME};
pub use error::StorageError;
pub use op::{ActiveTxnEntry, Op, OpDecodeError, Redo, RedoRefused};
pub use page::{image_hole, Page, PageCheck, PageKind, PAGE_HEADER_LEN, PAGE_SIZE};
pub use tree::{
    CheckpointRun, CheckpointTail, CommitAppended, Store, StoreError, Tree, TreeShape, DATA_FILE_NAME, MAX_KEY_LEN,
    UNDO_MEMORY_DEFAULT,
};
