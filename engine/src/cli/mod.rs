//! Command-line programs whose logic lives in the library, so that the Rust
//! binaries and the Python package's console scripts run the same code.

pub mod meta;
