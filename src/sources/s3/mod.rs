//! The live bucket through aws-sdk-s3: the store and how it reads (`store`), the client
//! (`client`), listings (`listing`), object reads (`objects`) and the ledger's conditional
//! writes (`writes`).

pub mod client;
pub mod listing;
pub mod objects;
pub mod store;
pub mod writes;

pub use client::{client, read_credentials};
pub use store::{Reading, S3Store};
