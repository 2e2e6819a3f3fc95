//! The `shardkit` command line.
fn main() {}
