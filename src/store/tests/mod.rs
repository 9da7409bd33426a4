//! The store's tests, on real SQLite files in temporary directories.

mod outbox;
mod retention;
mod write;
