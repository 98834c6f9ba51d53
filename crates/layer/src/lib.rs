//! gantry-layer
