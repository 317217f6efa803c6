//! Brigade: async-service building blocks for AI backends.
//!
//! This crate re-exports each Brigade crate behind a feature of the same name, so one
//! dependency line brings in what a service needs:
//!
//! ```toml
//! [dependencies]
//! brigade = { version = "0.1", features = ["cancel"] }
//! ```
//!
//! | feature | module | crate |
//! | --- | --- | --- |
//! | `cancel` | [`cancel`] | `brigade-cancel`: cancel scopes with reasons and deadlines, cancel-on-disconnect, graceful shutdown |
//! | `full` | all of the above | |
//!
//! Each crate can also be used on its own.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "cancel")]
#[cfg_attr(docsrs, doc(cfg(feature = "cancel")))]
pub use brigade_cancel as cancel;
