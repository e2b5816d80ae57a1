//! `meshgate.v1`: the generated gRPC messages, client and server, the descriptor set
//! that server reflection serves, and the conversions to and from OpenAI's JSON.

#[allow(clippy::all)] // generated code
mod generated {
    tonic::include_proto!("meshgate.v1");
}

pub use generated::*;

/// The encoded `FileDescriptorSet` of `meshgate/v1/*.proto` and their imports, for
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meshgate_v1_descriptor.bin"));

pub mod convert;
pub mod json;
