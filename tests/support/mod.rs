pub mod cluster;
pub mod http;
pub mod procs;
pub mod redis;
