//! building
