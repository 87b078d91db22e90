//! Ember's Firecracker-compatible control API: the paths, JSON bodies, status codes and order
//! rules of Firecracker's REST API (its swagger, `src/firecracker/swagger/firecracker.yaml`)
//! on a Unix socket, and its `--config-file` schema, as a thin layer over the `vmm` library's
//! configuration ([`vmm::VmConfig`]) and handle ([`vmm::VmHandle`]).
//!
//! - [`http`]: HTTP/1.1 framing (RFC 9112) and its limits.
//! - [`models`]: Firecracker's request bodies, and which fields Ember refuses.
//! - [`routes`]: method and path to [`routes::Action`].
//! - [`resources`]: the configuration built by requests, mapped onto `VmConfig`.
//! - [`controller`]: the state machine (before and after `InstanceStart`) on the VM's thread.
//! - [`snapshot`]: Firecracker's two snapshot files over Ember's snapshot directory.
//! - [`server`]: the socket and its thread; [`seccomp`]: that thread's allow-list.
//! - [`logger`], [`metrics`]: `PUT /logger` and `PUT /metrics`.
#![deny(missing_docs)]

pub mod controller;
pub mod http;
pub mod logger;
pub mod metrics;
pub mod models;
pub mod resources;
pub mod routes;
pub mod seccomp;
pub mod server;
pub mod snapshot;

pub use controller::{Controller, ControllerOptions, Event, Outcome};
pub use server::{ApiServer, ApiSocket, ServerError};
