//! From a report to a host's settings: what a table size costs and does
//! (`sizing`, `resize`), the recommendation (`recommend`), and changing the
//! host with a journal and a way back (`apply`).

pub mod apply;
pub mod recommend;
pub(crate) mod resize;
pub mod sizing;
