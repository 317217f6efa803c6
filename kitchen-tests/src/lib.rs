//! The kitchen server's integration tests (`tests/kitchen`), which compile the server's
//! modules from `examples/kitchen` and run them in-process on tokio's paused clock.
//!
//! They live in their own package because the paused clock needs tokio's `test-util`
//! feature, and a dev-dependency feature of the root package would reach the kitchen binary
//! too, where `test-util` puts a mutex on every clock read. This library is empty.
