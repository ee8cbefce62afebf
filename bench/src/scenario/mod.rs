//! The measurements of the issues, one module each. Every `run` takes
//! the shared [`Bench`](crate::harness::Bench) and returns its table(s) and
//! the targets it checks.

pub mod batch;
pub mod compare;
pub mod fetch;
pub mod footprint;
pub mod memory;
pub mod options;
pub mod publish;
mod publish_floor;
pub mod scale;
