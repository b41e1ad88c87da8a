//! The one integration-test binary: each module tests one part of chordctl from outside.

mod bench_cmd;
mod cli;
mod e2e;
mod registry;
mod replication;
mod ring;
mod store;
mod support;
