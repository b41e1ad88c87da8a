//! The one integration-test binary: each module tests one part of chordctl from outside.

mod bench_cmd;
mod bulk;
mod cli;
mod dns;
mod e2e;
mod faults;
mod gvip;
mod health;
mod install;
mod metrics;
mod outages;
mod partition;
mod registry;
mod replication;
mod ring;
mod security;
mod skew;
mod slow;
mod store;
mod support;
mod tls;
mod ui;
mod units;
mod watch;
mod watch_cli;
