//! The cluster as the data path sees it: membership views, directory and
//! data requests to peers.

pub mod view;

pub use view::{ClusterView, MemberRoute};
