//! gantry-oci
