//! gantry-test-support
