//! Benmo's gRPC API, generated from `proto/benmo/v1/benmo.proto` by `build.rs`, and the one place
//! where its messages become the consensus core's types.
//!
//! - [`proto`]: the generated messages, clients and servers, and the descriptor set for reflection.
//! - [`convert`]: protobuf to core and back; malformed messages are refused here, at the edge.
//! - [`cluster`]: the `--cluster 1=http://host:port,...` list that nodes and benmoctl share.
//! - [`dial`]: outgoing gRPC connections (nodes to peers, benmoctl to nodes).
//! - [`secrets`]: the cluster's CA, node certificates, operator token and account keys.
//! - [`signing`]: signing transfers with an account's key, and checking the signatures.

pub mod cluster;
pub mod convert;
pub mod dial;
pub mod secrets;
pub mod signing;

/// The generated gRPC code of package `benmo.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("benmo.v1");

    /// The encoded descriptor set of `benmo.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/benmo_descriptor.bin"));
}
