//! Helpers of the client's integration tests (the shared ones live in
//! gantry-test-support).

#[allow(unused_imports)]
pub use gantry_test_support::{registry_client as client, sample_images, GantryServe as Serve};
