pub mod env;
pub mod wal;
