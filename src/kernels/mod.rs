//! The hand-written int8 kernel backend (work in progress).
