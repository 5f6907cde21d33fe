//! Trains the Fashion-MNIST model (work in progress).
fn main() {}
