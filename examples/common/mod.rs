//! What the benchmark examples share (included by each with `mod common;`).

/// A benchmark's result: any error ends it with a message.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The number in environment variable `name`, or `default` when it is unset or not a number.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
