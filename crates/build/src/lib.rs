//! gantry-build
