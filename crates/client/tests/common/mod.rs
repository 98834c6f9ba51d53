//! Helpers of the client's integration tests (the shared ones live in
//! gantry-test-support).

#![allow(dead_code)]

use gantry_client::credentials::Credential;
use gantry_client::{ClientOptions, RegistryClient};
#[allow(unused_imports)]
pub use gantry_test_support::{sample_images, GantryServe as Serve};

/// A plain-HTTP client for `host` with the given credentials (never stored ones).
pub fn client(host: &str, credential: Option<(&str, &str)>) -> RegistryClient {
    RegistryClient::new(
        host,
        &ClientOptions {
            insecure: true,
            credential: credential.map(|(u, p)| Credential::new(u, p)),
            no_stored_credentials: true,
            ..ClientOptions::default()
        },
    )
    .unwrap()
}
