//! gantry-sample-game
