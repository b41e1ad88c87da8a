pub mod cluster;
pub mod procs;
pub mod redis;
