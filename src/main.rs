//! The `as2box` command.

fn main() {}
