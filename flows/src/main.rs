//! The streaming flow: lands in its own change.
fn main() {}
