//! The storage engine: pages, the control file and (to come) the buffer
//! pool and tables.

mod control;
mod error;
mod page;

pub use control::{ControlFile, ControlState, CONTROL_FILE_NAME};
pub use error::StorageError;
pub use page::{Page, PageCheck, PageKind, PAGE_HEADER_LEN, PAGE_SIZE};
