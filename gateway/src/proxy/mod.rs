//! Byte pumps between SSH channels and a host: an exec's stdio, or the
//! inner Docker socket. Knows nothing of authentication or provisioning.

pub mod agent;
pub mod exec;
pub mod splice;
